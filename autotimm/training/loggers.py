"""Experiment trackers by name: ``AutoTrainer(logger="mlflow")``, ``--logger mlflow --logger csv``.

A small factory over a name registry (`TRACKERS`) that builds Lightning's own
loggers (TensorBoard, CSV, MLflow, Weights & Biases): Lightning does the
logging; this module picks the logger, places its files in the run folder and
turns a missing optional package into a one-line error naming the extra.

On top of what Lightning sends every logger (the model's hyper-parameters and
the per-epoch metrics), [`TrackedRun`][autotimm.training.loggers.TrackedRun]
sends a flat summary of the run (backbone, data size, classes, input size,
augmentation, batch size, epochs) when training starts and the best score and
checkpoint path when it ends; [`log_report`][autotimm.training.loggers.log_report]
sends an evaluation report's numbers and files, and
[`log_figure_to`][autotimm.training.loggers.log_figure_to] a figure, to every
tracker in the form it takes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

__all__ = [
    "TRACKERS",
    "WANDB_MODES",
    "TrackedRun",
    "TrackerConfig",
    "create_loggers",
    "finish_loggers",
    "log_artifacts",
    "log_figure_to",
    "log_report",
    "mlflow_tracking_uri",
    "run_summary",
]

#: Accepted ``wandb_mode`` values.
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class TrackerConfig:
    """Options of the trackers made by name; each tracker reads those it knows.

    Args:
        experiment: MLflow's experiment name (and the W&B project when ``wandb_project`` is not given);
            ``None``: ``"autotimm"``.
        run_name: The run's name in MLflow and W&B; ``None`` lets the tracker choose.
        tags: Run tags: ``"key=value"`` or plain words (MLflow tags, W&B tags; a ``tags`` parameter elsewhere).
        mlflow_tracking_uri: MLflow's tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, a folder);
            ``None``: ``MLFLOW_TRACKING_URI``, else ``{output_dir}/mlflow.db``; a folder gets ``mlflow.db`` in it.
        wandb_project: The W&B project; ``None``: ``experiment``.
        wandb_mode: ``"online"``, ``"offline"`` (files only, ``wandb sync`` later) or ``"disabled"``;
            ``None``: W&B's own setting (``WANDB_MODE``).
        wandb_group: The W&B run group (``auto_fit`` puts a search's runs in one group); ``None``: none.
        parent_run_id: MLflow: start the run nested under this run (the tag ``mlflow.parentRunId``;
            ``auto_fit`` nests each trial under the search's run); ``None``: a top-level run.
        mlflow_run_id: MLflow: log into this existing run instead of starting a new one; ``None``: a new run.

    Raises:
        ValueError: A bad ``wandb_mode``, tag or run id.
    """

    experiment: str | None = None
    run_name: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)
    mlflow_tracking_uri: str | None = None
    wandb_project: str | None = None
    wandb_mode: str | None = None
    wandb_group: str | None = None
    parent_run_id: str | None = None
    mlflow_run_id: str | None = None

    def __post_init__(self) -> None:
        if self.wandb_mode is not None and self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"`wandb_mode` must be one of {', '.join(WANDB_MODES)} or None, got {self.wandb_mode!r}")
        for name in ("wandb_group", "parent_run_id", "mlflow_run_id"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"`{name}` must be a non-empty string or None, got {value!r}")
        if isinstance(self.tags, str) or not all(isinstance(t, str) and t.strip() for t in self.tags):
            raise ValueError(f"`tags` must be a list of non-empty strings ('key=value' or words), got {self.tags!r}")
        self.tags = tuple(self.tags)

    def tag_dict(self) -> dict[str, str]:
        """The tags as ``{key: value}`` (a plain word is ``{word: "true"}``)."""
        pairs = (tag.split("=", 1) if "=" in tag else (tag, "true") for tag in self.tags)
        return {key.strip(): value.strip() for key, value in pairs}


def _require(module: str, tracker: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"logger={tracker!r} needs the {module} package: pip install 'autotimm[{extra}]'")


def _tensorboard(output_dir: Path, config: TrackerConfig) -> Logger:
    return TensorBoardLogger(save_dir=str(output_dir), name="logs")


def _csv(output_dir: Path, config: TrackerConfig) -> Logger:
    return CSVLogger(save_dir=str(output_dir), name="csv")


def mlflow_tracking_uri(config: TrackerConfig, output_dir: str | Path) -> str:
    """The MLflow tracking URI a run of ``output_dir`` logs to.

    ``config.mlflow_tracking_uri``, else ``MLFLOW_TRACKING_URI``; a folder, or
    neither (then ``output_dir``), becomes an SQLite store ``mlflow.db`` in it
    (MLflow 3 refuses its plain file store by default).

    Args:
        config: The trackers' options.
        output_dir: The run folder.

    Returns:
        A URI such as ``"sqlite:////abs/run/mlflow.db"`` or ``"http://host:5000"``.
    """
    uri = config.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or ":" not in uri or Path(uri).expanduser().is_dir():
        folder = Path(uri).expanduser() if uri else Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    return uri


def _mlflow(output_dir: Path, config: TrackerConfig) -> Logger:
    _require("mlflow", "mlflow", "mlflow")
    uri = mlflow_tracking_uri(config, output_dir)
    tags = config.tag_dict()
    if config.parent_run_id is not None:
        tags["mlflow.parentRunId"] = config.parent_run_id  # MLflow's own tag of a nested run
    # A database store keeps files in the working folder's ./mlruns unless told: keep them in the run folder
    # (this only applies when the experiment is created).
    local_db = uri.startswith("sqlite:")
    return MLFlowLogger(
        experiment_name=config.experiment or "autotimm",
        run_name=config.run_name,
        tracking_uri=uri,
        tags=tags or None,
        artifact_location=(output_dir / "mlartifacts").resolve().as_uri() if local_db else None,
        run_id=config.mlflow_run_id,
    )


def _wandb(output_dir: Path, config: TrackerConfig) -> Logger:
    _require("wandb", "wandb", "wandb")
    kwargs: dict[str, Any] = {}
    if config.wandb_mode is not None:
        kwargs["mode"] = config.wandb_mode
    if config.wandb_group is not None:
        kwargs["group"] = config.wandb_group
    output_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        name=config.run_name,
        save_dir=str(output_dir),
        project=config.wandb_project or config.experiment or "autotimm",
        offline=config.wandb_mode == "offline",
        tags=list(config.tags) or None,
        **kwargs,
    )


#: The trackers by name, each a factory ``(output_dir, TrackerConfig) -> Lightning logger``.
TRACKERS: dict[str, Callable[[Path, TrackerConfig], Logger]] = {
    "tensorboard": _tensorboard,
    "csv": _csv,
    "mlflow": _mlflow,
    "wandb": _wandb,
}


def create_loggers(logger: Any, output_dir: str | Path, config: TrackerConfig | None = None) -> list[Logger] | bool:
    """Lightning loggers for ``AutoTrainer(logger=...)``.

    Args:
        logger: ``True`` or ``None`` (TensorBoard), ``False`` (none), a name from `TRACKERS`
            (``"tensorboard"``, ``"csv"``, ``"mlflow"``, ``"wandb"``), a Lightning ``Logger``,
            or a list of names and loggers.
        output_dir: The run folder: TensorBoard writes to ``logs/``, CSV to ``csv/``, MLflow (by
            default) to ``mlflow.db`` and ``mlartifacts/``, W&B to ``wandb/``.
        config: The trackers' options; ``None`` for their defaults.

    Returns:
        A list of loggers, or ``False`` for none.

    Raises:
        ValueError: An unknown name or another kind of value, or a name given twice.
        ImportError: The tracker's package is not installed (the message names the extra).

    Example:
        >>> [type(x).__name__ for x in create_loggers(["tensorboard", "csv"], "runs/demo")]
        ['TensorBoardLogger', 'CSVLogger']
    """
    if logger is False:
        return False
    if logger is True or logger is None:
        logger = ["tensorboard"]
    items = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    config = config or TrackerConfig()
    accepted = f"one of {', '.join(map(repr, TRACKERS))}, a Lightning Logger, a list of those, True or False"
    names = [item for item in items if isinstance(item, str)]
    if len(set(names)) != len(names):
        raise ValueError(f"`logger` names a tracker twice: {names!r}")
    loggers: list[Logger] = []
    for item in items:
        if isinstance(item, Logger):
            loggers.append(item)
        elif isinstance(item, str) and item.lower() in TRACKERS:
            loggers.append(TRACKERS[item.lower()](Path(output_dir), config))
        else:
            raise ValueError(f"`logger` must be {accepted}; got {item!r}")
    return loggers


def finish_loggers(loggers: Sequence[Logger], status: str = "success") -> None:
    """End the trackers' runs: each logger is finalized, and W&B's run is flushed and closed (offline: files complete).

    A W&B run left open would take the next ``WandbLogger``'s logs (W&B
    keeps one run per process), so every run made by name ends with this.

    Args:
        loggers: The loggers (``trainer.loggers``).
        status: The runs' end status: ``"success"``, ``"failed"`` or ``"finished"``.
    """
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger):
            logger.experiment.finish(exit_code=0 if status != "failed" else 1)


# ----------------------------------------------------------------------------------------------- what is sent
def run_summary(trainer: pl.Trainer, model: pl.LightningModule) -> dict[str, Any]:
    """The run in flat, readable parameters: backbone, classes, data size, input, augmentation, schedule.

    Args:
        trainer: The trainer, with its data module when there is one.
        model: The model being trained.

    Returns:
        ``{"run/backbone": "resnet18", "run/num_classes": 10, "run/train_images": 4000, ...}``
        (only what is known).
    """
    hp = getattr(model, "hparams", {})
    backbone = hp.get("backbone") or {}
    summary: dict[str, Any] = {
        "run/backbone": backbone.get("model_name") if isinstance(backbone, Mapping) else str(backbone),
        "run/pretrained": backbone.get("pretrained") if isinstance(backbone, Mapping) else None,
        "run/num_classes": hp.get("num_classes"),
        "run/max_epochs": trainer.max_epochs,
        "run/precision": str(trainer.precision),
    }
    for key in ("lr", "optimizer", "scheduler", "weight_decay", "label_smoothing", "mixup_alpha", "cutmix_alpha"):
        if key in hp:
            summary[f"run/{key}"] = hp[key] if isinstance(hp[key], (str, int, float, bool)) else str(hp[key])
    names = getattr(model, "class_names", None)
    if names:
        summary["run/classes"] = ", ".join(map(str, names))[:240]
    data = getattr(trainer, "datamodule", None)
    for attribute in ("batch_size", "augmentation"):
        value = getattr(data, attribute, None)
        if isinstance(value, (str, int, float)):
            summary[f"run/{attribute}"] = value
    try:
        for split, table in data.tables.items():  # ImageDataModule, after setup
            summary[f"run/{split}_images"] = len(table)
    except Exception:  # another data module, or loaders
        pass
    config = hp.get("data_config") or {}
    if config.get("input_size"):
        summary["run/input_size"] = "x".join(str(v) for v in config["input_size"])
    return {key: value for key, value in summary.items() if value is not None}


def _flat_params(loggers: Sequence[Logger], params: Mapping[str, Any]) -> None:
    for logger in loggers:
        logger.log_hyperparams(dict(params))


class TrackedRun(Callback):
    """Send every logger the run's summary when training starts, and the best score and checkpoint when it ends.

    [`AutoTrainer`][autotimm.AutoTrainer] adds it. At the start it logs
    [`run_summary`][autotimm.training.loggers.run_summary] as parameters; at
    the end the best checkpoint's score as the metric ``best/<monitor>`` and
    its path as the parameter ``run/best_checkpoint`` (an MLflow tag too).
    """

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the run's summary as parameters."""
        if trainer.loggers and trainer.is_global_zero:
            _flat_params(trainer.loggers, run_summary(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the best score and checkpoint path."""
        callback = trainer.checkpoint_callback
        if not trainer.loggers or not trainer.is_global_zero or callback is None:
            return
        path, score = getattr(callback, "best_model_path", ""), getattr(callback, "best_model_score", None)
        if not path:
            return
        if score is not None and callback.monitor:
            for logger in trainer.loggers:
                logger.log_metrics({f"best/{callback.monitor}": float(score)}, step=trainer.global_step)
        _flat_params(trainer.loggers, {"run/best_checkpoint": str(path)})
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.set_tag(logger.run_id, "best_checkpoint", str(path))
            logger.save()


def log_figure_to(logger: Logger, tag: str, figure: Any, step: int) -> bool:
    """Send a matplotlib figure to one tracker in the form it takes.

    TensorBoard: an image summary; MLflow: ``figures/<tag>_<step>.png`` in the
    run's artifacts; W&B: an image under ``tag``; CSV: a PNG beside its
    ``metrics.csv``.

    Returns:
        Whether the logger took it.
    """
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_figure(tag, figure, global_step=step, close=False)
    elif isinstance(logger, MLFlowLogger):
        logger.experiment.log_figure(logger.run_id, figure, f"figures/{tag.replace('/', '_')}_{step}.png")
    elif isinstance(logger, WandbLogger):
        import wandb

        logger.experiment.log({tag: wandb.Image(figure), "trainer/global_step": step})
    elif isinstance(logger, CSVLogger):
        folder = Path(logger.log_dir) / "figures"
        folder.mkdir(parents=True, exist_ok=True)
        figure.savefig(folder / f"{tag.replace('/', '_')}_{step}.png")
    else:
        return False
    return True


def log_artifacts(loggers: Sequence[Logger], folder: str | Path, name: str = "evaluation") -> None:
    """Send every file of ``folder`` to each tracker that keeps files.

    MLflow: run artifacts under ``name/``; W&B: a ``name`` artifact of the run;
    CSV and TensorBoard: a copy in ``<log dir>/name/``.

    Args:
        loggers: The loggers (``trainer.loggers``).
        folder: The folder to send (e.g. an evaluation report's).
        name: The artifact folder's name.
    """
    folder = Path(folder)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path=name)
        elif isinstance(logger, WandbLogger):
            import wandb

            artifact = wandb.Artifact(name, type="evaluation")
            artifact.add_dir(str(folder))
            logger.experiment.log_artifact(artifact)
        elif isinstance(logger, (CSVLogger, TensorBoardLogger)):
            shutil.copytree(folder, Path(logger.log_dir) / name, dirs_exist_ok=True)


def log_report(loggers: Sequence[Logger], report: Any, step: int | None = None, prefix: str = "test") -> None:
    """Send an evaluation report to every tracker: its numbers as metrics, its files as artifacts.

    Args:
        loggers: The loggers (``trainer.loggers``).
        report: An [`EvaluationReport`][autotimm.EvaluationReport] (or anything with ``summary`` and ``output_dir``).
        step: The step to log the numbers at.
        prefix: The metrics' prefix: ``test/accuracy``, ...
    """
    numbers = {f"{prefix}/{k}": float(v) for k, v in dict(report.summary).items() if isinstance(v, (int, float))}
    for logger in loggers:
        logger.log_metrics(numbers, step=step)
        logger.save()
    if getattr(report, "output_dir", None) is not None:
        log_artifacts(loggers, report.output_dir, name=f"evaluation-{prefix}")
