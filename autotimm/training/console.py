"""What `AutoTrainer` prints: a progress bar without ``v_num``, a model summary without empty FLOPs, no known noise.

Lightning's own callbacks do the work (``RichProgressBar``, ``RichModelSummary``);
these subclasses only leave out what says nothing, and
[`quiet_lightning`][autotimm.training.console.quiet_lightning] mutes a fixed
list of messages known to be harmless, by their text, only while autotimm's
entry points run (never globally at import).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichModelSummary, RichProgressBar
from pytorch_lightning.utilities.model_summary.model_summary import get_formatted_model_size, get_human_readable_count

__all__ = [
    "HARMLESS_LOG_MESSAGES",
    "HARMLESS_WARNINGS",
    "LOG_INTERVAL_WARNING",
    "CompactModelSummary",
    "QuietProgressBar",
    "quiet_lightning",
]

#: Starts of Lightning's info messages that `quiet_lightning` drops: autotimm adds its own model summary (so
#: Lightning's notice that it skips its default one says nothing), and an advertisement for a cloud logger.
HARMLESS_LOG_MESSAGES = (
    "Trainer already configured with model summary callbacks",
    "💡 Tip: For seamless cloud logging",
    "Loading `train_dataloader` to estimate number of stepping batches",
)

#: Regular expressions of warning messages that `quiet_lightning` drops: torch deprecates a class that
#: Lightning's pytree helper still uses (nothing a user can change).
HARMLESS_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)

#: Lightning's warning that an epoch has fewer batches than ``log_every_n_steps``; harmless when `AutoTrainer`
#: chooses the interval itself (it fits the interval to the epoch once the epoch's length is known).
LOG_INTERVAL_WARNING = r"The number of training batches \(\d+\) is smaller than the logging interval"

_LIGHTNING_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(HARMLESS_LOG_MESSAGES)


@contextlib.contextmanager
def quiet_lightning(*more_warnings: str) -> Iterator[None]:
    """Drop the known-harmless Lightning messages (`HARMLESS_LOG_MESSAGES`, `HARMLESS_WARNINGS`) inside the block.

    Only these messages, matched by their text; every other message and
    warning passes. Filters are restored on exit.

    Args:
        *more_warnings: Regular expressions of further warnings to drop, e.g. `LOG_INTERVAL_WARNING`.

    Example:
        >>> with quiet_lightning():
        ...     trainer = pl.Trainer(logger=False, enable_progress_bar=False)
    """
    drop = _DropMessages()
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for pattern in (*HARMLESS_WARNINGS, *more_warnings):
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


class QuietProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar`` without ``v_num``, and with its per-batch work done at most a few times a second.

    Lightning's rich bar redraws from a thread ``refresh_rate`` times a second
    (in a notebook: at every batch), but updates its task and gathers the
    metrics shown after every training batch, which costs a fraction of a
    millisecond per step. Here the training bar is updated every
    ``update_interval`` seconds and at the epoch's last batch, so a fast step
    pays nothing for it, and a slow one (longer than the interval) sees every
    batch as before.

    Args:
        refresh_rate: Redraws per second (Lightning's meaning for the rich bar).
        update_interval: Least seconds between two updates of the training bar.
        **kwargs: Any other ``RichProgressBar`` argument.
    """

    def __init__(self, refresh_rate: int = 2, update_interval: float = 0.25, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.update_interval = update_interval
        self._last_update = -math.inf

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Update the training bar when ``update_interval`` has passed, or at the epoch's last batch."""
        now = time.monotonic()
        last = batch_idx + 1 >= trainer.num_training_batches
        if last or now - self._last_update >= self.update_interval or self.train_progress_bar_id is None:
            self._last_update = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """The progress bar's items, ``v_num`` left out."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


class CompactModelSummary(RichModelSummary):
    """Lightning's ``RichModelSummary`` without the FLOPs column and total when they are all zero.

    Lightning counts FLOPs only for a model with an ``example_input_array``;
    without one it prints a column of zeros and "Total FLOPs: 0".
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        """Print the summary table and totals; as ``RichModelSummary.summarize`` when FLOPs were counted."""
        if total_flops:
            RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
            return
        # Lightning's table code adds the FLOPs column unconditionally, so the table is drawn here without it.
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for index, (name, _) in enumerate(columns):
            justify = "left" if name in ("Name", "Type", "Mode") else "right"
            table.add_column(" " if index == 0 else name, justify=justify, style="dim" if index == 0 else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        grid = Table.grid(expand=True)
        grid.add_column()
        frozen = total_parameters - trainable_parameters
        grid.add_row(f"[bold]Trainable params[/]: {get_human_readable_count(int(trainable_parameters))}")
        grid.add_row(f"[bold]Non-trainable params[/]: {get_human_readable_count(int(frozen))}")
        grid.add_row(f"[bold]Total params[/]: {get_human_readable_count(int(total_parameters))}")
        grid.add_row(f"[bold]Total estimated model params size (MB)[/]: {get_formatted_model_size(model_size)}")
        grid.add_row(f"[bold]Modules in train mode[/]: {total_training_modes['train']}")
        grid.add_row(f"[bold]Modules in eval mode[/]: {total_training_modes['eval']}")
        console.print(grid)
