"""Exporting: ONNX and TorchScript files checked against PyTorch, and int8 quantization of ONNX models."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.exporting.exporter import ExportParityError, ExportResult, export
    from autotimm.exporting.quantization import QuantizationReport, quantize_onnx

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "ExportParityError",
    "ExportResult",
    "QuantizationReport",
    "export",
    "quantize_onnx",
]
