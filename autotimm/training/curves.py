"""Training curves: a callback that keeps each epoch's logged values, saves them and draws ``curves.png``.

The history is kept in memory from ``trainer.callback_metrics`` (so it works
whatever the logger, and with ``logger=False``), saved as ``history.json`` and
``history.csv`` in the run folder after every epoch, and drawn at the end of
``fit``. Lightning has no callback for this: its loggers write the values but
none of them draws them, and reading them back is logger-specific.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["HISTORY_FILE", "TrainingHistory", "load_history", "plot_curves"]

#: The history's file in a run folder (``history.csv`` holds the same table).
HISTORY_FILE = "history.json"
_STAGES = ("train", "val")


class TrainingHistory(Callback):
    """Keep every epoch's logged values and the learning rate; save and draw them.

    After each epoch, the epoch-level values of ``trainer.callback_metrics``
    (``train/loss_epoch`` is stored as ``train/loss``; per-step values are
    left out) and the first parameter group's learning rate ``lr`` become one
    row of `rows`. With ``dirpath`` the rows are written to ``history.json`` and
    ``history.csv`` after every epoch, and ``curves.png`` (see
    [`plot_curves`][autotimm.training.curves.plot_curves]) at the end of ``fit``.
    The rows are saved in checkpoints, so a resumed run draws the whole run.

    Args:
        dirpath: The run folder to write to; ``None`` keeps the history in memory only.
        monitor: The metric whose best epoch is marked; ``None``: the trainer's
            checkpoint callback's ``monitor`` (and ``mode``), if any.
        mode: ``"min"`` or ``"max"`` for ``monitor``.
        draw: Write ``curves.png`` at the end of ``fit``.

    Example:
        >>> history = TrainingHistory()
        >>> history.rows
        []
    """

    def __init__(
        self, dirpath: str | Path | None = None, monitor: str | None = None, mode: str = "min", draw: bool = True
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}")
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.monitor = monitor
        self.mode = mode
        self.draw = draw
        self.rows: list[dict[str, float]] = []
        self._validated = False
        self._lr: float | None = None
        self._pending: int | None = None

    @property
    def state_key(self) -> str:
        """One history per trainer: the key of its state in checkpoints."""
        return "TrainingHistory"

    # ------------------------------------------------------------ recording
    # Callbacks' on_train_epoch_end runs before the LightningModule's, which logs the epoch's train metrics:
    # an epoch's row is recorded when the next epoch starts, or when fit ends.
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start a fresh history, unless resuming (the checkpoint restored the rows before this hook)."""
        if trainer.ckpt_path is None:
            self.rows = []
        self._pending = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the previous epoch; note the learning rate this one starts with."""
        self._flush(trainer)
        self._validated = False
        self._lr = _learning_rate(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note that this epoch validated (sanity checks do not count)."""
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mark the epoch finished; its row is recorded once the module has logged its epoch values."""
        self._pending = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the last epoch and draw ``curves.png``."""
        self._flush(trainer)
        if self.draw and self.dirpath is not None and self.rows and trainer.is_global_zero:
            self.plot(self.dirpath / "curves.png")

    def _flush(self, trainer: pl.Trainer) -> None:
        epoch, self._pending = self._pending, None
        if epoch is not None:
            self._record(trainer, epoch)

    def _record(self, trainer: pl.Trainer, epoch: int) -> None:
        row: dict[str, float] = {"epoch": float(epoch)}
        metrics = {key: _scalar(value) for key, value in trainer.callback_metrics.items()}
        for key, value in metrics.items():
            if value is None or key.endswith("_step") or not key.startswith(_STAGES) or key == "train/lr":
                continue
            if key.startswith("val") and not self._validated:
                continue  # a value left from an earlier validation
            name = key[: -len("_epoch")] if key.endswith("_epoch") else key
            if name == key and f"{key}_epoch" in metrics:
                continue  # the last step's value of a metric that has its epoch mean too
            row[name] = value
        if self._lr is not None:
            row["lr"] = self._lr
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if self.monitor is None:
            callback = trainer.checkpoint_callback
            if callback is not None and getattr(callback, "monitor", None):
                self.monitor, self.mode = callback.monitor, callback.mode  # type: ignore[attr-defined]
        if self.dirpath is not None and trainer.is_global_zero:
            self.save(self.dirpath)

    # --------------------------------------------------------------- output
    def to_dict(self) -> dict[str, Any]:
        """The history as plain data: ``{"monitor", "mode", "rows"}``."""
        return {"monitor": self.monitor, "mode": self.mode, "rows": [dict(r) for r in self.rows]}

    def save(self, dirpath: str | Path) -> Path:
        """Write ``history.json`` and ``history.csv`` into ``dirpath``; return the JSON file's path."""
        dirpath = Path(dirpath)
        dirpath.mkdir(parents=True, exist_ok=True)
        path = dirpath / HISTORY_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        tmp.replace(path)
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(dirpath / "history.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        return path

    def plot(self, path: str | Path) -> Path:
        """Draw the curves to ``path`` (see [`plot_curves`][autotimm.training.curves.plot_curves])."""
        return plot_curves([self.to_dict()], path)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Keep the trainer, to record a finished epoch when a checkpoint is saved."""
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """The rows and the monitored metric, saved in checkpoints (the epoch just finished included)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None:
            self._flush(trainer)
        return self.to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the rows of a resumed run."""
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.monitor = state_dict.get("monitor", self.monitor)
        self.mode = state_dict.get("mode", self.mode)


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _learning_rate(trainer: pl.Trainer) -> float | None:
    optimizers = trainer.optimizers
    if not optimizers or not optimizers[0].param_groups:
        return None
    return float(optimizers[0].param_groups[0]["lr"])


def load_history(run_dir_or_file: str | Path) -> dict[str, Any]:
    """Read the history a [`TrainingHistory`][autotimm.training.curves.TrainingHistory] saved.

    Args:
        run_dir_or_file: A run folder (with ``history.json``) or the JSON file itself.

    Returns:
        ``{"monitor", "mode", "rows", "name"}``; ``name`` is the run folder's name.

    Raises:
        FileNotFoundError: No history there.
        ValueError: The file is not a history.
    """
    path = Path(run_dir_or_file)
    file = path / HISTORY_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"no {HISTORY_FILE} in {str(path)!r}: it is written by AutoTrainer (TrainingHistory) after each epoch"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        rows = [dict(r) for r in data["rows"]]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{str(file)!r} is not a training history: {err}") from err
    name = file.parent.name or str(file.parent)
    return {"monitor": data.get("monitor"), "mode": data.get("mode", "min"), "rows": rows, "name": name}


def _best_epoch(history: dict[str, Any]) -> tuple[float, float] | None:
    monitor = history.get("monitor")
    points = [(r["epoch"], r[monitor]) for r in history["rows"] if monitor and math.isfinite(r.get(monitor, math.nan))]
    if not points:
        return None
    pick = max if history.get("mode") == "max" else min
    return pick(points, key=lambda point: point[1])


def _metric_names(histories: Sequence[dict[str, Any]]) -> list[str]:
    """The metrics drawn, loss first: every ``train/x`` or ``val/x`` name, without the stage."""
    names = dict.fromkeys(
        key.split("/", 1)[1] for h in histories for row in h["rows"] for key in row if key.startswith(_STAGES)
    )
    return sorted(names, key=lambda name: (name != "loss", name))


def plot_curves(
    histories: Sequence[dict[str, Any] | str | Path],
    path: str | Path | None = None,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Draw training curves: one panel per metric (train dashed, validation solid), the learning rate last.

    The best epoch of each run's monitored metric is marked with a star on
    that metric's panel and a dotted line on the others. Several runs are
    overlaid, one colour each.

    Args:
        histories: Run folders, ``history.json`` files, or
            [`TrainingHistory.to_dict`][autotimm.training.curves.TrainingHistory.to_dict] data.
        path: Where to write the PNG; ``None`` only returns the figure.
        labels: A legend label per run; default: the run folders' names (none for a single run).

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: No history, no rows to draw, or the wrong number of labels.
    """
    from matplotlib.figure import Figure

    runs = [h if isinstance(h, dict) else load_history(h) for h in histories]
    if not runs or not any(run["rows"] for run in runs):
        raise ValueError("`histories` has no epochs to draw: train at least one epoch first")
    if labels is not None and len(labels) != len(runs):
        raise ValueError(f"`labels` must have one label per history ({len(runs)}), got {len(labels)}")
    labels = list(labels) if labels is not None else [run.get("name") or f"run {i + 1}" for i, run in enumerate(runs)]
    metrics = _metric_names(runs)
    has_lr = any("lr" in row for run in runs for row in run["rows"])
    panels = metrics + (["lr"] if has_lr else [])
    columns = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(6.0 * columns, 3.6 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, columns, index + 1) for index in range(len(panels))]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    several = len(runs) > 1
    for run, label, colour in zip(runs, labels, colours, strict=True):
        best = _best_epoch(run)
        monitor = run.get("monitor") or ""
        for ax, panel in zip(axes, panels, strict=True):
            keys = [("lr", "-", "learning rate")] if panel == "lr" else [
                (f"train/{panel}", "--", "train"), (f"val/{panel}", "-", "val")
            ]  # fmt: skip
            for key, style, stage in keys:
                points = [(r["epoch"], r[key]) for r in run["rows"] if key in r]
                if not points:
                    continue
                epochs, values = zip(*points, strict=True)
                name = f"{label} {stage}" if several else stage
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=name)
                if best is not None and key == monitor:
                    ax.plot([best[0]], [best[1]], "*", color=colour, markersize=14, markeredgecolor="black",
                            label=f"best epoch {int(best[0])}: {best[1]:.4g}", zorder=5)  # fmt: skip
            if best is not None and monitor and panel != monitor.split("/", 1)[-1]:
                ax.axvline(best[0], color=colour, linestyle=":", linewidth=1)
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title("learning rate (epoch start)" if panel == "lr" else panel)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if panel == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle("Training curves" + ("" if several else f": {labels[0]}" if runs[0].get("name") else ""))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
