"""Before the search: resolve the data, fix what every trial shares, measure the candidates, split the budget.

The budget rule (documented in the AutoML guide):

- ``reserve`` = max(2 s, 3% of the limit) is kept for writing the results,
  and the time to score an ensemble on the validation images is kept too;
- without a final training the search gets the rest;
- with trials on a subset of large data, or an explicit ``search_fraction``,
  the search gets that fraction (the preset's ``search_fraction`` by default)
  and the final training of the best configuration the rest;
- with ``refit`` alone, time for one more trial (scaled to train+val) is kept
  for the refit; once trials have finished, the refit's need is the best
  trial's epochs on train+val, and the search goes on while that still fits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotimm.auto.data import TrialDataModule, native_image_shape, preprocessing_overlay, resolve_data, subset_table
from autotimm.auto.distributed import on_rank_zero, world_size
from autotimm.auto.presets import Preset, SearchSpace, choose_batch_size, choose_image_size, plan_search
from autotimm.auto.timing import (
    TimeModel,
    backbone_config,
    cpu_has_bf16,
    measure_loading,
    measure_steps,
    step_device,
)
from autotimm.auto.trials import RunSettings

__all__ = ["SearchState", "default_config", "prepare"]

#: Augmentation presets from cheapest to most expensive to compute (the loading time is measured with the last tried).
_AUGMENTATION_COST = ("none", "crop_flip", "light", "trivialaugment", "randaugment", "autoaugment", "augmix")


def _check_metric(metric: str, num_classes: int) -> str:
    accepted = ["accuracy", "f1_macro", "loss"] + (["top5_accuracy"] if num_classes > 5 else [])
    if metric not in accepted:
        raise ValueError(f"`metric` must be one of {accepted} (validation metrics of this data), got {metric!r}")
    return f"val/{metric}"


@dataclass
class SearchState:
    """Everything the search and the finish share."""

    settings: RunSettings
    preset: Preset
    space: SearchSpace
    data: Any
    tables: dict[str, Any]
    search_tables: dict[str, Any]
    time_model: TimeModel
    details: dict[str, Any]
    output_dir: Path
    start: float
    limit: float
    reserve: float
    final_needed: bool
    fill_final: bool
    refit: bool
    ensemble: int
    tta: bool
    ensemble_reserve: float = 0.0
    refit_reserve: float = 0.0


def prepare(
    data: Any,
    preset: Preset,
    output_dir: Path,
    options: dict[str, Any],
    trainer_kwargs: dict[str, Any],
    start: float,
    limit: float,
) -> SearchState:
    """Resolve the data, fix the shared settings, measure the candidates and plan the budget."""
    from autotimm.optim.schedulers import metric_mode

    seed = options["seed"]
    holder: dict[str, Any] = {}

    def resolve() -> None:  # rank 0 first: it writes the split file the others then read
        holder["data"] = resolve_data(data, output_dir, seed, options["dataset_root"])

    on_rank_zero(resolve)
    datamodule = holder["data"] if "data" in holder else resolve_data(data, output_dir, seed, options["dataset_root"])
    tables = datamodule._require_setup()
    train, val = tables["train"], tables["val"]
    native, in_chans = native_image_shape(train)
    if options["image_size"] is not None:
        size = (options["image_size"],) * 2
    elif datamodule.image_size is not None:
        given = datamodule.image_size
        size = (given, given) if isinstance(given, int) else tuple(given)
    else:
        size = (choose_image_size(native, preset),) * 2
    batch = options["batch_size"] or choose_batch_size(len(train), max(size))
    monitor = _check_metric(options["metric"], datamodule.num_classes)
    space = preset.space_for(max(size), options["pretrained"])
    device = step_device(trainer_kwargs)
    if space.recipe.cpu_bf16 and "precision" not in trainer_kwargs and device.type == "cpu" and cpu_has_bf16():
        trainer_kwargs = {**trainer_kwargs, "precision": "bf16-mixed"}
    overlay = preprocessing_overlay(in_chans, size, options["pretrained"])
    settings = RunSettings(
        base=datamodule,
        overlay=overlay,
        batch_size=batch,
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        in_chans=in_chans,
        image_size=size,
        pretrained=options["pretrained"],
        monitor=monitor,
        mode=metric_mode(monitor),
        seed=seed,
        trainer_kwargs=trainer_kwargs,
        recipe=space.recipe.model_kwargs(),
    )
    custom = datamodule._train_transform is not None
    augmentations: tuple[str | None, ...] = (None,) if custom else space.augmentation_choices(max(size))
    names = list(dict.fromkeys(options["backbones"] or preset.candidates(max(size))))
    configs = {name: backbone_config(name, in_chans, max(size), options["pretrained"]) for name in names}
    search_tables = {
        "train": subset_table(train, preset.max_search_images, seed),
        "val": subset_table(val, preset.max_val_images, seed),
    }
    heaviest = max((a for a in augmentations if a), key=_AUGMENTATION_COST.index, default=None)

    def measure() -> dict[str, Any]:
        probe = TrialDataModule.derive(
            datamodule, overlay, augmentation=heaviest, batch_size=batch, tables=search_tables
        )
        load_train, load_eval = measure_loading(probe)
        steps, errors = measure_steps(
            configs,
            settings.num_classes,
            batch,
            size,
            device,
            trainer_kwargs.get("precision"),
            channels_last=space.recipe.channels_last,
        )
        return {
            "model": TimeModel(steps, batch, load_train, load_eval, probe._num_workers(), world_size()),
            "errors": errors,
            "elapsed": time.monotonic() - start,
        }

    measured = on_rank_zero(measure)
    state = SearchState(
        settings=settings,
        preset=preset,
        space=space,
        data=datamodule,
        tables=tables,
        search_tables=search_tables,
        time_model=measured["model"],
        details={},
        output_dir=output_dir,
        start=start,
        limit=limit,
        reserve=max(2.0, 0.03 * limit),
        final_needed=False,
        fill_final=False,
        refit=options["refit"],
        ensemble=options["ensemble"],
        tta=options["tta"],
    )
    state.details.update(
        preset=preset.name,
        image_size=list(size),
        native_image_size=native,
        in_chans=in_chans,
        batch_size=batch,
        recipe={**settings.recipe, "precision": str(trainer_kwargs.get("precision", "32-true"))},
        augmentations=[a for a in augmentations if a] or ["(the data module's own transform)"],
        train_images=len(train),
        val_images=len(val),
        world_size=world_size(),
        candidates={name: {"error": measured["errors"][name]} if name in measured["errors"] else {} for name in names},
    )
    state.details["setup_seconds"] = round(measured["elapsed"], 1)
    _plan(state, options, augmentations, measured["elapsed"])
    return state


def _plan(state: SearchState, options: dict[str, Any], augmentations: tuple, elapsed: float) -> None:
    """Split the budget and choose the candidates (the same numbers on every rank: rank 0's)."""
    preset, tm = state.preset, state.time_model
    train, search_train, search_val = state.tables["train"], *state.search_tables.values()
    available = state.limit - elapsed - state.reserve
    if state.ensemble > 1:  # scoring the members on the validation images
        fastest = min(tm.step_seconds.values(), default=0.0)
        batches = math.ceil(len(search_val) / tm.batch_size)
        state.ensemble_reserve = state.ensemble * batches * (fastest / 3 + tm.batch_size * tm.load_eval)
        available -= state.ensemble_reserve
    subset = len(search_train) < len(train)
    state.fill_final = subset or options["search_fraction"] is not None
    state.final_needed = state.refit or state.fill_final
    slices = min(preset.target_trials, options["n_trials"] or preset.target_trials)
    if not state.final_needed:
        search_seconds = available
    elif state.fill_final:
        search_seconds = available * (options["search_fraction"] or preset.search_fraction)
    else:  # a refit as long as the best trial, on train + val: keep one slice, scaled to the larger data
        ratio = (len(train) + len(state.tables["val"])) / len(train)
        search_seconds = available * slices / (slices + ratio)
    epoch_seconds = {name: tm.epoch_seconds(name, len(search_train), len(search_val)) for name in tm.step_seconds}
    if not epoch_seconds:
        errors = "; ".join(f"{name}: {c['error']}" for name, c in state.details["candidates"].items())
        raise ValueError(f"none of the candidate backbones could be built and trained on this data: {errors}")
    plan = plan_search(epoch_seconds, search_seconds, preset, options["n_trials"], tm.overhead, state.fill_final)
    if plan.skipped:
        search_seconds = 0.0
        state.details.update(search_skipped=plan.skipped, default_backbone=_final_backbone(state, available))
    if state.final_needed and not state.fill_final:  # the refit needs one slice (which may have grown)
        state.refit_reserve = min(1.15 * ratio * plan.slice_seconds, available / 2)
        search_seconds = available - state.refit_reserve
    for name, seconds in epoch_seconds.items():
        entry = state.details["candidates"].setdefault(name, {})
        entry.update(epoch_seconds=round(seconds, 2), kept=name in plan.kept, note=plan.dropped.get(name, ""))
    state.details.update(
        kept=plan.kept,
        search_seconds=round(search_seconds, 1),
        trial_seconds=round(plan.slice_seconds, 1),
        search_images=0 if plan.skipped else len(search_train),
        search_val_images=len(search_val),
    )
    state.details["_plan"] = plan
    state.details["_augmentations"] = augmentations


def _final_backbone(state: SearchState, available: float) -> str:
    """Without a search: the first candidate (in the preset's order) of which ``min_epochs`` fit the budget.

    The fastest candidate when none does.
    """
    tm, preset = state.time_model, state.preset
    images = len(state.tables["train"]) + (len(state.tables["val"]) if state.refit else 0)
    val = 0 if state.refit else len(state.search_tables["val"])
    times = {name: tm.epoch_seconds(name, images, val) for name in tm.step_seconds}
    for name in state.details["candidates"]:
        if name in times and preset.min_epochs * times[name] + tm.overhead <= 0.85 * available:
            return name
    return min(times, key=times.get)


def default_config(state: SearchState, backbone: str) -> dict[str, Any]:
    """The preset's default configuration: trial 0 (a known-good baseline for TPE), or the one final training."""
    space = state.space
    params: dict[str, Any] = {
        "backbone": backbone,
        "lr": min(max(space.recipe.lr, space.lr[0]), space.lr[1]),
        "weight_decay": min(max(space.recipe.weight_decay, space.weight_decay[0]), space.weight_decay[1]),
        "label_smoothing": min(0.1, space.label_smoothing),
        "mixup_alpha": 0.0,
    }
    augmentations = state.details["_augmentations"]
    if augmentations != (None,):
        params["augmentation"] = augmentations[0]
    return params
