"""One training run of the search (a trial, or the final training): build, train under a deadline, report."""

from __future__ import annotations

import gc
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotimm.auto.callbacks import OptunaPruning, TimeLimit
from autotimm.auto.data import TrialDataModule
from autotimm.auto.distributed import is_rank_zero
from autotimm.auto.timing import backbone_config
from autotimm.auto.tracking import SearchTracking, log_trial_end, log_trial_start
from autotimm.training.loggers import finish_loggers

__all__ = ["RunSettings", "TrialOutcome", "TrialSpec", "run_training"]

#: Trainer arguments ``auto_fit`` sets itself; ``trainer_kwargs`` may not.
RESERVED_TRAINER_KEYS = (
    "max_epochs",
    "min_epochs",
    "max_steps",
    "min_steps",
    "max_time",
    "default_root_dir",
    "enable_checkpointing",
    "limit_train_batches",
    "limit_val_batches",
)


@dataclass
class TrialSpec:
    """What one run trains.

    Args:
        number: The trial number (``-1`` for the final training).
        backbone: The timm model name.
        lr: Learning rate.
        weight_decay: Weight decay.
        label_smoothing: Label smoothing.
        mixup_alpha: Mixup alpha (0: off).
        augmentation: The augmentation preset; ``None`` keeps the data module's.
        max_epochs: Planned epochs (the learning-rate schedule spans them).
    """

    number: int
    backbone: str
    lr: float
    weight_decay: float
    label_smoothing: float
    mixup_alpha: float
    augmentation: str | None
    max_epochs: int

    def config(self) -> dict[str, Any]:
        """The configuration, as plain data (no trial number)."""
        data = asdict(self)
        data.pop("number")
        return data


@dataclass
class RunSettings:
    """What every run of one search shares.

    Args:
        base: The user's set-up data module.
        overlay: The preprocessing every run uses (see ``preprocessing_overlay``).
        batch_size: Images per batch.
        num_classes: Classes of the data.
        class_names: Their names.
        in_chans: Input channels.
        image_size: ``(height, width)``.
        pretrained: Start from pretrained weights.
        monitor: The validation metric, e.g. ``"val/accuracy"``.
        mode: ``"max"`` or ``"min"``.
        seed: Base seed; run ``n`` uses ``seed + n``.
        trainer_kwargs: Extra ``AutoTrainer`` arguments.
        recipe: Extra ``ImageClassifier`` arguments: optimizer, scheduler, channels-last
            (``Recipe.model_kwargs()``).
        tracking: The search's experiment trackers (each run named by ``run_training`` gets runs of its own);
            ``None``: no tracking.
    """

    base: Any
    overlay: dict[str, Any]
    batch_size: int
    num_classes: int
    class_names: list[str]
    in_chans: int
    image_size: tuple[int, int]
    pretrained: bool
    monitor: str
    mode: str
    seed: int
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    tracking: SearchTracking | None = None


@dataclass
class TrialOutcome:
    """How a run ended.

    Args:
        state: ``"complete"``, ``"pruned"`` or ``"failed"``.
        score: Best value of the monitored metric (``None`` without validation or on failure).
        epochs: Epochs finished.
        seconds: Wall time of the run.
        checkpoint: The best checkpoint (or the saved model without validation).
        note: Why it stopped, when it was not the planned end.
        completed: Share of the planned training steps done.
        epoch_seconds: Wall time of each complete epoch (validation included).
        batch_seconds: Steady time of a training batch in the first epoch (see ``TimeLimit.batch_seconds``).
    """

    state: str
    score: float | None
    epochs: int
    seconds: float
    checkpoint: str | None = None
    note: str = ""
    completed: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    batch_seconds: float | None = None


def _build(spec: TrialSpec, settings: RunSettings) -> Any:
    from autotimm.classifier.module import ImageClassifier

    config = backbone_config(spec.backbone, settings.in_chans, max(settings.image_size), settings.pretrained)
    if config.extra_kwargs:
        config.extra_kwargs["img_size"] = list(settings.image_size)
    return ImageClassifier(
        config,
        num_classes=settings.num_classes,
        class_names=settings.class_names,
        lr=spec.lr,
        weight_decay=spec.weight_decay,
        label_smoothing=spec.label_smoothing,
        mixup_alpha=spec.mixup_alpha,
        **settings.recipe,
    )


def run_training(
    spec: TrialSpec,
    settings: RunSettings,
    tables: dict[str, Any],
    folder: Path,
    deadline: float,
    trial: Any = None,
    tracked_as: str | None = None,
) -> TrialOutcome:
    """Train ``spec`` on ``tables`` until its epochs are done, it is pruned, or ``deadline`` passes.

    With a ``"val"`` table the best checkpoint follows the monitored metric
    and each validation is reported to ``trial``; without one nothing is
    validated and the final weights are saved to ``folder/model.ckpt``.

    Args:
        spec: What to train.
        settings: What the search's runs share.
        tables: ``"train"`` and optionally ``"val"`` sample tables.
        folder: The run's output folder.
        deadline: ``time.monotonic()`` value to stop at.
        trial: The Optuna trial to report to (rank 0), or ``None``.
        tracked_as: The run's name in the search's trackers (``"trial_003"``, ``"final"``); ``None``, or no
            ``settings.tracking``: not tracked.

    Returns:
        The outcome. Exceptions (a model that does not fit the memory, ...) propagate.
    """
    from pytorch_lightning.utilities.warnings import PossibleUserWarning

    from autotimm.training.curves import TrainingHistory
    from autotimm.training.trainer import AutoTrainer

    start = time.monotonic()
    validate = "val" in tables
    data = TrialDataModule.derive(
        settings.base, settings.overlay, augmentation=spec.augmentation, batch_size=settings.batch_size, tables=tables
    )
    limit = TimeLimit(deadline, predictive=validate)  # without validation, a cut epoch loses nothing
    # The history files, but no curves.png: drawing it takes seconds of every trial's slice on a busy CPU.
    callbacks: list[Any] = [limit, TrainingHistory(folder, draw=False)]
    pruning = OptunaPruning(trial, settings.monitor, spec.max_epochs) if validate else None
    if pruning is not None:
        callbacks.append(pruning)
    kwargs: dict[str, Any] = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0
    )
    kwargs.update(settings.trainer_kwargs)
    extra = kwargs.pop("callbacks", None) or []
    kwargs["callbacks"] = [*callbacks, *(extra if isinstance(extra, (list, tuple)) else [extra])]
    if validate:
        kwargs.update(monitor=settings.monitor, mode=settings.mode)
    else:
        kwargs.update(enable_checkpointing=False, limit_val_batches=0)
    loggers: list[Any] = []
    if settings.tracking is not None and tracked_as is not None:
        loggers = settings.tracking.trial_loggers(tracked_as, folder)
        kwargs["logger"] = loggers or False
    seed = settings.seed + max(spec.number, 0)
    trainer = AutoTrainer(output_dir=folder, seed=seed, max_epochs=spec.max_epochs, **kwargs)
    model = _build(spec, settings)  # after the trainer, which seeds the initial weights
    try:
        log_trial_start(loggers, spec.number, spec.config())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PossibleUserWarning)
            trainer.fit(model, datamodule=data)
    except BaseException:
        finish_loggers(loggers, "failed")
        raise
    step = trainer.global_step
    completed = trainer.global_step / max(float(trainer.estimated_stepping_batches), 1.0)
    checkpoint, score = None, None
    if validate and trainer.checkpoint_callback is not None:
        best = trainer.checkpoint_callback.best_model_score
        score = None if best is None else float(best)
        checkpoint = trainer.checkpoint_callback.best_model_path or None
        if is_rank_zero():  # only the best checkpoint is kept
            (trainer.checkpoint_dir / "last.ckpt").unlink(missing_ok=True)
    elif not validate:
        checkpoint = str(folder / "model.ckpt")
        if is_rank_zero():
            model.save(checkpoint)
    notes = []
    if pruning is not None and pruning.pruned:
        notes.append(f"pruned after epoch {len(pruning.history)}")
    if limit.stopped:
        notes.append("stopped at its time limit")
    state = "pruned" if pruning is not None and pruning.pruned else "complete"
    epochs = limit.epochs_done
    del trainer, model, data
    gc.collect()
    seconds = time.monotonic() - start
    note = "; ".join(notes)
    outcome = TrialOutcome(
        state, score, epochs, seconds, checkpoint, note, completed, limit.epoch_seconds, limit.batch_seconds
    )
    log_trial_end(loggers, outcome, step)
    return outcome
