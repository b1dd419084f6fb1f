"""The tracker options that ``train`` and ``auto`` share: ``--logger mlflow --logger csv``, ``--experiment``, ...

Each subcommand's options dataclass has the fields named in `TRACKING_FIELDS`;
these helpers turn them into ``AutoTrainer(logger=..., tracking=...)``
arguments and, after training, send the trackers the model (MLflow ``pyfunc``)
and the evaluation report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotimm.cli.options import UsageError

__all__ = ["TRACKER_NAMES", "TRACKING_FIELDS", "finish_trackers", "log_search", "log_to_trackers", "tracker_arguments"]

#: The names ``--logger`` accepts (those of ``autotimm.training.loggers.TRACKERS``, without importing Lightning).
TRACKER_NAMES = ("tensorboard", "csv", "mlflow", "wandb")
#: The tracking fields of an options dataclass.
TRACKING_FIELDS = ("logger", "experiment", "run_name", "tags", "mlflow_tracking_uri", "wandb_project", "wandb_mode")


def tracker_arguments(config: Any) -> tuple[list[str] | bool, Any]:
    """``(logger, tracking)`` for ``AutoTrainer`` from a subcommand's options.

    Args:
        config: Options with the `TRACKING_FIELDS`.

    Returns:
        The logger names (``True`` for the default TensorBoard, ``False`` for ``--logger none``)
        and a ``TrackerConfig``.

    Raises:
        UsageError: An unknown ``--logger`` name, one given twice, or a bad ``--tags`` value.
    """
    from autotimm.training.loggers import TrackerConfig

    names = [name.lower() for name in (config.logger or [])]
    if names == ["none"]:
        logger: list[str] | bool = False
    else:
        unknown = [name for name in names if name not in TRACKER_NAMES]
        if unknown:
            raise UsageError(f"--logger must be one of {', '.join(TRACKER_NAMES)} (or none); got {unknown[0]!r}")
        if len(set(names)) != len(names):
            raise UsageError(f"--logger names a tracker twice: {', '.join(names)}")
        logger = names or True
    try:
        tracking = TrackerConfig(
            experiment=config.experiment,
            run_name=config.run_name,
            tags=tuple(config.tags or ()),
            mlflow_tracking_uri=config.mlflow_tracking_uri,
            wandb_project=config.wandb_project,
            wandb_mode=config.wandb_mode,
        )
    except ValueError as err:
        raise UsageError(str(err).replace("`tags`", "--tags").replace("`wandb_mode`", "--wandb-mode")) from None
    return logger, tracking


def log_to_trackers(loggers: list[Any], model_path: str | Path | None, report: Any = None) -> None:
    """After training: the evaluation report to every tracker, and the model to MLflow as a ``pyfunc`` model.

    Args:
        loggers: ``trainer.loggers``.
        model_path: The checkpoint to log to MLflow (the best, or the calibrated one); ``None`` for none.
        report: An ``EvaluationReport`` to send, or ``None``.
    """
    from pytorch_lightning.loggers import MLFlowLogger

    from autotimm.training.loggers import log_report

    if report is not None:
        log_report(loggers, report)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and model_path:
            from autotimm.cli.common import console
            from autotimm.exporting.mlflow_model import log_mlflow_model

            uri = log_mlflow_model(model_path, run_id=logger.run_id, tracking_uri=logger.experiment.tracking_uri)
            console().print(f"MLflow model: {uri} (mlflow.pyfunc.load_model(uri).predict(images))", highlight=False)


def finish_trackers(loggers: list[Any]) -> None:
    """End the trackers' runs when the command is done: W&B's run is flushed and closed (offline: files complete).

    Args:
        loggers: ``trainer.loggers``.
    """
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        logger.finalize("success")
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()


def log_search(result: Any, config: Any) -> None:
    """Send an ``auto_fit`` search to the trackers of ``--logger``, as one run.

    Parameters: the best configuration (``best/...``) and the search's own
    (preset, metric, time limit); metrics: the best validation score, the time
    used and the trial count; artifacts: ``trials.csv`` and ``summary.json``;
    for MLflow, the final model (the ensemble when there is one) as a ``pyfunc`` model.

    Args:
        result: The ``AutoFitResult``.
        config: ``autotimm auto``'s options, with the `TRACKING_FIELDS`.
    """
    import shutil
    import tempfile

    from autotimm.training.loggers import create_loggers, log_artifacts

    logger, tracking = tracker_arguments(config)
    loggers = create_loggers(logger, Path(result.output_dir), tracking)
    if not loggers:
        return
    params: dict[str, Any] = {"search/preset": config.preset, "search/metric": result.metric}
    params["search/time_limit_s"] = result.time_limit
    for key, value in result.best_config.items():
        params[f"best/{key}"] = value if isinstance(value, (str, int, float, bool)) or value is None else str(value)
    metrics = {"search/time_used_s": float(result.time_used), "search/trials": float(len(result.trials))}
    if result.best_score is not None:
        metrics[f"best/val_{result.metric}"] = float(result.best_score)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("trials.csv", "summary.json"):
            if (Path(result.output_dir) / name).is_file():
                shutil.copy(Path(result.output_dir) / name, Path(tmp) / name)
        for each in loggers:
            each.log_hyperparams(params)
            each.log_metrics(metrics, step=0)
        log_artifacts(loggers, tmp, name="search")
    log_to_trackers(loggers, result.ensemble_dir or result.checkpoint)
    finish_trackers(loggers)
