"""The end of ``auto_fit``: the final training, the ensemble, ``best.ckpt``, ``trials.csv`` and ``summary.json``."""

from __future__ import annotations

import math
import operator
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotimm.auto.data import TrialDataModule, merge_tables, subset_table
from autotimm.auto.distributed import barrier, broadcast, is_rank_zero, on_rank_zero
from autotimm.auto.planning import SearchState, default_config
from autotimm.auto.results import AutoFitResult
from autotimm.auto.timing import TimeModel
from autotimm.auto.trials import TrialOutcome, TrialSpec, run_training
from autotimm.data.sources import SampleTable
from autotimm.prediction.preprocess import Preprocessor

__all__ = [
    "CALIBRATED_SAFETY",
    "FINAL_SAFETY",
    "PROBE_STEPS",
    "FinalPlan",
    "FinalTraining",
    "final_safety",
    "finish",
    "keep_top_checkpoints",
    "ranked",
]

#: Training steps of the probe that calibrates the time model when no trial ran.
PROBE_STEPS = 16
#: The final training plans its epochs to fill this share of the time left (estimates can be off).
FINAL_SAFETY = 0.85
#: The share once three or more runs have measured the machine's speed and agree within 20%.
CALIBRATED_SAFETY = 0.93
_CONFIG_KEYS = ("backbone", "lr", "weight_decay", "label_smoothing", "mixup_alpha", "augmentation")


@dataclass
class FinalPlan:
    """What the time left allows the final training (rank 0 decides).

    Args:
        epochs: Epochs to train (0: it does not fit).
        seconds: Seconds it may take.
        images: Training images (fewer than there are only when it is the only model).
        safety: The share of the time left it plans to fill (see `final_safety`).
    """

    epochs: int
    seconds: float
    images: int
    safety: float


@dataclass
class FinalTraining:
    """How the final training went.

    Args:
        ran: Whether it started.
        note: What happened, in one line.
        used: Whether its model replaces the best trial's.
        trained_on: ``"train"`` or ``"train+val"``, once it trained (``None`` when it did not run or failed).
        images: Training images.
        epochs: Epochs finished.
        max_epochs: Epochs planned.
        safety: The share of the time left it planned to fill.
        seconds: Wall time.
        score: Validation score (``None`` without validation).
        checkpoint: Its model's checkpoint.
    """

    ran: bool
    note: str
    used: bool = False
    trained_on: str | None = None
    images: int = 0
    epochs: int = 0
    max_epochs: int = 0
    safety: float = 0.0
    seconds: float = 0.0
    score: float | None = None
    checkpoint: str | None = None

    @property
    def trained_on_val(self) -> bool:
        """Whether its model is the one returned and it trained on the validation images too (refit)."""
        return self.used and self.trained_on == "train+val"

    def to_dict(self) -> dict[str, Any]:
        """The summary's ``final`` entry: ``ran`` and ``note``, ``used`` once it ran, the rest once it trained."""
        if not self.ran:
            return {"ran": False, "note": self.note}
        if self.trained_on is None:
            return {"ran": True, "used": self.used, "note": self.note}
        return {
            "ran": True,
            "trained_on": self.trained_on,
            "images": self.images,
            "epochs": self.epochs,
            "safety": self.safety,
            "max_epochs": self.max_epochs,
            "seconds": self.seconds,
            "score": self.score,
            "used": self.used,
            "note": self.note,
            "checkpoint": self.checkpoint,
        }


def final_safety(time_model: TimeModel) -> float:
    """The share of the time left that the final training plans to fill.

    ``CALIBRATED_SAFETY`` when at least three runs corrected the time model and
    the last five measured-to-estimated ratios agree within 20% of the median;
    ``FINAL_SAFETY`` otherwise (a noisy machine, or few runs).
    """
    ratios = time_model.ratios[-5:]
    if len(ratios) >= 3 and (max(ratios) - min(ratios)) <= 0.2 * time_model.factor:
        return CALIBRATED_SAFETY
    return FINAL_SAFETY


def _epochs(count: int) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def ranked(rows: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The completed trials with a score, best first."""
    scored = [r for r in rows if r["state"] == "complete" and r.get("score") is not None and math.isfinite(r["score"])]
    return sorted(scored, key=lambda r: r["score"], reverse=mode == "max")


def keep_top_checkpoints(rows: list[dict[str, Any]], mode: str, keep: int) -> None:
    """Delete the checkpoints of every trial outside the best ``keep`` (they are never used)."""
    keepers = {r["number"] for r in ranked(rows, mode)[:keep]}
    for row in rows:
        if row["number"] not in keepers and row.get("checkpoint"):
            Path(row["checkpoint"]).unlink(missing_ok=True)
            row["checkpoint"] = None


def _no_trial_error(state: SearchState, rows: list[dict[str, Any]]) -> RuntimeError:
    if not rows:
        times = {n: c["epoch_seconds"] for n, c in state.details["candidates"].items() if "epoch_seconds" in c}
        fastest = min(times.items(), key=lambda item: item[1], default=None)
        need = f"; the fastest candidate, {fastest[0]}, needs ~{fastest[1]:.0f}s per epoch" if fastest else ""
        return RuntimeError(
            f"auto_fit: no trial fitted into time_limit={state.limit:g}s{need}. Give a larger time_limit, or "
            "faster candidates (`backbones`), a smaller `image_size` or fewer images"
        )
    errors = [f"trial {r['number']} ({r['backbone']}): {r['note']}" for r in rows if r["state"] == "failed"][:3]
    detail = "; ".join(errors) or "every trial was pruned or stopped before its first validation"
    return RuntimeError(f"auto_fit: none of the {len(rows)} trials finished with a validation score: {detail}")


def _probe(state: SearchState, best: dict[str, Any]) -> None:
    """Time a few real training steps of ``best`` when no trial has calibrated the time model.

    The step measurement alone runs on random tensors and a smaller batch; a
    short run through the real data pipeline and trainer puts the final
    training's plan on the machine's real speed.
    """
    if on_rank_zero(lambda: bool(state.time_model.ratios)):  # rank 0's model: the others never observe
        return
    settings = state.settings
    images = min(len(state.tables["train"]), PROBE_STEPS * settings.batch_size * state.details["world_size"])
    tables = {"train": subset_table(state.tables["train"], images, settings.seed)}
    spec = TrialSpec(-1, *(best[k] for k in _CONFIG_KEYS), max_epochs=1)
    left = state.start + state.limit - state.reserve - time.monotonic()
    folder = state.output_dir / "probe"
    try:
        outcome = run_training(spec, settings, tables, folder, time.monotonic() + 0.15 * left)
    except Exception:  # the final training will meet (and report) the same problem
        return
    finally:
        if is_rank_zero():
            shutil.rmtree(folder, ignore_errors=True)
    size = len(tables["train"])

    def record() -> dict[str, Any]:
        state.time_model.observe_batches(best["backbone"], outcome.batch_seconds)
        return {"images": size, "seconds": round(outcome.seconds, 1), "factor": round(state.time_model.factor, 3)}

    state.details["probe"] = on_rank_zero(record)


def _final_tables(state: SearchState) -> dict[str, SampleTable]:
    """What the final training trains on: train+val with ``refit``, else train, validated on the search's val."""
    train, val = state.tables["train"], state.tables["val"]
    if state.refit:
        return {"train": merge_tables(train, val)}
    return {"train": train, "val": state.search_tables["val"]}


def _plan_final(state: SearchState, best: dict[str, Any], sizes: tuple[int, int]) -> FinalPlan:
    """The final training's epochs and images from the time left (rank 0's clock and time model)."""
    tm = state.time_model
    left = state.start + state.limit - state.reserve - state.ensemble_reserve - time.monotonic()
    validation = tm.epoch_seconds(best["backbone"], 0, sizes[1])  # a validation after a stop in mid-epoch
    safety = final_safety(tm)
    usable = safety * left - validation
    fits = tm.epochs_within(best["backbone"], usable, *sizes)
    images = sizes[0]
    if state.fill_final:
        epochs = min(fits, state.preset.max_final_epochs)
    else:  # a refit shorter than the best trial would be worse than it: all its epochs or none
        epochs = max(best["epochs"], 1) if fits >= best["epochs"] else 0
    minimum = state.preset.min_epochs
    if best["score"] is None and epochs < minimum:  # the only model: fewer images rather than none
        per_image = tm.epoch_seconds(best["backbone"], sizes[0], 0) / sizes[0]
        images = int((usable - tm.overhead) / (minimum * per_image))
        epochs = minimum if images >= 10 * state.settings.num_classes else 0
    return FinalPlan(epochs=epochs, seconds=left - validation, images=min(images, sizes[0]), safety=safety)


def _sizes(tables: dict[str, SampleTable]) -> tuple[int, int]:
    """``(training images, validation images)`` of a run's tables."""
    return len(tables["train"]), len(tables["val"]) if "val" in tables else 0


def _skipped_final(state: SearchState, best: dict[str, Any], sizes: tuple[int, int], plan: FinalPlan) -> FinalTraining:
    """The final training that did not fit: why, or an error when it was the only model there could be.

    Raises:
        RuntimeError: No search ran either, so there is no model at all.
    """
    epoch = state.time_model.epoch_seconds(best["backbone"], *sizes)
    need = 1 if state.fill_final else max(best["epochs"], 1)
    note = f"skipped: {_epochs(need)} of {best['backbone']} on {sizes[0]} images take ~{need * epoch:.0f}s"
    note += f", {max(plan.seconds, 0):.0f}s were left"
    if best["score"] is None:
        raise RuntimeError(
            f"auto_fit: time_limit={state.limit:g}s is too short for this data: no search fitted "
            f"({state.details['search_skipped']}), and the final training was {note}"
        )
    return FinalTraining(ran=False, note=note + "; the best trial's model is used")


def _judge_final(
    state: SearchState, best: dict[str, Any], tables: dict[str, SampleTable], plan: FinalPlan, outcome: TrialOutcome
) -> FinalTraining:
    """Whether the final training's model replaces the best trial's: by the validation score, or by its steps done."""
    where = "train+val" if state.refit else "train"
    images = len(tables["train"])
    alone = best["score"] is None  # no search: the final training is the only model
    if "val" in tables:
        used = outcome.score is not None and (
            alone
            or (outcome.score >= best["score"] if state.settings.mode == "max" else outcome.score <= best["score"])
        )
        verdict = "used" if used else f"not used: the best trial's {best['score']:.4f} is better"
        shown = "n/a" if outcome.score is None else f"{outcome.score:.4f}"
        note = f"{_epochs(outcome.epochs)} on {images} {where} images, val {shown}: {verdict}"
    else:
        used = alone or outcome.completed >= 0.9
        verdict = "used" if used else "not used: cut by the time limit before 90% of its steps"
        if alone and outcome.completed < 0.9:
            verdict = f"used, though cut by the time limit after {outcome.completed:.0%} of its steps"
        note = f"{_epochs(outcome.epochs)} on {images} {where} images: {verdict}"
    return FinalTraining(
        ran=True,
        trained_on=where,
        images=images,
        epochs=outcome.epochs,
        safety=plan.safety,
        max_epochs=plan.epochs,
        seconds=round(outcome.seconds, 1),
        score=outcome.score,
        used=used,
        note=note,
        checkpoint=outcome.checkpoint,
    )


def _run_final(
    state: SearchState, best: dict[str, Any], tables: dict[str, SampleTable], plan: FinalPlan
) -> FinalTraining:
    """Train the best configuration for the planned epochs, and judge the result.

    Raises:
        RuntimeError: The training failed and there is no trial's model to fall back on.
    """
    spec = TrialSpec(-1, *(best[k] for k in _CONFIG_KEYS), max_epochs=plan.epochs)
    try:
        outcome = run_training(
            spec, state.settings, tables, state.output_dir / "final", time.monotonic() + plan.seconds,
            tracked_as="final",
        )  # fmt: skip
    except Exception as err:
        message = (str(err).strip().splitlines() or [""])[0][:200]
        if best["score"] is None:
            raise RuntimeError(f"auto_fit: the final training failed: {type(err).__name__}: {message}") from err
        return FinalTraining(
            ran=True, used=False, note=f"failed ({type(err).__name__}: {message}); the best trial is used"
        )
    return _judge_final(state, best, tables, plan, outcome)


def _final_training(state: SearchState, best: dict[str, Any]) -> FinalTraining:
    """Train the best configuration again on all training images (and val with ``refit``), if time allows."""
    if not state.final_needed:
        return FinalTraining(ran=False, note="not asked for: the trials trained on every training image")
    _probe(state, best)
    tables = _final_tables(state)
    plan = on_rank_zero(lambda: _plan_final(state, best, _sizes(tables)))
    if plan.images < len(tables["train"]):
        tables["train"] = subset_table(tables["train"], plan.images, state.settings.seed)
    if plan.epochs < 1:
        return _skipped_final(state, best, _sizes(tables), plan)
    return _run_final(state, best, tables, plan)


#: The test-time augmentations ``auto_fit`` tries on the returned model, in this order (cheapest first).
TTA_CANDIDATES = ("flip", "flip_crops")


def _choose_tta(state: SearchState, model: Any, final: FinalTraining, backbone: str) -> dict[str, Any]:
    """Give ``model`` the test-time augmentation that scores best on the validation images (rank 0 decides).

    The model is scored without TTA, then with each of `TTA_CANDIDATES` whose
    views fit the time left; a mode is kept only when it scores strictly better
    than every cheaper one. The answer has the scores by mode (``"plain"`` for
    none), the ``"mode"`` kept and whether one is ``"used"``.
    """
    if not state.tta:
        return {"used": False, "mode": "none", "note": "not tried (tta=False)"}
    if final.trained_on_val:
        return {"used": False, "mode": "none", "note": "not tried: the model trained on the validation images"}
    images = len(state.search_tables["val"])

    def decide() -> dict[str, Any]:  # rank 0's time model and clock: every rank gets the same answer
        tm = state.time_model
        one_pass = tm.epoch_seconds(backbone, 0, images) if backbone in tm.step_seconds else 0.0

        def left() -> float:
            return state.start + state.limit - state.reserve - time.monotonic()

        need = (1 + Preprocessor.num_views("flip")) * one_pass
        if need > left():
            return {"used": False, "mode": "none", "note": f"not tried: scoring it needs ~{need:.0f}s, "
                    f"{max(left(), 0):.0f}s were left"}  # fmt: skip
        better = operator.gt if state.settings.mode == "max" else operator.lt
        model.hparams.tta = "none"
        info: dict[str, Any] = {"plain": _val_score(state, model)}
        best, best_score, skipped = "none", info["plain"], []
        for mode in TTA_CANDIDATES:
            if Preprocessor.num_views(mode) * one_pass > left():
                skipped.append(mode)
                continue
            model.hparams.tta = mode
            info[mode] = _val_score(state, model)
            if better(info[mode], best_score):
                best, best_score = mode, info[mode]
        tried = ", ".join(f"{mode} {info[mode]:.4f}" for mode in TTA_CANDIDATES if mode in info)
        note = f"TTA {best} kept on {images} images (none {info['plain']:.4f}, {tried})"
        if skipped:
            note += f"; {', '.join(skipped)} not tried (time)"
        return {**info, "used": best != "none", "mode": best, "note": note}

    info = on_rank_zero(decide)
    model.hparams.tta = info["mode"]
    return info


def _val_score(state: SearchState, ensemble: Any) -> float:
    from autotimm.evaluation.calibration import negative_log_likelihood
    from autotimm.evaluation.labelled_data import resolve_labelled_data
    from autotimm.evaluation.report import classification_metrics

    tables = {"train": state.tables["train"], "val": state.search_tables["val"]}
    data = TrialDataModule.derive(state.data, state.settings.overlay, tables=tables)
    sources, labels = resolve_labelled_data(data, ensemble.class_names, split="val")
    logits = np.asarray(ensemble.predict_logits(sources, batch_size=state.settings.batch_size, progress=False)[0])
    metric = state.settings.monitor.split("/", 1)[1]
    if metric == "loss":
        return float(negative_log_likelihood(logits.astype(np.float64), labels))
    numbers = classification_metrics(logits, labels, top_k=5)
    return float(numbers["top_k_accuracy"] if metric == "top5_accuracy" else numbers[metric])


def _ensemble(state: SearchState, scored: list[dict[str, Any]], model: Any, final: FinalTraining) -> tuple[Any, dict]:
    from autotimm.classifier.ensemble import EnsembleClassifier
    from autotimm.classifier.module import ImageClassifier

    if state.ensemble < 2:
        return model, {"members": []}
    top = scored[: state.ensemble]
    if len(top) < 2:
        return model, {"members": [], "note": f"only {len(top)} trial finished: no ensemble"}
    members = [model] + [ImageClassifier.load(row["checkpoint"]) for row in top[1:]]
    ensemble = EnsembleClassifier(members, data_config=model.data_config)
    info: dict[str, Any] = {"members": [row["number"] for row in top], "score": None}
    if final.trained_on_val:
        info["note"] = "no validation score: the refit member trained on the validation images"
    else:
        info["score"] = on_rank_zero(lambda: _val_score(state, ensemble))
    if len(top) < state.ensemble:
        info["note"] = f"only {len(top)} trials finished, fewer than ensemble={state.ensemble}"
    folder = state.output_dir / "ensemble"
    if is_rank_zero():
        ensemble.save(folder)
    info["folder"] = str(folder)
    return ensemble, info


def finish(state: SearchState, rows: list[dict[str, Any]], verbose: bool) -> AutoFitResult:
    """Final training, model files, ensemble, tables and summary; returns the result (on every rank)."""
    from autotimm.classifier.module import ImageClassifier

    scored = [row for row in ranked(rows, state.settings.mode) if row.get("checkpoint")]
    away = [row["number"] for row in ranked(rows, state.settings.mode)[:1] if not row.get("checkpoint")]
    if away:  # trained on another machine whose output_dir this one does not share
        state.details["checkpoint_not_here"] = away
    if scored:
        best = scored[0]
    elif state.details.get("search_skipped"):  # the preset's default configuration, trained once on everything
        best = {**default_config(state, state.details["default_backbone"]), "number": None, "epochs": 0}
        best.setdefault("augmentation", None)
        best["score"] = None
    else:
        raise _no_trial_error(state, rows)
    final = broadcast(_final_training(state, best))  # rank 0's timings on every rank
    barrier()
    model = ImageClassifier.load(final.checkpoint if final.used else best["checkpoint"])
    tta = _choose_tta(state, model, final, best["backbone"])
    checkpoint = state.output_dir / "best.ckpt"
    if is_rank_zero():
        model.save(checkpoint)
    if final.used and final.score is not None:
        score, source = final.score, "final training (validation images)"
    elif best["number"] is None:
        score, source = None, "none: the only model trained on train+val"
    else:
        score, source = best["score"], f"trial {best['number']}"
        if final.used:
            source += " (the returned model was retrained on train+val and has no held-out score)"
    if "plain" in tta and score is not None:
        # Re-scored as `predict` runs the returned model (float32): under a bf16 training's autocast
        # the logged score can differ from it by an image or two.
        score = tta["plain"]
        source += ", re-scored as predict runs it"
    if tta["used"] and score is not None:
        score, source = tta[tta["mode"]], f"{source}, with {tta['mode']} TTA"
    result_model, ensemble_info = _ensemble(state, scored, model, final)
    barrier()
    config = {key: best[key] for key in _CONFIG_KEYS}
    epochs = final.epochs if best["number"] is None else best["epochs"]
    config.update(epochs=epochs, image_size=state.details["image_size"], batch_size=state.settings.batch_size)
    config.update({key: state.details["recipe"][key] for key in ("optimizer", "scheduler", "precision")})
    config["tta"] = model.hparams.get("tta")
    details = dict(state.details)
    details.update(
        best_trial=best["number"], score_source=source, final=final.to_dict(), tta=tta, ensemble=ensemble_info
    )
    details["search_time_used"] = round(sum(r["seconds"] for r in rows), 1)
    used = time.monotonic() - state.start
    details["time_used_this_call"] = round(used - details.get("time_used_before", 0.0), 1)
    details["time_model_ratios"] = [round(r, 3) for r in state.time_model.ratios]
    result = AutoFitResult(
        model=result_model,
        best_config=config,
        best_score=score,
        metric=state.settings.monitor.split("/", 1)[1],
        trials=rows,
        time_used=used,
        time_limit=state.limit,
        checkpoint=checkpoint,
        output_dir=state.output_dir,
        ensemble_dir=Path(ensemble_info["folder"]) if ensemble_info.get("folder") else None,
        details=details,
    )
    if is_rank_zero():
        result.write()
        if verbose:
            result.print()
    return result
