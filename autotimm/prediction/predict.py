"""Batched prediction shared by the PyTorch model and the ONNX predictor: load, preprocess, run, decode.

Needs only numpy and Pillow (rich for a progress bar, when installed): the
model runs behind a ``forward`` function from a float32 batch to logits.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from autotimm.checks import require_number
from autotimm.data.images import READ_ERRORS, read_problem, unreadable_image_error, usable_cores
from autotimm.prediction.inputs import ImageSource
from autotimm.prediction.preprocess import Preprocessor, check_tta

__all__ = [
    "Prediction",
    "check_predict_arguments",
    "check_run_arguments",
    "compute_logits",
    "decode",
    "sigmoid",
    "softmax",
]

#: Classes per image when ``top_k=None``.
DEFAULT_TOP_K = 5

#: Batches above which a progress bar is shown when ``progress=None``.
PROGRESS_MIN_BATCHES = 4


@dataclass
class Prediction:
    """The prediction for one image.

    Args:
        labels: Class names, most probable first: the top-k (single-label), or
            every label at or above the threshold (multi-label; may be empty).
        probabilities: Their probabilities (softmax, or per-class sigmoid for multi-label).
        indices: Their class indices.
        source: The file the image came from, or ``None`` for an in-memory image.
    """

    labels: list[str]
    probabilities: list[float]
    indices: list[int]
    source: str | None = None

    @property
    def label(self) -> str | None:
        """The most probable class name (``None`` for a multi-label prediction with no label)."""
        return self.labels[0] if self.labels else None

    @property
    def probability(self) -> float | None:
        """The probability of `label`."""
        return self.probabilities[0] if self.probabilities else None

    def to_dict(self) -> dict[str, Any]:
        """The prediction as plain data (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        shown = ", ".join(f"{label} {p:.1%}" for label, p in zip(self.labels, self.probabilities, strict=True))
        return f"{self.source or '<image>'}: {shown or '(no label above the threshold)'}"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` over the last axis, in float64.

    Args:
        logits: Scores, classes on the last axis.
        temperature: What the logits are divided by first (see temperature scaling).

    Returns:
        Probabilities of the shape of ``logits``.

    Example:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    scaled = np.asarray(logits, dtype=np.float64) / float(temperature)
    shifted = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Element-wise logistic function."""
    return 1.0 / (1.0 + np.exp(-logits))


def check_run_arguments(batch_size: int, tta: bool | str) -> None:
    """Check the arguments every prediction run takes (``predict`` and ``predict_logits`` alike).

    Raises:
        ValueError: ``batch_size`` is not a positive integer, or ``tta`` is not a known mode.
    """
    require_number("batch_size", batch_size, 1, integer=True)
    check_tta(tta)


def check_predict_arguments(
    num_classes: int, top_k: int | None, batch_size: int, threshold: float, tta: bool | str, multi_label: bool
) -> int:
    """Check ``predict``'s arguments against the model.

    Returns:
        ``top_k``, or for ``None`` the default: 5, or ``num_classes`` when smaller.

    Raises:
        ValueError: Naming the argument, the value and what is accepted.
    """
    if top_k is None:
        top_k = min(DEFAULT_TOP_K, num_classes)
    if multi_label:  # labels above the threshold: top_k caps them, and may exceed the classes
        require_number("top_k", top_k, 1, integer=True)
    else:
        hint = f"the model has {num_classes} classes"
        require_number("top_k", top_k, 1, num_classes, integer=True, high_closed=True, hint=hint)
    check_run_arguments(batch_size, tta)
    require_number("threshold", threshold, 0, 1, low_open=True)
    return int(top_k)


def decode(
    logits: np.ndarray,
    class_names: Sequence[str],
    multi_label: bool = False,
    top_k: int = 5,
    threshold: float = 0.5,
    sources: Sequence[str | None] | None = None,
) -> list[Prediction]:
    """Turn logits (already divided by the temperature) into per-image predictions.

    Args:
        logits: ``(N, num_classes)``.
        class_names: One name per class.
        multi_label: Sigmoid per class and the labels ``>= threshold`` (at
            most ``top_k`` of them); otherwise softmax and the ``top_k`` classes.
        top_k: How many classes per image (at most, for multi-label).
        threshold: Probability a label needs (multi-label).
        sources: One source per image.

    Returns:
        One [`Prediction`][autotimm.prediction.predict.Prediction] per row.

    Example:
        >>> decode(np.array([[0.0, 2.0, 1.0]]), ["cat", "dog", "fox"], top_k=2)[0].labels
        ['dog', 'fox']
    """
    logits = np.asarray(logits, dtype=np.float64)
    probs = sigmoid(logits) if multi_label else softmax(logits)
    sources = list(sources) if sources is not None else [None] * len(probs)
    predictions = []
    for row, source in zip(probs, sources, strict=True):
        order = np.argsort(-row, kind="stable")
        order = order[row[order] >= threshold][:top_k] if multi_label else order[:top_k]
        predictions.append(
            Prediction([class_names[i] for i in order], [float(row[i]) for i in order], [int(i) for i in order], source)
        )
    return predictions


@contextmanager
def _progress_bar(total: int, show: bool, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a rich bar when ``show`` and rich is installed."""
    if not show:
        yield lambda n: None
        return
    try:
        from rich.progress import Progress
    except ImportError:  # a slim deployment without rich: no bar
        yield lambda n: None
        return
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def _load(source: ImageSource, in_chans: int, draft_size: tuple[int, int] | None = None) -> Image.Image | str:
    """The decoded image (a JPEG file reduced to no less than ``draft_size``), or the reason it could not be read."""
    try:
        return source.load(in_chans, draft_size)
    except READ_ERRORS as err:
        return read_problem(err)


def compute_logits(
    forward: Callable[[np.ndarray], np.ndarray],
    sources: Sequence[ImageSource],
    preprocessor: Preprocessor,
    batch_size: int = 32,
    tta: bool | str = False,
    skip_bad_images: bool = False,
    progress: bool | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Run a model over images in batches; with test-time augmentation, average the logits of each image's views.

    Images are decoded and preprocessed in threads (Pillow releases the GIL). JPEG files
    larger than twice the resize target are decoded reduced (libjpeg's DCT scaling, see
    [`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]), as the REST service does.

    Args:
        forward: From a float32 batch ``(B, C, H, W)`` to logits ``(B, num_classes)``.
        sources: The images.
        preprocessor: The model's preprocessing.
        batch_size: Images per batch (each image adds ``num_views(tta)`` rows).
        tta: Test-time augmentation mode (see [`TTA_MODES`][autotimm.prediction.preprocess.TTA_MODES]).
        skip_bad_images: Skip unreadable images with one warning, instead of raising.
        progress: Show a progress bar: ``None`` shows one for more than a few batches.

    Returns:
        ``(logits, kept)``: float32 ``(N_kept, num_classes)`` and the indices into
        ``sources`` of the images predicted on.

    Raises:
        FileNotFoundError: A missing file (without ``skip_bad_images``).
        ValueError: An unreadable image (without ``skip_bad_images``), no readable image at
            all, or a bad ``batch_size`` or ``tta``.
    """
    check_run_arguments(batch_size, tta)
    batch_size = int(batch_size)
    views = preprocessor.num_views(tta)
    draft_size = preprocessor.draft_size  # JPEG files decode reduced, to twice the resize target
    outputs: list[np.ndarray] = []
    kept: list[int] = []
    bad: list[int] = []
    batches = range(0, len(sources), batch_size)
    show = len(batches) > PROGRESS_MIN_BATCHES if progress is None else progress
    with (
        ThreadPoolExecutor(max_workers=min(4, usable_cores())) as pool,
        _progress_bar(len(sources), show, "Predicting") as advance,
    ):
        for start in batches:
            chunk = list(range(start, min(start + batch_size, len(sources))))
            images = list(pool.map(lambda i: _load(sources[i], preprocessor.in_chans, draft_size), chunk))
            for index, image in zip(chunk, images, strict=True):
                if isinstance(image, str):
                    if not skip_bad_images:
                        raise unreadable_image_error(f"image {sources[index].source or '<in-memory image>'!r}", image)
                    bad.append(index)
            good = [(i, image) for i, image in zip(chunk, images, strict=True) if not isinstance(image, str)]
            if good:
                batch = np.concatenate(list(pool.map(lambda item: preprocessor.views(item[1], tta), good)))
                logits = np.asarray(forward(batch), dtype=np.float32)
                outputs.append(logits.reshape(len(good), views, -1).mean(axis=1))
                kept += [i for i, _ in good]
            advance(len(chunk))
    if bad:
        examples = ", ".join(repr(sources[i].source or "<in-memory image>") for i in bad[:3])
        warnings.warn(
            f"Skipped {len(bad)} unreadable image(s) of {len(sources)} (skip_bad_images=True), e.g. {examples}",
            UserWarning,
            stacklevel=3,
        )
    if not outputs:
        raise ValueError(f"None of the {len(sources)} images could be read")
    return np.concatenate(outputs), kept
