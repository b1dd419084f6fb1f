"""Predict with an exported ONNX model: needs only numpy, Pillow and onnxruntime (no torch, timm or Lightning).

[`OnnxPredictor`][autotimm.onnx_predictor.OnnxPredictor] reads the class
names, preprocessing and temperature that [`export`][autotimm.exporting.export]
stores in the file, and offers the same ``predict`` and ``predict_logits`` as
[`ImageClassifier`][autotimm.ImageClassifier]. This module also reads and writes that
metadata ([`read_metadata`][autotimm.onnx_predictor.read_metadata]) for ONNX
and TorchScript files, without torch.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotimm.inputs import collect_inputs
from autotimm.prediction import Prediction, check_predict_arguments, compute_logits, decode
from autotimm.preprocess import Preprocessor

__all__ = [
    "INPUT_NAME",
    "METADATA_KEY",
    "ONNX_INSTALL_HINT",
    "OUTPUT_NAME",
    "TORCHSCRIPT_METADATA_FILE",
    "OnnxPredictor",
    "import_onnxruntime",
    "metadata_from_props",
    "metadata_props",
    "read_metadata",
    "set_onnx_metadata",
]

#: Name of the exported graph's input: a float32 ``(batch, C, H, W)`` preprocessed batch.
INPUT_NAME = "images"
#: Name of the exported graph's output: ``(batch, num_classes)`` logits already divided by the temperature.
OUTPUT_NAME = "logits"
#: The ONNX ``metadata_props`` key holding all of autotimm's metadata as one JSON object.
METADATA_KEY = "autotimm"
#: The TorchScript extra file holding the same JSON object.
TORCHSCRIPT_METADATA_FILE = "autotimm.json"
#: What to install for ONNX export and the ONNX predictor.
ONNX_INSTALL_HINT = 'pip install "autotimm[onnx]"'

_REQUIRED_KEYS = ("class_names", "multi_label", "temperature", "data_config")


def import_onnxruntime() -> Any:
    """Import onnxruntime, or raise an ImportError that says what to install.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"onnxruntime is needed to run ONNX models: {ONNX_INSTALL_HINT} (or just `pip install onnxruntime`)"
        ) from err
    return onnxruntime


def metadata_from_props(props: Mapping[str, str], where: str = "the model") -> dict[str, Any]:
    """Parse autotimm's metadata from an ONNX model's ``metadata_props`` (key -> string).

    Args:
        props: The model's custom metadata.
        where: How to name the model in error messages (e.g. its path).

    Returns:
        The metadata: ``class_names``, ``multi_label``, ``temperature``, ``data_config`` and more.

    Raises:
        ValueError: The model has no autotimm metadata, or it is incomplete.
    """
    if METADATA_KEY not in props:
        raise ValueError(
            f"{where} has no autotimm metadata (no {METADATA_KEY!r} entry in its metadata_props); "
            "export the model with autotimm.export(model, path) to get class names, preprocessing and temperature"
        )
    return _check_metadata(props[METADATA_KEY], where)


def _check_metadata(text: str, where: str) -> dict[str, Any]:
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} has malformed autotimm metadata (not JSON: {err})") from err
    missing = [key for key in _REQUIRED_KEYS if not isinstance(metadata, dict) or key not in metadata]
    if missing:
        raise ValueError(f"{where} has incomplete autotimm metadata: missing {missing}")
    return metadata


def _torchscript_metadata(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{TORCHSCRIPT_METADATA_FILE}")]
        if not names:
            raise ValueError(
                f"{str(path)!r} is a TorchScript (zip) file without autotimm metadata (no extra file "
                f"{TORCHSCRIPT_METADATA_FILE!r}); export it with autotimm.export(model, path, format='torchscript')"
            )
        return _check_metadata(archive.read(names[0]).decode("utf-8"), repr(str(path)))


def _onnx_props(path: Path) -> dict[str, str]:
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # protobuf raises its own DecodeError
            raise ValueError(f"{str(path)!r} is neither an ONNX model nor a TorchScript file ({err})") from err
        return {prop.key: prop.value for prop in model.metadata_props}
    ort = import_onnxruntime()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph errors
        raise ValueError(f"{str(path)!r} is neither an ONNX model nor a TorchScript file ({err})") from err
    return dict(session.get_modelmeta().custom_metadata_map)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the metadata [`export`][autotimm.exporting.export] stored in an ONNX or TorchScript file.

    Needs no torch: TorchScript files are zip archives, and ONNX files are read
    with ``onnx`` (or onnxruntime when ``onnx`` is not installed).

    Args:
        path: An exported ``.onnx`` or TorchScript file.

    Returns:
        ``class_names``, ``num_classes``, ``multi_label``, ``temperature``,
        ``data_config`` (input size, mean, std, interpolation, crop), ``backbone``,
        ``input_name``, ``output_name``, ``autotimm_version`` and, for quantized
        files, ``quantization``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Not an ONNX or TorchScript file, or one without autotimm metadata.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Exported model not found: {os.fspath(path)!r}")
    if zipfile.is_zipfile(file):
        return _torchscript_metadata(file)
    return metadata_from_props(_onnx_props(file), repr(str(file)))


def metadata_props(metadata: dict[str, Any]) -> dict[str, str]:
    """The ONNX ``metadata_props`` for ``metadata``: one JSON entry plus readable single keys.

    Args:
        metadata: As built at export.

    Returns:
        ``{"autotimm": <all of it as JSON>, "class_names": <JSON list>, "input_size", "mean", "std",
        "interpolation", "crop_pct", "crop_mode", "multi_label", "temperature", "autotimm_version"}``.
    """
    config = metadata["data_config"]
    props = {METADATA_KEY: json.dumps(metadata), "class_names": json.dumps(metadata["class_names"])}
    for key in ("input_size", "mean", "std", "crop_pct"):
        props[key] = json.dumps(config.get(key))
    props["interpolation"] = str(config.get("interpolation"))
    props["crop_mode"] = str(config.get("crop_mode"))
    props["multi_label"] = json.dumps(metadata["multi_label"])
    props["temperature"] = repr(metadata["temperature"])
    props["autotimm_version"] = str(metadata["autotimm_version"])
    if "quantization" in metadata:
        props["quantization"] = str(metadata["quantization"])
    return props


def set_onnx_metadata(model_proto: Any, metadata: dict[str, Any]) -> None:
    """Replace autotimm's entries in an ``onnx.ModelProto``'s ``metadata_props`` (others are kept)."""
    props = metadata_props(metadata)
    kept = [(p.key, p.value) for p in model_proto.metadata_props if p.key not in props]
    del model_proto.metadata_props[:]
    for key, value in [*kept, *props.items()]:
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


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
        path: An ``.onnx`` file written by [`export`][autotimm.exporting.export].
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
            if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1:
                raise ValueError(f"`intra_op_threads` must be a positive integer or None, got {intra_op_threads!r}")
            options.intra_op_num_threads = intra_op_threads
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
        """Everything `export` stored with the model (see [`read_metadata`][autotimm.onnx_predictor.read_metadata])."""
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
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self._output_name], feed)[0]

    def _calibrated_logits(
        self, inputs: Any, batch_size: int, tta: bool | str | None, skip_bad_images: bool, progress: bool | None
    ) -> tuple[np.ndarray, list[str | None]]:
        """The graph's output (logits / temperature) and the kept sources."""
        tta = self.default_tta if tta is None else tta
        sources = collect_inputs(inputs)
        logits, kept = compute_logits(
            self._forward, sources, self._preprocessor, batch_size, tta, skip_bad_images, progress
        )
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
            inputs: As for [`predict`][autotimm.onnx_predictor.OnnxPredictor.predict].
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
            One [`Prediction`][autotimm.prediction.Prediction] per image, in input order.

        Raises:
            FileNotFoundError: A missing file or folder, or a glob matching nothing.
            ValueError: A bad argument, an empty folder or an unreadable image.
            TypeError: An input of an unsupported type.
        """
        tta = self.default_tta if tta is None else tta
        top_k = check_predict_arguments(self.num_classes, top_k, batch_size, threshold, tta, self.multi_label)
        logits, sources = self._calibrated_logits(inputs, batch_size, tta, skip_bad_images, progress)
        return decode(logits, self.class_names, self.multi_label, top_k, threshold, sources)
