"""``ImageClassifier``: a timm backbone plus a classification head, as a LightningModule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from timm.data.mixup import mixup_target
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from autotimm.backbone import BackboneConfig, create_backbone
from autotimm.head import ClassificationHead
from autotimm.logging_config import LoggingConfig, confusion_matrix_figure, log_figure, total_norm
from autotimm.metrics import MetricConfig, MetricManager, default_metrics
from autotimm.optimizers import OptimizerSpec, create_optimizer, get_optimizer
from autotimm.schedulers import LinearWarmup, SchedulerSpec, create_scheduler, get_scheduler, step_scheduler

__all__ = ["ImageClassifier"]


def _backbone_config(backbone: str | BackboneConfig | dict[str, Any]) -> BackboneConfig:
    if isinstance(backbone, BackboneConfig):
        return backbone
    if isinstance(backbone, str):
        return BackboneConfig(backbone)
    if isinstance(backbone, dict):
        return BackboneConfig(**backbone)
    raise ValueError(f"`backbone` must be a model name or a BackboneConfig, got {type(backbone).__name__}")


def _metric_configs(metrics: Any, num_classes: int) -> list[MetricConfig]:
    if metrics is None:
        return default_metrics(num_classes)
    if isinstance(metrics, MetricManager):
        return list(metrics.configs)
    if isinstance(metrics, MetricConfig):
        metrics = [metrics]
    if not isinstance(metrics, Sequence) or isinstance(metrics, str):
        raise ValueError(f"`metrics` must be a MetricManager or a list of MetricConfig, got {metrics!r}")
    return [MetricConfig(**m) if isinstance(m, dict) else m for m in metrics]


def _require(name: str, value: Any, low: float, high: float | None = None, low_open: bool = False) -> None:
    """Raise unless ``value`` is a number in the range; the message names argument, value and range."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = is_number and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        accepted = f"in [{low:g}, {high:g})" if high is not None else f"{'>' if low_open else '>='} {low:g}"
        raise ValueError(f"`{name}` must be a number {accepted}, got {value!r}")


def _check_arguments(
    num_classes: Any,
    lr: Any,
    weight_decay: Any,
    optimizer: Any,
    optimizer_kwargs: Any,
    scheduler: Any,
    scheduler_kwargs: Any,
    head_dropout: Any,
    label_smoothing: Any,
    mixup_alpha: Any,
) -> None:
    """Validate ImageClassifier's arguments now, naming the argument, the value and what is accepted."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"`num_classes` must be an int >= 2 (a softmax classifier needs two classes), got {num_classes!r}"
        )
    _require("lr", lr, 0, low_open=True)
    _require("weight_decay", weight_decay, 0)
    _require("head_dropout", head_dropout, 0, 1)
    _require("label_smoothing", label_smoothing, 0, 1)
    _require("mixup_alpha", mixup_alpha, 0)
    # Fail now, with the accepted values, rather than at fit time.
    if isinstance(optimizer, str):
        get_optimizer(optimizer)
    elif not isinstance(optimizer, dict):
        raise ValueError(
            f"`optimizer` must be a name from list_optimizers() or a {{'class': ..., 'params': ...}} dict, "
            f"got {optimizer!r}"
        )
    if isinstance(scheduler, str):
        get_scheduler(scheduler)
    elif not (scheduler is None or isinstance(scheduler, dict)):
        raise ValueError(
            f"`scheduler` must be a name from list_schedulers(), None or a {{'class': ...}} dict, got {scheduler!r}"
        )
    for name, value in (("optimizer_kwargs", optimizer_kwargs), ("scheduler_kwargs", scheduler_kwargs)):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"`{name}` must be a dict or None, got {value!r}")
    if scheduler_kwargs and {"warmup_steps", "warmup_epochs"} <= scheduler_kwargs.keys():
        raise ValueError("`scheduler_kwargs` takes warmup_epochs or warmup_steps, not both")


class ImageClassifier(pl.LightningModule):
    """End-to-end image classifier: a headless timm backbone and a `ClassificationHead`.

    Args:
        backbone: A timm model name or a [`BackboneConfig`][autotimm.BackboneConfig]. A bare
            name downloads pretrained weights; pass
            ``BackboneConfig(name, pretrained=False)`` offline.
        num_classes: Number of target classes (>= 1).
        metrics: A [`MetricManager`][autotimm.MetricManager] or a list of
            [`MetricConfig`][autotimm.MetricConfig]. ``None`` means accuracy, top-5
            accuracy (more than five classes) and macro F1.
        logging_config: Extra diagnostics to log; see [`LoggingConfig`][autotimm.LoggingConfig].
        lr: Learning rate (> 0).
        weight_decay: Weight decay (>= 0), never applied to biases and norms.
        optimizer: A name from [`list_optimizers`][autotimm.list_optimizers] or
            ``{"class": "torch.optim.AdamW", "params": {...}}``.
        optimizer_kwargs: Extra optimizer arguments.
        scheduler: A name from [`list_schedulers`][autotimm.list_schedulers], ``None``, or
            ``{"class": "...", "params": {...}}``.
        scheduler_kwargs: Extra scheduler arguments, plus ``warmup_epochs`` or
            ``warmup_steps`` for a linear warm-up.
        head_dropout: Dropout before the linear head, in ``[0, 1)``.
        label_smoothing: Label smoothing of the cross-entropy loss, in ``[0, 1)``.
        freeze_backbone: Linear probe: the backbone gets no gradients, is not
            optimized, and its BatchNorm statistics stay fixed.
        mixup_alpha: Mixup's Beta(alpha, alpha) parameter in training; 0 disables.
        class_names: Names of the classes, in label order; defaults to
            ``"0" … "num_classes-1"``.

    Raises:
        ValueError: For any argument out of range or an unknown name; the
            message names the argument, the value and what is accepted.

    Example:
        >>> from autotimm import BackboneConfig, ImageClassifier
        >>> model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: str | BackboneConfig | dict[str, Any],
        num_classes: int,
        metrics: MetricManager | Sequence[MetricConfig] | None = None,
        logging_config: LoggingConfig | dict[str, bool] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: OptimizerSpec = "adamw",
        optimizer_kwargs: dict[str, Any] | None = None,
        scheduler: SchedulerSpec = "cosine",
        scheduler_kwargs: dict[str, Any] | None = None,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        freeze_backbone: bool = False,
        mixup_alpha: float = 0.0,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        _check_arguments(
            num_classes=num_classes,
            lr=lr,
            weight_decay=weight_decay,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            scheduler=scheduler,
            scheduler_kwargs=scheduler_kwargs,
            head_dropout=head_dropout,
            label_smoothing=label_smoothing,
            mixup_alpha=mixup_alpha,
        )
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes:
                raise ValueError(f"`class_names` has {len(class_names)} names for num_classes={num_classes}")

        if isinstance(metrics, MetricManager) and metrics.num_classes != num_classes:
            raise ValueError(f"`metrics` was built for {metrics.num_classes} classes, but num_classes={num_classes}")
        backbone_cfg = _backbone_config(backbone)
        metric_configs = _metric_configs(metrics, num_classes)
        if isinstance(logging_config, dict):
            logging_config = LoggingConfig(**logging_config)
        self.logging_config = logging_config or LoggingConfig()

        # Saved as plain data so checkpoints load with torch's weights_only=True;
        # the weights live in the state dict, so loading never reaches the hub.
        saved_backbone = {**backbone_cfg.to_dict(), "pretrained": False, "checkpoint_path": None}
        self.save_hyperparameters(
            {
                "backbone": saved_backbone,
                "num_classes": num_classes,
                "metrics": [cfg.to_dict() for cfg in metric_configs],
                "logging_config": self.logging_config.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "optimizer": optimizer,
                "optimizer_kwargs": optimizer_kwargs,
                "scheduler": scheduler,
                "scheduler_kwargs": scheduler_kwargs,
                "head_dropout": head_dropout,
                "label_smoothing": label_smoothing,
                "freeze_backbone": freeze_backbone,
                "mixup_alpha": mixup_alpha,
                "class_names": class_names,
            }
        )
        self.class_names: list[str] = class_names or [str(i) for i in range(num_classes)]

        self.backbone = create_backbone(backbone_cfg)
        self.head = ClassificationHead(self.backbone.num_features, num_classes, dropout=head_dropout)
        # Training loss; val/test losses are plain cross-entropy, as in timm's train.py.
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.metrics = MetricManager(metric_configs, num_classes)  # fresh instances, never shared between models
        if self.logging_config.log_confusion_matrix:
            self.val_confusion_matrix = MulticlassConfusionMatrix(num_classes=num_classes)
        self.val_confusion_matrix_values: torch.Tensor | None = None
        self._warmup: LinearWarmup | None = None
        if freeze_backbone:
            # Eval mode is set in on_train_start: Lightning keeps each module's mode
            # and warns about modules already in eval mode when fit starts.
            self.backbone.requires_grad_(False)

    # ------------------------------------------------------------------ model
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.head(self.backbone(x))

    def on_train_start(self) -> None:
        """Put a frozen backbone in eval mode, so BatchNorm statistics stay fixed through fit."""
        if self.hparams.freeze_backbone:
            self.backbone.eval()

    def train(self, mode: bool = True) -> ImageClassifier:
        """Set training mode; a frozen backbone always stays in eval mode (fixed BatchNorm statistics)."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        return self

    # ------------------------------------------------------------------ steps
    def _mixup(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Not timm's Mixup class: it asserts an even batch size, and the last batch
        # of an epoch is often odd. Same maths: mix with the flipped batch.
        alpha = self.hparams.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        mixed = x * lam + x.flip(0) * (1.0 - lam)
        return mixed, mixup_target(y, self.hparams.num_classes, lam=lam)

    def _log_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        for cfg, metric in self.metrics.items(stage):
            if cfg.log_on_step:
                metric(logits, target)
            else:
                metric.update(logits, target)
            self.log(
                f"{stage}/{cfg.name}", metric, on_step=cfg.log_on_step, on_epoch=cfg.log_on_epoch, prog_bar=cfg.prog_bar
            )

    def _evaluate(self, batch: Sequence[torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x))
        self._log_metrics(stage, logits, y)
        return loss, logits, y

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One training step on ``(images, labels)``; returns the loss.

        Logs ``train/loss``, the train metrics and, when asked, ``train/lr``.
        With ``mixup_alpha > 0`` images and targets are mixed first.
        """
        x, y = batch[0], batch[1]
        target: torch.Tensor = y
        if self.hparams.mixup_alpha > 0:
            x, target = self._mixup(x, y)
        logits = self(x)
        loss = self.criterion(logits, target)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        self._log_metrics("train", logits, target.argmax(1) if target.ndim == 2 else target)
        if self.logging_config.log_learning_rate and self._trainer is not None:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One validation step; logs ``val/loss`` and the val metrics."""
        loss, logits, y = self._evaluate(batch, "val")
        if self.logging_config.log_confusion_matrix:
            self.val_confusion_matrix.update(logits, y)
        return loss

    def test_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One test step; logs ``test/loss`` and the test metrics."""
        return self._evaluate(batch, "test")[0]

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Return class probabilities ``(N, num_classes)``; ``batch`` is images or ``(images, ...)``."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(x).softmax(dim=1)

    # ------------------------------------------------------------------ hooks
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log ``train/grad_norm`` and ``train/weight_norm`` when asked (one fused norm each)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.logging_config.log_gradient_norm:
            self.log("train/grad_norm", total_norm(p.grad for p in params if p.grad is not None), on_step=True)
        if self.logging_config.log_weight_norm:
            self.log("train/weight_norm", total_norm(params), on_step=True)

    def on_validation_epoch_start(self) -> None:
        """Start a fresh confusion matrix (reset here, in the loop's own grad mode)."""
        if self.logging_config.log_confusion_matrix:
            self.val_confusion_matrix.reset()

    def on_validation_epoch_end(self) -> None:
        """Log the confusion-matrix figure as ``val/confusion_matrix`` when asked."""
        if not self.logging_config.log_confusion_matrix:
            return
        matrix = self.val_confusion_matrix.compute()
        if self.trainer.sanity_checking:
            return
        self.val_confusion_matrix_values = matrix.cpu()
        loggers = self.trainer.loggers
        if loggers:
            log_figure(
                loggers, "val/confusion_matrix", confusion_matrix_figure(matrix, self.class_names), self.global_step
            )

    # ------------------------------------------------------------- optimizers
    def _training_length(self) -> tuple[float | None, int | None]:
        if self._trainer is None:
            return None, None
        total = self.trainer.estimated_stepping_batches
        batches = self.trainer.num_training_batches
        per_epoch = math.ceil(batches / self.trainer.accumulate_grad_batches) if math.isfinite(batches) else None
        return total, per_epoch

    def configure_optimizers(self) -> Any:
        """Build the optimizer (no weight decay on biases and norms) and its schedulers.

        Only trainable parameters are optimized, so a frozen backbone is left
        out. Per-step schedules span ``trainer.estimated_stepping_batches``.
        """
        no_decay = getattr(self.backbone, "no_weight_decay", lambda: set())()
        optimizer = create_optimizer(
            self,
            self.hparams.optimizer,
            lr=self.hparams.lr,
            weight_decay=self.hparams.weight_decay,
            optimizer_kwargs=self.hparams.optimizer_kwargs,
            no_weight_decay=[f"backbone.{name}" for name in no_decay],
        )
        total, per_epoch = self._training_length()
        configs = create_scheduler(
            optimizer,
            self.hparams.scheduler,
            self.hparams.scheduler_kwargs,
            total_steps=total,
            steps_per_epoch=per_epoch,
        )
        self._warmup = next((c["scheduler"] for c in configs if isinstance(c["scheduler"], LinearWarmup)), None)
        return ([optimizer], configs) if configs else optimizer

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Step torch, timm and warm-up schedulers alike.

        See [`step_scheduler`][autotimm.schedulers.step_scheduler].
        """
        step_scheduler(scheduler, metric, self.trainer.global_step, self.current_epoch, self._warmup)
