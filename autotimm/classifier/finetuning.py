"""`ImageClassifier`'s fine-tuning options: their checks, and the Lightning hooks that apply them.

Layer-wise learning-rate decay is built by `autotimm.optim.param_groups`,
progressive unfreezing by `autotimm.training.unfreezing`, the EMA of the
weights by the `autotimm.training.ema.EMA` callback.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from autotimm.checks import require_number
from autotimm.training.ema import EMA, check_ema_decay
from autotimm.training.feature_cache import FeatureDataModule
from autotimm.training.unfreezing import UnfreezeSchedule, freeze_norm_statistics

__all__ = ["FineTuningMixin", "check_finetuning_arguments"]


def check_finetuning_arguments(
    freeze_backbone: bool,
    layer_decay: Any,
    unfreeze_schedule: Any,
    ema_decay: Any,
    cache_features: Any,
    channels_last: Any,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> UnfreezeSchedule | None:
    """Validate [`ImageClassifier`][autotimm.ImageClassifier]'s fine-tuning arguments together.

    Returns:
        The parsed unfreeze schedule, or ``None``.

    Raises:
        ValueError: Naming the argument, the value and what is accepted, or the
            two arguments that do not go together.
    """
    require_number("layer_decay", layer_decay, 0, 1, low_open=True, high_closed=True, allow_none=True, hint="e.g. 0.75")
    if ema_decay is not None:
        check_ema_decay(ema_decay)
    for name, value in (("cache_features", cache_features), ("channels_last", channels_last)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}")
    if cache_features and not freeze_backbone:
        raise ValueError("`cache_features=True` needs `freeze_backbone=True`: features can be cached only if fixed")
    if cache_features and (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError(
            "`cache_features=True` trains on fixed features of un-augmented images, so it cannot mix images: "
            f"set mixup_alpha=0 and cutmix_alpha=0 (got {mixup_alpha}, {cutmix_alpha})"
        )
    if unfreeze_schedule is None:
        return None
    if freeze_backbone:
        raise ValueError("`unfreeze_schedule` unfreezes the backbone, so it does not go with `freeze_backbone=True`")
    return UnfreezeSchedule(unfreeze_schedule)


class FineTuningMixin:
    """The Lightning hooks behind `ImageClassifier`'s fine-tuning options.

    ``freeze_backbone`` and ``unfreeze_schedule`` (trainable stages, frozen
    BatchNorm statistics) and ``ema_decay`` (the [`EMA`][autotimm.EMA]
    callback). Expects ``self.backbone``, ``self.hparams`` and ``self._unfreeze``.
    """

    backbone: nn.Module
    hparams: Any
    _unfreeze: UnfreezeSchedule | None

    def on_train_start(self) -> None:
        """Put a frozen backbone in eval mode; apply the unfreeze schedule of the epoch a resumed run starts in.

        A run resumed in the middle of an epoch gets no ``on_train_epoch_start``
        for that epoch (Lightning skips the hook), so the schedule is applied here too.
        """
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        if self._unfreeze is not None:
            self._unfreeze.apply(self, self.current_epoch)
        if self.hparams.get("cache_features") and not isinstance(self.trainer.datamodule, FeatureDataModule):
            rank_zero_warn(
                "cache_features=True: this run trains on images, not cached features; cached features need "
                "autotimm.AutoTrainer.fit with a data module or data loaders"
            )

    def train(self, mode: bool = True) -> FineTuningMixin:
        """Set training mode; frozen backbone parts always keep their BatchNorm statistics (eval mode)."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        elif mode and self._unfreeze is not None:
            freeze_norm_statistics(self.backbone)
        return self

    def configure_callbacks(self) -> list[pl.Callback]:
        """The callbacks the model's options need: [`EMA`][autotimm.EMA] with ``ema_decay``."""
        return [] if self.hparams.ema_decay is None else [EMA(self.hparams.ema_decay)]

    def setup(self, stage: str) -> None:
        """Refuse progressive unfreezing across processes: DDP fixes the trainable set when it wraps the model."""
        if self._unfreeze is not None and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError(
                "`unfreeze_schedule` works in one process only: DDP never syncs gradients of parameters that "
                "were frozen when it wrapped the model. Train on one device, or use layer_decay instead."
            )

    def on_train_epoch_start(self) -> None:
        """Apply the unfreeze schedule for this epoch (trainable stages, frozen BatchNorm statistics)."""
        if self._unfreeze is None:
            return
        before = sum(p.requires_grad for p in self.parameters())
        trainable = self._unfreeze.apply(self, self.current_epoch)
        if len(trainable) != before:
            stages = self._unfreeze.stages_at(self.current_epoch)
            rank_zero_info(f"Epoch {self.current_epoch}: unfroze backbone stages: {stages} ({len(trainable)} tensors)")
