"""Dynamic int8 quantization of an exported ONNX classifier, with a report of what it costs in agreement.

Uses ``onnxruntime.quantization.quantize_dynamic``: weights of convolutions and
matrix products are stored as 8-bit integers (about 4x smaller files), and
activations are quantized on the fly. Needs no torch.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotimm.prediction.inputs import ImageSource, collect_inputs
from autotimm.prediction.metadata import ONNX_INSTALL_HINT, import_onnxruntime, set_onnx_metadata
from autotimm.prediction.onnx_predictor import OnnxPredictor
from autotimm.prediction.predict import compute_logits, sigmoid, softmax

__all__ = ["WEIGHT_TYPE", "QuantizationReport", "generated_images", "quantize_onnx"]

#: Weight type of the quantized graph. Unsigned: onnxruntime's CPU ConvInteger kernel has long supported
#: uint8 weights only (int8 conv weights fail with NOT_IMPLEMENTED on older releases), and on 1.32 it is
#: also about 3x faster than int8 for resnet18. Top-1 agreement was the same for both.
WEIGHT_TYPE = "QUInt8"


@dataclass
class QuantizationReport:
    """The int8 model next to the fp32 one: sizes, agreement and (with labels) accuracy.

    Attributes:
        path: The int8 file.
        source_path: The fp32 file.
        fp32_size: Size of the fp32 file in bytes.
        int8_size: Size of the int8 file in bytes.
        num_images: Images compared.
        top1_agreement: Fraction of images with the same top-1 class (multi-label: the same label set at 0.5).
        max_prob_diff: Largest absolute difference of any class probability.
        fp32_accuracy: Accuracy of the fp32 model on ``labels`` (``None`` without labels).
        int8_accuracy: Accuracy of the int8 model on ``labels``.
        fp32_ms_per_image: Model time per image of the fp32 model on this machine (preprocessing excluded).
        int8_ms_per_image: The same for the int8 model.
        weight_type: The onnxruntime weight type used.
    """

    path: Path
    source_path: Path
    fp32_size: int
    int8_size: int
    num_images: int
    top1_agreement: float
    max_prob_diff: float
    fp32_accuracy: float | None = None
    int8_accuracy: float | None = None
    fp32_ms_per_image: float | None = None
    int8_ms_per_image: float | None = None
    weight_type: str = WEIGHT_TYPE

    @property
    def size_ratio(self) -> float:
        """How many times smaller the int8 file is."""
        return self.fp32_size / max(self.int8_size, 1)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (paths as strings)."""
        data = asdict(self)
        data.update(path=str(self.path), source_path=str(self.source_path), size_ratio=self.size_ratio)
        return data

    def __str__(self) -> str:
        text = (
            f"int8 (dynamic, {self.weight_type} weights): {self.path} ({self.int8_size / 1e6:.1f} MB, "
            f"{self.size_ratio:.1f}x smaller than {self.fp32_size / 1e6:.1f} MB)\n"
            f"  top-1 agreement with fp32 {self.top1_agreement:.1%} on {self.num_images} images, "
            f"max probability difference {self.max_prob_diff:.3f}"
        )
        if self.fp32_accuracy is not None and self.int8_accuracy is not None:
            text += f"\n  accuracy: fp32 {self.fp32_accuracy:.1%}, int8 {self.int8_accuracy:.1%}"
        if self.fp32_ms_per_image is not None and self.int8_ms_per_image is not None:
            text += (
                f"\n  model time per image: fp32 {self.fp32_ms_per_image:.2f} ms, int8 {self.int8_ms_per_image:.2f} ms"
            )
        return text


def generated_images(count: int = 32, size: int = 96, seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour images (upsampled noise plus fine noise), uint8 ``(size, size, 3)``.

    A stand-in when no real images are given; real validation images give a more meaningful agreement.
    """
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(int(rng.integers(2, 9)),) * 2 + (3,), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        noisy = smooth + rng.normal(0, 12, size=smooth.shape)
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


def _identity_free(model: Any) -> None:
    """Replace ``Identity`` nodes that alias an initializer with a copy of it, in place.

    torch's legacy exporter shares equal weights (e.g. zero biases) through
    ``Identity`` nodes; ``quantize_dynamic`` needs conv weights to be initializers.
    """
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = numpy_helper.from_array(numpy_helper.to_array(initializers[node.input[0]]), node.output[0])
            model.graph.initializer.append(copy)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Hide onnxruntime's "consider pre-processing" root-logger warning without configuring the user's logging."""
    root = logging.getLogger()
    null = logging.NullHandler()
    hint = logging.Filter()
    hint.filter = lambda record: "pre-processing before quantization" not in record.getMessage()  # type: ignore[method-assign]
    root.addFilter(hint)
    if not root.handlers:  # logging.warning would otherwise call basicConfig and add a stderr handler for good
        root.addHandler(null)
    try:
        yield
    finally:
        root.removeFilter(hint)
        root.removeHandler(null)


def _timed_logits(predictor: OnnxPredictor, sources: list[ImageSource]) -> tuple[np.ndarray, float]:
    """Calibrated logits (the graph's output) and the model's own run time per image in ms."""
    spent = 0.0

    def timed(batch: np.ndarray) -> np.ndarray:
        nonlocal spent
        start = time.perf_counter()
        out = predictor.run(batch)
        spent += time.perf_counter() - start
        return out

    logits, _ = compute_logits(timed, sources, predictor.preprocessor, batch_size=32, progress=False)
    return logits, 1000 * spent / len(logits)


def _accuracy(probs: np.ndarray, labels: np.ndarray, multi_label: bool) -> float:
    if multi_label:
        return float(np.mean(np.all((probs >= 0.5) == (labels > 0), axis=1)))
    return float(np.mean(probs.argmax(1) == labels))


def _check_labels(labels: Any, predictor: OnnxPredictor, count: int) -> np.ndarray:
    names = predictor.class_names
    values = list(labels)
    if predictor.multi_label:
        array = np.asarray(values)
        if array.shape != (count, len(names)):
            raise ValueError(
                f"`labels` of a multi-label model must be multi-hot of shape ({count}, {len(names)}), got {array.shape}"
            )
        return array
    index = {name: i for i, name in enumerate(names)}
    resolved = [index.get(v, v) if isinstance(v, str) else v for v in values]
    bad = [
        v
        for v in resolved
        if isinstance(v, (bool, str)) or not isinstance(v, (int, np.integer)) or not 0 <= v < len(names)
    ]
    if len(resolved) != count or bad:
        raise ValueError(
            f"`labels` must be {count} class indices (0 to {len(names) - 1}) or class names from {names[:10]}, "
            f"one per input image; got {len(resolved)} labels" + (f", e.g. bad {bad[0]!r}" if bad else "")
        )
    return np.asarray(resolved, dtype=np.int64)


def quantize_onnx(
    path: str | os.PathLike[str],
    output_path: str | os.PathLike[str] | None = None,
    inputs: Any = None,
    labels: Sequence[int | str] | np.ndarray | None = None,
) -> QuantizationReport:
    """Write a dynamically int8-quantized copy of an exported model and compare it with the original.

    Metadata (class names, preprocessing, temperature) is kept, plus a
    ``quantization`` entry; [`OnnxPredictor`][autotimm.prediction.onnx_predictor.OnnxPredictor] runs the copy
    as it runs the original. The file is written under a temporary name and moved into place at the end.

    Args:
        path: An ONNX file written by [`export`][autotimm.exporting.exporter.export].
        output_path: Where to write; ``None``: ``<stem>.int8.onnx`` next to ``path``.
        inputs: Images to compare the two models on, anything ``predict`` accepts;
            ``None``: 32 generated images (see `generated_images`).
        labels: The true class of each image (indices or class names; multi-hot
            ``(N, num_classes)`` for multi-label models) to report both accuracies.

    Returns:
        A [`QuantizationReport`][autotimm.exporting.quantization.QuantizationReport].

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an autotimm ONNX export, ``output_path`` equal to ``path``, or bad ``labels``.
        ImportError: onnx or onnxruntime is missing.
    """
    source = Path(path)
    reference = OnnxPredictor(source, providers=["CPUExecutionProvider"])
    target = Path(output_path) if output_path is not None else source.with_name(f"{source.stem}.int8.onnx")
    if target.resolve() == source.resolve():
        raise ValueError(f"`output_path` must differ from `path`, got {os.fspath(target)!r} for both")
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as err:
        raise ImportError(f"int8 quantization needs onnx and onnxruntime: {ONNX_INSTALL_HINT}") from err
    import_onnxruntime()
    sources = collect_inputs(generated_images() if inputs is None else inputs)
    truth = None if labels is None else _check_labels(labels, reference, len(sources))
    target.parent.mkdir(parents=True, exist_ok=True)
    metadata = {**reference.metadata, "quantization": f"dynamic int8 ({WEIGHT_TYPE} weights, onnxruntime)"}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as work:
        clean, quantized = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        model = onnx.load(str(source))
        _identity_free(model)
        onnx.save(model, str(clean))
        with _quiet_quantizer():
            quantize_dynamic(clean, quantized, weight_type=getattr(QuantType, WEIGHT_TYPE))
        model = onnx.load(str(quantized))
        set_onnx_metadata(model, metadata)
        onnx.save(model, str(clean))
        measured = _compare(reference, OnnxPredictor(clean, providers=["CPUExecutionProvider"]), sources, truth)
        os.replace(clean, target)
    return QuantizationReport(
        path=target, source_path=source, fp32_size=source.stat().st_size, int8_size=target.stat().st_size, **measured
    )


def _compare(
    reference: OnnxPredictor, candidate: OnnxPredictor, sources: list[ImageSource], truth: np.ndarray | None
) -> dict[str, Any]:
    """Agreement, probability difference, timings and (with ``truth``) accuracies, as report fields."""
    fp32, fp32_ms = _timed_logits(reference, sources)
    int8, int8_ms = _timed_logits(candidate, sources)
    squash = sigmoid if reference.multi_label else softmax
    p32, p8 = squash(fp32.astype(np.float64)), squash(int8.astype(np.float64))
    if reference.multi_label:
        agreement = float(np.mean(np.all((p32 >= 0.5) == (p8 >= 0.5), axis=1)))
    else:
        agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
    return {
        "num_images": len(fp32),
        "top1_agreement": agreement,
        "max_prob_diff": float(np.abs(p32 - p8).max()),
        "fp32_accuracy": None if truth is None else _accuracy(p32, truth, reference.multi_label),
        "int8_accuracy": None if truth is None else _accuracy(p8, truth, reference.multi_label),
        "fp32_ms_per_image": fp32_ms,
        "int8_ms_per_image": int8_ms,
    }
