"""``auto_fit``: choose a backbone and its hyper-parameters within a time budget, with Optuna.

The call runs in four steps, all inside ``time_limit``:

1. **Prepare**: resolve the data, choose one image size, batch size and
   preprocessing for every trial, and measure each candidate backbone's
   training step and the data loading (``autotimm.auto.timing``).
2. **Plan**: split the budget between the search and a final training, and
   keep the candidates that fit the budget rule (``autotimm.auto.presets``).
3. **Search**: Optuna's TPE sampler proposes trials, each trained by
   ``AutoTrainer`` for the epochs that fit its time slice, reported to a
   median pruner after every validation, and stopped at its deadline.
4. **Finish** (``autotimm.auto.finish``): the optional final training, the
   optional ensemble, ``best.ckpt``, ``trials.csv`` and ``summary.json``.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autotimm.auto.distributed import is_rank_zero, start_processes
from autotimm.auto.planning import SearchOptions, prepare
from autotimm.auto.presets import get_preset, parse_time_limit
from autotimm.auto.results import AutoFitResult
from autotimm.auto.study import run_search
from autotimm.auto.trials import RESERVED_TRAINER_KEYS
from autotimm.checks import require_number

__all__ = ["auto_fit", "import_optuna"]


def import_optuna() -> Any:
    """Import Optuna, or say how to install it."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError("auto_fit needs Optuna, which is not installed: pip install 'autotimm[auto]'") from err
    return optuna


@contextmanager
def _quiet() -> Iterator[None]:
    """Lightning's and Optuna's info messages off (one set per trial would drown the trial table)."""
    names = ("pytorch_lightning", "lightning_fabric", "optuna")
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _check_arguments(
    metric: Any,
    refit: Any,
    tta: Any,
    ensemble: Any,
    seed: Any,
    n_trials: Any,
    backbones: Any,
    batch_size: Any,
    image_size: Any,
    search_fraction: Any,
    trainer_kwargs: Any,
) -> None:
    from autotimm.models.backbone import check_model_name

    if not isinstance(metric, str) or not metric:
        raise ValueError(f"`metric` must be a validation metric name such as 'accuracy', got {metric!r}")
    for name, value in (("refit", refit), ("tta", tta)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}")
    require_number("ensemble", ensemble, 0, integer=True)
    require_number("seed", seed, 0, integer=True)
    for name, value, low in (("n_trials", n_trials, 1), ("batch_size", batch_size, 1), ("image_size", image_size, 8)):
        require_number(name, value, low, integer=True, allow_none=True)
    require_number("search_fraction", search_fraction, 0, 1, low_open=True, allow_none=True)
    if backbones is not None:
        if isinstance(backbones, str) or not isinstance(backbones, Sequence) or not backbones:
            raise ValueError(f"`backbones` must be a non-empty list of timm model names or None, got {backbones!r}")
        for name in backbones:
            check_model_name(name)
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise ValueError(f"`trainer_kwargs` must be a dict of Trainer arguments or None, got {trainer_kwargs!r}")
    reserved = sorted(set(trainer_kwargs or {}) & set(RESERVED_TRAINER_KEYS))
    if reserved:
        raise ValueError(
            f"`trainer_kwargs` must not set {reserved}: auto_fit sets the epochs, limits and folders of every trial "
            "from the time budget"
        )


def auto_fit(
    data: Any,
    time_limit: float | str = "10m",
    preset: str = "fast",
    *,
    output_dir: str | Path = "autotimm_auto",
    metric: str = "accuracy",
    refit: bool = False,
    ensemble: int = 0,
    seed: int = 42,
    n_trials: int | None = None,
    backbones: Sequence[str] | None = None,
    pretrained: bool = False,
    batch_size: int | None = None,
    image_size: int | None = None,
    search_fraction: float | None = None,
    trainer_kwargs: dict[str, Any] | None = None,
    dataset_root: str | None = None,
    tta: bool = True,
    verbose: bool = True,
) -> AutoFitResult:
    """Find a good backbone and hyper-parameters for ``data`` within ``time_limit``, and return the trained model.

    See the [AutoML guide](../guide/automl.md) for the budget rule, the presets and the files written.

    Args:
        data: An ``ImageDataModule`` with a validation split, a class folder,
            a CSV file or a built-in dataset name (``"digits"``, ...).
        time_limit: The budget for the whole call: seconds, or ``"90s"``,
            ``"10m"``, ``"1h"``, ``"1h30m"``.
        preset: ``"fast"``, ``"balanced"`` or ``"best"``: candidate backbones,
            search space and budget rule (see `list_presets`).
        output_dir: Folder of ``trials.csv``, ``summary.json``, ``best.ckpt``,
            the trials' checkpoints and the ensemble; its ``trials/``,
            ``final/`` and ``ensemble/`` sub-folders from an earlier run are replaced.
        metric: The validation metric trials are ranked by: ``"accuracy"``,
            ``"f1_macro"``, ``"top5_accuracy"`` (more than 5 classes) or ``"loss"``.
        refit: Finish by retraining the best configuration on train + val.
        ensemble: Average the probabilities of the top-``ensemble`` trials'
            models (0 or 1: no ensemble).
        seed: Seed of the sampler, the data subsets and every trial.
        n_trials: Run at most this many trials (``None``: as many as the time allows).
        backbones: timm model names to choose from instead of the preset's.
        pretrained: Start from timm's pretrained weights (needs the Hugging Face hub or its cache).
        batch_size: Batch size of every trial; ``None`` chooses it from the
            data size (the data module's own ``batch_size`` is not used).
        image_size: Input size of every trial; ``None`` takes the data
            module's ``image_size`` or chooses one from the images.
        search_fraction: Share of the budget for the search, the rest for a
            final training of the best configuration for as many epochs as fit;
            ``None``: the preset's rule.
        trainer_kwargs: Extra ``AutoTrainer``/Lightning arguments for every
            run, e.g. ``{"accelerator": "cpu", "devices": 2, "strategy": "ddp"}``
            or ``{"precision": "bf16-mixed"}``.
        dataset_root: Cache folder of built-in datasets (when ``data`` is a name).
        tta: Try flip test-time augmentation on the returned model and keep it
            (``model.hparams.tta == "flip"``) only if it improves the validation score.
        verbose: Print the trial table and the summary at the end.

    Returns:
        An [`AutoFitResult`][autotimm.auto.results.AutoFitResult].

    Raises:
        ValueError: A bad argument (the message names it and what is
            accepted), data without a validation split, or multi-label data.
        ImportError: Optuna is not installed (``pip install 'autotimm[auto]'``).
        RuntimeError: Every trial failed (the message gives the first errors),
            or ``time_limit`` is too short for one epoch of any candidate.
        PretrainedWeightsUnavailableError: ``pretrained=True`` and the
            weights cannot be downloaded or found in the cache.
    """
    from autotimm.auto.finish import finish

    start = time.monotonic()
    limit = parse_time_limit(time_limit)
    chosen = get_preset(preset)
    _check_arguments(
        metric, refit, tta, ensemble, seed, n_trials, backbones, batch_size, image_size, search_fraction, trainer_kwargs
    )
    optuna = import_optuna()
    trainer_kwargs = dict(trainer_kwargs or {})
    options = SearchOptions(
        seed=seed,
        metric=metric,
        refit=refit,
        tta=tta,
        ensemble=ensemble,
        n_trials=n_trials,
        backbones=tuple(backbones) if backbones is not None else None,
        pretrained=pretrained,
        batch_size=batch_size,
        image_size=image_size,
        search_fraction=search_fraction,
        dataset_root=dataset_root,
    )
    with _quiet():
        start_processes(trainer_kwargs)
        output_dir = Path(output_dir)
        if is_rank_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
            for name in ("trials", "final", "ensemble"):  # a rerun into the same folder replaces these
                shutil.rmtree(output_dir / name, ignore_errors=True)
        state = prepare(data, chosen, output_dir, options, trainer_kwargs, start, limit)
        rows = run_search(optuna, state, n_trials, seed)
        return finish(state, rows, verbose)
