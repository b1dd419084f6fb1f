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

With ``logger=``, every trial is a run of the named trackers, nested under
the search's own run in MLflow (``autotimm.auto.tracking``).

The study is persistent (``autotimm.auto.storage``): a SQLite file in
``output_dir`` by default, or any database URL that several machines share.
A second call on the same folder resumes it; ``n_workers`` local processes
(``autotimm.auto.processes``) or ``join`` calls on other machines run trials
of the same study at once, under one deadline.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotimm.auto.distributed import is_rank_zero, on_rank_zero, start_processes
from autotimm.auto.planning import SearchOptions, SearchState, plan_record, prepare
from autotimm.auto.presets import get_preset, parse_time_limit
from autotimm.auto.processes import (
    can_fork,
    default_workers,
    fork_workers,
    start_workers,
    wait_workers,
    worker_slots,
)
from autotimm.auto.results import AutoFitResult
from autotimm.auto.storage import (
    LIVE_SECONDS,
    OutputLock,
    SearchRecord,
    SessionClock,
    open_storage,
    shown_url,
    storage_url,
    worker_name,
)
from autotimm.auto.study import enqueue_default, learn_from, refit_need, run_search, trial_rows
from autotimm.auto.tracking import check_search_logger, log_search_result, open_search_tracking
from autotimm.auto.trials import RESERVED_TRAINER_KEYS
from autotimm.checks import require_number
from autotimm.training.loggers import TrackerConfig

__all__ = ["DEFAULT_STUDY", "ROLES", "SearchRequest", "auto_fit", "import_optuna", "run_request"]

#: The study name when none is given.
DEFAULT_STUDY = "autotimm"
#: What a call does: the whole search, trials only (``join``), or the final steps only (``finish_only``).
ROLES = ("search", "join", "finish")
#: Options that must not change when a study is resumed or joined (the time limit and ``n_trials`` may).
_FINGERPRINT = ("metric", "seed", "refit", "ensemble", "backbones", "pretrained", "batch_size", "image_size",
                "search_fraction")  # fmt: skip


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


@dataclass(frozen=True)
class SearchRequest:
    """One call of ``auto_fit``, checked: what every worker process of the search is given.

    Args:
        data: What ``auto_fit`` was given.
        time_limit: The budget of the whole search, in seconds (earlier sessions count).
        preset: The preset name.
        options: The search options.
        trainer_kwargs: Extra ``AutoTrainer`` arguments.
        output_dir: The output folder.
        storage: The storage URL (``None``: ``output_dir/study.db``).
        study_name: The study's name.
        n_workers: Local worker processes.
        resume: Continue an unfinished study of the same name.
        role: One of `ROLES`.
        verbose: Print the trial table and the summary.
        called: Wall time (``time.time()``) of the call: a new session's budget starts then.
        logger: The tracker names (empty: no tracking).
        tracking: The trackers' options.
    """

    data: Any
    time_limit: float
    preset: str
    options: SearchOptions
    trainer_kwargs: dict[str, Any]
    output_dir: Path
    storage: str | None
    study_name: str
    n_workers: int
    resume: bool
    role: str
    verbose: bool
    called: float = 0.0
    logger: tuple[str, ...] = ()
    tracking: TrackerConfig | None = None


def _check_parallel(
    storage: Any, study_name: Any, n_workers: Any, resume: Any, join: Any, finish_only: Any, trainer_kwargs: dict
) -> None:
    for name, value in (("resume", resume), ("join", join), ("finish_only", finish_only)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}")
    if join and finish_only:
        raise ValueError("`join` and `finish_only` cannot both be True: a worker runs trials, a finish runs none")
    if storage is not None and not isinstance(storage, str):
        raise ValueError(f"`storage` must be None or a database URL string, got {storage!r}")
    if study_name is not None and (not isinstance(study_name, str) or not study_name.strip()):
        raise ValueError(f"`study_name` must be a non-empty string or None, got {study_name!r}")
    require_number("n_workers", n_workers, 1, integer=True, allow_none=True)
    launch = sorted(set(trainer_kwargs) & {"devices", "strategy", "num_nodes"})
    if n_workers is not None and n_workers > 1 and launch:
        raise ValueError(
            f"`n_workers` must be 1 when `trainer_kwargs` set {launch} (each trial on several devices, DDP); "
            f"got n_workers={n_workers}"
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
    storage: str | None = None,
    study_name: str | None = None,
    n_workers: int | None = None,
    resume: bool = True,
    join: bool = False,
    finish_only: bool = False,
    logger: Any = False,
    tracking: TrackerConfig | None = None,
) -> AutoFitResult | None:
    """Find a good backbone and hyper-parameters for ``data`` within ``time_limit``, and return the trained model.

    See the [AutoML guide](../guide/automl.md) for the budget rule, the presets,
    the files written, and parallel, resumed and multi-machine searches.

    Args:
        data: An ``ImageDataModule`` with a validation split (of files, arrays,
            shards or a map-style Hugging Face dataset), a class folder, a CSV
            file, a shard folder or URL, a Hugging Face dataset folder or
            Parquet files, or a built-in dataset name (``"digits"``, ...).
            Trials on shards use the whole splits (no subsets) and allow no
            ``refit``.
        time_limit: The budget for the whole search: seconds, or ``"90s"``,
            ``"10m"``, ``"1h"``, ``"1h30m"``. A resumed search counts the time
            its earlier calls used.
        preset: ``"fast"``, ``"balanced"`` or ``"best"``: candidate backbones,
            search space and budget rule (see `list_presets`).
        output_dir: Folder of ``study.db``, ``trials.csv``, ``summary.json``,
            ``best.ckpt``, the trials' checkpoints and the ensemble. A new
            study replaces the ``trials/``, ``final/`` and ``ensemble/``
            sub-folders of an earlier one.
        metric: The validation metric trials are ranked by: ``"accuracy"``,
            ``"f1_macro"``, ``"top5_accuracy"`` (more than 5 classes) or ``"loss"``.
        refit: Finish by retraining the best configuration on train + val
            (not with shards, whose splits cannot be merged).
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
        tta: Try test-time augmentation on the returned model (``"flip"``, then
            ``"flip_crops"``) and keep the mode (``model.hparams.tta``) only if it
            improves the validation score over no TTA and over the cheaper mode.
        verbose: Print the trial table and the summary at the end.
        storage: The Optuna storage of the study: ``None`` for a SQLite file
            ``output_dir/study.db``, or a URL such as ``"sqlite:///path.db"`` or
            ``"postgresql://user:password@host/db"`` (``pip install 'autotimm[postgres]'``)
            that several machines share.
        study_name: The study's name in the storage (``None``: ``"autotimm"``).
        n_workers: Trials run at once, each in its own process: one GPU each
            when there are GPUs, else an equal share of the CPU cores. ``None``:
            one per visible GPU, one on a machine without.
        resume: Continue an unfinished study of this name (its finished trials
            are kept; a trial running when its process died is failed by the
            heartbeat and retried once). ``False``, or a finished study,
            starts a new study.
        join: Only add workers to the search (on this or another machine):
            run trials until the study's deadline and return ``None``. The
            first call to reach a new study prepares it.
        finish_only: Run no trials: wait for the study's running trials, then
            do the final steps (final training, ensemble, TTA, files) on all
            of them and return the result.
        logger: Experiment trackers of the search, by name as in
            ``AutoTrainer(logger=...)``: ``"tensorboard"``, ``"csv"``,
            ``"mlflow"``, ``"wandb"``, a list of those, ``True``
            (TensorBoard) or ``False`` (none, the default). Each trial (and
            the final training) is a run of its own, nested under the
            search's run in MLflow, in the search's group in W&B, and in its
            trial folder for CSV and TensorBoard; the search's run gets the
            best configuration and score, ``trials.csv``, ``summary.json``
            and (MLflow) the final model. Works with ``n_workers > 1`` and
            ``join`` (see the [tracking guide](../guide/sharing.md#searches-nested-runs)).
        tracking: The trackers' options (experiment, run name of the search,
            tags, MLflow URI, W&B project, mode and group): a
            [`TrackerConfig`][autotimm.training.loggers.TrackerConfig].

    Returns:
        An [`AutoFitResult`][autotimm.auto.results.AutoFitResult]; ``None`` with ``join=True``.

    Raises:
        ValueError: A bad argument (the message names it and what is
            accepted, e.g. a ``logger`` that is not a tracker name), data
            without a validation split, multi-label data,
            or a resumed study that was started with other options.
        ImportError: Optuna is not installed (``pip install 'autotimm[auto]'``),
            or the storage's database driver is missing.
        ConnectionError: The storage cannot be reached (one line).
        RuntimeError: Every trial failed (the message gives the first errors),
            ``time_limit`` is too short for one epoch of any candidate, or
            another search is using ``output_dir``.
        PretrainedWeightsUnavailableError: ``pretrained=True`` and the
            weights cannot be downloaded or found in the cache.
    """
    called = time.time()
    limit = parse_time_limit(time_limit)
    get_preset(preset)
    _check_arguments(
        metric, refit, tta, ensemble, seed, n_trials, backbones, batch_size, image_size, search_fraction, trainer_kwargs
    )
    trainer_kwargs = dict(trainer_kwargs or {})
    _check_parallel(storage, study_name, n_workers, resume, join, finish_only, trainer_kwargs)
    names = check_search_logger(logger)
    if tracking is not None and not isinstance(tracking, TrackerConfig):
        raise ValueError(f"`tracking` must be a TrackerConfig or None, got {tracking!r}")
    if names and "logger" in trainer_kwargs:
        raise ValueError("`trainer_kwargs` must not set 'logger' when `logger` names the trackers of the search")
    import_optuna()
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
    output_dir = Path(output_dir)
    request = SearchRequest(
        data=data,
        time_limit=limit,
        preset=preset,
        options=options,
        trainer_kwargs=trainer_kwargs,
        output_dir=output_dir,
        storage=storage_url(storage, output_dir),
        study_name=study_name or DEFAULT_STUDY,
        n_workers=n_workers or default_workers(trainer_kwargs),
        resume=resume,
        role="join" if join else "finish" if finish_only else "search",
        verbose=verbose,
        called=called,
        logger=names,
        tracking=tracking or TrackerConfig() if names else None,
    )
    return run_request(request)


def _fingerprint(request: SearchRequest) -> dict[str, Any]:
    options = request.options
    found = {name: getattr(options, name) for name in _FINGERPRINT}
    found["backbones"] = list(found["backbones"]) if found["backbones"] is not None else None
    return {"preset": request.preset, **found}


def _clear(output_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        shutil.rmtree(output_dir / name, ignore_errors=True)


def _open_study(optuna: Any, request: SearchRequest) -> tuple[SearchRecord, dict[str, Any]]:
    """Create, resume or join the study and open its session (rank 0); clear what a new study replaces.

    Raises:
        ValueError: ``finish_only`` without a study, or a study started with other options.
    """
    storage = open_storage(optuna, request.storage)
    name, output_dir = request.study_name, request.output_dir
    direction = "minimize" if request.options.metric == "loss" else "maximize"
    if request.role == "finish":
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise ValueError(f"`study_name` {name!r}: no such study in {request.storage!r} to finish") from None
        record = SearchRecord(study, storage, request.storage, created=False)
    else:
        record = _create_or_load(optuna, storage, request, direction)
        replace_it = request.role == "search" and not record.created and (not request.resume or record.get("finished"))
        if request.role == "search" and not record.created and record.plan is None:
            session = record.session()  # killed in its preparation: nothing to resume, unless it is preparing now
            replace_it = replace_it or session is None or time.time() - session["seen"] >= LIVE_SECONDS
        if replace_it:  # a finished study, resume=False, or no plan: a new one of the same name
            optuna.delete_study(study_name=name, storage=storage)
            record = _create_or_load(optuna, storage, request, direction)
    if record.created:
        record.set("options", _fingerprint(request))
        _clear(output_dir, ("trials", "final", "ensemble"))
    else:
        stored = record.get("options") or {}
        changed = {k: (stored[k], v) for k, v in _fingerprint(request).items() if k in stored and stored[k] != v}
        if changed:
            detail = ", ".join(f"{k}={old!r} (now {new!r})" for k, (old, new) in changed.items())
            raise ValueError(
                f"study {name!r} in {output_dir} was started with {detail}: run with the same options, "
                "resume=False (--no-resume) to start a new study, or another output_dir or study_name"
            )
        if request.role != "join":
            _clear(output_dir, ("final", "ensemble"))
    return record, record.open_session(fresh=record.created, called=request.called or None)


def _create_or_load(optuna: Any, storage: Any, request: SearchRequest, direction: str) -> SearchRecord:
    """The study, created by this call if it is the first (the storage's unique names make that atomic)."""
    name = request.study_name
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction=direction, load_if_exists=False)
        return SearchRecord(study, storage, request.storage, created=True)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage)
        return SearchRecord(study, storage, request.storage, created=False)


def _wait_for_trials(optuna: Any, record: SearchRecord, state: SearchState, role: str) -> None:
    """Wait until no trial of the study runs (other workers' and machines'), at most until the trials' deadline.

    A ``finish`` call, which ran no trials itself, first waits until the workers stop starting trials: the search
    deadline (before a final training that fills the time left), or the hard deadline less the refit's need.
    """
    hard = state.start + state.limit - state.reserve - state.ensemble_reserve
    while time.monotonic() < hard + 1.0:
        if role == "finish" and state.plan.kept:
            if state.fill_final:
                last_start = state.start + state.search_end
            else:
                last_start = hard - refit_need(state, trial_rows(optuna, record))
            if time.monotonic() < last_start:
                time.sleep(0.5)
                continue
        if not record.running(optuna):
            return
        time.sleep(0.5)


def run_request(request: SearchRequest, worker: int | None = None) -> AutoFitResult | None:
    """Run one call of the search: prepare, run trials (here or in worker processes), then finish.

    Args:
        request: The checked call.
        worker: The index of a local worker process started by another call (``None`` otherwise).

    Returns:
        The result; ``None`` for a worker (``role == "join"``).
    """
    from autotimm.auto.finish import finish

    optuna = import_optuna()
    chosen = get_preset(request.preset)
    trainer_kwargs = dict(request.trainer_kwargs)
    output_dir = request.output_dir
    role = request.role
    with _quiet():
        start_processes(trainer_kwargs)
        if is_rank_zero():
            output_dir.mkdir(parents=True, exist_ok=True)
        locked = role != "join" and is_rank_zero()
        description = f"{worker_name()}, study {request.study_name!r}"
        lock = OutputLock(output_dir, description) if locked else contextlib.nullcontext()
        with lock:
            held: dict[str, Any] = {}

            def open_() -> dict[str, Any]:
                record, session = _open_study(optuna, request)
                held.update(record=record, session=session)
                if record.get("finished") and role == "join":
                    return {"finished": True}
                used = session["used_before"] + max(time.time() - session["start"], 0.0)
                return {"used": used, "created": record.created, "finished": False}

            opened = on_rank_zero(open_)
            if opened["finished"]:
                if request.verbose:
                    print(f"auto_fit: study {request.study_name!r} has finished: no trials to join")
                return None
            record: SearchRecord | None = held.get("record")
            start = time.monotonic() - opened["used"]
            clock = SessionClock(record, held["session"]) if record is not None and worker is None else None
            with clock or contextlib.nullcontext():
                processes: list[Any] = []
                parallel = request.n_workers > 1 and role != "finish"
                use_gpus = parallel and step_uses_gpu(trainer_kwargs)
                slots = worker_slots(request.n_workers, use_gpus) if parallel else []
                folder = output_dir / "workers"
                if parallel and (use_gpus or not can_fork()):  # started first: their imports overlap the preparation
                    child = replace(request, role="join", n_workers=1, verbose=False)
                    processes = start_workers({"request": child}, slots, folder)
                stored = None
                try:
                    if not opened["created"]:
                        wait = max(request.time_limit - opened["used"], 30)
                        stored = on_rank_zero(lambda: record.wait_for_plan(wait))
                    state = prepare(
                        request.data, chosen, output_dir, request.options, trainer_kwargs, start, request.time_limit,
                        stored,
                    )  # fmt: skip
                    if request.logger:  # before the plan is stored: the workers waiting for it find the run too
                        forks = parallel and not processes
                        state.settings.tracking = on_rank_zero(lambda: _open_tracking(request, record, forks))
                    if opened["created"] and record is not None:
                        enqueue_default(state, record)
                        record.set("plan", plan_record(state))
                except BaseException:  # bad data, no candidate, Ctrl+C: the started workers would wait for a plan
                    for process in processes:
                        process.kill()
                    raise
                if parallel and not processes:  # CPU workers: forks of the prepared search
                    with clock.paused() if clock is not None else contextlib.nullcontext():
                        processes = fork_workers(lambda slot: _forked_search(state, request, slot.index), slots, folder)
                if processes:
                    end = state.start + state.limit - state.reserve + 5.0
                    state.details["worker_errors"] = wait_workers(processes, end, folder)
                elif role != "finish":
                    seed = request.options.seed + (0 if worker is None else 1000 * (worker + 1))
                    name = worker_name() if worker is None else f"{worker_name()} (worker {worker})"
                    run_search(optuna, state, record, request.options.n_trials, seed, name)
                if role == "join":
                    return None
                return _finish(optuna, state, record, request, opened["used"], finish)


def _open_tracking(request: SearchRequest, record: SearchRecord | None, forks: bool) -> Any:
    """The search's tracking (rank 0): its MLflow run started, or found in the study (resumed, joined)."""
    params = {"preset": request.preset, "metric": request.options.metric, "study": request.study_name,
              "seed": request.options.seed, "workers": request.n_workers}  # fmt: skip
    tracking = request.tracking or TrackerConfig()
    return open_search_tracking(request.logger, tracking, request.output_dir, record, params, forks)


def _forked_search(state: SearchState, request: SearchRequest, index: int) -> None:
    """A forked CPU worker: its own connection to the study, then trials until the deadline."""
    optuna = import_optuna()
    storage = open_storage(optuna, request.storage)
    record = SearchRecord(optuna.load_study(study_name=request.study_name, storage=storage), storage, request.storage,
                          created=False)  # fmt: skip
    seed = request.options.seed + 1000 * (index + 1)
    with _quiet():
        run_search(optuna, state, record, request.options.n_trials, seed, f"{worker_name()} (worker {index})")


def step_uses_gpu(trainer_kwargs: dict[str, Any]) -> bool:
    """Whether trials train on CUDA devices (so local workers get one GPU each)."""
    from autotimm.auto.timing import step_device

    return step_device(trainer_kwargs).type == "cuda"


def _finish(
    optuna: Any, state: SearchState, record: SearchRecord | None, request: SearchRequest, used: float, finish: Any
) -> AutoFitResult:
    """The final steps on every trial of the study, once none runs any more; mark the study finished."""

    def collect() -> list[dict[str, Any]]:
        _wait_for_trials(optuna, record, state, request.role)
        rows = trial_rows(optuna, record)
        learn_from(state, rows)
        workers: dict[str, list[int]] = {}
        for row in rows:
            workers.setdefault(str(row.get("worker")), []).append(row["number"])
        sessions = record.get("sessions", [])
        state.details.update(
            storage=shown_url(request.storage), study_name=record.name, n_workers=request.n_workers,
            workers=workers, sessions=sessions, time_used_before=round(used, 1),
        )  # fmt: skip
        return rows

    rows = on_rank_zero(collect)
    state.details = on_rank_zero(lambda: state.details)
    result = finish(state, rows, request.verbose)
    if state.settings.tracking is not None and is_rank_zero():
        log_search_result(state.settings.tracking, result)
    if record is not None:
        record.set("finished", True)
    return result
