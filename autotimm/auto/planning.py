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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autotimm.auto.data import (
    TrialDataModule,
    native_image_shape,
    preprocessing_overlay,
    resolve_data,
    subset_table,
    supports_subsets,
)
from autotimm.auto.distributed import on_rank_zero, world_size
from autotimm.auto.presets import (
    Preset,
    SearchPlan,
    SearchSpace,
    choose_batch_size,
    choose_image_size,
    plan_search,
)
from autotimm.auto.timing import (
    TimeModel,
    backbone_config,
    cpu_has_bf16,
    measure_loading,
    measure_steps,
    step_device,
)
from autotimm.auto.trials import RunSettings
from autotimm.data.datamodule import ImageDataModule
from autotimm.data.sources import SampleTable
from autotimm.models.backbone import BackboneConfig

__all__ = ["Measurement", "SearchOptions", "SearchState", "default_config", "plan_record", "prepare"]

#: Augmentation presets from cheapest to most expensive to compute (the loading time is measured with the last tried).
_AUGMENTATION_COST = ("none", "crop_flip", "light", "trivialaugment", "randaugment", "autoaugment", "augmix")


@dataclass(frozen=True)
class SearchOptions:
    """What the caller of ``auto_fit`` asked of the search (checked by ``auto_fit``).

    Args:
        seed: Seed of the sampler, the data subsets and every trial.
        metric: The validation metric trials are ranked by, e.g. ``"accuracy"``.
        refit: Finish by retraining the best configuration on train + val.
        tta: Try flip test-time augmentation on the returned model.
        ensemble: Average the top-``ensemble`` trials' models (0 or 1: no ensemble).
        n_trials: Run at most this many trials (``None``: as many as the time allows).
        backbones: timm model names to choose from instead of the preset's.
        pretrained: Start from timm's pretrained weights.
        batch_size: Batch size of every trial; ``None`` chooses it from the data size.
        image_size: Input size of every trial; ``None`` takes the data module's or chooses one.
        search_fraction: Share of the budget for the search; ``None``: the preset's rule.
        dataset_root: Cache folder of built-in datasets.
    """

    seed: int = 42
    metric: str = "accuracy"
    refit: bool = False
    tta: bool = True
    ensemble: int = 0
    n_trials: int | None = None
    backbones: tuple[str, ...] | None = None
    pretrained: bool = False
    batch_size: int | None = None
    image_size: int | None = None
    search_fraction: float | None = None
    dataset_root: str | None = None


@dataclass
class Measurement:
    """What rank 0 measured before the search.

    Args:
        time_model: The candidates' step times and the data loading times.
        errors: Candidate -> why it could not be built or run.
        elapsed: Seconds from the start of ``auto_fit`` to the end of the measurement.
    """

    time_model: TimeModel
    errors: dict[str, str]
    elapsed: float


@dataclass
class SearchState:
    """Everything the search and the finish share.

    Args:
        settings: What every run shares.
        preset: The preset.
        space: The search space at the chosen image size.
        data: The user's set-up data module.
        tables: Its splits.
        search_tables: The ``"train"`` and ``"val"`` subsets trials train and validate on.
        time_model: The time model, corrected after each run (rank 0's is the one that counts).
        details: The summary so far: preset, sizes, candidates, budget.
        output_dir: Where everything is written.
        start: ``time.monotonic()`` at the call of ``auto_fit``.
        limit: The budget in seconds.
        reserve: Seconds kept for writing the results.
        final_needed: Whether a final training follows the search.
        fill_final: Whether the final training fills the time left (rather than a refit of the best trial's epochs).
        refit: The final training trains on train + val.
        ensemble: Members of the ensemble (0 or 1: none).
        tta: Try flip test-time augmentation.
        augmentations: The augmentation presets trials choose from; ``(None,)`` keeps the data module's transform.
        plan: What the budget rule decided (set by `prepare`).
        ensemble_reserve: Seconds kept for scoring the ensemble.
        refit_reserve: Seconds kept for the refit before any trial finished.
        search_end: Seconds after ``start`` at which no trial starts any more (before a final
            training that fills the time left).
        observed: Numbers of the trials the time model has learnt from.
    """

    settings: RunSettings
    preset: Preset
    space: SearchSpace
    data: ImageDataModule
    tables: dict[str, SampleTable]
    search_tables: dict[str, SampleTable]
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
    augmentations: tuple[str | None, ...] = (None,)
    plan: SearchPlan = field(default_factory=lambda: SearchPlan([], {}, 0.0))
    ensemble_reserve: float = 0.0
    refit_reserve: float = 0.0
    search_end: float = 0.0
    observed: set[int] = field(default_factory=set)


def _check_metric(metric: str, num_classes: int) -> str:
    accepted = ["accuracy", "f1_macro", "loss"] + (["top5_accuracy"] if num_classes > 5 else [])
    if metric not in accepted:
        raise ValueError(f"`metric` must be one of {accepted} (validation metrics of this data), got {metric!r}")
    return f"val/{metric}"


def _resolve_once(data: Any, output_dir: Path, options: SearchOptions) -> ImageDataModule:
    """``resolve_data`` on rank 0 first (it writes the split file), then on the other ranks (they read it)."""
    resolved: list[ImageDataModule] = []
    on_rank_zero(lambda: resolved.append(resolve_data(data, output_dir, options.seed, options.dataset_root)))
    return resolved[0] if resolved else resolve_data(data, output_dir, options.seed, options.dataset_root)


def _image_size(asked: int | None, datamodule: ImageDataModule, native: int, preset: Preset) -> tuple[int, int]:
    """The input size of every trial: ``asked``, else the data module's ``image_size``, else chosen from ``native``."""
    if asked is not None:
        return (asked, asked)
    given = datamodule.image_size
    if given is not None:
        return (given, given) if isinstance(given, int) else (int(given[0]), int(given[1]))
    size = choose_image_size(native, preset)
    return (size, size)


def _with_precision(trainer_kwargs: dict[str, Any], space: SearchSpace, device: torch.device) -> dict[str, Any]:
    """``trainer_kwargs`` with bf16 autocast added where the recipe asks for it and this CPU computes bf16."""
    if space.recipe.cpu_bf16 and "precision" not in trainer_kwargs and device.type == "cpu" and cpu_has_bf16():
        return {**trainer_kwargs, "precision": "bf16-mixed"}
    return trainer_kwargs


def _run_settings(
    datamodule: ImageDataModule,
    options: SearchOptions,
    size: tuple[int, int],
    in_chans: int,
    space: SearchSpace,
    trainer_kwargs: dict[str, Any],
) -> RunSettings:
    """What every run shares: the preprocessing, batch size, metric, seed, trainer arguments and recipe."""
    from autotimm.optim.schedulers import metric_mode

    monitor = _check_metric(options.metric, datamodule.num_classes)
    return RunSettings(
        base=datamodule,
        overlay=preprocessing_overlay(in_chans, size, options.pretrained),
        batch_size=options.batch_size or choose_batch_size(len(datamodule.tables["train"]), max(size)),
        num_classes=datamodule.num_classes,
        class_names=datamodule.class_names,
        in_chans=in_chans,
        image_size=size,
        pretrained=options.pretrained,
        monitor=monitor,
        mode=metric_mode(monitor),
        seed=options.seed,
        trainer_kwargs=trainer_kwargs,
        recipe=space.recipe.model_kwargs(),
    )


def _augmentations(datamodule: ImageDataModule, space: SearchSpace, image_size: int) -> tuple[str | None, ...]:
    """The augmentation presets trials choose from; ``(None,)`` when the data module has its own transform."""
    if datamodule.custom_train_transform is not None:
        return (None,)
    return tuple(space.augmentation_choices(image_size))


def _search_tables(tables: dict[str, SampleTable], preset: Preset, seed: int) -> dict[str, SampleTable]:
    """The stratified subsets trials train and validate on (the whole splits when they are small enough)."""
    return {
        "train": subset_table(tables["train"], preset.max_search_images, seed),
        "val": subset_table(tables["val"], preset.max_val_images, seed),
    }


def _candidates(options: SearchOptions, preset: Preset, in_chans: int, image_size: int) -> dict[str, BackboneConfig]:
    """Candidate name -> its backbone config: the user's ``backbones`` or the preset's, without repeats."""
    names = dict.fromkeys(options.backbones or preset.candidates(image_size))
    return {name: backbone_config(name, in_chans, image_size, options.pretrained) for name in names}


def _measure(
    settings: RunSettings,
    space: SearchSpace,
    configs: dict[str, BackboneConfig],
    augmentations: tuple[str | None, ...],
    search_tables: dict[str, SampleTable],
    device: torch.device,
    start: float,
) -> Measurement:
    """Time the data loading (with the most expensive augmentation tried) and each candidate's training step."""
    heaviest = max((a for a in augmentations if a), key=_AUGMENTATION_COST.index, default=None)
    batch = settings.batch_size
    probe = TrialDataModule.derive(
        settings.base, settings.overlay, augmentation=heaviest, batch_size=batch, tables=search_tables
    )
    load_train, load_eval = measure_loading(probe)
    steps, errors = measure_steps(
        configs,
        settings.num_classes,
        batch,
        settings.image_size,
        device,
        settings.trainer_kwargs.get("precision"),
        channels_last=space.recipe.channels_last,
    )
    time_model = TimeModel(steps, batch, load_train, load_eval, probe.loader_workers, world_size())
    return Measurement(time_model, errors, time.monotonic() - start)


def _describe(
    state: SearchState, native: int, configs: dict[str, BackboneConfig], measured: Measurement
) -> dict[str, Any]:
    """The summary's account of the preparation: preset, sizes, recipe, augmentations, data and candidates."""
    settings = state.settings
    return {
        "preset": state.preset.name,
        "image_size": list(settings.image_size),
        "native_image_size": native,
        "in_chans": settings.in_chans,
        "batch_size": settings.batch_size,
        "recipe": {**settings.recipe, "precision": str(settings.trainer_kwargs.get("precision", "32-true"))},
        "augmentations": [a for a in state.augmentations if a] or ["(the data module's own transform)"],
        "train_images": len(state.tables["train"]),
        "val_images": len(state.tables["val"]),
        "world_size": world_size(),
        "candidates": {name: {"error": measured.errors[name]} if name in measured.errors else {} for name in configs},
        "setup_seconds": round(measured.elapsed, 1),
    }


def prepare(
    data: Any,
    preset: Preset,
    output_dir: Path,
    options: SearchOptions,
    trainer_kwargs: dict[str, Any],
    start: float,
    limit: float,
    stored: dict[str, Any] | None = None,
) -> SearchState:
    """Resolve the data, fix the shared settings, measure the candidates and plan the budget.

    A worker that joins a search, or a resumed search, passes the plan the
    first process stored (`plan_record`): the candidates are then not measured
    again and the budget split is the stored one.

    Args:
        data: What ``auto_fit`` was given: an ``ImageDataModule``, a class folder, a CSV file or a dataset name.
        preset: The preset.
        output_dir: Where everything is written.
        options: The rest of ``auto_fit``'s arguments.
        trainer_kwargs: Extra ``AutoTrainer`` arguments for every run.
        start: ``time.monotonic()`` at the call of ``auto_fit``.
        limit: The budget in seconds.
        stored: A stored `plan_record`, or ``None`` to measure and plan.

    Returns:
        The state the search and the finish share (the same numbers on every rank: rank 0's).

    Raises:
        ValueError: Data without a validation split, multi-label data, a metric this data has not, ``refit``
            with shards, or no candidate that can be built and trained.
    """
    datamodule = _resolve_once(data, output_dir, options)
    tables = datamodule.tables
    if options.refit and not supports_subsets(tables["train"]):
        raise ValueError(
            "refit=True trains the final model on train + val, which shards cannot merge (each split streams "
            "as `autotimm shard` wrote it); pass refit=False with shards=..., or search on the source folder"
        )
    native, in_chans = native_image_shape(tables["train"])
    size = _image_size(options.image_size, datamodule, native, preset)
    space = preset.space_for(max(size), options.pretrained)
    device = step_device(trainer_kwargs)
    settings = _run_settings(datamodule, options, size, in_chans, space, _with_precision(trainer_kwargs, space, device))
    augmentations = _augmentations(datamodule, space, max(size))
    search_tables = _search_tables(tables, preset, options.seed)
    configs = _candidates(options, preset, in_chans, max(size))
    if stored is None:
        measured = on_rank_zero(lambda: _measure(settings, space, configs, augmentations, search_tables, device, start))
    else:
        model = TimeModel(**stored["time_model"])
        measured = Measurement(model, {}, stored["details"]["setup_seconds"])
    state = SearchState(
        settings=settings,
        preset=preset,
        space=space,
        data=datamodule,
        tables=tables,
        search_tables=search_tables,
        time_model=measured.time_model,
        details={},
        output_dir=output_dir,
        start=start,
        limit=limit,
        reserve=max(2.0, 0.03 * limit),
        final_needed=False,
        fill_final=False,
        refit=options.refit,
        ensemble=options.ensemble,
        tta=options.tta,
        augmentations=augmentations,
    )
    if stored is None:
        state.details.update(_describe(state, native, configs, measured))
        _plan(state, options, measured.elapsed)
    else:
        _apply_plan_record(state, stored)
    return state


def plan_record(state: SearchState) -> dict[str, Any]:
    """What workers that join the search (and a resumed search) reuse instead of measuring: JSON data."""
    tm = state.time_model
    return {
        "time_model": {
            "step_seconds": tm.step_seconds,
            "batch_size": tm.batch_size,
            "load_train": tm.load_train,
            "load_eval": tm.load_eval,
            "workers": tm.workers,
            "world_size": tm.world_size,
        },
        "plan": {
            "kept": state.plan.kept,
            "dropped": state.plan.dropped,
            "slice_seconds": state.plan.slice_seconds,
            "skipped": state.plan.skipped,
        },
        "details": state.details,
        "final_needed": state.final_needed,
        "fill_final": state.fill_final,
        "ensemble_reserve": state.ensemble_reserve,
        "refit_reserve": state.refit_reserve,
        "search_end": state.search_end,
    }


def _apply_plan_record(state: SearchState, stored: dict[str, Any]) -> None:
    state.plan = SearchPlan(**stored["plan"])
    state.details.update(stored["details"])
    state.final_needed, state.fill_final = stored["final_needed"], stored["fill_final"]
    state.ensemble_reserve, state.refit_reserve = stored["ensemble_reserve"], stored["refit_reserve"]
    state.search_end = stored["search_end"]


def _ensemble_reserve(state: SearchState) -> float:
    """Seconds to score the ensemble's members on the validation images (0 without an ensemble)."""
    if state.ensemble <= 1:
        return 0.0
    tm = state.time_model
    fastest = min(tm.step_seconds.values(), default=0.0)
    batches = math.ceil(len(state.search_tables["val"]) / tm.batch_size)
    return state.ensemble * batches * (fastest / 3 + tm.batch_size * tm.load_eval)


def _plan(state: SearchState, options: SearchOptions, elapsed: float) -> None:
    """Split the budget and choose the candidates (the same numbers on every rank: rank 0's)."""
    preset, tm = state.preset, state.time_model
    train, search_train, search_val = state.tables["train"], state.search_tables["train"], state.search_tables["val"]
    state.ensemble_reserve = _ensemble_reserve(state)
    available = state.limit - elapsed - state.reserve - state.ensemble_reserve
    subset = len(search_train) < len(train)
    state.fill_final = subset or options.search_fraction is not None
    state.final_needed = state.refit or state.fill_final
    slices = min(preset.target_trials, options.n_trials or preset.target_trials)
    # A refit as long as the best trial, on train + val: one slice is kept for it, scaled to the larger data.
    ratio = (len(train) + len(state.tables["val"])) / len(train)
    if not state.final_needed:
        search_seconds = available
    elif state.fill_final:
        search_seconds = available * (options.search_fraction or preset.search_fraction)
    else:
        search_seconds = available * slices / (slices + ratio)
    epoch_seconds = {name: tm.epoch_seconds(name, len(search_train), len(search_val)) for name in tm.step_seconds}
    if not epoch_seconds:
        errors = "; ".join(f"{name}: {c['error']}" for name, c in state.details["candidates"].items())
        raise ValueError(f"none of the candidate backbones could be built and trained on this data: {errors}")
    plan = plan_search(epoch_seconds, search_seconds, preset, options.n_trials, tm.overhead, state.fill_final)
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
    state.plan = plan
    state.search_end = elapsed + search_seconds


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
        "lr": min(
            max(space.recipe.base_lr(state.settings.pretrained, state.settings.batch_size), space.lr[0]), space.lr[1]
        ),
        "weight_decay": min(max(space.recipe.weight_decay, space.weight_decay[0]), space.weight_decay[1]),
        "label_smoothing": min(0.1, space.label_smoothing),
        "mixup_alpha": 0.0,
    }
    if state.augmentations != (None,):
        params["augmentation"] = state.augmentations[0]
    return params
