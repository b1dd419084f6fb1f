"""``autotimm export``: write a checkpoint as ONNX, TorchScript or a Hugging Face / timm model folder, checked."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotimm.cli.options import UsageError, number, positional

__all__ = ["CONFIG", "ExportConfig", "card_details", "run", "run_folder_of"]

NAME = "export"
HELP = "Export a checkpoint to ONNX, TorchScript or a Hugging Face / timm model folder, with a parity check."
DESCRIPTION = """\
Export a trained classifier to one ONNX (or TorchScript) file that carries its
class names, preprocessing and calibration temperature. The written file is run
on random inputs and must match the PyTorch model's logits within --atol;
otherwise nothing is written and the command fails. ONNX export needs
`pip install "autotimm[onnx]"`.

--format hf writes a model folder for sharing (--output, default CKPT's name
with -hf): model.safetensors (weights only), config.json in timm's form and a
README.md model card. Plain timm loads it, timm.create_model("local-dir:DIR",
pretrained=True), and its logits must match; ImageClassifier.from_pretrained
loads it back; `autotimm push` uploads it to the Hugging Face Hub."""
EXAMPLES = """\
examples:
  autotimm export runs/pets/checkpoints/last.ckpt --output pets.onnx
  autotimm export best.ckpt --format onnx --output deploy/pets.onnx --quantize
  autotimm export best.ckpt --format torchscript --output pets.pt
  autotimm export runs/pets/checkpoints/best.ckpt --format hf --output pets-resnet18 --license mit"""

_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "hf": "-hf"}


@dataclass
class ExportConfig:
    """Options of ``autotimm export``.

    Args:
        ckpt: The .ckpt checkpoint to export.
        format: onnx, torchscript or hf (a model folder for the Hugging Face Hub and timm).
        output: The file (or, for hf, folder) to write; default: CKPT with the suffix .onnx (.pt for TorchScript,
            -hf for a model folder).
        quantize: ONNX only: also write an int8-quantized copy <output stem>.int8.onnx.
        opset: ONNX opset (>= 17).
        atol: The largest logit difference from PyTorch the parity check accepts (> 0).
        license: hf only: the license id of the model card and config.json.
        metrics: hf only: an evaluation's metrics.json (or its folder) for the model card; default: the newest
            eval-*/metrics.json of CKPT's run folder, if any.
    """

    ckpt: str = field(metadata=positional())
    format: Literal["onnx", "torchscript", "hf"] = "onnx"
    output: str | None = None
    quantize: bool = False
    opset: int = field(default=18, metadata=number(17))
    atol: float = field(default=1e-4, metadata=number(0, low_open=True))
    license: str = "apache-2.0"
    metrics: str | None = None


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
    output = config.output or str(ckpt.with_suffix("")) + _SUFFIXES[config.format]

    from autotimm.classifier.module import ImageClassifier
    from autotimm.exporting.exporter import export

    model = ImageClassifier.load(ckpt)
    if config.format == "hf":
        return _export_folder(model, ckpt, output, config)
    result = export(model, output, format=config.format, opset=config.opset, atol=config.atol, quantize=config.quantize)
    out = console()
    out.print(str(result), highlight=False)
    out.print(
        f"Parity check passed: max |logit difference| {result.max_abs_diff:.2e} <= atol {result.atol:g}",
        highlight=False,
    )
    return 0


def run_folder_of(ckpt: Path) -> Path:
    """The run folder of a checkpoint: ``runs/x`` for ``runs/x/checkpoints/best.ckpt``, else the file's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def card_details(ckpt: Path, metrics: str | None) -> dict[str, Any]:
    """The model card's metrics and training-data line, from ``--metrics`` or the checkpoint's run folder.

    Args:
        ckpt: The checkpoint.
        metrics: A ``metrics.json`` (or its folder), or ``None`` for the newest ``eval-*/metrics.json`` of the run.

    Returns:
        ``{"metrics": ..., "training_data": ...}`` for ``save_pretrained``.
    """
    import yaml

    run_dir = run_folder_of(ckpt)
    if metrics is None:
        found = sorted(run_dir.glob("eval-*/metrics.json"), key=lambda p: p.stat().st_mtime)
        metrics = str(found[-1]) if found else None
    training_data = None
    config_file = run_dir / "config.yaml"
    if config_file.is_file():
        saved = yaml.safe_load(config_file.read_text()) or {}
        if isinstance(saved, dict) and saved.get("data"):
            training_data = f"Trained with `autotimm train` on `{Path(str(saved['data'])).name}`."
    return {"metrics": metrics, "training_data": training_data}


def _export_folder(model: Any, ckpt: Path, output: str, config: ExportConfig) -> int:
    from autotimm.cli.common import console
    from autotimm.exporting.hub import export_pretrained

    result = export_pretrained(
        model, output, atol=config.atol, license=config.license, **card_details(ckpt, config.metrics)
    )
    out = console()
    out.print(str(result), highlight=False)
    out.print(
        f"Parity check passed: timm.create_model('local-dir:{output}', pretrained=True) max |logit difference| "
        f"{result.max_abs_diff:.2e} <= atol {result.atol:g}",
        highlight=False,
    )
    out.print(f"Upload it with: autotimm push {config.ckpt} USER/NAME", highlight=False)
    return 0
