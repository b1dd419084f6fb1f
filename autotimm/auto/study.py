"""The search itself: Optuna's TPE sampler proposes, each trial trains in its time slice, the pruner cuts.

Rank 0 holds the Optuna study: it asks for each trial's parameters, plans its
epochs from the time model and sends the plan to every process; after the
trial it tells the study the score and corrects the time model.
"""

from __future__ import annotations

import math
import time
from typing import Any

from autotimm.auto.distributed import broadcast, is_rank_zero, on_rank_zero
from autotimm.auto.finish import FINAL_SAFETY, keep_top_checkpoints, ranked
from autotimm.auto.planning import SearchState, default_config
from autotimm.auto.trials import TrialOutcome, TrialSpec, run_training

__all__ = ["run_search"]


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


def _refit_need(state: SearchState, rows: list[dict[str, Any]]) -> float:
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


def run_search(optuna: Any, state: SearchState, n_trials: int | None, seed: int) -> list[dict[str, Any]]:
    """Run the trials; return their rows (on every rank).

    A trial starts when at least one epoch of its backbone fits in the room
    left: before the search deadline (with a final training on the fraction
    of the budget left to it), or before the hard deadline less the ensemble's
    scoring and the refit's need (while the refit still fits at all). Its
    epochs fill ``min(slice, room)``.
    """
    preset, tm, plan = state.preset, state.time_model, state.plan
    if not plan.kept:  # no search: the final training gets the budget
        return []
    sizes = (len(state.search_tables["train"]), len(state.search_tables["val"]))
    dists = _distributions(optuna, state)
    study, pending, rows = None, {}, []
    search_deadline = time.monotonic() + state.details["search_seconds"]
    hard_deadline = state.start + state.limit - state.reserve - state.ensemble_reserve
    if is_rank_zero():
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=preset.tpe_startup_trials, multivariate=True)
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=3)
        direction = "maximize" if state.settings.mode == "max" else "minimize"
        study = optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)
        preferred = [name for name in state.details["candidates"] if name in plan.kept]
        study.enqueue_trial(default_config(state, preferred[0]))

    def room() -> float:
        now = time.monotonic()
        if state.fill_final:
            return search_deadline - now
        left, need = hard_deadline - now, _refit_need(state, rows)
        return left - need if need <= left else left  # a refit that cannot fit any more leaves its time to trials

    def ask() -> dict[str, Any] | None:
        left = room()
        if (n_trials is not None and len(rows) >= n_trials) or left <= 0:
            return None
        trial = study.ask(dists)
        slice_seconds = min(plan.slice_seconds, left)
        epochs = min(tm.epochs_within(trial.params["backbone"], slice_seconds + 1e-6, *sizes), preset.max_epochs)
        if epochs < 1:  # not even one epoch fits in what is left: the rest goes to the finish
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return None
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
        try:
            outcome = run_training(spec, state.settings, state.search_tables, folder, deadline, pending.get(number))
        except Exception as err:  # out of memory, a model that does not fit the data, ...: recorded, not fatal
            message = (str(err).strip().splitlines() or [""])[0][:200]
            note = f"{type(err).__name__}: {message}"
            outcome = TrialOutcome("failed", None, 0, time.monotonic() - started, note=note)

        def tell(spec: TrialSpec = spec, outcome: TrialOutcome = outcome) -> None:
            trial = pending.pop(spec.number)
            if outcome.state == "complete" and outcome.score is not None and math.isfinite(outcome.score):
                study.tell(trial, outcome.score)
            else:
                failed = outcome.state == "failed" or outcome.score is None
                study.tell(trial, state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED)
            tm.observe(spec.backbone, *sizes, outcome.epoch_seconds, outcome.seconds)
            row = {**spec.config(), "number": spec.number, "state": outcome.state, "epochs": outcome.epochs}
            row.update(score=outcome.score, seconds=round(outcome.seconds, 1), note=outcome.note)
            row["checkpoint"] = outcome.checkpoint
            rows.append(row)
            keep_top_checkpoints(rows, state.settings.mode, max(state.ensemble, 1))

        on_rank_zero(tell)
    return broadcast(rows)
