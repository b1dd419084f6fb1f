"""Export a trained classifier to ONNX or TorchScript, with its metadata and a parity check against PyTorch.

The exported graph maps a preprocessed float32 batch ``images`` ``(batch, C, H, W)``
to calibrated ``logits`` ``(batch, num_classes)`` (the model's logits divided by
its temperature), with a dynamic batch size. Class names, preprocessing,
multi-label flag and temperature travel inside the file; see
[`read_metadata`][autotimm.prediction.onnx_predictor.read_metadata] and
[`OnnxPredictor`][autotimm.prediction.onnx_predictor.OnnxPredictor].
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autotimm.checks import require_number
from autotimm.classifier.module import ImageClassifier
from autotimm.prediction.metadata import (
    INPUT_NAME,
    ONNX_INSTALL_HINT,
    OUTPUT_NAME,
    TORCHSCRIPT_METADATA_FILE,
    import_onnxruntime,
    read_metadata,
    set_onnx_metadata,
)

if TYPE_CHECKING:
    from autotimm.exporting.quantization import QuantizationReport

__all__ = [
    "FORMATS",
    "ONNX_EXPORTERS",
    "ExportParityError",
    "ExportResult",
    "export",
    "read_metadata",
    "require_onnx",
]

#: Export formats accepted by ``format=``.
FORMATS = ("onnx", "torchscript")
#: ONNX exporters accepted by ``onnx_exporter=``.
ONNX_EXPORTERS = ("auto", "legacy", "dynamo")
#: The lowest ONNX opset accepted.
MIN_OPSET = 17
#: The lowest opset torch's dynamo exporter writes (it converts lower requests after the fact, unreliably).
DYNAMO_MIN_OPSET = 18
#: Batch sizes the parity check runs the exported file at (the second proves the dynamic batch dimension).
PARITY_BATCH_SIZES = (1, 3)


def _batch_sizes(samples: int) -> str:
    return " and ".join(str(size) for size in sorted({min(size, samples) for size in PARITY_BATCH_SIZES}))


_Run = Callable[[np.ndarray], np.ndarray]  # runs an exported file on a batch

# Known, harmless warnings of the exporters; anything else still reaches the user.
_QUIET_WARNINGS = (
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
    (r"The feature will be removed", DeprecationWarning),
    (r"`torch\.jit\.\w+` is deprecated", FutureWarning),
    # torchmetrics' deprecated `update_called`, looked up when torch.jit.trace walks the model's metric modules
    (r"This property will be removed in 2\.0\.0", DeprecationWarning),
)


class ExportParityError(RuntimeError):
    """The exported file's logits differ from the PyTorch model's by more than ``atol``.

    Attributes:
        max_abs_diff: The largest absolute difference found.
        atol: The tolerance.
    """

    def __init__(self, message: str, max_abs_diff: float, atol: float) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff
        self.atol = atol


@dataclass
class ExportResult:
    """What [`export`][autotimm.exporting.exporter.export] wrote and how closely it matches PyTorch.

    Attributes:
        path: The exported file.
        format: ``"onnx"`` or ``"torchscript"``.
        max_abs_diff: Largest absolute difference between the file's and PyTorch's calibrated logits.
        atol: The tolerance it was checked against.
        opset: The ONNX opset (``None`` for TorchScript).
        file_size: Size of the file in bytes.
        metadata: The metadata stored in the file.
        exporter: The ONNX exporter used (``"legacy"`` or ``"dynamo"``; ``None`` for TorchScript).
        check_samples: Random inputs the parity check ran.
        quantization: The int8 report when ``quantize=True``.
    """

    path: Path
    format: str
    max_abs_diff: float
    atol: float
    opset: int | None
    file_size: int
    metadata: dict[str, Any]
    exporter: str | None = None
    check_samples: int = 8
    quantization: QuantizationReport | None = None

    def __str__(self) -> str:
        meta = self.metadata
        names = meta["class_names"]
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        how = f"opset {self.opset}, {self.exporter} exporter" if self.format == "onnx" else "torch.jit.trace"
        lines = [
            f"{self.format} export: {self.path} ({self.file_size / 1e6:.1f} MB, {how})",
            f"  model: {meta.get('backbone')}, {len(names)} classes ({shown}), input "
            f"{'x'.join(map(str, meta['data_config']['input_size']))}, temperature {meta['temperature']:.4g}"
            f"{', multi-label' if meta['multi_label'] else ''}",
            f"  parity: max |logit difference| {self.max_abs_diff:.2e} <= atol {self.atol:g} "
            f"({self.check_samples} random inputs at batch sizes {_batch_sizes(self.check_samples)})",
        ]
        if self.quantization is not None:
            lines.append("  " + str(self.quantization).replace("\n", "\n  "))
        return "\n".join(lines)


class _CalibratedLogits(nn.Module):
    """``model(images) / model.temperature``: the graph that gets exported."""

    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images) / self.model.temperature


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' known warnings (deprecations, tracer notes on shapes fixed by design)."""
    with warnings.catch_warnings():
        for message, category in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        # Tracing turns shape arithmetic into constants; only C, H, W are fixed, and parity checks two batch sizes.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def _build_metadata(model: ImageClassifier, data_config: dict[str, Any]) -> dict[str, Any]:
    from autotimm._version import __version__

    backbone = model.hparams.get("backbone")
    return {
        "autotimm_version": __version__,
        "backbone": backbone.get("model_name") if isinstance(backbone, dict) else str(backbone),
        "class_names": list(model.class_names),
        "num_classes": len(model.class_names),
        "multi_label": bool(model.hparams.multi_label),
        "temperature": float(model.temperature),
        "tta": model.default_tta,
        "data_config": dict(data_config),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output": "logits divided by temperature (softmax, or sigmoid when multi_label, gives probabilities)",
    }


def require_onnx() -> None:
    """Raise unless ONNX export can run here (the onnx and onnxruntime packages, for the parity check).

    Raises:
        ImportError: A missing package, with the install command.
    """
    try:
        import onnx  # noqa: F401
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx package: {ONNX_INSTALL_HINT}") from err
    import_onnxruntime()  # needed for the parity check; fail before the slow export


def _onnx_proto(wrapper: nn.Module, example: torch.Tensor, opset: int, exporter: str) -> Any:
    """Export ``wrapper`` to an in-memory ``onnx.ModelProto`` with a dynamic batch dimension."""
    import onnx

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if exporter == "legacy":
        buffer = io.BytesIO()
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
        torch.onnx.export(wrapper, (example,), buffer, dynamic_axes=axes, dynamo=False, **names)
        return onnx.load_from_string(buffer.getvalue())
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        wrapper, (example,), None, dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False, **names
    )
    return program.model_proto


def _onnx_runner(path: Path) -> _Run:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]


def _torchscript_runner(path: Path) -> _Run:
    with _quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(batch)).numpy()

    return run


def _check_arguments(model: Any, format: str, opset: Any, atol: Any, check_samples: Any, exporter: str) -> None:
    if not isinstance(model, ImageClassifier):
        raise TypeError(f"`model` must be an autotimm ImageClassifier, got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {list(FORMATS)}, got {format!r}")
    require_number("opset", opset, MIN_OPSET, integer=True)
    require_number("atol", atol, 0)
    require_number("check_samples", check_samples, 2, integer=True)
    if exporter not in ONNX_EXPORTERS:
        raise ValueError(f"`onnx_exporter` must be one of {list(ONNX_EXPORTERS)}, got {exporter!r}")
    if format == "onnx" and exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise ValueError(
            f"`opset` must be >= {DYNAMO_MIN_OPSET} with onnx_exporter='dynamo', got {opset}; "
            "use onnx_exporter='legacy' (or 'auto') for opset 17"
        )


@dataclass
class _Parity:
    """The parity check: where the file goes, the PyTorch reference logits and the random inputs."""

    path: Path
    reference: np.ndarray
    samples: np.ndarray
    atol: float

    def max_abs_diff(self, run: _Run) -> float:
        """Largest absolute difference to the reference, each sample run at every parity batch size."""
        worst = 0.0
        for size in PARITY_BATCH_SIZES:
            for start in range(0, len(self.samples), size):
                expected = self.reference[start : start + size]
                output = np.asarray(run(self.samples[start : start + size]), dtype=np.float64)
                if output.shape != expected.shape:
                    return float("inf")
                worst = max(worst, float(np.max(np.abs(output - expected))))
        return worst if np.isfinite(worst) else float("inf")

    def write(
        self, write: Callable[[Path], None], runner: Callable[[Path], Callable[[np.ndarray], np.ndarray]]
    ) -> float:
        """Write to a temporary file next to ``path``, check it, and move it into place only when it passes."""
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
        try:
            write(tmp)
            diff = self.max_abs_diff(runner(tmp))
            if not diff <= self.atol:
                raise ExportParityError(
                    f"The exported file's logits differ from the PyTorch model's by up to {diff:.3g} "
                    f"(atol={self.atol:g}; largest |logit| {float(np.abs(self.reference).max()):.3g}; inf means "
                    f"a wrong output shape or non-finite values) on {len(self.samples)} random inputs at batch "
                    f"sizes {_batch_sizes(len(self.samples))}. Nothing was written to {str(self.path)!r}. If the "
                    "difference is small next to the logits, pass a larger atol.",
                    diff,
                    self.atol,
                )
            os.replace(tmp, self.path)
            return diff
        finally:
            tmp.unlink(missing_ok=True)


def export(
    model: ImageClassifier,
    path: str | os.PathLike[str],
    format: str = "onnx",
    opset: int = 18,
    atol: float = 1e-4,
    check_samples: int = 8,
    quantize: bool = False,
    onnx_exporter: str = "auto",
) -> ExportResult:
    """Export a classifier for deployment and check that the file computes what the model does.

    The graph takes a preprocessed float32 batch named ``images`` of shape
    ``(batch, C, H, W)`` (any batch size; C, H, W from the model's data config)
    and returns ``logits`` ``(batch, num_classes)`` divided by the calibration
    temperature. Class names and preprocessing are stored in the file. The
    export runs on CPU in eval mode; the model is left as it was.

    Every export is checked: the written file runs on ``check_samples`` random
    inputs at batch sizes 1 and 3, and its logits must be within ``atol`` of
    PyTorch's. The file is written under a temporary name and moved to
    ``path`` only then, so a failed export leaves nothing at ``path``.

    Args:
        model: The classifier.
        path: The file to write (``.onnx``, or e.g. ``.pt`` for TorchScript); parent folders are created.
        format: ``"onnx"`` or ``"torchscript"`` (``torch.jit.trace``; metadata in the extra file
            ``autotimm.json``).
        opset: ONNX opset, at least 17.
        atol: The largest absolute logit difference accepted.
        check_samples: Random inputs for the parity check (at least 2).
        quantize: ONNX only: also write a dynamically int8-quantized copy
            ``<stem>.int8.onnx`` (see [`quantize_onnx`][autotimm.exporting.quantization.quantize_onnx]).
        onnx_exporter: ``"legacy"`` (torch's TorchScript-based exporter), ``"dynamo"``
            (``torch.export``-based), or ``"auto"``: legacy, then dynamo if that fails.

    Returns:
        An [`ExportResult`][autotimm.exporting.exporter.ExportResult]; ``print`` it for a summary.

    Raises:
        TypeError: ``model`` is not an ``ImageClassifier``.
        ValueError: A bad ``format``, ``opset``, ``atol``, ``check_samples`` or ``onnx_exporter``.
        ImportError: onnx or onnxruntime is missing (``pip install "autotimm[onnx]"``).
        ExportParityError: The exported file disagrees with the model by more than ``atol``.

    Example:
        >>> from autotimm import BackboneConfig, ImageClassifier
        >>> from autotimm.exporting.exporter import export
        >>> model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3)
        >>> print(export(model, "model.onnx"))  # doctest: +SKIP
    """
    _check_arguments(model, format, opset, atol, check_samples, onnx_exporter)
    if quantize and format != "onnx":
        raise ValueError(f"`quantize=True` needs format='onnx' (int8 quantization uses onnxruntime), got {format!r}")
    if format == "onnx":
        require_onnx()
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"`path` must be a file path, got the folder {os.fspath(path)!r}")
    target.parent.mkdir(parents=True, exist_ok=True)

    data_config = model.preprocessor.data_config
    metadata = _build_metadata(model, data_config)
    first = next(model.parameters())
    device, dtype, was_training = first.device, first.dtype, model.training
    wrapper = _CalibratedLogits(model.to("cpu", torch.float32)).eval()
    # Lightning's `trainer` property raises on a detached module when tracing looks it up; this flag (what
    # LightningModule.to_torchscript sets) makes it return None instead.
    model._jit_is_scripting = True
    try:
        channels, height, width = (int(v) for v in data_config["input_size"])
        generator = torch.Generator().manual_seed(0)
        samples = torch.randn(check_samples, channels, height, width, generator=generator)
        with torch.inference_mode():
            reference = wrapper(samples).double().numpy()
        check = _Parity(target, reference, samples.numpy(), float(atol))
        if format == "torchscript":
            diff, used, written_opset = _export_torchscript(wrapper, samples[:2], metadata, check), None, None
        else:
            diff, used, written_opset = _export_onnx(wrapper, samples[:2], metadata, check, opset, onnx_exporter)
    finally:
        del model._jit_is_scripting  # back to Lightning's class attribute
        model.to(device, dtype).train(was_training)
    result = ExportResult(
        path=target,
        format=format,
        max_abs_diff=diff,
        atol=float(atol),
        opset=written_opset,
        file_size=target.stat().st_size,
        metadata=metadata,
        exporter=used,
        check_samples=check_samples,
    )
    if quantize:
        from autotimm.exporting.quantization import quantize_onnx

        result.quantization = quantize_onnx(target)
    return result


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, metadata: dict[str, Any], check: _Parity) -> float:
    def write(tmp: Path) -> None:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(wrapper, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})

    return check.write(write, _torchscript_runner)


def _export_onnx(
    wrapper: nn.Module, example: torch.Tensor, metadata: dict[str, Any], check: _Parity, opset: int, exporter: str
) -> tuple[float, str, int]:
    # Exporter choice: both torch exporters handle resnet18, mobilenetv2_100, vit_tiny_patch16_224 and test_vit
    # with a dynamic batch and match PyTorch to ~1e-5, but the legacy (TorchScript-based) one takes 0.2-2 s where
    # the dynamo one (torch.export + onnxscript) takes 3-9 s on CPU. "auto" therefore tries legacy first, and
    # falls back to dynamo when legacy fails, or disagrees with PyTorch (e.g. a batch size baked in by tracing),
    # or is removed from a future torch (deprecated, and no longer torch's default since 2.9).
    import onnx

    candidates = ("legacy", "dynamo") if exporter == "auto" else (exporter,)
    if opset < DYNAMO_MIN_OPSET:
        candidates = ("legacy",)
    written: dict[str, int] = {}
    failed: Exception | None = None
    for i, name in enumerate(candidates):

        def write(tmp: Path, name: str = name) -> None:
            with _quiet(), torch.no_grad():
                proto = _onnx_proto(wrapper, example, opset, name)
            set_onnx_metadata(proto, metadata)
            written["opset"] = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
            onnx.save(proto, str(tmp))  # one self-contained file (models < 2 GB)

        try:
            return check.write(write, _onnx_runner), name, written["opset"]
        except Exception as err:
            if i == len(candidates) - 1:
                if failed is None:
                    raise
                raise err from failed  # "auto": the legacy exporter's error as the cause
            failed = err
    raise AssertionError("unreachable")
