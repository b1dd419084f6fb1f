"""Lightning callbacks of the search: a wall-clock deadline and Optuna pruning.

The pruning callback is our own rather than ``optuna_integration``'s
``PyTorchLightningPruningCallback``: that one imports the unified
``lightning`` package, while autotimm is built on ``pytorch_lightning``, and
mixing the two packages' ``Trainer`` and ``Callback`` classes does not work.

Both callbacks take every decision the same on all processes under DDP: the
deadline check is reduced across ranks (any rank past it stops all), and the
pruning decision is made by rank 0, which holds the Optuna trial, and broadcast.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

__all__ = ["OptunaPruning", "TimeLimit"]


class TimeLimit(Callback):
    """Stop training at a wall-clock deadline.

    Checked after every training batch; and (``predictive``) at the end of
    each epoch, training also stops when the time left is shorter than the
    average epoch so far, so that no epoch is cut before its validation.

    Args:
        deadline: The deadline, as a ``time.monotonic()`` value.
        predictive: Also stop after a validation when another epoch would end past the deadline.

    Attributes:
        stopped: Whether this callback stopped training.
        epochs_done: Training epochs validated (or finished) before the stop.
        epoch_seconds: Wall time of each complete epoch, its validation included
            (from the epoch's start to its end, so without the trainer's set-up).
        batch_seconds: Median time of a training batch in the first epoch,
            after two warm-up batches; ``None`` before four batches.
    """

    def __init__(self, deadline: float, predictive: bool = True) -> None:
        self.deadline = deadline
        self.predictive = predictive
        self.stopped = False
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.batch_seconds: float | None = None
        self._epoch_start: float | None = None
        self._batch_ends: list[float] = []

    def _stop(self, trainer: pl.Trainer, decision: bool) -> None:
        if trainer.strategy.reduce_boolean_decision(decision, all=False):
            trainer.should_stop = True
            self.stopped = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start timing the epoch."""
        self._epoch_start = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Stop once the deadline has passed."""
        now = time.monotonic()
        if trainer.current_epoch == 0:
            self._batch_ends.append(now)
            gaps = [b - a for a, b in zip(self._batch_ends[2:], self._batch_ends[3:], strict=False)]
            if gaps:  # the median of the batches after two warm-up ones: robust to a busy moment
                self.batch_seconds = statistics.median(gaps)
        self._stop(trainer, now >= self.deadline)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count the epoch; stop if another one would end past the deadline."""
        if trainer.sanity_checking or self._epoch_start is None:
            return
        now = time.monotonic()
        if self.stopped:  # cut in mid-epoch: not a whole epoch
            return
        self.epoch_seconds.append(now - self._epoch_start)
        self.epochs_done += 1
        average = sum(self.epoch_seconds) / len(self.epoch_seconds)
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if self.predictive and not last_epoch:
            self._stop(trainer, now + average > self.deadline)


class OptunaPruning(Callback):
    """Report a validation metric to an Optuna trial after every validation, and stop pruned trials.

    The step reported is the share of the planned epochs done, in tenths
    (1 to 10): trials of different lengths are compared at the same point of
    their learning-rate schedules, not at the same epoch number.

    Args:
        trial: The ``optuna.Trial``; ``None`` on the other processes under DDP.
        monitor: The logged metric, e.g. ``"val/accuracy"``.
        max_epochs: The epochs the trial plans.

    Attributes:
        pruned: Whether the trial was pruned.
        history: The metric after each validation.
    """

    def __init__(self, trial: Any, monitor: str, max_epochs: int) -> None:
        self.trial = trial
        self.monitor = monitor
        self.max_epochs = max(int(max_epochs), 1)
        self.pruned = False
        self.history: list[float] = []
        self._last_step = -1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Report the metric; prune (stop) when the pruner says so."""
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.history.append(value)
        step = min(math.ceil(10 * (trainer.current_epoch + 1) / self.max_epochs), 10)
        prune = False
        if self.trial is not None and step != self._last_step and math.isfinite(value):
            self.trial.report(value, step)
            last = trainer.current_epoch + 1 >= self.max_epochs  # a finished trial is complete, never pruned
            prune = not last and bool(self.trial.should_prune())
        self._last_step = step
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned = True
            trainer.should_stop = True
