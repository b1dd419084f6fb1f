"""Predict with an exported ONNX model: needs only numpy, Pillow and onnxruntime (no torch, timm or Lightning).

[`OnnxPredictor`][autotimm.prediction.onnx_predictor.OnnxPredictor] reads the class
names, preprocessing and temperature that [`export`][autotimm.exporting.exporter.export]
stores in the file, and offers the same ``predict`` and ``predict_logits`` as
[`ImageClassifier`][autotimm.ImageClassifier]. The metadata itself is read and written by
[`autotimm.prediction.metadata`][autotimm.prediction.metadata].
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotimm.checks import require_number
from autotimm.prediction.inputs import collect_inputs
from autotimm.prediction.metadata import OUTPUT_NAME, import_onnxruntime, metadata_from_props
from autotimm.prediction.predict import Prediction, check_predict_arguments, compute_logits, decode
from autotimm.prediction.preprocess import Preprocessor

__all__ = ["OnnxPredictor"]


def _default_providers(ort: Any) -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


class OnnxPredictor:
    """Run an exported classifier with onnxruntime: the same ``predict`` as ``ImageClassifier``, without torch.

    Deployment needs only ``pip install onnxruntime pillow numpy autotimm`` (pip
    also installs autotimm's torch dependencies unless told not to: use
    ``pip install --no-deps autotimm`` next to ``onnxruntime pillow numpy``
    for a slim image); nothing here imports torch, timm or Lightning.

    Args:
        path: An ``.onnx`` file written by [`export`][autotimm.exporting.exporter.export].
        providers: onnxruntime execution providers, in order of preference;
            ``None``: CUDA when available, then CPU.
        intra_op_threads: Threads per operator (``None``: onnxruntime's default, all cores).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file has no autotimm metadata, an unknown provider, or bad ``intra_op_threads``.
        ImportError: onnxruntime is not installed.

    Example:
        >>> predictor = OnnxPredictor("model.onnx")  # doctest: +SKIP
        >>> predictor.predict("photos/", top_k=3)[0].label  # doctest: +SKIP
        'cat'
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        ort = import_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {os.fspath(path)!r}")
        if zipfile.is_zipfile(self.path):
            raise ValueError(
                f"{str(self.path)!r} is a TorchScript file; OnnxPredictor needs an .onnx file "
                "(export with format='onnx', or load TorchScript with torch.jit.load)"
            )
        available = ort.get_available_providers()
        providers = _default_providers(ort) if providers is None else list(providers)
        unknown = [p for p in providers if p not in available]
        if unknown or not providers:
            raise ValueError(f"`providers` must be a non-empty list from {available}, got {providers!r}")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no graph-optimisation chatter
        # Idle worker threads sleep instead of spinning: spinning kept both cores busy after each call,
        # which tripled the latency of other work in the process (measured: eager torch 33 -> 94 ms)
        # and made onnxruntime itself slower on 2 cores (31 -> 22 ms for resnet18).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads is not None:
            require_number("intra_op_threads", intra_op_threads, 1, integer=True, allow_none=True)
            options.intra_op_num_threads = int(intra_op_threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own InvalidProtobuf/Fail errors
            raise ValueError(f"onnxruntime cannot load {str(self.path)!r}: {err}") from err
        where = repr(str(self.path))
        self._metadata = metadata_from_props(self.session.get_modelmeta().custom_metadata_map, where)
        self._preprocessor = Preprocessor(self._metadata["data_config"])
        self._input_name = self.session.get_inputs()[0].name
        self._output_name = self._metadata.get("output_name", OUTPUT_NAME)
        shape = self.session.get_inputs()[0].shape
        fixed = [s for s in shape[1:] if isinstance(s, int)]
        if len(fixed) == len(shape) - 1 and fixed != list(self._preprocessor.input_size):
            raise ValueError(
                f"{where} takes inputs of shape {shape}, but its metadata says input_size "
                f"{list(self._preprocessor.input_size)}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def metadata(self) -> dict[str, Any]:
        """Everything `export` stored with the model (see [`read_metadata`][autotimm.read_metadata])."""
        return dict(self._metadata)

    @property
    def class_names(self) -> list[str]:
        """Class names, in label order."""
        return list(self._metadata["class_names"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self._metadata["class_names"])

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing the model expects (input size, mean, std, interpolation, crop)."""
        return dict(self._metadata["data_config"])

    @property
    def multi_label(self) -> bool:
        """Whether the model is multi-label (per-class sigmoid probabilities)."""
        return bool(self._metadata["multi_label"])

    @property
    def temperature(self) -> float:
        """The calibration temperature (already applied inside the exported graph)."""
        return float(self._metadata["temperature"])

    @property
    def default_tta(self) -> str:
        """The test-time augmentation used when ``predict`` is given none: the exported model's (``"none"``)."""
        return str(self._metadata.get("tta") or "none")

    @property
    def preprocessor(self) -> Preprocessor:
        """The evaluation preprocessing (numpy and Pillow)."""
        return self._preprocessor

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses."""
        return list(self.session.get_providers())

    def __repr__(self) -> str:
        return (
            f"OnnxPredictor({str(self.path)!r}, classes={self.num_classes}, "
            f"input_size={list(self._preprocessor.input_size)}, providers={self.providers})"
        )

    # ------------------------------------------------------------------ prediction
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the graph on a preprocessed batch: its output, the calibrated logits.

        Args:
            batch: ``(N, C, H, W)`` float32 images, preprocessed as `preprocessor` does.

        Returns:
            ``(N, num_classes)`` logits already divided by the temperature.
        """
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self._output_name], feed)[0]

    def _calibrated_logits(
        self, inputs: Any, batch_size: int, tta: bool | str | None, skip_bad_images: bool, progress: bool | None
    ) -> tuple[np.ndarray, list[str | None]]:
        """The graph's output (logits / temperature) and the kept sources."""
        tta = self.default_tta if tta is None else tta
        sources = collect_inputs(inputs)
        logits, kept = compute_logits(self.run, sources, self._preprocessor, batch_size, tta, skip_bad_images, progress)
        return logits, [sources[i].source for i in kept]

    def predict_logits(
        self,
        inputs: Any,
        batch_size: int = 32,
        tta: bool | str | None = None,
        skip_bad_images: bool = False,
        progress: bool | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Raw logits before the temperature, as [`ImageClassifier`][autotimm.ImageClassifier]'s ``predict_logits``.

        The exported graph divides by the temperature; this multiplies it back.

        Args:
            inputs: As for [`predict`][autotimm.prediction.onnx_predictor.OnnxPredictor.predict].
            batch_size: Images per run of the model.
            tta: Test-time augmentation; logits are averaged over the views.
                ``None``: the exported model's ``default_tta``.
            skip_bad_images: Skip unreadable files with a warning instead of raising.
            progress: Show a progress bar (``None``: for more than a few batches).

        Returns:
            ``(logits, sources)``: float32 ``(N, num_classes)`` and each image's
            file path (``None`` for in-memory images), skipped images left out.
        """
        logits, sources = self._calibrated_logits(inputs, batch_size, tta, skip_bad_images, progress)
        return (logits * np.float32(self.temperature)).astype(np.float32), sources

    def predict(
        self,
        inputs: Any,
        top_k: int | None = None,
        batch_size: int = 32,
        tta: bool | str | None = None,
        threshold: float = 0.5,
        skip_bad_images: bool = False,
        progress: bool | None = None,
    ) -> list[Prediction]:
        """Predict class names and probabilities, as [`ImageClassifier`][autotimm.ImageClassifier]'s ``predict``.

        Args:
            inputs: A file path, a folder (recursive), a glob, a Pillow image, a
                numpy array (``(H, W)``, ``(H, W, C)``, or ``(N, H, W, C)``;
                uint8 or floats in ``[0, 1]``), or a list of those.
            top_k: Classes per image, most probable first (1 to ``num_classes``;
                single-label models). ``None``: 5, or every class when there are fewer.
            batch_size: Images per run of the model.
            tta: Test-time augmentation: ``True`` or ``"flip"``, ``"crops"``, ``"flip_crops"``;
                ``None``: the exported model's ``default_tta``.
            threshold: Multi-label models return every label whose probability is at least this.
            skip_bad_images: Skip unreadable files with a warning instead of raising.
            progress: Show a progress bar (``None``: for more than a few batches).

        Returns:
            One [`Prediction`][autotimm.prediction.predict.Prediction] per image, in input order.

        Raises:
            FileNotFoundError: A missing file or folder, or a glob matching nothing.
            ValueError: A bad argument, an empty folder or an unreadable image.
            TypeError: An input of an unsupported type.
        """
        tta = self.default_tta if tta is None else tta
        top_k = check_predict_arguments(self.num_classes, top_k, batch_size, threshold, tta, self.multi_label)
        logits, sources = self._calibrated_logits(inputs, batch_size, tta, skip_bad_images, progress)
        return decode(logits, self.class_names, self.multi_label, top_k, threshold, sources)
