"""The search itself: Optuna's TPE sampler proposes, each trial trains in its time slice, the pruner cuts.

The study lives in an Optuna storage (`autotimm.auto.storage`) that every
worker of the search shares: each worker asks the study for a trial, plans its
epochs from the time model and the shared deadlines, trains it, stores the
trial's row as a user attribute and tells the study the score. Under DDP,
rank 0 holds the study and sends each plan to every process.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import time
import warnings
from pathlib import Path
from typing import Any

from autotimm.auto.distributed import is_rank_zero, on_rank_zero
from autotimm.auto.finish import FINAL_SAFETY, keep_top_checkpoints, ranked
from autotimm.auto.planning import SearchState, default_config
from autotimm.auto.storage import SearchRecord, trial_heartbeat
from autotimm.auto.trials import TrialOutcome, TrialSpec, run_training

__all__ = ["LOST_NOTE", "enqueue_default", "learn_from", "refit_need", "run_search", "trial_rows"]

#: Note of a trial whose worker stopped beating (killed, or its machine lost) while it ran.
LOST_NOTE = "its worker stopped while it ran (killed?): failed by the heartbeat"


def _distributions(optuna: Any, state: SearchState) -> dict[str, Any]:
    space, kept = state.space, state.plan.kept
    dists = {
        "backbone": optuna.distributions.CategoricalDistribution(kept),
        "lr": optuna.distributions.FloatDistribution(*space.lr, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(*space.weight_decay, log=True),
        "label_smoothing": optuna.distributions.FloatDistribution(0.0, space.label_smoothing, step=0.05),
        "mixup_alpha": optuna.distributions.FloatDistribution(0.0, space.mixup_alpha, step=0.1),
    }
    augmentations = state.augmentations
    if augmentations != (None,):
        dists["augmentation"] = optuna.distributions.CategoricalDistribution(list(augmentations))
    return dists


def refit_need(state: SearchState, rows: list[dict[str, Any]]) -> float:
    """Seconds to keep for the refit: the best trial's epochs on train+val (a planned slice before any trial)."""
    if not state.final_needed or state.fill_final:
        return 0.0
    scored = ranked(rows, state.settings.mode)
    if not scored:
        return state.refit_reserve
    best, tm = scored[0], state.time_model
    images = len(state.tables["train"]) + len(state.tables["val"])
    epochs = max(best["epochs"], 1)
    return (tm.overhead + epochs * tm.epoch_seconds(best["backbone"], images, 0)) / FINAL_SAFETY


def trial_rows(optuna: Any, record: SearchRecord) -> list[dict[str, Any]]:
    """The finished trials of the study, by number, as rows of ``trials.csv`` (every worker's and session's).

    A checkpoint that is no longer on this machine's disk (deleted as outside
    the top trials, or written on another machine) is ``None``.
    """
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    trials = record.study.get_trials(deepcopy=False, states=finished)
    retries = {t.system_attrs["failed_trial"]: t.number for t in record.study.get_trials(deepcopy=False)
               if "failed_trial" in t.system_attrs}  # fmt: skip
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.user_attrs.get("unplanned"):
            continue
        row = dict(trial.user_attrs.get("row") or {})
        if not row:  # no row: its worker died in mid-trial
            seconds = 0.0
            if trial.datetime_start is not None:
                end = trial.datetime_complete or datetime.datetime.now()
                seconds = (end - trial.datetime_start).total_seconds()
            row = {**trial.params, "state": "failed", "epochs": 0, "score": None, "seconds": round(seconds, 1)}
            row.update(max_epochs=trial.user_attrs.get("max_epochs"), worker=trial.user_attrs.get("worker"))
            row["note"] = LOST_NOTE + (f"; retried as trial {retries[trial.number]}" if trial.number in retries else "")
        row.setdefault("augmentation", None)
        row["number"] = trial.number
        if "failed_trial" in trial.system_attrs:
            row["note"] = "; ".join(filter(None, [f"retry of trial {trial.system_attrs['failed_trial']}", row["note"]]))
        if row.get("checkpoint") and not Path(row["checkpoint"]).is_file():
            row["checkpoint"] = None
        rows.append(row)
    return rows


def learn_from(state: SearchState, rows: list[dict[str, Any]]) -> None:
    """Correct the time model by the trials it has not seen yet (other workers', earlier sessions')."""
    sizes = (len(state.search_tables["train"]), len(state.search_tables["val"]))
    for row in rows:
        if row["number"] not in state.observed and row.get("epoch_seconds"):
            state.time_model.observe(row["backbone"], *sizes, row["epoch_seconds"], row["seconds"])
        state.observed.add(row["number"])


def enqueue_default(state: SearchState, record: SearchRecord) -> None:
    """Queue the preset's default configuration as the study's first trial (a known-good baseline for TPE)."""
    if state.plan.kept:
        preferred = [name for name in state.details["candidates"] if name in state.plan.kept]
        record.study.enqueue_trial(default_config(state, preferred[0]))


def run_search(
    optuna: Any, state: SearchState, record: SearchRecord | None, n_trials: int | None, sampler_seed: int, worker: str
) -> None:
    """Run trials until the time left cannot fit one (or ``n_trials`` are in the study).

    A trial starts when at least one epoch of its backbone fits in the room
    left: before the search deadline (with a final training on the fraction
    of the budget left to it), or before the hard deadline less the ensemble's
    scoring and the refit's need (while the refit still fits at all). Its
    epochs fill ``min(slice, room)``. The deadlines are the study's, so every
    worker of the search stops in time for the final steps.

    Args:
        optuna: The ``optuna`` module.
        state: The shared state (its ``start`` is the search's, on this machine's clock).
        record: The study (rank 0), ``None`` on the other ranks.
        n_trials: At most this many trials in the study.
        sampler_seed: Seed of this worker's TPE sampler (workers differ, so they propose different trials).
        worker: This worker's name, recorded in its trials' rows.
    """
    preset, tm, plan = state.preset, state.time_model, state.plan
    if not plan.kept:  # no search: the final training gets the budget
        return
    sizes = (len(state.search_tables["train"]), len(state.search_tables["val"]))
    dists = _distributions(optuna, state)
    study, pending, rows = None, {}, []
    search_deadline = state.start + state.search_end
    hard_deadline = state.start + state.limit - state.reserve - state.ensemble_reserve
    if is_rank_zero():
        sampler = optuna.samplers.TPESampler(
            seed=sampler_seed, n_startup_trials=preset.tpe_startup_trials, multivariate=True
        )
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
        study = optuna.load_study(study_name=record.name, storage=record.storage, sampler=sampler, pruner=pruner)

    def room() -> float:
        now = time.monotonic()
        if state.fill_final:
            return search_deadline - now
        left, need = hard_deadline - now, refit_need(state, rows)
        return left - need if need <= left else left  # a refit that cannot fit any more leaves its time to trials

    def started_trials() -> int:
        waiting = optuna.trial.TrialState.WAITING
        return sum(
            1 for t in study.get_trials(deepcopy=False) if t.state != waiting and not t.user_attrs.get("unplanned")
        )

    def ask() -> dict[str, Any] | None:
        rows[:] = trial_rows(optuna, record)
        learn_from(state, rows)
        left = room()
        if (n_trials is not None and started_trials() >= n_trials) or left <= 0:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": we beat ourselves
            record.running(optuna)  # fail (and re-queue) trials whose worker died
            trial = study.ask(dists)
        slice_seconds = min(plan.slice_seconds, left)
        epochs = min(tm.epochs_within(trial.params["backbone"], slice_seconds + 1e-6, *sizes), preset.max_epochs)
        if epochs < 1:  # not even one epoch fits in what is left: the rest goes to the finish
            trial.set_user_attr("unplanned", True)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("max_epochs", epochs)
        pending[trial.number] = trial
        return {"number": trial.number, "params": trial.params, "epochs": epochs, "slice": slice_seconds, "left": left}

    while True:
        job = on_rank_zero(ask)
        if job is None:
            break
        params, number = job["params"], job["number"]
        spec = TrialSpec(
            number=number,
            backbone=params["backbone"],
            lr=params["lr"],
            weight_decay=params["weight_decay"],
            label_smoothing=params["label_smoothing"],
            mixup_alpha=params["mixup_alpha"],
            augmentation=params.get("augmentation"),
            max_epochs=job["epochs"],
        )
        started = time.monotonic()
        slack = min(0.3 * job["slice"], max(job["left"] - job["slice"], 0) + 0.15 * job["slice"])
        deadline = min(started + job["slice"] + slack, hard_deadline)
        folder = state.output_dir / "trials" / f"trial_{number:03d}"
        trial = pending.get(number)
        beating = trial_heartbeat(record.storage, trial) if trial is not None else contextlib.nullcontext()
        try:
            with beating:
                outcome = run_training(
                    spec, state.settings, state.search_tables, folder, deadline, trial, tracked_as=folder.name
                )
        except Exception as err:  # out of memory, a model that does not fit the data, ...: recorded, not fatal
            message = (str(err).strip().splitlines() or [""])[0][:200]
            note = f"{type(err).__name__}: {message}"
            outcome = TrialOutcome("failed", None, 0, time.monotonic() - started, note=note)

        def tell(spec: TrialSpec = spec, outcome: TrialOutcome = outcome) -> None:
            trial = pending.pop(spec.number)
            tm.observe(spec.backbone, *sizes, outcome.epoch_seconds, outcome.seconds)
            state.observed.add(spec.number)
            row = {**spec.config(), "number": spec.number, "state": outcome.state, "epochs": outcome.epochs}
            row.update(score=outcome.score, seconds=round(outcome.seconds, 1), note=outcome.note)
            row.update(checkpoint=outcome.checkpoint, worker=worker, epoch_seconds=outcome.epoch_seconds)
            trial.set_user_attr("row", row)
            if outcome.state == "complete" and outcome.score is not None and math.isfinite(outcome.score):
                study.tell(trial, outcome.score)
            else:
                failed = outcome.state == "failed" or outcome.score is None
                study.tell(trial, state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED)
            rows[:] = trial_rows(optuna, record)
            keep_top_checkpoints(rows, state.settings.mode, max(state.ensemble, 1))

        on_rank_zero(tell)
