"""``ImageClassifier``: a timm backbone plus a classification head, as a LightningModule."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassConfusionMatrix

from autotimm.checks import require_number
from autotimm.classifier.arguments import (
    check_class_names,
    check_class_weights,
    check_classifier_arguments,
    check_compile,
    plain_data,
)
from autotimm.classifier.finetuning import FineTuningMixin, check_finetuning_arguments
from autotimm.classifier.predictor import InferenceMixin
from autotimm.models.backbone import BackboneConfig, as_backbone_config, create_backbone
from autotimm.models.head import ClassificationHead
from autotimm.optim.optimizers import OptimizerSpec, create_optimizer
from autotimm.optim.recipe import default_lr
from autotimm.optim.schedulers import LinearWarmup, SchedulerSpec, create_scheduler, step_scheduler
from autotimm.prediction.preprocess import check_tta
from autotimm.training.diagnostics import LoggingConfig, confusion_matrix_figure, log_figure, total_norm
from autotimm.training.losses import FocalLoss, check_loss
from autotimm.training.metrics import MetricConfig, MetricManager, as_metric_configs
from autotimm.training.mixing import mix_batch

__all__ = ["ImageClassifier"]


class ImageClassifier(InferenceMixin, FineTuningMixin, pl.LightningModule):
    """End-to-end image classifier: a headless timm backbone and a `ClassificationHead`.

    Args:
        backbone: A timm model name or a [`BackboneConfig`][autotimm.BackboneConfig]. A bare
            name downloads pretrained weights; pass
            ``BackboneConfig(name, pretrained=False)`` offline.
        num_classes: Number of target classes (>= 2). ``None``: the length of
            ``class_names`` or the classes of a given ``MetricManager``, else
            the data's, taken when training starts: `AutoTrainer.fit` (or
            Lightning's ``fit`` with an ``ImageDataModule``) builds the head
            then (see [`set_num_classes`][autotimm.ImageClassifier.set_num_classes]).
            Checkpoints record the number and names found, so
            [`load`][autotimm.ImageClassifier.load] rebuilds the same model.
        metrics: A [`MetricManager`][autotimm.MetricManager] or a list of
            [`MetricConfig`][autotimm.MetricConfig]. ``None`` means accuracy, top-5
            accuracy (more than five classes) and macro F1.
        logging_config: Extra diagnostics to log; see [`LoggingConfig`][autotimm.LoggingConfig].
        lr: Learning rate (> 0). ``None``: the default recipe's, ``3e-3`` from
            scratch and ``1e-3`` for pretrained weights (see
            [`default_lr`][autotimm.optim.default_lr]).
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
        class_names: Names of the classes, in label order; defaults to the
            data's at fit, or ``"0" … "num_classes-1"``.
        cutmix_alpha: CutMix's Beta(alpha, alpha) parameter in training; 0
            disables. With ``mixup_alpha`` too, each batch uses one of the two.
        multi_label: Multi-label classification: targets are multi-hot
            ``(N, num_classes)``, the loss is binary cross-entropy, predictions
            are per-class sigmoid probabilities and the default metrics are
            multi-label ones.
        class_weights: Per-class loss weights (``num_classes`` numbers >= 0, not all 0),
            e.g. from a data module with ``class_weights="balanced"``.
        data_config: The preprocessing the model expects (timm's data config:
            input size, mean, std, interpolation, crop fraction), stored with
            the checkpoint; see [`apply_data_info`][autotimm.ImageClassifier.apply_data_info].
        layer_decay: Layer-wise learning-rate decay in ``(0, 1]``: the head learns
            at ``lr``, the backbone's top layer at ``lr * layer_decay``, the next
            at ``lr * layer_decay**2``, … (timm's layers; see
            [`parameter_groups`][autotimm.classifier.finetuning.parameter_groups]).
        unfreeze_schedule: Progressive unfreezing, ``{epoch: stages}``: from each
            epoch on, that many backbone stages (from the top) or ``"all"``
            train; before the first epoch listed only the head does. See
            [`UnfreezeSchedule`][autotimm.classifier.finetuning.UnfreezeSchedule].
        ema_decay: Keep an exponential moving average of the weights with this
            decay in ``(0, 1)``; it is validated and saved (see [`EMA`][autotimm.EMA]).
        cache_features: With ``freeze_backbone=True``: `AutoTrainer.fit` computes
            the backbone's features once (evaluation transform) and trains the
            head on them (see [`FeatureDataModule`][autotimm.FeatureDataModule]).
        channels_last: Run convolutions in channels-last memory format (on by
            default: training steps measured 2.2x faster for MobileNetV2 and
            1.0-1.16x for ResNet-18 on a CPU, equal for ViTs; the default on
            GPUs for mixed precision). ``False`` keeps PyTorch's contiguous format.
        tta: The default test-time augmentation of ``predict``, ``predict_logits``
            and ``evaluate`` (one of [`TTA_MODES`][autotimm.prediction.preprocess.TTA_MODES];
            ``True`` is ``"flip"``). Saved with the model and in exported files;
            ``auto_fit`` sets ``"flip"`` when it raises the validation score.
        loss: The training loss: ``"cross_entropy"`` (binary for multi-label) or
            ``"focal"`` ([`FocalLoss`][autotimm.training.losses.FocalLoss]:
            ``class_weights`` are its per-class ``alpha``, ``label_smoothing``
            and mixing apply as for cross-entropy). Validation and test losses
            stay the plain cross-entropy.
        focal_gamma: The focal loss's focusing parameter (>= 0; 0 is cross-entropy).
        compile: Run the backbone and head through ``torch.compile``, for training,
            validation and ``predict``: ``False`` (eager), ``True`` (mode
            ``"default"``), ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or
            ``"max-autotune"``. Compilation happens at the first batch (tens of
            seconds) and again for new input shapes or train/eval mode. The
            module structure is untouched, so checkpoints have the same keys
            (no ``_orig_mod.``) and load with or without compile. A model that
            fails to compile warns once, naming the error, and runs eagerly.
            See the training guide for when it pays.

    Raises:
        ValueError: For any argument out of range or an unknown name; the
            message names the argument, the value and what is accepted.

    A trained model is used through [`load`][autotimm.ImageClassifier.load],
    [`predict`][autotimm.ImageClassifier.predict],
    [`calibrate`][autotimm.ImageClassifier.calibrate] and
    [`save`][autotimm.ImageClassifier.save] (from ``autotimm.classifier.predictor``).

    Example:
        >>> from autotimm import BackboneConfig, ImageClassifier
        >>> model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3)
        >>> model(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 3])

        Without ``num_classes`` the data decides, at fit:

        >>> model = ImageClassifier(BackboneConfig("resnet18", pretrained=False))
        >>> model.hparams.num_classes is None
        True
    """

    def __init__(
        self,
        backbone: str | BackboneConfig | dict[str, Any],
        num_classes: int | None = None,
        metrics: MetricManager | Sequence[MetricConfig] | None = None,
        logging_config: LoggingConfig | dict[str, bool] | None = None,
        lr: float | None = None,
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
        cutmix_alpha: float = 0.0,
        multi_label: bool = False,
        class_weights: Sequence[float] | None = None,
        data_config: dict[str, Any] | None = None,
        layer_decay: float | None = None,
        unfreeze_schedule: dict[int, int | str] | None = None,
        ema_decay: float | None = None,
        cache_features: bool = False,
        channels_last: bool = True,
        tta: bool | str = False,
        loss: str = "cross_entropy",
        focal_gamma: float = 2.0,
        compile: bool | str = False,
    ) -> None:
        super().__init__()
        if lr is None:  # the default recipe's rule: by the weights the backbone starts from
            given = as_backbone_config(backbone)
            lr = default_lr(pretrained=given.pretrained or given.checkpoint_path is not None)
        check_classifier_arguments(
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
            cutmix_alpha=cutmix_alpha,
        )
        check_loss(loss, focal_gamma)
        compile_mode = check_compile(compile)
        self._unfreeze = check_finetuning_arguments(
            freeze_backbone, layer_decay, unfreeze_schedule, ema_decay, cache_features, channels_last, mixup_alpha,
            cutmix_alpha,
        )  # fmt: skip
        if num_classes is None and class_names is not None:
            num_classes = len(class_names)
        if num_classes is None and isinstance(metrics, MetricManager):
            num_classes = metrics.num_classes
        tta = check_tta(tta)
        if num_classes is not None:
            class_names = check_class_names(class_names, num_classes)
            class_weights = check_class_weights(class_weights, num_classes)

        if isinstance(metrics, MetricManager) and metrics.num_classes != num_classes:
            raise ValueError(f"`metrics` was built for {metrics.num_classes} classes, but num_classes={num_classes}")
        backbone_cfg = as_backbone_config(backbone)
        # Kept as given until the number of classes is known: the default metrics depend on it.
        self._metric_spec = list(metrics.configs) if isinstance(metrics, MetricManager) else metrics  # no submodule
        metric_configs = None if num_classes is None else as_metric_configs(metrics, num_classes, multi_label)
        if isinstance(logging_config, dict):
            logging_config = LoggingConfig(**logging_config)
        self.logging_config = logging_config or LoggingConfig()
        if multi_label and self.logging_config.log_confusion_matrix:
            raise ValueError("`logging_config.log_confusion_matrix` is for single-label models, not multi_label=True")

        # Saved as plain data so checkpoints load with torch's weights_only=True;
        # the weights live in the state dict, so loading never reaches the hub.
        saved_backbone = {**backbone_cfg.to_dict(), "pretrained": False, "checkpoint_path": None}
        self.save_hyperparameters(
            plain_data(
                {
                    "backbone": saved_backbone,
                    "num_classes": num_classes,
                    "metrics": None if metric_configs is None else [cfg.to_dict() for cfg in metric_configs],
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
                    "cutmix_alpha": cutmix_alpha,
                    "multi_label": multi_label,
                    "class_weights": class_weights,
                    "data_config": data_config,
                    "layer_decay": layer_decay,
                    "unfreeze_schedule": self._unfreeze and self._unfreeze.to_dict(),
                    "ema_decay": ema_decay,
                    "cache_features": cache_features,
                    "channels_last": channels_last,
                    "tta": tta,
                    "loss": loss,
                    "focal_gamma": focal_gamma,
                    "compile": compile,
                }
            )
        )
        self.class_names: list[str] = class_names or []

        self.backbone = create_backbone(backbone_cfg)
        self.head: ClassificationHead | None = None
        self.criterion: nn.Module | None = None
        self.metrics: MetricManager | None = None
        self.val_confusion_matrix_values: torch.Tensor | None = None
        # Temperature scaling (set by `calibrate`): predictions use softmax(logits / temperature).
        self.register_buffer("temperature", torch.ones(()))
        self._warmup: LinearWarmup | None = None
        self._own_schedulers: list[Any] = []
        if freeze_backbone:
            # Eval mode is set in on_train_start: Lightning keeps each module's mode
            # and warns about modules already in eval mode when fit starts.
            self.backbone.requires_grad_(False)
        if self._unfreeze is not None:
            self._unfreeze.apply(self, epoch=0, norms=False)  # norm modes are set when training starts
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self._param_ndims: dict[str, int] = {}
        # The epoch's training loss, summed on the device (see training_step), and per-step logging's state.
        self._loss_sum: torch.Tensor | None = None
        self._loss_count = 0
        self._log_step = True
        self._last_step_log = -math.inf
        # torch.compile of backbone + head, built at the first forward (see `forward`); None: eager.
        self._compile_mode = compile_mode
        self._compiled_forward: Any = None
        if num_classes is not None:
            self._build_head(num_classes)

    # ------------------------------------------------------------------ model
    def _build_head(self, num_classes: int) -> None:
        """Build what depends on the number of classes: head, loss, metrics, confusion matrix."""
        hp = self.hparams
        configs = as_metric_configs(self._metric_spec, num_classes, hp.multi_label)
        hp["class_weights"] = check_class_weights(hp.class_weights, num_classes)
        hp["num_classes"] = num_classes
        hp["metrics"] = plain_data([cfg.to_dict() for cfg in configs])
        self.class_names = self.class_names or [str(i) for i in range(num_classes)]
        # Headless MobileNetV3/LCNet/GhostNet keep a conv head: their pooled output is head_hidden_size wide.
        width = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        device = next(self.backbone.parameters()).device
        self.head = ClassificationHead(width, num_classes, dropout=hp.head_dropout).to(device)
        self.criterion = self._make_criterion().to(device)
        self.metrics = MetricManager(configs, num_classes, hp.multi_label).to(device)  # fresh, never shared
        if self.logging_config.log_confusion_matrix:
            self.val_confusion_matrix = MulticlassConfusionMatrix(num_classes=num_classes).to(device)
        # FSDP flattens parameters to 1-d before configure_optimizers: weight decay goes by these shapes.
        self._param_ndims = {name: p.ndim for name, p in self.named_parameters()}

    def set_num_classes(self, num_classes: int) -> None:
        """Build the head, loss and metrics of a model made without ``num_classes``.

        `AutoTrainer.fit` and `setup` call this (through
        [`apply_data_info`][autotimm.ImageClassifier.apply_data_info]) with the
        data's number of classes; the number is then recorded in the
        hyper-parameters, so checkpoints load without the data.

        Args:
            num_classes: Number of target classes (>= 2).

        Raises:
            ValueError: ``num_classes`` is not an int >= 2, or the model already
                has another number of classes.
        """
        require_number("num_classes", num_classes, 2, integer=True, hint="a softmax classifier needs two classes")
        current = self.hparams.num_classes
        if current is not None and current != num_classes:
            raise ValueError(f"the model was built with num_classes={current}; got num_classes={num_classes}")
        if current is None:
            self._build_head(int(num_classes))

    def setup(self, stage: str) -> None:
        """Take the classes from the trainer's data module when the model was made without ``num_classes``.

        Plain Lightning ``fit`` reaches this hook after the data module's own
        ``setup``; the class names, preprocessing and class weights are then
        applied as `AutoTrainer.fit` does (see
        [`apply_data_info`][autotimm.ImageClassifier.apply_data_info]).

        Args:
            stage: Lightning's stage.

        Raises:
            ValueError: The number of classes is unknown and the data cannot tell it, or
                the fine-tuning options do not fit the run (see ``FineTuningMixin.setup``).
        """
        super().setup(stage)
        if self.hparams.num_classes is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        try:
            class_names = getattr(datamodule, "class_names", None)
        except RuntimeError:  # an ImageDataModule that is not set up
            class_names = None
        if class_names is None:
            raise ValueError(
                "ImageClassifier was built without `num_classes` and this run's data does not tell it: pass "
                "num_classes=... (or class_names=...), or fit with a data module that has `class_names`, such as "
                "ImageDataModule"
            )
        self.apply_data_info(
            class_names=class_names,
            data_config=getattr(datamodule, "data_config", None),
            class_weights=getattr(datamodule, "class_weights_tensor", None),
            multi_label=getattr(datamodule, "multi_label", None),
        )

    def require_head(self) -> None:
        """Raise unless the model has its head, i.e. knows its number of classes.

        Raises:
            RuntimeError: The model was made without ``num_classes`` and has not met its data yet.
        """
        if self.head is None:
            raise RuntimeError(
                "ImageClassifier has no head yet: it was built without `num_classes`, which it takes from the data "
                "when training starts (AutoTrainer.fit); pass num_classes=... to use it before that"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``(N, C, H, W)``.

        Raises:
            RuntimeError: The model was made without ``num_classes`` and has not met its data yet.
        """
        self.require_head()
        if self.hparams.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compile_mode is None:
            return self._eager_forward(x)
        try:
            if self._compiled_forward is None:
                # A compiled function, not a compiled module: the state dict keeps its keys (no `_orig_mod.`).
                self._compiled_forward = torch.compile(self._eager_forward, mode=self._compile_mode)
            return self._compiled_forward(x)
        except Exception as err:
            logits = self._eager_forward(x)  # a real error raises here again, eagerly
            self._compile_mode, self._compiled_forward = None, None
            warnings.warn(
                f"ImageClassifier(compile={self.hparams.compile!r}): torch.compile failed, running eagerly "
                f"instead: {type(err).__name__}: {str(err).strip()[:500]}",
                RuntimeWarning,
                stacklevel=2,
            )
            return logits

    def _eager_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def __getstate__(self) -> dict[str, Any]:
        """Pickle and copy without the compiled function: a copy (e.g. the EMA model) compiles its own."""
        state = dict(super().__getstate__())  # a copy: the live model keeps its compiled function
        state["_compiled_forward"] = None
        return state

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        # Cached backbone features (cache_features=True, see FeatureDataModule) arrive as (N, num_features).
        return self.head(x) if x.ndim == 2 and self.hparams.cache_features else self(x)

    # ------------------------------------------------------------------ steps
    def _make_criterion(self) -> nn.Module:
        """The training loss. Validation and test losses are unweighted, unsmoothed (as in timm's train.py)."""
        weight = None if self.hparams.class_weights is None else torch.tensor(self.hparams.class_weights)
        if self.hparams.get("loss", "cross_entropy") == "focal":  # label smoothing of multi-label: training_step
            smoothing = 0.0 if self.hparams.multi_label else self.hparams.label_smoothing
            return FocalLoss(self.hparams.focal_gamma, weight, self.hparams.multi_label, smoothing)
        if self.hparams.multi_label:  # label smoothing is applied to the targets in training_step
            return nn.BCEWithLogitsLoss(weight=weight)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=self.hparams.label_smoothing)

    def _eval_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.multi_label:
            return F.binary_cross_entropy_with_logits(logits, y.float())
        return F.cross_entropy(logits, y)

    # Metrics are updated every step and logged as values: once per epoch (and per step only when asked).
    # Logging the Metric object itself every step costs Lightning ~1 ms per metric per step (it moves the
    # metric's states to the device each time): a third of a cached linear probe's head epoch.
    def _log_metrics(self, stage: str, logits: torch.Tensor, target: torch.Tensor) -> None:
        for key, value, prog_bar in self.metrics.step_values(stage, logits, target):
            self.log(key, value, on_step=True, on_epoch=False, prog_bar=prog_bar)

    def _log_epoch_metrics(self, stage: str) -> None:
        for key, value, prog_bar in self.metrics.epoch_values(stage):
            self.log(key, value, on_step=False, on_epoch=True, prog_bar=prog_bar)

    def _evaluate(self, batch: Sequence[torch.Tensor], stage: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self._logits(x)
        loss = self._eval_loss(logits, y)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        self._log_metrics(stage, logits, y.long() if self.hparams.multi_label else y)
        return loss, logits, y

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One training step on ``(images, labels)``; returns the loss.

        Logs ``train/loss`` (per step), ``train/loss_epoch`` (the epoch's
        mean), the train metrics and, when asked, ``train/lr``.
        With ``mixup_alpha`` or ``cutmix_alpha`` > 0 images and targets are mixed first.
        Under a [`Distillation`][autotimm.training.distillation.Distillation] callback
        the loss mixes in the teacher's soft targets (logged as ``train/distill_loss``).
        """
        hp = self.hparams
        x, target = batch[0], batch[1]
        if hp.mixup_alpha > 0 or hp.cutmix_alpha > 0:
            x, target = mix_batch(
                x, target, hp.num_classes, hp.mixup_alpha, hp.cutmix_alpha, multi_label=hp.multi_label
            )
        if hp.multi_label:
            target = target.float() * (1 - hp.label_smoothing) + 0.5 * hp.label_smoothing
        logits = self._logits(x)
        loss = self.criterion(logits, target)
        distillation = getattr(self, "distillation", None)  # set by a Distillation callback while it trains
        if distillation is not None:
            loss, soft = distillation.loss(x, logits, loss, hp.multi_label)
            self.log("train/distill_loss", soft, on_step=False, on_epoch=True, batch_size=len(x), sync_dist=True)
        # The epoch mean is summed here, on the device, and logged once at the epoch's end (`train/loss_epoch`):
        # an epoch shorter than log_every_n_steps logs no step value at all.
        detached = loss.detach().float()
        self._loss_sum = detached * len(x) if self._loss_sum is None else self._loss_sum.add_(detached, alpha=len(x))
        self._loss_count += len(x)
        self._log_step = self._step_is_read(batch_idx)
        if self._log_step:
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(x))
        if hp.multi_label:
            hard = (target >= 0.5).long()
        else:
            hard = target.argmax(1) if target.ndim == 2 else target
        self._log_metrics("train", logits, hard)
        if self.logging_config.log_learning_rate and self._trainer is not None and self._log_step:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    #: Seconds after which ``train/loss`` is logged again for the progress bar, between the logger's steps.
    PROGRESS_INTERVAL = 0.5

    def _step_is_read(self, batch_idx: int) -> bool:
        """Whether this training step's per-step values (loss, lr, norms) are read by anything.

        Each ``self.log`` call costs Lightning a fraction of a millisecond, so
        the per-step values are logged only where they are read: on the steps
        the loggers write (every ``log_every_n_steps``, as Lightning decides),
        on the epoch's last batch (the callbacks' ``callback_metrics`` at the
        epoch's end, e.g. a checkpoint monitoring ``train/loss``), and every
        `PROGRESS_INTERVAL` seconds for the progress bar. What the loggers
        receive is the same as with a log call every step.
        """
        trainer = self._trainer
        if trainer is None or trainer.fast_dev_run or trainer.should_stop:
            return True
        every = trainer.log_every_n_steps
        if every and (trainer.global_step + 1) % every == 0:  # Lightning's test, before the step is counted
            return True
        if batch_idx + 1 >= trainer.num_training_batches:
            return True
        now = time.monotonic()
        if now - self._last_step_log >= self.PROGRESS_INTERVAL:
            self._last_step_log = now
            return True
        return False

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
        """Return probabilities ``(N, num_classes)``; ``batch`` is images or ``(images, ...)``.

        Logits are divided by the fitted `temperature` (1 until `calibrate`), then softmax over
        classes, or a sigmoid per class for multi-label models.
        """
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        logits = self(x) / self.temperature
        return logits.sigmoid() if self.hparams.multi_label else logits.softmax(dim=1)

    # ------------------------------------------------------------------ hooks
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log ``train/grad_norm`` and ``train/weight_norm`` when asked (one fused norm each)."""
        if not self._log_step:  # only on the steps whose values are read (see `_step_is_read`)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.logging_config.log_gradient_norm:
            self.log("train/grad_norm", total_norm(p.grad for p in params if p.grad is not None), on_step=True)
        if self.logging_config.log_weight_norm:
            self.log("train/weight_norm", total_norm(params), on_step=True)

    def on_validation_epoch_start(self) -> None:
        """Start a fresh confusion matrix (reset here, in the loop's own grad mode)."""
        if self.logging_config.log_confusion_matrix:
            self.val_confusion_matrix.reset()

    def on_train_epoch_start(self) -> None:
        """Start the epoch's loss sum (and apply the unfreeze schedule, see ``FineTuningMixin``)."""
        super().on_train_epoch_start()
        self._loss_sum, self._loss_count = None, 0

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean training loss (``train/loss_epoch``) and train metrics."""
        if self._loss_count:
            mean = self._loss_sum / self._loss_count
            self.log(
                "train/loss_epoch", mean, on_step=False, on_epoch=True, batch_size=self._loss_count, sync_dist=True
            )
        self._loss_sum, self._loss_count = None, 0
        self._log_epoch_metrics("train")

    def on_test_epoch_end(self) -> None:
        """Log the test metrics."""
        self._log_epoch_metrics("test")

    def on_validation_epoch_end(self) -> None:
        """Log the val metrics, and the confusion-matrix figure as ``val/confusion_matrix`` when asked."""
        self._log_epoch_metrics("val")
        if not self.logging_config.log_confusion_matrix:
            return
        matrix = self.val_confusion_matrix.compute()
        if self.trainer.sanity_checking:
            return
        self.val_confusion_matrix_values = matrix.cpu()
        loggers = self.trainer.loggers
        if loggers and self.trainer.is_global_zero:  # compute() above is collective; drawing is rank 0's
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
            layer_decay=self.hparams.layer_decay,
            include_frozen=self._unfreeze is not None,
            ndims=self._param_ndims,
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
        self._own_schedulers = [c["scheduler"] for c in configs]
        return ([optimizer], configs) if configs else optimizer

    def lr_scheduler_step(self, scheduler: Any, metric: Any | None) -> None:
        """Step torch, timm and warm-up schedulers alike.

        See [`step_scheduler`][autotimm.optim.schedulers.step_scheduler].
        """
        if not any(scheduler is own for own in self._own_schedulers):
            # e.g. the LR finder's own sweep, which swaps in a torch scheduler of its own
            super().lr_scheduler_step(scheduler, metric)
            return
        step_scheduler(scheduler, metric, self.trainer.global_step, self.current_epoch, self._warmup)
