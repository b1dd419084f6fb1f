"""What ``auto_fit`` returns and writes: the trial table (rich and CSV), the summary, the best model."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TRIAL_COLUMNS", "AutoFitResult", "trials_table", "write_atomically", "write_trials_csv"]

#: Columns of ``trials.csv`` and of the printed table, in order (``score`` is the validation metric).
TRIAL_COLUMNS = (
    "number",
    "state",
    "backbone",
    "lr",
    "weight_decay",
    "label_smoothing",
    "mixup_alpha",
    "augmentation",
    "epochs",
    "max_epochs",
    "score",
    "seconds",
    "note",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader sees the old file or the new one.

    A kill in the middle of writing leaves the old file whole (and a ``.tmp`` file beside it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write one row per trial to ``path`` (the columns of `TRIAL_COLUMNS`), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TRIAL_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key) for key in TRIAL_COLUMNS})
    return write_atomically(path, buffer.getvalue())


def trials_table(rows: list[dict[str, Any]], metric: str, best: int | None = None, title: str | None = None) -> Any:
    """A rich ``Table`` of the trials, the best one in bold."""
    from rich.table import Table

    table = Table(title=title or "auto_fit trials", title_justify="left")
    headers = {
        "number": "#",
        "score": f"val {metric}",
        "seconds": "s",
        "label_smoothing": "smooth",
        "mixup_alpha": "mixup",
    }
    for column in TRIAL_COLUMNS:
        numeric = column not in ("state", "backbone", "augmentation", "note")
        table.add_column(headers.get(column, column.replace("_", " ")), justify="right" if numeric else "left")
    for row in rows:
        style = "bold green" if best is not None and row.get("number") == best else None
        cells = [_cell(row.get(column)) for column in TRIAL_COLUMNS]
        table.add_row(*cells, style=style)
    return table


@dataclass
class AutoFitResult:
    """The outcome of [`auto_fit`][autotimm.auto.search.auto_fit].

    Args:
        model: The model to use: the best ``ImageClassifier`` (retrained when
            the final training was kept), or an
            [`EnsembleClassifier`][autotimm.classifier.ensemble.EnsembleClassifier]
            with ``ensemble`` >= 2.
        best_config: The best configuration: backbone, hyper-parameters,
            augmentation, epochs, image size and batch size.
        best_score: Validation score of the best configuration (see ``summary()["score_source"]``).
        metric: The validation metric, e.g. ``"accuracy"``.
        trials: One dict per trial (the columns of ``trials.csv``).
        time_used: Seconds of the budget used, by this call and the earlier calls of a resumed study
            (``summary.json`` has ``time_used_before`` and ``time_used_this_call``).
        time_limit: The budget in seconds.
        checkpoint: ``output_dir/best.ckpt``, loadable with ``ImageClassifier.load``.
        output_dir: Where everything was written.
        ensemble_dir: The saved ensemble folder (``EnsembleClassifier.load``), or ``None``.
        details: The rest of the summary: preset, candidates, final training, ensemble, data sizes.
    """

    model: Any
    best_config: dict[str, Any]
    best_score: float | None
    metric: str
    trials: list[dict[str, Any]]
    time_used: float
    time_limit: float
    checkpoint: Path
    output_dir: Path
    ensemble_dir: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Everything about the run as plain, JSON-ready data (what ``summary.json`` holds)."""
        states: dict[str, int] = {}
        for row in self.trials:
            states[row["state"]] = states.get(row["state"], 0) + 1
        return {
            "best_config": self.best_config,
            "best_score": self.best_score,
            "metric": self.metric,
            "time_used": round(self.time_used, 2),
            "time_limit": self.time_limit,
            "n_trials": len(self.trials),
            "trial_states": states,
            "checkpoint": str(self.checkpoint),
            "ensemble_dir": None if self.ensemble_dir is None else str(self.ensemble_dir),
            "trials_csv": str(self.output_dir / "trials.csv"),
            **self.details,
        }

    def write(self) -> Path:
        """Write ``trials.csv`` and ``summary.json`` to ``output_dir`` (each atomically); return the summary file."""
        write_trials_csv(self.trials, self.output_dir / "trials.csv")
        return write_atomically(self.output_dir / "summary.json", json.dumps(self.summary(), indent=2, default=str))

    def print(self, console: Any = None) -> None:
        """Print the trial table and the summary with rich."""
        from rich.console import Console

        if console is None:
            console = Console()
            if not console.is_terminal:  # a log file or a pipe: wide enough for every column
                console = Console(width=max(console.width, 150))
        if self.trials:
            console.print(trials_table(self.trials, self.metric, self.details.get("best_trial")))
        elif self.details.get("search_skipped"):
            console.print(f"No search: {self.details['search_skipped']}", highlight=False)
        console.print(str(self), highlight=False)

    def __str__(self) -> str:
        config = ", ".join(f"{k}={_cell(v)}" for k, v in self.best_config.items())
        score = "n/a" if self.best_score is None else f"{self.best_score:.4f}"
        lines = [
            f"auto_fit: best val {self.metric} {score} in {self.time_used:.1f}s of {self.time_limit:.0f}s",
            f"  best configuration: {config}",
            f"  checkpoint: {self.checkpoint}",
        ]
        final = self.details.get("final") or {}
        if final.get("ran"):
            lines.append(f"  final training: {final.get('note', '')}")
        tta = self.details.get("tta") or {}
        if "plain" in tta:
            lines.append(f"  {tta['note']} (val {self.metric})")
        ensemble = self.details.get("ensemble") or {}
        if ensemble.get("members"):
            score = ensemble.get("score")
            shown = "not measured" if score is None else f"val {self.metric} {score:.4f}"
            lines.append(f"  ensemble of {len(ensemble['members'])} ({shown}): {self.ensemble_dir}")
        return "\n".join(lines)
