"""What ``autotimm train`` prints before training: classes, images per split and class, input, run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["IMBALANCE_RATIO", "MAX_CLASS_ROWS", "DataSummary", "print_data_summary"]

#: The largest class of the training split having this many times the images of the smallest is warned about.
IMBALANCE_RATIO = 5.0

#: Classes listed one per row; more are summed up in one row.
MAX_CLASS_ROWS = 12


@dataclass(frozen=True)
class DataSummary:
    """What a training run is about to train on.

    Args:
        class_names: The classes, in label order.
        counts: Images per class (for multi-label data: images having the label) of each split, by split name.
        images: Images of each split, by split name.
        input_size: The backbone's input, ``(channels, height, width)``.
        backbone: The timm model name.
        run_dir: The folder the run is written to.
        multi_label: Whether images have sets of labels.
    """

    class_names: list[str]
    counts: dict[str, list[int]]
    images: dict[str, int]
    input_size: tuple[int, int, int]
    backbone: str
    run_dir: Path
    multi_label: bool = False

    @classmethod
    def of(cls, datamodule: Any, backbone: str, run_dir: str | Path) -> DataSummary:
        """The summary of a set-up ``ImageDataModule`` (configured for the backbone, so the input size is right).

        Args:
            datamodule: The set-up data module.
            backbone: The timm model name.
            run_dir: The run folder.
        """
        channels, height, width = (int(v) for v in datamodule.data_config["input_size"])
        return cls(
            class_names=list(datamodule.class_names),
            counts=datamodule.class_counts,
            images={split: len(table) for split, table in datamodule.tables.items()},
            input_size=(channels, height, width),
            backbone=backbone,
            run_dir=Path(run_dir),
            multi_label=bool(datamodule.multi_label),
        )

    @property
    def imbalance(self) -> float:
        """How many times the images of the smallest class the largest class has in training (inf: an empty class)."""
        train = self.counts["train"]
        return float("inf") if min(train) == 0 else max(train) / min(train)

    @property
    def imbalance_warning(self) -> str | None:
        """A warning when `imbalance` reaches [`IMBALANCE_RATIO`][autotimm.cli.data_summary.IMBALANCE_RATIO]."""
        if self.imbalance < IMBALANCE_RATIO:
            return None
        train = self.counts["train"]
        small, large = train.index(min(train)), train.index(max(train))
        return (
            f"strong class imbalance: {self.class_names[large]!r} has {train[large]} training images, "
            f"{self.class_names[small]!r} {train[small]}. Consider more images of the small classes, or "
            "ImageDataModule(balanced_sampling=True) / class_weights='balanced' in Python."
        )


def print_data_summary(summary: DataSummary, out: Any) -> None:
    """Print ``summary`` as a compact rich table and a few lines on ``out`` (a rich console).

    Args:
        summary: What to print.
        out: A ``rich.console.Console``.
    """
    from rich.table import Table

    splits = list(summary.counts)
    kind = "labels" if summary.multi_label else "classes"
    title = f"Data: {len(summary.class_names)} {kind}, " + ", ".join(f"{summary.images[s]} {s}" for s in splits)
    table = Table(title=title, title_justify="left")
    table.add_column("Class")
    for split in splits:
        table.add_column(split, justify="right")
    shown = summary.class_names[:MAX_CLASS_ROWS]
    for index, name in enumerate(shown):
        table.add_row(name, *(str(summary.counts[split][index]) for split in splits))
    hidden = len(summary.class_names) - len(shown)
    if hidden:
        table.add_row(
            f"… {hidden} more", *(str(sum(summary.counts[split][MAX_CLASS_ROWS:])) for split in splits), style="dim"
        )
    out.print(table)
    channels, height, width = summary.input_size
    out.print(f"Input: {height}x{width}, {channels} channel(s); backbone: {summary.backbone}", highlight=False)
    out.print(f"Run folder: {summary.run_dir}", highlight=False)
    warning = summary.imbalance_warning
    if warning:
        out.print(f"[yellow]Warning:[/] {warning}", highlight=False)
