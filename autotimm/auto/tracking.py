"""A search's experiment trackers: one run for the search, one run per trial (nested under it in MLflow).

``auto_fit(logger="mlflow")`` (``autotimm auto --logger mlflow``) sends:

- **each trial** (and the final training) to its own run of every tracker
  named: the trial's configuration (``trial/...`` parameters and the model's
  hyper-parameters), its metrics of every epoch, and its outcome
  (``trial/score``, ``trial/state``). In MLflow the run is nested under the
  search's run (MLflow's tag ``mlflow.parentRunId``); in W&B it is in the
  search's group; CSV and TensorBoard write into the trial's folder
  (``trials/trial_003/csv/``, ``trials/trial_003/logs/``).
- **the search** to one run: its options, then when it is done the best
  configuration (``best/...``) and score, the time used, every trial's score
  (``search/trial_<metric>`` at the trial's number), ``trials.csv`` and
  ``summary.json`` as artifacts and, for MLflow, the final model as a ``pyfunc``
  model (see `log_search_result`).

The MLflow run of the search is started before the first trial and its id kept
in the study (`SearchRecord`), so every worker of the search, a local process or
a ``join`` on another machine, nests its trials under the same run; a resumed
search goes on logging into it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotimm.training.loggers import (
    TRACKERS,
    TrackerConfig,
    create_loggers,
    finish_loggers,
    log_artifacts,
    mlflow_tracking_uri,
)

__all__ = [
    "RECORD_KEY",
    "SearchTracking",
    "check_search_logger",
    "log_search_result",
    "log_trial_end",
    "log_trial_start",
    "open_search_tracking",
]

#: The study attribute that keeps the search's tracking: its group name, and the MLflow run id and experiment.
RECORD_KEY = "tracking"


def check_search_logger(logger: Any) -> tuple[str, ...]:
    """The tracker names of ``auto_fit(logger=...)``.

    Args:
        logger: ``False`` or ``None`` (none), ``True`` (TensorBoard), a name from
            ``TRACKERS`` (``"tensorboard"``, ``"csv"``, ``"mlflow"``, ``"wandb"``) or a list of names.

    Returns:
        The names, lower case (empty: no tracking).

    Raises:
        ValueError: Another value (a Lightning ``Logger`` object among them: every trial needs a run of its
            own, so trackers are named), or a name given twice.
    """
    if logger is None or logger is False:
        return ()
    if logger is True:
        return ("tensorboard",)
    items = list(logger) if isinstance(logger, (list, tuple)) else [logger]
    accepted = f"one of {', '.join(map(repr, TRACKERS))}, a list of those, True (TensorBoard) or False"
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or item.lower() not in TRACKERS:
            why = " (a Logger object cannot give each trial a run of its own: name the tracker)"
            raise ValueError(
                f"`logger` must be {accepted}; got {item!r}" + (why if hasattr(item, "log_metrics") else "")
            )
        names.append(item.lower())
    if len(set(names)) != len(names):
        raise ValueError(f"`logger` names a tracker twice: {names!r}")
    return tuple(names)


@dataclass(frozen=True)
class SearchTracking:
    """Where the runs of one search go (the same in every worker process of the search).

    Args:
        names: The tracker names.
        config: The trackers' options as given.
        output_dir: The search's folder.
        group: The search's name: the W&B group of its runs, and the search run's name unless ``config`` has one.
        mlflow_uri: MLflow's tracking URI, resolved (``None`` without MLflow).
        experiment: The MLflow experiment of the search's run (its trials' too).
        parent_run_id: The MLflow run of the search (``None`` without MLflow).
    """

    names: tuple[str, ...]
    config: TrackerConfig
    output_dir: Path
    group: str
    mlflow_uri: str | None = None
    experiment: str | None = None
    parent_run_id: str | None = None

    def run_config(self, run_name: str, search_run: bool = False) -> TrackerConfig:
        """The trackers' options of one run: a trial's (nested under the search's run), or the search's own."""
        return replace(
            self.config,
            run_name=run_name,
            experiment=self.experiment or self.config.experiment,
            mlflow_tracking_uri=self.mlflow_uri or self.config.mlflow_tracking_uri,
            wandb_group=self.group,
            parent_run_id=None if search_run else self.parent_run_id,
            mlflow_run_id=self.parent_run_id if search_run else None,
        )

    def trial_loggers(self, run_name: str, folder: Path) -> list[Any]:
        """New Lightning loggers for one trial's run, writing their files into the trial's ``folder``."""
        made = create_loggers(list(self.names), folder, self.run_config(run_name))
        return made if isinstance(made, list) else []


def _trial_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def log_trial_start(loggers: list[Any], number: int, config: dict[str, Any]) -> None:
    """Log a trial's configuration as ``trial/...`` parameters (``trial/number`` is -1 for the final training)."""
    params = {"trial/number": number, **{f"trial/{k}": _trial_value(v) for k, v in config.items()}}
    for logger in loggers:
        logger.log_hyperparams(params)


def log_trial_end(loggers: list[Any], outcome: Any, step: int) -> None:
    """Log how a trial ended: ``trial/score``, ``trial/epochs``, ``trial/seconds`` and ``trial/state``; end its runs.

    Args:
        loggers: The trial's loggers.
        outcome: Its ``TrialOutcome``.
        step: The step to log at (the trial's last).
    """
    metrics = {"trial/epochs": float(outcome.epochs), "trial/seconds": float(outcome.seconds)}
    if outcome.score is not None and math.isfinite(outcome.score):
        metrics["trial/score"] = float(outcome.score)
    params = {"trial/state": outcome.state, "trial/note": outcome.note or "-"}
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
        logger.log_hyperparams(params)
    finish_loggers(loggers, "success" if outcome.state != "failed" else "failed")


def open_search_tracking(
    names: tuple[str, ...],
    config: TrackerConfig,
    output_dir: Path,
    record: Any,
    search_params: dict[str, Any],
    forks: bool = False,
) -> SearchTracking:
    """The search's tracking: the stored one of a resumed or joined search, else a new one (the MLflow run started).

    Args:
        names: The tracker names (see `check_search_logger`).
        config: The trackers' options.
        output_dir: The search's folder.
        record: The study's ``SearchRecord`` (``None``: nothing is shared, e.g. another rank).
        search_params: The search's options, logged to a new MLflow run as ``search/...`` parameters.
        forks: Whether worker processes will be forked from this one (an SQLite store then opens a new
            connection for every call, so no connection is shared across the fork).

    Returns:
        The tracking every run of the search uses.
    """
    stored = dict(record.get(RECORD_KEY) or {}) if record is not None else {}
    changed = False
    if "group" not in stored:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stored["group"] = config.wandb_group or config.run_name or f"{search_params.get('study', 'autotimm')}-{stamp}"
        changed = True
    uri = None
    if "mlflow" in names:
        uri = mlflow_tracking_uri(config, output_dir)
        if forks and uri.startswith("sqlite:"):
            os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
        if not stored.get("mlflow_run_id"):
            experiment = config.experiment or "autotimm"
            search_config = replace(config, run_name=config.run_name or stored["group"], mlflow_tracking_uri=uri)
            run = create_loggers(["mlflow"], output_dir, search_config)[0]
            run.log_hyperparams({f"search/{k}": _trial_value(v) for k, v in search_params.items()})
            run.experiment.set_tag(run.run_id, "autotimm.role", "search")
            stored.update(mlflow_run_id=run.run_id, experiment=experiment)
            changed = True
    if changed and record is not None:
        record.set(RECORD_KEY, stored)
    return SearchTracking(
        names=names,
        config=config,
        output_dir=output_dir,
        group=stored["group"],
        mlflow_uri=uri,
        experiment=stored.get("experiment"),
        parent_run_id=stored.get("mlflow_run_id") if uri else None,
    )


def _new_params(logger: Any, params: dict[str, Any]) -> dict[str, Any]:
    """MLflow keeps a parameter's first value (a second one is an error): only the keys not logged yet."""
    from pytorch_lightning.loggers import MLFlowLogger

    if not isinstance(logger, MLFlowLogger):
        return params
    logged = logger.experiment.get_run(logger.run_id).data.params
    return {key: value for key, value in params.items() if key not in logged}


def log_search_result(tracking: SearchTracking, result: Any, model: bool = True) -> None:
    """Send a finished search to its trackers' search run, and end that run.

    Parameters: the best configuration (``best/...``); metrics: the best
    validation score (``best/val_<metric>``), the time used and limit, the trial
    count, and each trial's score (``search/trial_<metric>``, at the trial's
    number as the step); artifacts: ``trials.csv`` and ``summary.json`` (under
    ``search/``); for MLflow, the final model (the ensemble when there is one) as
    a ``pyfunc`` model.

    Args:
        tracking: The search's tracking.
        result: The ``AutoFitResult``.
        model: Log the final model to MLflow.
    """
    config = tracking.run_config(tracking.config.run_name or tracking.group, search_run=True)
    loggers = create_loggers(list(tracking.names), tracking.output_dir, config)
    if not loggers:
        return
    params: dict[str, Any] = {"search/metric": result.metric}
    for key, value in result.best_config.items():
        params[f"best/{key}"] = _trial_value(value) if value is not None else None
    metrics = {
        "search/time_used_s": float(result.time_used),
        "search/time_limit_s": float(result.time_limit),
        "search/trials": float(len(result.trials)),
    }
    if result.best_score is not None:
        metrics[f"best/val_{result.metric}"] = float(result.best_score)
    scores = [(row["number"], row.get("score")) for row in result.trials]
    scores = [(number, float(score)) for number, score in scores if score is not None and math.isfinite(score)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("trials.csv", "summary.json"):
            if (Path(result.output_dir) / name).is_file():
                shutil.copy(Path(result.output_dir) / name, Path(tmp) / name)
        for logger in loggers:
            logger.log_hyperparams(_new_params(logger, params))
            for number, score in scores:
                logger.log_metrics({f"search/trial_{result.metric}": score}, step=number)
            logger.log_metrics(metrics, step=max((n for n, _ in scores), default=0))
        log_artifacts(loggers, tmp, name="search")
    if model and tracking.parent_run_id is not None:
        from autotimm.exporting.mlflow_model import log_mlflow_model

        log_mlflow_model(result.ensemble_dir or result.checkpoint, run_id=tracking.parent_run_id,
                         tracking_uri=tracking.mlflow_uri)  # fmt: skip
    finish_loggers(loggers)
