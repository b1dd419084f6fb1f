"""``autotimm evaluate``: metrics on the terminal and a report folder, for a checkpoint, ONNX file or ensemble."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotimm.cli.options import TTA_CHOICES, UsageError, number, optional_value, positional

__all__ = ["CONFIG", "EvaluateConfig", "run"]

NAME = "evaluate"
HELP = "Evaluate a checkpoint, ONNX export or ensemble on labelled images; write a report folder."
DESCRIPTION = """\
Evaluate a trained classifier (a .ckpt checkpoint, an .onnx export or an
ensemble folder written by `autotimm auto`) on labelled images: accuracy, top-k
accuracy, macro and weighted precision, recall and F1, per-class metrics and
calibration (ECE, NLL) are printed, and the report folder gets metrics.json,
per_class.csv/.json, predictions.csv, confusion matrices, a reliability diagram
and the most confidently wrong images.

A multi-label model (trained on a CSV file with several labels per image)
gets per-class precision, recall and F1 at its threshold (--threshold), the
average precision of each class and their mean (mAP) instead.

--calibrate first fits a temperature on the validation split (temperature
scaling), reports the ECE before and after on the evaluated split, and writes
the calibrated model to model.ckpt in the report folder.

DATA is read as in `autotimm train`. Held-out splits are carved the same way:
with the --val-split, --test-split and --seed of training (the defaults match
train's), --split test evaluates exactly the images training held out."""
EXAMPLES = """\
examples:
  autotimm evaluate runs/pets/checkpoints/last.ckpt data/pets
  autotimm evaluate runs/pets/checkpoints/last.ckpt data/pets --split val --output-dir reports/pets-val
  autotimm evaluate pets.onnx data/pets-holdout --split all --tta
  autotimm evaluate model.ckpt labels.csv --val-split 0.1 --test-split 0.2 --seed 0
  autotimm evaluate runs/pets/checkpoints/last.ckpt data/pets --calibrate
  autotimm evaluate runs/tags/checkpoints/last.ckpt tags.csv --threshold 0.4"""


@dataclass
class EvaluateConfig:
    """Options of ``autotimm evaluate``.

    Args:
        ckpt: The model: a .ckpt checkpoint (from `autotimm train`), an .onnx export or an ensemble folder
            (from `autotimm auto`).
        data: Labelled images: a class folder, a CSV file, a shard folder or URL, a Hugging Face dataset folder
            or Parquet files, hf:NAME for a Hub dataset, or a built-in dataset name (as for `autotimm train`).
        split: The split to evaluate: test, val, train, or all (every image of DATA, for a separate held-out set).
        output_dir: Report folder; default: eval-<split> in the run folder (for runs/x/checkpoints/last.ckpt:
            runs/x/eval-test), or next to CKPT (inside it, for an ensemble folder).
        val_split: Validation fraction carved from DATA when it has no validation split, as in training, in [0, 1).
        test_split: Test fraction carved from DATA when it has no test split, as in training, in [0, 1).
        seed: Seed of the carved split, as in training (>= 0).
        tta: Test-time augmentation: none, flip (what a bare --tta means), crops or flip_crops; null: the
            model's own (none unless it was set, e.g. by autotimm auto).
        batch_size: Images per forward pass (>= 1).
        top_k: k of the top-k accuracy (>= 1; capped at the number of classes).
        num_wrong: How many confidently wrong images to draw (>= 0).
        device: Where a .ckpt model or an ensemble runs: auto (CUDA when available), cpu, cuda, cuda:1, ...
        threshold: Multi-label models: the probability a label needs, in (0, 1); null: the model's own (0.5 unless
            it sets one).
        calibrate: Fit a temperature on the validation split first (not for .onnx files, whose temperature is
            fixed at export) and write the calibrated model to model.ckpt (an ensemble: calibrated/) in the report
            folder.
        dataset_root: Where built-in datasets are cached; null for ~/.cache/autotimm/datasets.
    """

    ckpt: str = field(metadata=positional())
    data: str = field(metadata=positional())
    split: Literal["test", "val", "train", "all"] = "test"
    output_dir: str | None = None
    val_split: float = field(default=0.2, metadata=number(0, 1))
    test_split: float = field(default=0.1, metadata=number(0, 1))
    seed: int = field(default=42, metadata=number(0))
    tta: TTA_CHOICES | None = field(default=None, metadata=optional_value("flip"))
    batch_size: int = field(default=32, metadata=number(1))
    top_k: int = field(default=5, metadata=number(1))
    num_wrong: int = field(default=16, metadata=number(0))
    device: str = "auto"
    threshold: float | None = field(default=None, metadata=number(0, 1, low_open=True))
    calibrate: bool = False
    dataset_root: str | None = None


#: The options dataclass of this subcommand.
CONFIG = EvaluateConfig


def run(config: EvaluateConfig) -> int:
    """Evaluate as ``config`` says: print the tables and write the report folder.

    Args:
        config: The options.

    Returns:
        0.
    """
    from autotimm.cli.common import console, labelled_datamodule, load_predictor, model_path
    from autotimm.data.sources import data_source

    if config.val_split + config.test_split >= 1:
        raise UsageError(f"--val-split + --test-split must be < 1, got {config.val_split} + {config.test_split}")
    ckpt = model_path(config.ckpt)
    if config.calibrate:
        _check_calibration(ckpt, config.split)
    data_source(config.data, "DATA")  # fail on a missing DATA before loading the model
    run_dir = _run_dir(ckpt)
    output_dir = Path(config.output_dir) if config.output_dir else run_dir / f"eval-{config.split}"

    from autotimm.evaluation.report import evaluate

    model = load_predictor(config.ckpt, config.device)
    datamodule, split = labelled_datamodule(
        config.data, config.split, config.val_split, config.test_split, config.seed, config.dataset_root
    )
    out = console()
    if config.calibrate:
        _calibrate(model, datamodule, output_dir, config.batch_size, ckpt.is_dir(), out)
    report = evaluate(
        model,
        datamodule,
        output_dir,
        split=split,
        batch_size=config.batch_size,
        tta=config.tta,
        top_k=config.top_k,
        num_wrong=config.num_wrong,
        threshold=config.threshold,
    )
    if config.calibrate:
        out.print(
            f"ECE on the {config.split!r} split: {report.ece_before:.4f} before calibration (T = 1), "
            f"{report.ece_after:.4f} after (T = {report.temperature:.4f})",
            highlight=False,
        )
    out.print(f"Evaluated {report.num_images} images of the {config.split!r} split.", highlight=False)
    out.print(f"Report: {output_dir}", highlight=False)
    for kind, path in report.files.items():
        out.print(f"  {kind:<28} {path.name}", highlight=False)
    return 0


def _check_calibration(ckpt: Path, split: str) -> None:
    """Refuse ``--calibrate`` where it cannot run, before anything is loaded."""
    if ckpt.suffix.lower() == ".onnx":
        raise UsageError(
            f"--calibrate: {ckpt.name} is an ONNX export, whose temperature was fixed when it was exported; "
            "calibrate its .ckpt checkpoint (autotimm evaluate CKPT DATA --calibrate), then export that again"
        )
    if split == "all":
        raise UsageError("--calibrate fits the temperature on the validation split; --split all leaves none")


def _calibrate(model: Any, datamodule: Any, output_dir: Path, batch_size: int, ensemble: bool, out: Any) -> Path:
    """Fit ``model``'s temperature on the validation split; save the calibrated model in the report folder."""
    from autotimm.evaluation.calibration import calibrate_model

    if "val" not in datamodule.splits:
        raise UsageError(
            f"--calibrate fits the temperature on the validation split, and DATA has only {datamodule.splits}: "
            "set --val-split above 0 (as in training)"
        )
    result = calibrate_model(model, datamodule, split="val", batch_size=batch_size, progress=False)
    path = model.save(output_dir / ("calibrated" if ensemble else "model.ckpt"))  # an ensemble saves a folder
    out.print(
        f"Calibration on {result.num_samples} validation images: temperature {result.temperature:.4f} "
        f"(validation ECE {result.ece_before:.4f} -> {result.ece_after:.4f})",
        highlight=False,
    )
    out.print(f"Calibrated model: {path}", highlight=False)
    return Path(path)


def _run_dir(ckpt: Path) -> Path:
    """The folder a report goes in by default.

    The run folder for runs/x/checkpoints/*.ckpt, the folder of another file, an ensemble folder itself.
    """
    if ckpt.is_dir():
        return ckpt
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
