"""Exponential moving average (EMA) of a model's weights, as a Lightning callback.

Built on Lightning's ``WeightAveraging`` callback, which already does what EMA
needs around the loop: the averaged weights are swapped in for every
validation, written as the checkpoint's ``state_dict`` (the raw weights go
under ``current_model_state``), restored on resume, and left in the model when
training ends. We add what Lightning's ``EMAWeightAveraging`` lacks: timm's
decay warm-up, without which a short run's average is mostly its random start.
"""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.callbacks import WeightAveraging

from autotimm.checks import require_number

__all__ = ["EMA", "check_ema_decay", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int, warmup: bool = True) -> float:
    """The decay used for the update after ``updates`` earlier ones.

    With ``warmup`` it is ``min(decay, (1 + updates) / (10 + updates))``, as
    in timm's ``ModelEmaV3``: early averages follow the model closely.

    Example:
        >>> round(ema_decay_at(0.999, 0), 3), ema_decay_at(0.999, 100_000)
        (0.1, 0.999)
    """
    return min(decay, (1 + updates) / (10 + updates)) if warmup else decay


def check_ema_decay(decay: Any) -> None:
    """Raise unless ``decay`` is a number in ``(0, 1)``.

    Raises:
        ValueError: Naming ``ema_decay``, the value and the accepted range.
    """
    require_number("ema_decay", decay, 0, 1, low_open=True, hint="e.g. 0.999; None for no EMA")


class EMA(WeightAveraging):
    """Keep an exponential moving average of the weights (and buffers) during training.

    After each optimizer step: ``ema = d * ema + (1 - d) * weights`` with
    ``d = ema_decay_at(decay, n)``. Validation runs on the average, the
    checkpoint's ``state_dict`` holds it (so
    [`ImageClassifier.load`][autotimm.ImageClassifier.load] returns the EMA
    model), resuming restores both, and after ``fit`` the model holds the
    average. ``ImageClassifier(ema_decay=...)`` adds this callback itself.

    Args:
        decay: The decay, in ``(0, 1)``; typical values 0.99 – 0.9999, higher
            for longer runs.
        warmup: Ramp the decay up from 0.1 over the first updates.

    Raises:
        ValueError: For a decay outside ``(0, 1)``.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        check_ema_decay(decay)
        self.decay = float(decay)
        self.warmup = warmup

        def average(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
            # Called once per device and dtype group; integer buffers (BatchNorm's step count) are copied.
            if not ema[0].is_floating_point():
                torch._foreach_copy_(ema, current)
                return
            weight = 1 - ema_decay_at(self.decay, int(num_averaged), self.warmup)
            torch._foreach_lerp_(ema, current, weight)

        super().__init__(use_buffers=True, multi_avg_fn=average)

    @property
    def average_model(self) -> Any:
        """The ``torch.optim.swa_utils.AveragedModel`` holding the average (``None`` before fit)."""
        return self._average_model

    @property
    def state_key(self) -> str:
        """One EMA per trainer: its state is stored under a fixed key."""
        return "EMA"
