"""``AutoTrainer``: a Lightning ``Trainer`` with autotimm's defaults and opt-in LR / batch-size tuning."""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
)
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.model_helpers import is_overridden

from autotimm.checks import require_number
from autotimm.optim.schedulers import metric_mode
from autotimm.training.feature_cache import FeatureDataModule
from autotimm.training.metrics import MetricManager
from autotimm.training.tuner import TunerConfig, run_tuners

__all__ = ["AutoTrainer", "TunerConfig"]


#: Name fragments of metrics where higher is better (as for the ``plateau`` scheduler).
def default_monitor(model: pl.LightningModule) -> tuple[str, str]:
    """The metric to keep the best checkpoint by: ``val/accuracy`` if the model logs it, else ``val/loss``.

    Args:
        model: The model about to be trained.

    Returns:
        ``(monitor, mode)``: ``("val/accuracy", "max")`` or ``("val/loss", "min")``.
    """
    manager = getattr(model, "metrics", None)
    if isinstance(manager, MetricManager):
        for cfg in manager.configs:
            # A metric logged per step as well is logged as `val/accuracy_epoch`, not `val/accuracy`.
            if cfg.name == "accuracy" and "val" in cfg.stages and cfg.log_on_epoch and not cfg.log_on_step:
                return "val/accuracy", "max"
    return "val/loss", "min"


class _AutotimmCheckpoint(ModelCheckpoint):
    """autotimm's own ``ModelCheckpoint``s (best and last).

    A subclass so that their ``state_key`` (class name plus monitor and mode)
    differs from that of any ``ModelCheckpoint`` the user adds: Lightning
    stores callback state by that key and refuses, or silently merges, two
    callbacks that share it.
    """


class AutoTrainer(pl.Trainer):
    """A ``pytorch_lightning.Trainer`` with autotimm's defaults.

    On top of Lightning's ``Trainer`` it adds, unless turned off:

    - a ``TensorBoardLogger`` writing to ``{output_dir}/logs``,
    - ``RichProgressBar`` and ``RichModelSummary``,
    - a ``ModelCheckpoint`` in ``{output_dir}/checkpoints`` keeping the best
      checkpoint by ``monitor`` and the last one (``last.ckpt``),
    - ``EarlyStopping`` on ``monitor`` when ``early_stopping_patience`` is set,
    - seeding and deterministic algorithms when ``seed`` is set,
    - the learning-rate and batch-size finders, when ``tuner_config`` asks.

    Args:
        output_dir: Folder for logs, checkpoints and tuning results; also
            Lightning's ``default_root_dir`` unless that is given.
        monitor: Logged metric the best checkpoint (and early stopping) is
            chosen by. ``None``: ``val/accuracy`` if the model logs it, else
            ``val/loss``, decided when ``fit`` starts.
        mode: ``"min"`` or ``"max"``. ``None``: ``"max"`` for accuracy-like
            names (``acc``, ``f1``, ``auroc``, ``precision``, ``recall``,
            ``iou``), else ``"min"``.
        early_stopping_patience: Stop after this many validation epochs
            without improvement of ``monitor``; ``None`` disables early stopping.
        seed: Seed Python, NumPy, torch and the data-loader workers (when the
            trainer is created and again just before training) and turn on
            ``deterministic="warn"`` unless ``deterministic`` is given.
        tuner_config: The tuners to run before training; see
            [`TunerConfig`][autotimm.training.tuner.TunerConfig].
        **trainer_kwargs: Any ``pytorch_lightning.Trainer`` argument.
            ``callbacks`` are added to autotimm's; ``logger=False`` turns
            logging off and a logger object replaces the TensorBoard one;
            ``enable_checkpointing``, ``enable_progress_bar`` and
            ``enable_model_summary`` set to ``False`` leave out the matching
            callback.

    Raises:
        ValueError: For an argument of the wrong type or out of range; the
            message names the argument, the value and what is accepted.

    Example:
        >>> trainer = AutoTrainer(max_epochs=1, output_dir="runs/demo", logger=False, enable_progress_bar=False)
        >>> from pytorch_lightning.callbacks import ModelCheckpoint
        >>> isinstance(trainer.checkpoint_callback, ModelCheckpoint)
        True
    """

    def __init__(
        self,
        output_dir: str | Path = "autotimm_output",
        monitor: str | None = None,
        mode: str | None = None,
        early_stopping_patience: int | None = None,
        seed: int | None = None,
        tuner_config: TunerConfig | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        _check_arguments(output_dir, monitor, mode, early_stopping_patience, seed, tuner_config)
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.tuner_config = tuner_config or TunerConfig()
        self.tuning_results: dict[str, Any] = {}
        self._auto_monitor = monitor is None
        self._patience = early_stopping_patience
        self._tuning = False
        if seed is not None:
            pl.seed_everything(seed, workers=True)
            trainer_kwargs.setdefault("deterministic", "warn")
        trainer_kwargs.setdefault("default_root_dir", str(self.output_dir))
        if trainer_kwargs.get("logger", True) in (True, None):
            trainer_kwargs["logger"] = TensorBoardLogger(save_dir=str(self.output_dir), name="logs")
        user_callbacks = trainer_kwargs.pop("callbacks", None) or []
        user_callbacks = [user_callbacks] if isinstance(user_callbacks, Callback) else list(user_callbacks)
        self._checkpointing = trainer_kwargs.get("enable_checkpointing", True) is not False
        ours: list[Callback] = []
        if trainer_kwargs.get("enable_progress_bar", True) is not False and not _has(user_callbacks, ProgressBar):
            ours.append(RichProgressBar())
        if trainer_kwargs.get("enable_model_summary", True) is not False and not _has(user_callbacks, ModelSummary):
            ours.append(RichModelSummary())
        monitor = monitor or "val/loss"
        ours += self._monitored_callbacks(monitor, mode or metric_mode(monitor))
        if self._checkpointing:
            ours.append(self._last_checkpoint())
        if seed is not None:
            ours.append(_RankSeed(seed))
        super().__init__(callbacks=ours + user_callbacks, **trainer_kwargs)

    # ------------------------------------------------------------ callbacks
    def _monitored_callbacks(self, monitor: str, mode: str) -> list[Callback]:
        """Build the ModelCheckpoint and EarlyStopping callbacks on ``monitor``, as far as enabled."""
        callbacks: list[Callback] = []
        if self._checkpointing:
            callbacks.append(_AutotimmCheckpoint(dirpath=self.checkpoint_dir, monitor=monitor, mode=mode, save_top_k=1))
        if self._patience is not None:
            callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=self._patience))
        self._monitored = callbacks
        return callbacks

    def _last_checkpoint(self) -> ModelCheckpoint:
        """A ModelCheckpoint that overwrites ``last.ckpt`` after every epoch, for resuming.

        Not ``ModelCheckpoint(save_last=True)`` on the best-model callback: since
        Lightning 2.6 that writes ``last.ckpt`` only when a new best is saved.
        """
        return _AutotimmCheckpoint(
            dirpath=self.checkpoint_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False
        )

    @property
    def checkpoint_dir(self) -> Path:
        """Folder of the checkpoints: ``{output_dir}/checkpoints``."""
        return self.output_dir / "checkpoints"

    def _set_monitor(self, monitor: str, mode: str) -> None:
        """Rebuild autotimm's checkpoint and early-stopping callbacks for another monitored metric."""
        old = self._monitored
        if all((c.monitor, c.mode) == (monitor, mode) for c in old):  # type: ignore[attr-defined]
            return
        new = self._monitored_callbacks(monitor, mode)
        replacement = dict(zip(map(id, old), new, strict=True))
        self.callbacks = [replacement.get(id(c), c) for c in self.callbacks]

    # ------------------------------------------------------------------ fit
    def fit(  # type: ignore[override]
        self,
        model: pl.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Prepare the data and the model, run the tuners asked for, then train.

        Same arguments as ``pytorch_lightning.Trainer.fit``; a data module
        may also be passed second, ``fit(model, datamodule)``. With a data
        module, before training:

        1. ``datamodule.configure_for(model.backbone)``, if it has that method
           (it adopts the backbone's preprocessing),
        2. ``datamodule.setup("fit")``,
        3. ``model.apply_data_info(class_names, data_config, class_weights)``
           with the data module's ``class_names``, ``data_config`` and
           ``class_weights_tensor``, so that checkpoints carry them.

        Args:
            model: The model to train, usually an
                [`ImageClassifier`][autotimm.ImageClassifier].
            train_dataloaders: Training data loader(s), or a data module.
            val_dataloaders: Validation data loader(s).
            datamodule: A ``LightningDataModule``.
            ckpt_path: A checkpoint to resume from (epoch, step, optimizer and
                scheduler state), e.g. ``{output_dir}/checkpoints/last.ckpt``.
            weights_only: Passed to Lightning's checkpoint loading.

        Raises:
            ValueError: If the data's classes do not match the model's
                ``num_classes``, the best checkpoint or early stopping
                follows a ``val`` metric but there is no validation data, or
                ``auto_batch_size`` is asked without a data module.
            RuntimeError: If a tuner fails or gives no result.

        A model built with ``cache_features=True`` trains on its backbone's
        features, computed once before training; see
        [`FeatureDataModule`][autotimm.FeatureDataModule]. Pass one as
        ``datamodule`` to set how the features are computed; any other data
        module is wrapped in one with its defaults.
        """
        if self._tuning:  # the Tuner's own trial runs
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
            return
        if isinstance(train_dataloaders, pl.LightningDataModule):
            if datamodule is not None:
                raise ValueError("pass the data module once, as `datamodule` or second argument, not as both")
            datamodule, train_dataloaders = train_dataloaders, None
        features = None
        if isinstance(datamodule, FeatureDataModule):  # set up and checked through the images it wraps
            features, datamodule = datamodule, _feature_source(model, datamodule)
        if datamodule is not None:
            _prepare_data(model, datamodule)
        if self._auto_monitor:
            self._set_monitor(*default_monitor(model))
        self._check_validation_data(model, val_dataloaders, datamodule)
        if getattr(model, "hparams", {}).get("cache_features"):
            if datamodule is not None:
                datamodule = features or FeatureDataModule(model, datamodule)
            elif train_dataloaders is not None:
                datamodule = FeatureDataModule(
                    model, train_dataloader=train_dataloaders, val_dataloader=val_dataloaders
                )
            train_dataloaders = val_dataloaders = None
        if self.tuner_config.enabled and ckpt_path is None:  # a resumed run keeps its lr (in the optimizer state)
            # Without loggers: a trial run's teardown would write the logger's hparams.yaml before any are logged.
            self._tuning, loggers, self.loggers = True, self.loggers, []
            try:
                self.tuning_results = run_tuners(
                    self, model, self.tuner_config, self.output_dir, train_dataloaders, val_dataloaders, datamodule
                )
            finally:
                self._tuning, self.loggers = False, loggers
        if self.seed is not None:
            pl.seed_everything(self.seed, workers=True)
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def _check_validation_data(
        self, model: pl.LightningModule, val_dataloaders: Any, datamodule: pl.LightningDataModule | None
    ) -> None:
        """Fail before training, not after the first epoch, when a monitored ``val`` metric can never be logged."""
        monitors = [m for m in (getattr(c, "monitor", None) for c in self._monitored) if m and m.startswith("val")]
        if not monitors or _has_validation_data(self, model, val_dataloaders, datamodule):
            return
        raise ValueError(
            f"AutoTrainer monitors {monitors[0]!r} for the best checkpoint or early stopping, but this run has no "
            "validation data: give the data a validation split "
            "(e.g. ImageDataModule(val_split=0.2)) or `val_dataloaders`, or pass AutoTrainer(monitor=...) a "
            "metric logged in training, e.g. 'train/loss'"
        )

    # ------------------------------------------------------------ evaluation
    def validate(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """``pytorch_lightning.Trainer.validate``, with the data module configured for the model's backbone first."""
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """``pytorch_lightning.Trainer.test``, with the data module configured for the model's backbone first."""
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        datamodule: pl.LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """``pytorch_lightning.Trainer.predict``, with the data module configured for the model's backbone first.

        So a checkpoint loaded in a new process is evaluated with the
        preprocessing (input channels, size, mean, std) it was trained with.
        """
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)


def _configure_for(model: pl.LightningModule | None, dataloaders: Any, datamodule: Any) -> None:
    """Call ``configure_for(model.backbone)`` on the data module (given either way), if both have what it takes."""
    datamodule = dataloaders if isinstance(dataloaders, pl.LightningDataModule) else datamodule
    if hasattr(datamodule, "configure_for") and hasattr(model, "backbone"):
        datamodule.configure_for(model.backbone)


def _has_validation_data(
    trainer: pl.Trainer, model: pl.LightningModule, val_dataloaders: Any, datamodule: pl.LightningDataModule | None
) -> bool:
    """Whether ``fit`` will validate: there are validation loaders and ``limit_val_batches`` is not 0."""
    if trainer.limit_val_batches == 0:
        return False
    if val_dataloaders is not None:
        loaders = val_dataloaders
    elif datamodule is not None and is_overridden("val_dataloader", datamodule):
        loaders = datamodule.val_dataloader()
    else:
        return is_overridden("val_dataloader", model)
    return not (isinstance(loaders, (list, tuple)) and len(loaders) == 0)


class _RankSeed(Callback):
    """Once the processes exist, give each rank its own random stream: ``seed + global_rank``.

    So mixup draws, dropout masks and in-process augmentation differ between
    ranks. Not ``seed_everything``: ``PL_GLOBAL_SEED`` seeds the
    ``DistributedSampler`` and must stay equal on all ranks.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            seed = self.seed + trainer.global_rank
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)


def _has(callbacks: Iterable[Callback], kind: type) -> bool:
    return any(isinstance(c, kind) for c in callbacks)


def _feature_source(model: pl.LightningModule, features: FeatureDataModule) -> pl.LightningDataModule:
    """The image data module that a `FeatureDataModule` given to ``fit`` wraps.

    Raises:
        ValueError: The model does not train on cached features, is not the
            one whose backbone computes them, or the features come from loaders.
    """
    if not getattr(model, "hparams", {}).get("cache_features"):
        raise ValueError(
            "a FeatureDataModule holds cached backbone features: build the model with "
            "freeze_backbone=True, cache_features=True"
        )
    if features.model is not model:
        raise ValueError("the FeatureDataModule was built for another model: pass FeatureDataModule(model, data)")
    if features.source is None:
        raise ValueError(
            "AutoTrainer.fit takes a FeatureDataModule built from a data module; "
            "pass loaders to fit() as `train_dataloaders` and `val_dataloaders` instead"
        )
    return features.source


def _prepare_data(model: pl.LightningModule, datamodule: pl.LightningDataModule) -> None:
    """Let the data module adopt the backbone's preprocessing and hand its class info to the model."""
    _configure_for(model, None, datamodule)
    datamodule.setup("fit")
    class_names = getattr(datamodule, "class_names", None)
    if class_names is not None and hasattr(model, "apply_data_info"):
        model.apply_data_info(
            class_names=class_names,
            data_config=getattr(datamodule, "data_config", None),
            class_weights=getattr(datamodule, "class_weights_tensor", None),
            multi_label=getattr(datamodule, "multi_label", None),
        )


def _check_arguments(output_dir: Any, monitor: Any, mode: Any, patience: Any, seed: Any, tuner_config: Any) -> None:
    if not isinstance(output_dir, (str, Path)) or not str(output_dir):
        raise ValueError(f"`output_dir` must be a folder path (str or Path), got {output_dir!r}")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ValueError(f"`monitor` must be a logged metric name such as 'val/loss', or None, got {monitor!r}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"`mode` must be 'min', 'max' or None, got {mode!r}")
    require_number("early_stopping_patience", patience, 0, integer=True, allow_none=True)
    require_number("seed", seed, None, integer=True, allow_none=True)
    if tuner_config is not None and not isinstance(tuner_config, TunerConfig):
        raise ValueError(f"`tuner_config` must be a TunerConfig or None, got {tuner_config!r}")
