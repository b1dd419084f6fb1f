"""Exporting: ONNX and TorchScript files and timm model folders checked against PyTorch; int8 quantization."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.exporting.exporter import ExportParityError, ExportResult, export
    from autotimm.exporting.hub import PretrainedExport, export_pretrained
    from autotimm.exporting.mlflow_model import ClassifierPyfunc, log_mlflow_model
    from autotimm.exporting.quantization import QuantizationReport, quantize_onnx

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "ClassifierPyfunc",
    "ExportParityError",
    "ExportResult",
    "PretrainedExport",
    "QuantizationReport",
    "export",
    "export_pretrained",
    "log_mlflow_model",
    "quantize_onnx",
]
