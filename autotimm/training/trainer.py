"""``AutoTrainer``: a Lightning ``Trainer`` with autotimm's defaults and opt-in LR / batch-size tuning."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from datetime import timedelta
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
)
from pytorch_lightning.plugins.io import CheckpointIO
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.model_helpers import is_overridden

from autotimm.checks import require_number
from autotimm.optim.schedulers import metric_mode
from autotimm.training.checkpointing import (
    ResumeState,
    SafeCheckpointIO,
    parse_duration,
    prepare_run_folder,
    resume_checkpoint,
)
from autotimm.training.console import LOG_INTERVAL_WARNING, CompactModelSummary, QuietProgressBar, quiet_lightning
from autotimm.training.curves import TrainingHistory
from autotimm.training.feature_cache import FeatureDataModule
from autotimm.training.loggers import TrackedRun, TrackerConfig, create_loggers
from autotimm.training.metrics import MetricManager
from autotimm.training.tuner import TunerConfig, as_tuner_config, run_tuners

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

    - a ``TensorBoardLogger`` writing to ``{output_dir}/logs``, or the trackers
      named by ``logger=`` (``"csv"``, ``"mlflow"``, ``"wandb"``, ...),
    - Lightning's rich progress bar and model summary, without ``v_num``
      and without a FLOPs column of zeros (see `autotimm.training.console`),
    - a ``log_every_n_steps`` that fits the epoch (every step for up to 10
      steps an epoch, about 10 points an epoch up to Lightning's 50) unless
      given,
    - a ``ModelCheckpoint`` in ``{output_dir}/checkpoints`` keeping the best
      checkpoint by ``monitor`` and the last one (``last.ckpt``),
    - with ``checkpoint_every_n_steps`` / ``checkpoint_every``, recovery
      checkpoints inside the epoch, written to the same ``last.ckpt``,
    - atomic checkpoint writes and ``weights_only=True`` loads
      ([`SafeCheckpointIO`][autotimm.training.checkpointing.SafeCheckpointIO]),
      for every ``ckpt_path`` of ``fit``, ``validate``, ``test`` and
      ``predict``, with or without ``enable_checkpointing``,
    - a refusal to train into a folder that already holds a run, unless
      ``fit(resume=...)`` or ``overwrite=True``,
    - a [`TrainingHistory`][autotimm.training.curves.TrainingHistory] writing
      ``history.json`` / ``history.csv`` each epoch and ``curves.png`` at the
      end of ``fit`` into ``output_dir`` (unless ``callbacks`` has one),
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
        tuner_config: The tuners to run before training: a
            [`TunerConfig`][autotimm.training.tuner.TunerConfig]; ``None`` or
            ``False`` for none; ``True`` for the learning-rate finder with its
            default arguments (``TunerConfig(auto_lr=True)``; the batch-size
            finder needs a data module and is only run when asked for).
        overwrite: When ``output_dir`` already holds a run (a ``.ckpt`` file
            in ``{output_dir}/checkpoints``) and ``fit`` is not resuming it,
            move the whole old folder aside to ``{output_dir}.old-YYYYmmdd-HHMMSS``
            (nothing is deleted) instead of refusing with a `RunExistsError`
            (see [`prepare_run_folder`][autotimm.training.checkpointing.prepare_run_folder]).
        checkpoint_every_n_steps: Also write ``last.ckpt`` every this many
            optimizer steps (>= 1), inside the epoch: a killed run resumes
            from there, at the next batch. ``None``: at epoch ends only.
        checkpoint_every: Also write ``last.ckpt`` after this much training
            time: ``"10m"``, ``"90s"``, ``"1h"``, seconds, or a ``timedelta``.
        tracking: The options of trackers named in ``logger`` (experiment, run name, tags,
            MLflow URI, W&B project and mode): a
            [`TrackerConfig`][autotimm.training.loggers.TrackerConfig].
        **trainer_kwargs: Any ``pytorch_lightning.Trainer`` argument.
            ``callbacks`` are added to autotimm's; ``logger`` is a tracker's
            name (``"tensorboard"``, ``"csv"``, ``"mlflow"``, ``"wandb"``), a
            Lightning logger, a list of those, or ``False`` for none (see
            [`create_loggers`][autotimm.training.loggers.create_loggers]);
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
        tuner_config: TunerConfig | bool | None = None,
        overwrite: bool = False,
        checkpoint_every_n_steps: int | None = None,
        checkpoint_every: str | timedelta | float | None = None,
        tracking: TrackerConfig | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        _check_arguments(output_dir, monitor, mode, early_stopping_patience, seed)
        _check_checkpointing(overwrite, checkpoint_every_n_steps)
        self.overwrite = overwrite
        self._every_steps = checkpoint_every_n_steps
        self._every_time = None if checkpoint_every is None else parse_duration(checkpoint_every)
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.tuner_config = as_tuner_config(tuner_config)
        self.tuning_results: dict[str, Any] = {}
        self._auto_monitor = monitor is None
        self._patience = early_stopping_patience
        self._tuning = False
        self._fits_log_interval = "log_every_n_steps" not in trainer_kwargs
        if seed is not None:
            pl.seed_everything(seed, workers=True)
            trainer_kwargs.setdefault("deterministic", "warn")
        trainer_kwargs.setdefault("default_root_dir", str(self.output_dir))
        # Trackers by name ("tensorboard", "csv", "mlflow", "wandb"), Lightning loggers, or False: see loggers.py.
        trainer_kwargs["logger"] = create_loggers(trainer_kwargs.get("logger", True), self.output_dir, tracking)
        user_callbacks = trainer_kwargs.pop("callbacks", None) or []
        user_callbacks = [user_callbacks] if isinstance(user_callbacks, Callback) else list(user_callbacks)
        self._checkpointing = trainer_kwargs.get("enable_checkpointing", True) is not False
        ours: list[Callback] = []
        if trainer_kwargs.get("enable_progress_bar", True) is not False and not _has(user_callbacks, ProgressBar):
            ours.append(QuietProgressBar())
        if trainer_kwargs.get("enable_model_summary", True) is not False and not _has(user_callbacks, ModelSummary):
            ours.append(CompactModelSummary())
        monitor = monitor or "val/loss"
        ours += self._monitored_callbacks(monitor, mode or metric_mode(monitor))
        if self._checkpointing:
            ours += [self._last_checkpoint(), *self._recovery_checkpoints(), ResumeState()]
        # Atomic writes, and safe loads for fit/validate/test/predict(ckpt_path=...) with or without checkpointing
        # (not when a strategy object brings a checkpoint IO of its own: Lightning refuses two).
        if getattr(trainer_kwargs.get("strategy"), "_checkpoint_io", None) is None:
            trainer_kwargs["plugins"] = _with_safe_checkpoint_io(trainer_kwargs.get("plugins"))
        if seed is not None:
            ours.append(_RankSeed(seed))
        if self._fits_log_interval:
            ours.append(_LogInterval())
        if trainer_kwargs["logger"]:
            ours.append(TrackedRun())
        if not _has(user_callbacks, TrainingHistory):  # history.json/.csv each epoch, curves.png at the end
            ours.append(TrainingHistory(self.output_dir))
        with quiet_lightning():
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

    def _recovery_checkpoints(self) -> list[ModelCheckpoint]:
        """ModelCheckpoints writing ``last.ckpt`` inside the epoch, by steps and by training time, as asked."""
        triggers = []
        if self._every_steps is not None:
            triggers.append({"every_n_train_steps": self._every_steps})
        if self._every_time is not None:
            triggers.append({"train_time_interval": self._every_time})
        return [
            _AutotimmCheckpoint(
                dirpath=self.checkpoint_dir,
                filename="last",
                monitor=None,
                save_top_k=1,
                enable_version_counter=False,
                **trigger,
            )
            for trigger in triggers
        ]

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
        resume: bool | str | Path | None = None,
    ) -> None:
        """Prepare the data and the model, run the tuners asked for, then train.

        Same arguments as ``pytorch_lightning.Trainer.fit``; a data module
        may also be passed second, ``fit(model, datamodule)``. With a data
        module, before training:

        0. ``datamodule.use_run_dir(output_dir)``, if it has that method: an
           ``ImageDataModule`` given no ``output_dir`` writes its split file
           into this run's folder,
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
            weights_only: ``None`` or ``True``: load the checkpoint with
                ``torch.load(weights_only=True)``, which refuses anything but
                tensors and plain data (local files and URLs alike);
                ``False`` only for a trusted file that needs more.
            resume: Continue a run: ``True`` or ``"last"`` for this trainer's
                ``{output_dir}/checkpoints/last.ckpt``, a run folder, or a
                ``.ckpt`` file (see
                [`resume_checkpoint`][autotimm.training.checkpointing.resume_checkpoint]).
                Everything is restored: epoch and step (inside the epoch for a
                recovery checkpoint, at the next batch), optimizer, schedulers
                (warm-up included), EMA weights and count, the unfreezing
                position, the grad scaler and the data order. Without
                ``resume`` or ``ckpt_path``, a ``output_dir`` that already
                holds a run is refused unless ``overwrite=True``.

        Raises:
            RunExistsError: ``output_dir`` holds a run, and neither ``resume``
                nor ``overwrite=True`` was given.
            FileNotFoundError: ``resume`` names no checkpoint.
            ValueError: If the data's classes do not match the model's
                ``num_classes``, both ``resume`` and ``ckpt_path`` are given, the best checkpoint or early stopping
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
            with quiet_lightning(LOG_INTERVAL_WARNING):
                super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, _safe(weights_only))
            return
        if isinstance(train_dataloaders, pl.LightningDataModule):
            if datamodule is not None:
                raise ValueError("pass the data module once, as `datamodule` or second argument, not as both")
            datamodule, train_dataloaders = train_dataloaders, None
        features = None
        if isinstance(datamodule, FeatureDataModule):  # set up and checked through the images it wraps
            features, datamodule = datamodule, _feature_source(model, datamodule)
        # Before anything is written into output_dir (the data module's split file, then checkpoints).
        ckpt_path = self._resume_from(resume, ckpt_path)
        weights_only = _safe(weights_only)
        if datamodule is not None:
            if hasattr(datamodule, "use_run_dir"):
                datamodule.use_run_dir(self.output_dir)
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
        with quiet_lightning(*([LOG_INTERVAL_WARNING] if self._fits_log_interval else [])):
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def _resume_from(self, resume: bool | str | Path | None, ckpt_path: str | Path | None) -> str | Path | None:
        """The checkpoint to resume from; without one, make sure no earlier run in ``output_dir`` is lost."""
        if resume is not None and resume is not False:
            if ckpt_path is not None:
                raise ValueError(
                    f"pass `resume` or `ckpt_path`, not both; got resume={resume!r}, ckpt_path={ckpt_path!r}"
                )
            return resume_checkpoint(resume, self.output_dir)
        if ckpt_path is None and self._checkpointing:
            moved = prepare_run_folder(self.output_dir, self.overwrite)
            if moved is not None:
                rank_zero_info(f"overwrite=True: the earlier run in {self.output_dir} was moved to {moved}")
        return ckpt_path

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
        """``pytorch_lightning.Trainer.validate``, with the data module configured for the model's backbone first.

        ``ckpt_path`` is loaded with ``weights_only=True`` (local files and
        URLs alike) unless ``weights_only=False`` is passed, as in `fit`.
        """
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        with quiet_lightning():
            return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, _safe(weights_only))

    def test(  # type: ignore[override]
        self,
        model: pl.LightningModule | None = None,
        dataloaders: Any = None,
        ckpt_path: str | Path | None = None,
        verbose: bool = True,
        datamodule: pl.LightningDataModule | None = None,
        weights_only: bool | None = None,
    ) -> Any:
        """``pytorch_lightning.Trainer.test``, with the data module configured for the model's backbone first.

        ``ckpt_path`` is loaded with ``weights_only=True`` (local files and
        URLs alike) unless ``weights_only=False`` is passed, as in `fit`.
        """
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        with quiet_lightning():
            return super().test(model, dataloaders, ckpt_path, verbose, datamodule, _safe(weights_only))

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
        ``ckpt_path`` is loaded with ``weights_only=True`` (local files and
        URLs alike) unless ``weights_only=False`` is passed, as in `fit`.
        """
        _configure_for(model or self.lightning_module, dataloaders, datamodule)
        with quiet_lightning():
            return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, _safe(weights_only))


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


class _LogInterval(Callback):
    """Choose ``log_every_n_steps`` from the epoch's length, once Lightning knows it.

    Lightning's default of 50 steps never logs a training step in an epoch of
    fewer batches, so short runs draw no training curve: log every step up to
    10 steps an epoch, then about 10 times an epoch, at most every 50 steps.
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches = trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            steps = math.ceil(batches / trainer.accumulate_grad_batches)
            trainer.log_every_n_steps = max(1, min(50, steps // 10))


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


def _check_checkpointing(overwrite: Any, every_n_steps: Any) -> None:
    if not isinstance(overwrite, bool):
        raise ValueError(f"`overwrite` must be True or False, got {overwrite!r}")
    require_number("checkpoint_every_n_steps", every_n_steps, 1, integer=True, allow_none=True)


def _safe(weights_only: bool | None) -> bool:
    """``weights_only`` for a checkpoint load: ``True`` unless ``False`` was passed explicitly.

    Passed to Lightning as well as set by `SafeCheckpointIO`, so that a
    checkpoint IO of the user's or of a strategy loads safely too.
    """
    return True if weights_only is None else weights_only


def _with_safe_checkpoint_io(plugins: Any) -> list[Any]:
    """``plugins`` plus a `SafeCheckpointIO`, unless they bring a checkpoint IO of their own."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(SafeCheckpointIO())
    return plugins


def _check_arguments(output_dir: Any, monitor: Any, mode: Any, patience: Any, seed: Any) -> None:
    if not isinstance(output_dir, (str, Path)) or not str(output_dir):
        raise ValueError(f"`output_dir` must be a folder path (str or Path), got {output_dir!r}")
    if monitor is not None and (not isinstance(monitor, str) or not monitor):
        raise ValueError(f"`monitor` must be a logged metric name such as 'val/loss', or None, got {monitor!r}")
    if mode not in (None, "min", "max"):
        raise ValueError(f"`mode` must be 'min', 'max' or None, got {mode!r}")
    require_number("early_stopping_patience", patience, 0, integer=True, allow_none=True)
    require_number("seed", seed, None, integer=True, allow_none=True)
