"""``autotimm export``: write a checkpoint as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autotimm.cli.options import UsageError, number, positional

__all__ = ["CONFIG", "ExportConfig", "run"]

NAME = "export"
HELP = "Export a checkpoint to ONNX or TorchScript, with a parity check."
DESCRIPTION = """\
Export a trained classifier to one ONNX (or TorchScript) file that carries its
class names, preprocessing and calibration temperature. The written file is run
on random inputs and must match the PyTorch model's logits within --atol;
otherwise nothing is written and the command fails. ONNX export needs
`pip install "autotimm[onnx]"`."""
EXAMPLES = """\
examples:
  autotimm export runs/pets/checkpoints/last.ckpt --output pets.onnx
  autotimm export best.ckpt --format onnx --output deploy/pets.onnx --quantize
  autotimm export best.ckpt --format torchscript --output pets.pt"""

_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


@dataclass
class ExportConfig:
    """Options of ``autotimm export``.

    Args:
        ckpt: The .ckpt checkpoint to export.
        format: onnx or torchscript.
        output: The file to write; default: CKPT with the suffix .onnx (or .pt for TorchScript).
        quantize: ONNX only: also write an int8-quantized copy <output stem>.int8.onnx.
        opset: ONNX opset (>= 17).
        atol: The largest logit difference from PyTorch the parity check accepts (> 0).
    """

    ckpt: str = field(metadata=positional())
    format: Literal["onnx", "torchscript"] = "onnx"
    output: str | None = None
    quantize: bool = False
    opset: int = field(default=18, metadata=number(17))
    atol: float = field(default=1e-4, metadata=number(0, low_open=True))


#: The options dataclass of this subcommand.
CONFIG = ExportConfig


def run(config: ExportConfig) -> int:
    """Export as ``config`` says and print the file, its metadata and the parity check.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        ExportParityError: The exported file disagrees with the model by more than ``atol``.
    """
    from autotimm.cli.common import console, require_file

    ckpt = require_file(config.ckpt, "CKPT", "a .ckpt checkpoint")
    if ckpt.suffix.lower() != ".ckpt":
        raise UsageError(f"CKPT must be a .ckpt checkpoint to export, got {config.ckpt!r}")
    if config.quantize and config.format != "onnx":
        raise UsageError(f"--quantize needs --format onnx, got --format {config.format}")
    output = config.output or str(ckpt.with_suffix(_SUFFIXES[config.format]))

    from autotimm.classifier.module import ImageClassifier
    from autotimm.exporting.exporter import export

    model = ImageClassifier.load(ckpt)
    result = export(model, output, format=config.format, opset=config.opset, atol=config.atol, quantize=config.quantize)
    out = console()
    out.print(str(result), highlight=False)
    out.print(
        f"Parity check passed: max |logit difference| {result.max_abs_diff:.2e} <= atol {result.atol:g}",
        highlight=False,
    )
    return 0
