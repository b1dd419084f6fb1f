"""Learning-rate and batch-size tuning before training, with Lightning's ``Tuner``.

[`AutoTrainer`][autotimm.training.trainer.AutoTrainer] runs the tuners a
[`TunerConfig`][autotimm.training.tuner.TunerConfig] asks for; the results are applied to the
model and data module, printed, and saved in the output folder.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.tuner import Tuner
from pytorch_lightning.utilities.parsing import lightning_getattr, lightning_hasattr

__all__ = ["LR_FINDER_PLOT_FILE", "TUNING_RESULTS_FILE", "TunerConfig", "as_tuner_config", "run_tuners"]

#: File name of the tuning results, in the trainer's output folder.
TUNING_RESULTS_FILE = "tuning.json"
#: File name of the learning-rate finder's loss-versus-lr plot.
LR_FINDER_PLOT_FILE = "lr_finder.png"
#: ``Tuner`` arguments that the trainer fills in itself.
_RESERVED = frozenset({"self", "model", "train_dataloaders", "val_dataloaders", "dataloaders", "datamodule", "method"})
#: ``_LRFinder.suggestion()`` skips this many losses at the start and the end.
_SKIP_BEGIN, _SKIP_END = 10, 1
#: ``Tuner.lr_find``'s default number of steps.
_NUM_TRAINING = inspect.signature(Tuner.lr_find).parameters["num_training"].default


def _tuner_arguments(method: Callable[..., Any]) -> list[str]:
    return sorted(set(inspect.signature(method).parameters) - _RESERVED)


@dataclass
class TunerConfig:
    """Which of Lightning's tuners run before training, and with which arguments.

    Args:
        auto_lr: Run Lightning's learning-rate finder (``Tuner.lr_find``) and
            train with its suggestion.
        auto_batch_size: Run Lightning's batch-size finder
            (``Tuner.scale_batch_size``) and train with the batch size it finds.
            Needs a data module with a ``batch_size`` attribute.
        lr_find_kwargs: Arguments for ``Tuner.lr_find``: ``min_lr``,
            ``max_lr``, ``num_training``, ``mode``, ``early_stop_threshold``,
            ``attr_name``, ``update_attr``.
        batch_size_kwargs: Arguments for ``Tuner.scale_batch_size``: ``mode``,
            ``steps_per_trial``, ``init_val``, ``max_trials``, ``max_val``,
            ``margin``, ``batch_arg_name``.

    Raises:
        ValueError: For a non-bool flag, a non-dict, or an argument the tuner
            does not take; the message lists the accepted arguments.

    Example:
        >>> TunerConfig(auto_lr=True, lr_find_kwargs={"num_training": 50}).enabled
        True
    """

    auto_lr: bool = False
    auto_batch_size: bool = False
    lr_find_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("auto_lr", "auto_batch_size"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TunerConfig `{name}` must be True or False, got {getattr(self, name)!r}")
        for name, method in (("lr_find_kwargs", Tuner.lr_find), ("batch_size_kwargs", Tuner.scale_batch_size)):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise ValueError(f"TunerConfig `{name}` must be a dict, got {value!r}")
            accepted = _tuner_arguments(method)
            unknown = sorted(set(value) - set(accepted))
            if unknown:
                raise ValueError(
                    f"TunerConfig `{name}` got unknown arguments {unknown}; accepted: {', '.join(accepted)}"
                )

    @property
    def enabled(self) -> bool:
        """Whether any tuner runs."""
        return self.auto_lr or self.auto_batch_size


def as_tuner_config(tuner_config: TunerConfig | bool | None) -> TunerConfig:
    """The `TunerConfig` an ``AutoTrainer(tuner_config=...)`` argument stands for.

    ``None`` and ``False`` run no tuners; ``True`` runs the learning-rate
    finder with its default arguments (``TunerConfig(auto_lr=True)``). The
    batch-size finder is never implied: it needs a data module with a
    ``batch_size``, and on a CPU it only tells how large a batch fits in memory.

    Raises:
        ValueError: For anything but a `TunerConfig`, a bool or ``None``.

    Example:
        >>> as_tuner_config(False).enabled, as_tuner_config(True).auto_lr
        (False, True)
    """
    if isinstance(tuner_config, TunerConfig):
        return tuner_config
    if tuner_config is None or tuner_config is False:
        return TunerConfig()
    if tuner_config is True:
        return TunerConfig(auto_lr=True)
    raise ValueError(
        "`tuner_config` must be a TunerConfig, True (the learning-rate finder), False or None (no tuners), "
        f"got {tuner_config!r}"
    )


def run_tuners(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    config: TunerConfig,
    output_dir: Path,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
    datamodule: pl.LightningDataModule | None = None,
) -> dict[str, Any]:
    """Run the tuners ``config`` asks for, batch size first, and apply, print and save their results.

    The batch size is set on the data module (or wherever Lightning finds
    ``batch_arg_name``), the learning rate in ``model.hparams.lr`` (or
    ``attr_name``). Lightning restores the model weights after each search.

    Args:
        trainer: The trainer; its ``fit`` must run Lightning's plain ``fit``
            while tuning.
        model: The model to tune.
        config: Which tuners to run.
        output_dir: Where ``tuning.json`` and ``lr_finder.png`` are written.
        train_dataloaders: Training loader(s), when there is no data module.
        val_dataloaders: Validation loader(s), when there is no data module.
        datamodule: The data module; required for the batch-size finder.

    Returns:
        ``{"batch_size": {...}, "lr": {...}}`` for the tuners that ran.

    Raises:
        ValueError: ``auto_batch_size`` without a data module.
        RuntimeError: A tuner failed or gave no result; the cause is chained.
    """
    results: dict[str, Any] = {}
    tuner = Tuner(trainer)
    if config.auto_batch_size:
        results["batch_size"] = _find_batch_size(tuner, model, config.batch_size_kwargs, datamodule)
    if config.auto_lr:
        lr_result, figure = _find_lr(
            trainer, tuner, model, config.lr_find_kwargs, train_dataloaders, val_dataloaders, datamodule
        )
        results["lr"] = lr_result
    else:
        figure = None
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        if figure is not None:
            figure.savefig(output_dir / LR_FINDER_PLOT_FILE, dpi=100)
            results["lr"]["plot"] = str(output_dir / LR_FINDER_PLOT_FILE)
        (output_dir / TUNING_RESULTS_FILE).write_text(json.dumps(results, indent=2))
        _print_results(results)
    if figure is not None:
        import matplotlib.pyplot as plt

        plt.close(figure)
    return results


def _find_batch_size(
    tuner: Tuner, model: pl.LightningModule, kwargs: dict[str, Any], datamodule: pl.LightningDataModule | None
) -> dict[str, Any]:
    name = kwargs.get("batch_arg_name", "batch_size")
    if datamodule is None:
        raise ValueError(
            "TunerConfig(auto_batch_size=True) needs a data module with a `batch_size` attribute: "
            "call fit(model, datamodule=...), not fit(model, train_dataloaders=...)"
        )
    if not hasattr(datamodule, name):
        raise ValueError(
            f"TunerConfig(auto_batch_size=True): the data module {type(datamodule).__name__} has no attribute "
            f"{name!r} (batch_size_kwargs['batch_arg_name']) for the batch-size finder to change"
        )
    initial = getattr(datamodule, name)
    try:
        found = tuner.scale_batch_size(model, datamodule=datamodule, **kwargs)
    except Exception as exc:
        raise RuntimeError(f"batch-size finder failed: {type(exc).__name__}: {exc}") from exc
    if found is None:
        raise RuntimeError(
            "batch-size finder gave no batch size (Lightning skips it when the trainer has `fast_dev_run` set)"
        )
    return {"initial": initial, "found": int(found), "kwargs": _plain(kwargs)}


def _find_lr(
    trainer: pl.Trainer,
    tuner: Tuner,
    model: pl.LightningModule,
    kwargs: dict[str, Any],
    train_dataloaders: Any,
    val_dataloaders: Any,
    datamodule: pl.LightningDataModule | None,
) -> tuple[dict[str, Any], Any]:
    attr_name = kwargs.get("attr_name", "")
    initial = _lr_value(model, attr_name)
    # The search stops after `num_training` steps, but also when the run's `max_epochs` is reached: a short
    # run on a small data set would leave it too few points. Allow it enough epochs while it runs.
    loop = trainer.fit_loop
    max_epochs = loop.max_epochs
    if max_epochs is not None and max_epochs >= 0:
        loop.max_epochs = max(max_epochs, int(kwargs.get("num_training", _NUM_TRAINING)))
    try:
        finder = tuner.lr_find(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            **kwargs,
        )
    except Exception as exc:
        raise RuntimeError(f"learning-rate finder failed: {type(exc).__name__}: {exc}") from exc
    finally:
        loop.max_epochs = max_epochs
    if finder is None:
        raise RuntimeError(
            "learning-rate finder gave no result (Lightning skips it when the trainer has `fast_dev_run` set)"
        )
    suggestion = finder.suggestion(skip_begin=_SKIP_BEGIN, skip_end=_SKIP_END)
    losses = finder.results.get("loss", [])
    if suggestion is None or not math.isfinite(suggestion):
        finite = sum(1 for loss in losses if math.isfinite(loss))
        raise RuntimeError(
            f"learning-rate finder could not suggest a learning rate: it recorded {len(losses)} losses "
            f"({finite} finite) of num_training={finder.num_training}, and a suggestion needs at least "
            f"{_SKIP_BEGIN + _SKIP_END + 2} finite ones. Give it more training batches "
            "(max_epochs x batches per epoch >= num_training) or lower `num_training` in "
            "TunerConfig.lr_find_kwargs; if the loss diverged at once, lower `min_lr`."
        )
    # Lightning has applied the suggestion (update_attr=True); read back what the model trains with.
    applied = _lr_value(model, attr_name) if kwargs.get("update_attr", True) else initial
    result = {
        "initial": initial,
        "suggested": float(suggestion),
        "applied": applied,
        "kwargs": _plain(kwargs),
        "curve": {"lr": [float(x) for x in finder.results["lr"]], "loss": [float(x) for x in losses]},
    }
    return result, finder.plot(suggest=True)


def _lr_value(model: pl.LightningModule, attr_name: str) -> float | None:
    for name in (attr_name,) if attr_name else ("lr", "learning_rate"):
        if lightning_hasattr(model, name):
            return float(lightning_getattr(model, name))
    return None


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (int, float, str, bool, type(None))) else repr(v) for k, v in kwargs.items()}


def _print_results(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="autotimm tuning")
    for column in ("setting", "before", "after"):
        table.add_column(column)
    if "batch_size" in results:
        table.add_row("batch size", str(results["batch_size"]["initial"]), str(results["batch_size"]["found"]))
    if "lr" in results:
        lr = results["lr"]
        before = "–" if lr["initial"] is None else f"{lr['initial']:.3g}"
        table.add_row("learning rate", before, f"{lr['suggested']:.3g}")
    Console().print(table)
