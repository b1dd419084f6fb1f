"""``autotimm auto``: choose a backbone and its hyper-parameters within a time budget (``auto_fit``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotimm.cli.options import UsageError, number

__all__ = ["CONFIG", "AutoConfig", "run"]

NAME = "auto"
HELP = "Search backbones and hyper-parameters within a time budget (needs autotimm[auto])."
DESCRIPTION = """\
Find a good backbone and hyper-parameters for the data within --time-limit,
with Optuna: candidate timm backbones are chosen by the preset, the image size,
the number of images and the budget; each trial trains the epochs that fit its
time slice and is pruned when it falls behind. The whole command, including
the optional --refit on train+val and --ensemble of the top trials, ends
inside the limit.

The output folder gets trials.csv (one row per trial), summary.json (best
configuration, its validation score, time used), best.ckpt (the model, for
`autotimm evaluate`/`predict`/`export`), ensemble/ with --ensemble K >= 2,
config.yaml (every option, to repeat the run with --config) and study.db (the
Optuna study). Running the same command again resumes an unfinished search:
finished trials are kept and the time limit counts what earlier runs used.
--workers N runs N trials at once; --storage postgresql://... with --join on
other machines adds their workers to the same search."""
EXAMPLES = """\
examples:
  autotimm auto --data digits --time-limit 2m
  autotimm auto --data data/pets --time-limit 1h --preset balanced --refit --ensemble 3
  autotimm auto --data fashion-mnist --time-limit 10m --output-dir runs/fashion
  autotimm auto --data data/pets --backbones resnet18,efficientnet_b0 --time-limit 30m
  autotimm auto --data data/pets --time-limit 30m --logger mlflow --experiment pets   # one nested run per trial
  autotimm auto --data data/pets --time-limit 1h --workers 4                # 4 trials at once (one per GPU)
  autotimm auto --data data/pets --time-limit 1h --storage postgresql://user:pw@db/search --study-name pets
  autotimm auto --data data/pets --storage postgresql://user:pw@db/search --study-name pets --join  # another machine
  autotimm evaluate autotimm_auto/best.ckpt data/pets       # evaluate the best model afterwards"""


@dataclass
class AutoConfig:
    """Options of ``autotimm auto``; the YAML keys of ``--config`` files.

    Args:
        data: Training data: a class folder (<class>/<image>, or train/, val/, test/ folders of class folders), a
            CSV file with image and label columns, a shard folder written by `autotimm shard` (or its s3://,
            gs://, azure:// URL; trials then use the whole splits, and --refit is refused), a Hugging Face dataset
            folder (save_to_disk) or Parquet files, hf:NAME for a Hub dataset, or a built-in dataset name
            (cifar10, cifar100, digits, fashion-mnist, mnist, mnist5k).
        time_limit: Budget of the whole command: seconds, or a duration such as 90s, 10m, 1h, 1h30m.
        preset: Search preset: fast, balanced or best (candidate backbones, search space, budget rule).
        output_dir: Folder of trials.csv, summary.json, best.ckpt, the trials and the ensemble.
        metric: Validation metric the trials are ranked by: accuracy, f1_macro, top5_accuracy or loss.
        refit: Finish with a retrain of the best configuration on train+val.
        tta: Try test-time augmentation (flip, then flip_crops) and keep the mode that raises the validation score.
        ensemble: Average the predictions of the top K trials' models (0 or 1: no ensemble).
        n_trials: Run at most this many trials (>= 1); null: as many as the time allows.
        backbones: Comma-separated timm model names to choose from instead of the preset's.
        pretrained: Start from timm's pretrained weights (needs the Hugging Face hub or its local cache).
        batch_size: Batch size of every trial (>= 1); null: chosen from the data size.
        image_size: Input size of every trial in pixels (>= 8); null: chosen from the images.
        search_fraction: Share of the budget for the search, the rest for a final training of the best
            configuration, in (0, 1); null: the preset's rule.
        seed: Seed of the split, the sampler and every trial (>= 0).
        val_split: Fraction of the training images held out for validation when the data has none, in (0, 1).
        test_split: Fraction held out for testing (for `autotimm evaluate`) when the data has none, in [0, 1).
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda, mps, ...
        devices: Lightning devices: auto, a count (1) or a list of indices ("0,1"); several need --strategy ddp.
        strategy: Lightning strategy: auto, or ddp for several devices.
        precision: Lightning precision: 32-true, 16-mixed, bf16-mixed, ...; null: the preset's choice
            (bf16-mixed for small images trained from scratch by "fast" on CPUs with native bf16, else 32-true).
        dataset_root: Where built-in datasets are cached; null for ~/.cache/autotimm/datasets.
        check_images: How image files are checked before training: header (open each file's header: fast; a file
            that fails to decode later is skipped, counted and listed in bad_images.txt), full (decode every file
            first: finds truncated files, slow on large folders) or none.
        workers: Trials run at once, each in its own process (one GPU each, or a share of the CPU cores);
            null: one per GPU, one without GPUs.
        storage: Optuna storage URL of the study, e.g. postgresql://user:password@host/db for several machines
            (needs autotimm[postgres]); null: a SQLite file study.db in the output folder.
        study_name: Name of the study in the storage; null: autotimm.
        resume: Continue an unfinished study in the storage (its finished trials are kept); --no-resume starts a
            new one.
        join: Only add workers to the search of --storage/--study-name (another machine): run trials until its
            deadline, then exit; the first to arrive at a new study prepares it.
        finish: Run no trials: wait for the study's running trials, then do the final steps (final training,
            ensemble, TTA, best.ckpt, summary) on all of them.
        logger: Experiment trackers of the search, repeatable: tensorboard, csv, mlflow, wandb (--logger mlflow
            --logger csv). Each trial (and the final training) is a run of its own with its configuration, metrics
            per epoch and score: nested under the search's run in MLflow, in the search's group in W&B, in the
            trial's folder for CSV and TensorBoard; the search's run gets the best configuration and score,
            trials.csv, summary.json and for MLflow the final model as a pyfunc model; default: none.
        experiment: The MLflow experiment (and W&B project unless --wandb-project); default: autotimm.
        run_name: The name of the search's run in MLflow and W&B (and its W&B group); default: the study name and
            the start time.
        tags: Run tags, repeatable: key=value or a word.
        mlflow_tracking_uri: MLflow's tracking URI; default: MLFLOW_TRACKING_URI, else mlflow.db in --output-dir.
        wandb_project: The W&B project; default: --experiment.
        wandb_mode: W&B's mode: online, offline or disabled.
    """

    data: str
    time_limit: str = "10m"
    preset: str = "fast"
    output_dir: str = "autotimm_auto"
    metric: str = "accuracy"
    refit: bool = False
    tta: bool = True
    ensemble: int = field(default=0, metadata=number(0))
    n_trials: int | None = field(default=None, metadata=number(1))
    backbones: str | None = None
    pretrained: bool = False
    batch_size: int | None = field(default=None, metadata=number(1))
    image_size: int | None = field(default=None, metadata=number(8))
    search_fraction: float | None = field(default=None, metadata=number(0, 1, low_open=True))
    seed: int = field(default=42, metadata=number(0))
    val_split: float = field(default=0.2, metadata=number(0, 1, low_open=True))
    test_split: float = field(default=0.1, metadata=number(0, 1))
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    precision: str | None = None
    dataset_root: str | None = None
    check_images: Literal["header", "full", "none"] = "header"
    workers: int | None = field(default=None, metadata=number(1))
    storage: str | None = None
    study_name: str | None = None
    resume: bool = True
    join: bool = False
    finish: bool = False
    logger: list[str] | None = None
    experiment: str | None = None
    run_name: str | None = None
    tags: list[str] | None = None
    mlflow_tracking_uri: str | None = None
    wandb_project: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] | None = None


#: The options dataclass of this subcommand.
CONFIG = AutoConfig
#: Accepted ``--metric`` values (``top5_accuracy`` needs more than five classes).
METRICS = ("accuracy", "f1_macro", "top5_accuracy", "loss")


def _trainer_kwargs(config: AutoConfig) -> dict[str, Any]:
    from autotimm.cli.options import check_precision, parse_devices

    kwargs: dict[str, Any] = {}
    if config.accelerator != "auto":
        kwargs["accelerator"] = config.accelerator
    if config.devices != "auto":
        kwargs["devices"] = parse_devices(config.devices)
    if config.strategy != "auto":
        kwargs["strategy"] = config.strategy
    if config.precision is not None:
        check_precision(config.precision)
        kwargs["precision"] = config.precision
    return kwargs


def run(config: AutoConfig) -> int:
    """Run ``auto_fit`` as ``config`` says and print the trial table and the summary.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        UsageError: A bad --time-limit or options that do not fit together (--join with --finish).
        ValueError: An unknown preset, backbone or metric (the message lists the accepted ones), or unusable data.
        FileNotFoundError: Missing data.
        ImportError: Optuna is not installed, or the storage's database driver.
        ConnectionError: The --storage database cannot be reached.
    """
    from autotimm.auto.presets import get_preset, parse_time_limit
    from autotimm.cli.common import write_config
    from autotimm.data.sources import data_source

    try:
        limit = parse_time_limit(config.time_limit, "--time-limit")
    except ValueError as err:
        raise UsageError(str(err).replace("`--time-limit`", "--time-limit")) from None
    if config.val_split + config.test_split >= 1:
        raise UsageError(f"--val-split + --test-split must be < 1, got {config.val_split} + {config.test_split}")
    try:
        get_preset(config.preset)
    except ValueError as err:
        raise ValueError(str(err).replace("`preset`", "--preset")) from None
    if config.join and config.finish:
        raise UsageError("--join and --finish cannot be used together: a worker runs trials, --finish runs none")
    if config.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {config.metric!r}")
    logger: Any = False
    tracking = None
    if config.logger:
        from autotimm.cli.tracking import tracker_arguments

        logger, tracking = tracker_arguments(config)  # a bad --logger or --tags fails now, before the search
    source = data_source(config.data)
    trainer_kwargs = _trainer_kwargs(config)
    backbones = [b.strip() for b in config.backbones.split(",") if b.strip()] if config.backbones else None

    from autotimm.auto.search import auto_fit, import_optuna
    from autotimm.data.datamodule import ImageDataModule

    import_optuna()  # before any data is read
    output_dir = Path(config.output_dir)
    datamodule = ImageDataModule(
        **source,
        dataset_root=config.dataset_root,
        val_split=config.val_split,
        test_split=config.test_split,
        seed=config.seed,
        output_dir=output_dir,
        check_images=config.check_images,
    )
    if not config.join:  # a worker leaves the search's own config.yaml alone
        write_config(config, output_dir)
    result = auto_fit(
        datamodule,
        time_limit=limit,
        preset=config.preset,
        output_dir=output_dir,
        metric=config.metric,
        refit=config.refit,
        tta=config.tta,
        ensemble=config.ensemble,
        seed=config.seed,
        n_trials=config.n_trials,
        backbones=backbones,
        pretrained=config.pretrained,
        batch_size=config.batch_size,
        image_size=config.image_size,
        search_fraction=config.search_fraction,
        trainer_kwargs=trainer_kwargs,
        verbose=True,
        storage=config.storage,
        study_name=config.study_name,
        n_workers=config.workers,
        resume=config.resume,
        join=config.join,
        finish_only=config.finish,
        logger=logger,
        tracking=tracking,
    )
    if result is None:  # a worker: the finishing call reports
        return 0
    if "test" in datamodule.splits:
        from autotimm.cli.common import console

        words = ["autotimm", "evaluate", str(result.checkpoint), config.data]
        words += [f"--val-split {config.val_split}", f"--test-split {config.test_split}", f"--seed {config.seed}"]
        console().print(f"Evaluate on the held-out test split: {' '.join(words)}", highlight=False)
    return 0
