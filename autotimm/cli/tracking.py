"""The tracker options that ``train`` and ``auto`` share: ``--logger mlflow --logger csv``, ``--experiment``, ...

Each subcommand's options dataclass has the fields named in `TRACKING_FIELDS`;
these helpers turn them into ``AutoTrainer(logger=..., tracking=...)`` (and
``auto_fit(logger=..., tracking=...)``) arguments and, after training, send the
trackers the model (MLflow ``pyfunc``, with ONNX when the run exported it) and
the evaluation report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotimm.cli.options import UsageError

__all__ = ["TRACKER_NAMES", "TRACKING_FIELDS", "finish_trackers", "log_to_trackers", "tracker_arguments"]

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


def log_to_trackers(
    loggers: list[Any], model_path: str | Path | None, report: Any = None, onnx_path: str | Path | None = None
) -> None:
    """After training: the evaluation report to every tracker, and the model to MLflow as a ``pyfunc`` model.

    Args:
        loggers: ``trainer.loggers``.
        model_path: The checkpoint to log to MLflow as ``model`` (the best, or the calibrated one); ``None`` for none.
        report: An ``EvaluationReport`` to send, or ``None``.
        onnx_path: The run's ONNX export, also logged to MLflow as ``model_onnx`` (predicted through ONNX
            Runtime, with MLflow's ``onnx`` flavour too); ``None`` for none.
    """
    from pytorch_lightning.loggers import MLFlowLogger

    from autotimm.training.loggers import log_report

    if report is not None:
        log_report(loggers, report)
    models = [(name, path) for name, path in (("model", model_path), ("model_onnx", onnx_path)) if path]
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        from autotimm.cli.common import console
        from autotimm.exporting.mlflow_model import log_mlflow_model

        for name, path in models:
            uri = log_mlflow_model(path, run_id=logger.run_id, tracking_uri=logger.experiment.tracking_uri, name=name)
            console().print(f"MLflow model: {uri} (mlflow.pyfunc.load_model(uri).predict(images))", highlight=False)


def finish_trackers(loggers: list[Any]) -> None:
    """End the trackers' runs when the command is done: W&B's run is flushed and closed (offline: files complete).

    Args:
        loggers: ``trainer.loggers``.
    """
    from autotimm.training.loggers import finish_loggers

    finish_loggers(loggers)
