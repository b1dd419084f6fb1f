"""``autotimm predict``: top-k labels for image files, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from autotimm.cli.fields import TTA_CHOICES, number, optional_value, positional

__all__ = ["CONFIG", "PredictConfig", "format_csv", "format_json", "run"]

NAME = "predict"
HELP = "Predict labels for images with a checkpoint, ONNX export or ensemble."
DESCRIPTION = """\
Predict the most probable labels of images with a trained classifier (a .ckpt
checkpoint, an .onnx export or an ensemble folder). INPUTS are image files,
folders (searched recursively) or quoted glob patterns.

--format table (the default) prints a table; json and csv write only the
predictions to stdout, for scripts: JSON is a list of {"source", "labels",
"probabilities", "indices"} objects, CSV has one row per image and label:
source,rank,label,probability,index."""
EXAMPLES = """\
examples:
  autotimm predict runs/pets/checkpoints/last.ckpt photos/cat.jpg photos/dog.png
  autotimm predict pets.onnx photos/ --top-k 3
  autotimm predict best.ckpt "photos/*.jpg" --format json > predictions.json
  autotimm predict best.ckpt photos/ --format csv --tta > predictions.csv"""


@dataclass
class PredictConfig:
    """Options of ``autotimm predict``.

    Args:
        ckpt: The model: a .ckpt checkpoint, an .onnx export or an ensemble folder (from `autotimm auto`).
        inputs: Image files, folders (recursive) or quoted glob patterns.
        top_k: Labels per image, most probable first (1 to the number of classes); null for 5, or every class when
            there are fewer. Multi-label models list every label at or above --threshold instead.
        format: Output: table (for people), json or csv (for scripts; nothing else goes to stdout).
        tta: Test-time augmentation: none, flip (what a bare --tta means), crops or flip_crops; null: the
            model's own (none unless it was set, e.g. by autotimm auto).
        batch_size: Images per forward pass (>= 1).
        threshold: Multi-label models: the probability a label needs, in (0, 1).
        skip_bad_images: Skip unreadable images with a warning instead of failing.
        device: Where a .ckpt model or an ensemble runs: auto (CUDA when available), cpu, cuda, cuda:1, ...
    """

    ckpt: str = field(metadata=positional())
    inputs: list[str] = field(metadata=positional(nargs="+"))
    top_k: int | None = field(default=None, metadata=number(1))
    format: Literal["table", "json", "csv"] = "table"
    tta: TTA_CHOICES | None = field(default=None, metadata=optional_value("flip"))
    batch_size: int = field(default=32, metadata=number(1))
    threshold: float = field(default=0.5, metadata=number(0, 1, low_open=True))
    skip_bad_images: bool = False
    device: str = "auto"


#: The options dataclass of this subcommand.
CONFIG = PredictConfig


def format_json(predictions: list[Any]) -> str:
    """The predictions as a JSON list of ``{"source", "labels", "probabilities", "indices"}`` objects.

    Class names and paths are written as they are (``"café"``, not escaped to ASCII); `run` writes them as UTF-8.
    """
    return json.dumps([p.to_dict() for p in predictions], indent=2, ensure_ascii=False)


def format_csv(predictions: list[Any]) -> str:
    """The predictions as CSV, one row per image and label: ``source,rank,label,probability,index``.

    An image without a label (multi-label, nothing above the threshold) gets one row with empty label fields.
    """
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["source", "rank", "label", "probability", "index"])
    for p in predictions:
        rows = zip(p.labels, p.probabilities, p.indices, strict=True)
        written = False
        for rank, (label, probability, index) in enumerate(rows, start=1):
            writer.writerow([p.source or "", rank, label, f"{probability:.6f}", index])
            written = True
        if not written:
            writer.writerow([p.source or "", "", "", "", ""])
    return buffer.getvalue()


def _write(text: str) -> None:
    """Write ``text`` to stdout as UTF-8, whatever the terminal's encoding (a text stream without bytes: as text)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    buffer.write(text.encode("utf-8"))
    buffer.flush()


def _print_plain_table(predictions: list[Any]) -> None:
    """The table without rich (a torch-free install has only onnxruntime, numpy and Pillow): one line per image."""
    lines = [f"Predictions ({len(predictions)} image{'' if len(predictions) == 1 else 's'})"]
    for p in predictions:
        ranked = ", ".join(f"{label} {prob:.1%}" for label, prob in zip(p.labels, p.probabilities, strict=True))
        lines.append(f"{p.source or '<image>'}: {ranked or '(none above the threshold)'}")
    _write("\n".join(lines) + "\n")


def _print_table(predictions: list[Any], multi_label: bool) -> None:
    try:
        from rich.table import Table
    except ImportError:
        _print_plain_table(predictions)
        return

    from autotimm.cli.common import console

    count = f"{len(predictions)} image{'' if len(predictions) == 1 else 's'}"
    table = Table(title=f"Predictions ({count})", title_justify="left")
    table.add_column("Source", overflow="fold")
    table.add_column("Label")
    table.add_column("Probability", justify="right")
    table.add_column("Other labels" if not multi_label else "Other labels above the threshold")
    for p in predictions:
        others = ", ".join(f"{label} {prob:.1%}" for label, prob in zip(p.labels[1:], p.probabilities[1:], strict=True))
        label = p.label if p.label is not None else "(none above the threshold)"
        probability = f"{p.probability:.1%}" if p.probability is not None else ""
        table.add_row(p.source or "<image>", label, probability, others)
    console().print(table)


def run(config: PredictConfig) -> int:
    """Predict as ``config`` says and write the table, JSON or CSV to stdout.

    Args:
        config: The options.

    Returns:
        0.
    """
    from autotimm.cli.common import load_predictor

    model = load_predictor(config.ckpt, config.device)
    predictions = model.predict(
        config.inputs,
        top_k=config.top_k,
        batch_size=config.batch_size,
        tta=config.tta,
        threshold=config.threshold,
        skip_bad_images=config.skip_bad_images,
        progress=None if config.format == "table" else False,  # keep stdout clean for scripts
    )
    if config.format == "json":
        _write(format_json(predictions) + "\n")
    elif config.format == "csv":
        _write(format_csv(predictions))
    else:
        from autotimm.evaluation.labelled_data import is_multi_label

        _print_table(predictions, is_multi_label(model))
    return 0
