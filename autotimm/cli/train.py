"""``autotimm train``: train a classifier on a class folder, a CSV file, shards, a Hugging Face or built-in dataset."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotimm.cli.options import UsageError, check_precision, number, optional_value, parse_devices

__all__ = ["CHANGEABLE_ON_RESUME", "CONFIG", "INVOCATION_OPTIONS", "TrainConfig", "resolve_config", "run"]

NAME = "train"
HELP = "Train a classifier on a class folder, a CSV file, shards, a Hugging Face dataset or a built-in dataset."
DESCRIPTION = """\
Train an image classifier: a timm backbone and a linear head, with AutoTrainer.

The number of classes and their names come from the data. The run folder
(--output-dir) gets checkpoints/ (the best and last.ckpt), logs/ (TensorBoard),
splits.json (the validation/test images) and config.yaml (every option, to
repeat the run with --config). At the end the best checkpoint and its
validation metrics are printed.

A killed run continues with --resume (everything restored; inside the epoch
with --checkpoint-every-n-steps or --checkpoint-every). A folder that holds a
run is never trained into again without --resume or --overwrite."""
EXAMPLES = """\
examples:
  autotimm train --data data/pets --backbone resnet18 --epochs 10
  autotimm train --data labels.csv --image-size 224 --augmentation randaugment --lr 3e-4
  autotimm train --data digits --image-size 32 --epochs 3 --output-dir runs/digits
  autotimm train --data data/pets --pretrained --freeze-backbone --optimizer sgd --lr 0.01

  # print every option as YAML, edit it, run from it (options after --config override it)
  autotimm train --data data/pets --epochs 5 --print_config > run.yaml
  autotimm train --config run.yaml --lr 1e-4
  autotimm train --config runs/pets/config.yaml --output-dir runs/pets-2   # repeat a run

  # continue a killed run (its config.yaml gives every option; --epochs may change)
  autotimm train --data data/pets --epochs 10 --checkpoint-every 10m --output-dir runs/pets
  autotimm train --resume runs/pets
  autotimm train --resume runs/pets --epochs 20"""


@dataclass
class TrainConfig:
    """Options of ``autotimm train``; the YAML keys of ``--config`` files.

    Args:
        data: Training data (required unless --resume gives a run with a config.yaml): a class folder
            (<class>/<image>, or train/, val/, test/ folders of class folders), a CSV file with image and label
            columns, a shard folder written by `autotimm shard` (or its s3://, gs://, azure:// URL), a Hugging Face
            dataset folder (save_to_disk) or Parquet files, hf:NAME for a Hub dataset, or a built-in dataset name
            (cifar10, cifar100, digits, fashion-mnist, mnist, mnist5k).
        backbone: A timm model name; `autotimm models PATTERN` lists them.
        pretrained: Start from timm's pretrained weights (needs the Hugging Face hub or its local cache).
        checkpoint_path: Start the backbone from local weights instead: a .pth/.bin/.safetensors state dict of a timm
            model, or of a torchvision classification model (e.g. torchvision's mobilenet_v2 weights for
            --backbone mobilenetv2_100); its classifier is dropped.
        checkpoint_format: How --checkpoint-path names its tensors: auto (torchvision when the keys are the
            torchvision twin's, else timm), timm or torchvision.
        epochs: Training epochs (>= 1).
        batch_size: Images per batch (>= 1).
        image_size: Input size in pixels (>= 1); null for the backbone's default.
        augmentation: Training augmentation preset: auto (none up to 64 px, light above, as ImageDataModule),
            none, light, crop_flip, randaugment, autoaugment, trivialaugment or augmix.
        optimizer: Optimizer: adamw, adam, sgd, rmsprop, adagrad, adamp, sgdp, adabelief, radam, lamb, lars, madgrad
            or novograd.
        scheduler: Learning-rate schedule: none, cosine, onecycle, step, multistep, exponential, plateau or
            cosine_with_restarts.
        lr: Learning rate (> 0); null for the default recipe's (3e-3 from scratch, 1e-3 from pretrained weights).
        weight_decay: Weight decay (>= 0), not applied to biases and norms.
        warmup_epochs: Epochs of linear learning-rate warm-up before the schedule (>= 0).
        label_smoothing: Label smoothing of the loss, in [0, 1).
        loss: Training loss: cross_entropy or focal.
        focal_gamma: With --loss focal: the focusing parameter (>= 0; 0 is cross-entropy).
        teacher: Distil from this trained model (a .ckpt, an .onnx file or an ensemble folder) with the same class
            names: the loss becomes (1 - alpha) * task loss + alpha * T^2 * KL(teacher || student) at temperature T.
        distill_alpha: With --teacher: the weight alpha of the distillation term, in [0, 1].
        distill_temperature: With --teacher: the softmax temperature T (> 0). A teacher whose input size differs
            from the student's gets the student's images resized to its own size.
        freeze_backbone: Train only the head (a linear probe on the backbone's features).
        cache_features: With --freeze_backbone: compute the backbone's features once and train the head on them.
        layer_decay: Layer-wise learning-rate decay in (0, 1]: each backbone layer learns at this fraction of the
            rate of the layer above it; null for one rate.
        unfreeze_schedule: Progressive unfreezing as JSON, {epoch: stages}: from each epoch on, that many backbone
            stages (from the top) or "all" train; before the first epoch listed only the head does. Example:
            '{"0": 0, "2": 1, "4": "all"}'.
        ema_decay: Validate and save an exponential moving average of the weights with this decay in (0, 1), e.g.
            0.999; null for none.
        channels_last: Channels-last memory format (faster convolutions on CPUs and GPUs); --no-channels-last for
            PyTorch's contiguous format.
        compile: Compile the backbone and head with torch.compile: --compile alone is mode default; or
            reduce-overhead (CUDA graphs) or max-autotune. Worth it on a GPU for long runs; the first batch
            waits for the compilation (tens of seconds). A model that fails to compile runs eagerly, with a
            warning.
        precision: Lightning precision: 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true or 64-true.
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda, mps, ...
        devices: Lightning devices: auto, a count (1) or a list of indices ("0,1").
        output_dir: Run folder for checkpoints, logs, splits.json and config.yaml.
        seed: Seed of the split, the weights' initialisation and the data order (>= 0).
        val_split: Fraction of the training images held out for validation when the data has no validation split, in
            [0, 1).
        test_split: Fraction held out for testing (used by `autotimm evaluate`) when the data has no test split, in
            [0, 1).
        num_workers: Data-loading processes (>= 0); null for one per CPU core, up to 8.
        early_stopping_patience: Stop after this many epochs without a better validation metric (>= 0); null never
            stops early.
        dataset_root: Where built-in datasets are downloaded and cached; null for ~/.cache/autotimm/datasets.
        check_images: How image files are checked before training: header (open each file's header: fast; a file
            that fails to decode later is skipped, counted and listed in bad_images.txt), full (decode every file
            first: finds truncated files, slow on large folders) or none.
        calibrate: After training, fit a temperature on the validation split (temperature scaling) and write the
            calibrated best model to model.ckpt in the run folder; the ECE before and after is printed.
        resume: Continue the run in RUN_DIR (its checkpoints/last.ckpt), or from a .ckpt file; --resume alone
            continues the run in --output-dir. The run's config.yaml gives the defaults of every option; an option
            given that differs from it is refused (except --epochs, --num-workers and the checkpoint options) unless
            --resume-force.
        resume_force: With --resume: accept options that differ from the run's config.yaml.
        overwrite: Train into an --output-dir that holds a run anyway: the old folder is moved to
            <output-dir>.old-<YYYYmmdd-HHMMSS> first (nothing is deleted).
        checkpoint_every_n_steps: Also write checkpoints/last.ckpt every this many optimizer steps (>= 1), so a
            killed run resumes inside the epoch; null for epoch ends only.
        checkpoint_every: Also write checkpoints/last.ckpt after this much training time, e.g. 10m, 90s, 1h.
        logger: Experiment trackers, repeatable: tensorboard, csv, mlflow, wandb (--logger mlflow --logger csv), or
            none; default: tensorboard. MLflow and W&B are extras: pip install 'autotimm[mlflow]' / 'autotimm[wandb]'.
        experiment: The MLflow experiment (and W&B project unless --wandb-project); default: autotimm.
        run_name: The run's name in MLflow and W&B.
        tags: Run tags, repeatable: key=value or a word (--tags team=vision --tags baseline).
        mlflow_tracking_uri: MLflow's tracking URI (sqlite:///mlflow.db, http://host:5000, or a folder for an
            SQLite store in it); default: MLFLOW_TRACKING_URI, else mlflow.db in the run folder.
        wandb_project: The W&B project; default: --experiment.
        wandb_mode: W&B's mode: online, offline (local files; `wandb sync` later) or disabled.
        evaluate: After training, evaluate the chosen checkpoint on the test split (eval-test/ in the run folder)
            and send the report (numbers and files) to the trackers.
        export_onnx: After training, export the chosen checkpoint to model.onnx in the run folder (checked against
            PyTorch) and log it to MLflow too, with the ONNX flavour (needs the onnx extra).
    """

    data: str | None = None
    backbone: str = "resnet18"
    pretrained: bool = False
    checkpoint_path: str | None = None
    checkpoint_format: Literal["auto", "timm", "torchvision"] = "auto"
    epochs: int = field(default=10, metadata=number(1))
    batch_size: int = field(default=32, metadata=number(1))
    image_size: int | None = field(default=None, metadata=number(1))
    augmentation: str = "auto"
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    lr: float | None = field(default=None, metadata=number(0, low_open=True))
    weight_decay: float = field(default=1e-4, metadata=number(0))
    warmup_epochs: int = field(default=0, metadata=number(0))
    label_smoothing: float = field(default=0.0, metadata=number(0, 1))
    loss: str = "cross_entropy"
    focal_gamma: float = field(default=2.0, metadata=number(0))
    teacher: str | None = None
    distill_alpha: float = field(default=0.5, metadata=number(0, 1, high_closed=True))
    distill_temperature: float = field(default=4.0, metadata=number(0, low_open=True))
    freeze_backbone: bool = False
    cache_features: bool = False
    layer_decay: float | None = None
    unfreeze_schedule: dict[str, int | str] | None = None
    ema_decay: float | None = None
    channels_last: bool = True
    compile: Literal["default", "reduce-overhead", "max-autotune"] | None = field(
        default=None, metadata=optional_value("default")
    )
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: str = "auto"
    output_dir: str = "autotimm_output"
    seed: int = field(default=42, metadata=number(0))
    val_split: float = field(default=0.2, metadata=number(0, 1))
    test_split: float = field(default=0.1, metadata=number(0, 1))
    num_workers: int | None = field(default=None, metadata=number(0))
    early_stopping_patience: int | None = field(default=None, metadata=number(0))
    dataset_root: str | None = None
    check_images: Literal["header", "full", "none"] = "header"
    calibrate: bool = False
    resume: str | None = field(default=None, metadata=optional_value("last"))
    resume_force: bool = False
    overwrite: bool = False
    checkpoint_every_n_steps: int | None = field(default=None, metadata=number(1))
    checkpoint_every: str | None = None
    logger: list[str] | None = None
    experiment: str | None = None
    run_name: str | None = None
    tags: list[str] | None = None
    mlflow_tracking_uri: str | None = None
    wandb_project: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    evaluate: bool = False
    export_onnx: bool = False


#: The options dataclass of this subcommand.
CONFIG = TrainConfig

#: Options that say how to start this invocation: neither compared with nor saved in a run's config.yaml.
INVOCATION_OPTIONS = ("resume", "resume_force", "overwrite")

#: Options a resumed run may change without --resume-force. ``epochs`` changes the run's length, and with it the
#: length of a per-step learning-rate schedule (cosine, onecycle) from the resumed step on; the others change
#: how data is loaded and how often checkpoints are written, not what is trained.
CHANGEABLE_ON_RESUME = ("epochs", "num_workers", "check_images", "checkpoint_every_n_steps", "checkpoint_every")

_PATH_OPTIONS = ("data", "output_dir", "dataset_root", "checkpoint_path")


def _yaml_value(value: Any) -> str:
    """A value of config.yaml as the user reads it there (``null`` for None)."""
    return "null" if value is None else repr(value)


def _run_folder(config: TrainConfig) -> tuple[Path, Path | None]:
    """The folder of the run that ``--resume`` names, and the checkpoint file when it names one."""
    target = Path(config.output_dir if config.resume == "last" else str(config.resume)).expanduser()
    if target.suffix == ".ckpt" and not target.is_dir():
        if not target.is_file():
            raise FileNotFoundError(f"--resume {config.resume!r}: no such checkpoint")
        folder = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return folder, target
    return target, None


def _comparable(name: str, value: object) -> object:
    """Paths as absolute paths (config.yaml stores them so), everything else as it is."""
    if name in _PATH_OPTIONS and isinstance(value, str) and (name != "data" or Path(value).exists()):
        return str(Path(value).expanduser().resolve())
    return value


def resolve_config(config: TrainConfig, given: set[str]) -> TrainConfig:
    """With ``--resume``, the options of the run's ``config.yaml``, overridden by those given on the command line.

    Args:
        config: The options parsed from the command line (and ``--config``), defaults filled in.
        given: The names of the options given explicitly (command line or ``--config`` file).

    Returns:
        ``config`` itself without ``--resume``; else the run's saved options
        with the given ones on top, ``output_dir`` set to the run's folder.

    Raises:
        UsageError: No ``--data`` and nothing to resume; or options that
            differ from the run's ``config.yaml`` (all listed) without
            ``--resume-force``.
        FileNotFoundError: ``--resume`` names a ``.ckpt`` file that does not exist.
    """
    import yaml

    if config.resume is None:
        if config.data is None:
            raise UsageError("--data is required (or --resume RUN_DIR to continue a run)")
        return config
    folder, _ = _run_folder(config)
    config_file = folder / "config.yaml"
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    if not isinstance(saved, dict):
        if config.data is None:
            raise UsageError(f"--resume {config.resume!r}: {config_file} does not exist, so --data is required")
        return dataclasses.replace(config, output_dir=str(folder))
    saved = {k: v for k, v in saved.items() if k in names and k not in INVOCATION_OPTIONS}
    values = dataclasses.asdict(config)
    saved["output_dir"] = str(folder.resolve())  # where the run is now (it may have moved since)
    checked = given - set(INVOCATION_OPTIONS) - set(CHANGEABLE_ON_RESUME) - {"config"}
    differences = [
        f"--{name.replace('_', '-')} {values[name]!r} (the run has {_yaml_value(saved[name])})"
        for name in sorted(checked & saved.keys())
        if _comparable(name, values[name]) != _comparable(name, saved[name])
    ]
    if differences and not config.resume_force:
        raise UsageError(
            f"--resume: these options differ from the run's {config_file}: {'; '.join(differences)}. Leave them "
            "out to resume the run as it was, or pass --resume-force to resume with them "
            f"(--{', --'.join(n.replace('_', '-') for n in CHANGEABLE_ON_RESUME)} may change without it)"
        )
    merged = {**saved, **{name: values[name] for name in given if name in names}}
    merged.update({name: values[name] for name in INVOCATION_OPTIONS}, output_dir=str(folder))
    return TrainConfig(**merged)


def _check_names(config: TrainConfig) -> None:
    """Fail on an unknown backbone, optimizer, scheduler or preset before reading any image."""
    from autotimm.data.transforms import check_augmentation, list_augmentation_presets
    from autotimm.models.backbone import check_model_name
    from autotimm.optim.optimizers import check_optimizer_spec
    from autotimm.optim.schedulers import check_scheduler_spec

    if config.val_split + config.test_split >= 1:
        raise UsageError(f"--val-split + --test-split must be < 1, got {config.val_split} + {config.test_split}")
    try:
        check_model_name(config.backbone)
    except ValueError as err:  # point to the command line's search rather than the Python one
        library_hint = "Use autotimm.list_backbones('*pattern*') to search."
        message = str(err).replace(library_hint, "").rstrip()
        raise ValueError(f"{message} Search with: autotimm models PATTERN") from err
    check_optimizer_spec(config.optimizer)
    check_scheduler_spec(config.scheduler)
    try:
        check_augmentation(config.augmentation)
    except ValueError as err:  # the library's message also offers custom transforms, which the CLI cannot take
        presets = ", ".join(list_augmentation_presets())
        raise ValueError(f"--augmentation must be one of {presets}; got {config.augmentation!r}") from err
    check_precision(config.precision)


def _check_distillation(config: TrainConfig) -> None:
    """Refuse --distill-alpha or --distill-temperature set (to other than the default) without --teacher."""
    if config.teacher is not None:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    given = [
        f"--{name.replace('_', '-')} {getattr(config, name)!r}"
        for name in ("distill_alpha", "distill_temperature")
        if getattr(config, name) != defaults[name]
    ]
    if given:
        raise UsageError(
            f"{' and '.join(given)} set without --teacher: --distill-alpha and --distill-temperature apply only "
            "when distilling; add --teacher PATH (a .ckpt, an .onnx file or an ensemble folder) or drop them"
        )


def _evaluate_command(config: TrainConfig, best: str, splits: list[str]) -> str | None:
    """The ``autotimm evaluate`` command line for the held-out test split, with this run's split options."""
    if "test" not in splits:
        return None
    words = ["autotimm", "evaluate", best, config.data]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in ("val_split", "test_split", "seed", "dataset_root"):
        value = getattr(config, name)
        if value != defaults[name]:
            words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)


def _print_summary(best: str, last: str | None, config_file: Path, metrics: dict[str, float], title: str) -> None:
    from rich.table import Table

    from autotimm.cli.common import console

    out = console()
    best, last = _shown(best), _shown(last) if last else last
    if metrics:
        table = Table(title=title, title_justify="left")
        table.add_column("Metric")
        table.add_column("Value", justify="right")
        for name, value in sorted(metrics.items()):
            table.add_row(name, f"{value:.4f}")
        out.print(table)
    out.print(f"Best checkpoint: {best}", highlight=False)
    if last:
        out.print(f"Last checkpoint: {last}", highlight=False)
    out.print(f"Config: {config_file}", highlight=False)


def _print_data_summary(datamodule: Any, model: Any, backbone: str, output_dir: Path) -> None:
    """Print the classes, images per split and class, the input, the backbone and the run folder."""
    from autotimm.cli.common import console
    from autotimm.cli.data_summary import DataSummary, print_data_summary

    datamodule.configure_for(model.backbone)  # the input size the backbone is fed (fit does this again)
    print_data_summary(DataSummary.of(datamodule, backbone, _shown(str(output_dir))), console())


def _check_calibration(has_val: bool, multi_label: bool) -> None:
    """Refuse ``--calibrate`` before training when it could not run after it."""
    if multi_label:
        raise UsageError("--calibrate: temperature scaling is for single-label models, and this data is multi-label")
    if not has_val:
        raise UsageError(
            "--calibrate fits the temperature on the validation split, and this run has none: "
            "set --val-split above 0 (or give DATA a val/ folder)"
        )


def _calibrate(checkpoint: str, datamodule: Any, output_dir: Path) -> Path:
    """Fit the temperature of ``checkpoint`` on the validation split; write the calibrated model to ``model.ckpt``."""
    from autotimm.cli.common import console, load_predictor

    model = load_predictor(checkpoint, "auto")
    result = model.calibrate(datamodule, split="val", progress=False)
    path = model.save(output_dir / "model.ckpt")
    out = console()
    out.print(
        f"Calibration on {result.num_samples} validation images: temperature {result.temperature:.4f}, "
        f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}, NLL {result.nll_before:.4f} -> {result.nll_after:.4f}",
        highlight=False,
    )
    out.print(f"Calibrated model: {_shown(str(path))}", highlight=False)
    return path


def _evaluate_test(checkpoint: str, datamodule: Any, output_dir: Path) -> Any:
    """Evaluate ``checkpoint`` on the test split into ``eval-test/`` of the run folder (``--evaluate``)."""
    from autotimm.cli.common import console, load_predictor
    from autotimm.evaluation.report import evaluate

    report = evaluate(load_predictor(checkpoint, "auto"), datamodule, output_dir / "eval-test", split="test")
    console().print(f"Test report: {_shown(str(output_dir / 'eval-test'))}", highlight=False)
    return report


def _shown(path: str) -> str:
    """A path relative to the working folder when it lies inside it (shorter to copy), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _export_onnx(checkpoint: str, output_dir: Path) -> Path:
    """Export ``checkpoint`` to ``model.onnx`` in the run folder (``--export-onnx``), parity-checked."""
    from autotimm.classifier import ImageClassifier
    from autotimm.cli.common import console
    from autotimm.exporting import export

    result = export(ImageClassifier.load(checkpoint), output_dir / "model.onnx")
    console().print(f"ONNX export: {result.path} (max logit difference {result.max_abs_diff:.2e})", highlight=False)
    return Path(result.path)


def run(config: TrainConfig) -> int:
    """Train as ``config`` says, print the best checkpoint and its validation metrics.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        UsageError: Options that do not fit together.
        ValueError: An unknown backbone, optimizer, scheduler or preset (the
            message lists the accepted names), or unusable data.
        FileNotFoundError: Missing data.
    """
    from autotimm.cli.common import write_config
    from autotimm.cli.tracking import finish_trackers, log_to_trackers, tracker_arguments
    from autotimm.data.sources import data_source
    from autotimm.training.checkpointing import parse_duration, prepare_run_folder

    config = resolve_config(config, set()) if config.resume is None else config  # --data is required
    logger, tracking = tracker_arguments(config)
    source = data_source(config.data)
    _check_names(config)
    _check_distillation(config)
    if config.export_onnx:
        from autotimm.exporting.exporter import require_onnx

        require_onnx()  # before anything is written or trained
    if config.checkpoint_path is not None:
        from autotimm.cli.common import require_file

        require_file(config.checkpoint_path, "--checkpoint-path", "a .pth, .bin or .safetensors state dict")
    devices = parse_devices(config.devices)
    if config.checkpoint_every is not None:
        try:
            parse_duration(config.checkpoint_every)
        except ValueError as err:
            raise UsageError(str(err).replace("`checkpoint_every`", "--checkpoint-every")) from None
    output_dir = Path(config.output_dir)
    resume = None
    if config.resume is not None:
        folder, checkpoint = _run_folder(config)
        resume = str(checkpoint) if checkpoint is not None else str(folder)
    else:  # before anything is written into the folder: never destroy an earlier run
        prepare_run_folder(
            output_dir,
            config.overwrite,
            resume_hint=f"autotimm train --resume {shlex.quote(str(output_dir))}",
            overwrite_hint="--overwrite",
            folder_hint="--output-dir",
        )

    from autotimm.classifier.module import ImageClassifier
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.models.backbone import BackboneConfig, PretrainedWeightsUnavailableError
    from autotimm.training.trainer import AutoTrainer

    datamodule = ImageDataModule(
        **source,
        dataset_root=config.dataset_root,
        val_split=config.val_split,
        test_split=config.test_split,
        seed=config.seed,
        output_dir=output_dir,
        image_size=config.image_size,
        augmentation=config.augmentation,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        check_images=config.check_images,
    )
    datamodule.setup("fit")  # the classes come from the data
    has_val = "val" in datamodule.splits
    if config.calibrate:
        _check_calibration(has_val, datamodule.multi_label)
    if config.evaluate and "test" not in datamodule.splits:
        raise UsageError("--evaluate needs a test split: set --test-split above 0 (or give DATA a test/ folder)")
    callbacks = []
    if config.teacher is not None:  # loaded before training starts: a bad path fails now
        from autotimm.classifier.loading import load_model, model_kind
        from autotimm.training.distillation import Distillation

        model_kind(config.teacher, "--teacher")  # a missing or wrong file, named as the option
        teacher = load_model(config.teacher, device="cpu")
        callbacks.append(Distillation(teacher, config.distill_alpha, config.distill_temperature, config.teacher))
    # Built before the model: the trainer seeds everything, so the initial weights repeat too.
    trainer = AutoTrainer(
        callbacks=callbacks,
        logger=logger,
        tracking=tracking,
        output_dir=output_dir,
        seed=config.seed,
        monitor=None if has_val else "train/loss",
        mode=None if has_val else "min",
        early_stopping_patience=config.early_stopping_patience,
        max_epochs=config.epochs,
        precision=config.precision,
        accelerator=config.accelerator,
        devices=devices,
        checkpoint_every_n_steps=config.checkpoint_every_n_steps,
        checkpoint_every=config.checkpoint_every,
    )
    try:
        model = ImageClassifier(
            BackboneConfig(
                config.backbone,
                pretrained=config.pretrained,
                checkpoint_path=config.checkpoint_path,
                checkpoint_format=config.checkpoint_format,
            ),
            num_classes=datamodule.num_classes,
            class_names=datamodule.class_names,
            multi_label=datamodule.multi_label,
            lr=config.lr,
            weight_decay=config.weight_decay,
            optimizer=config.optimizer,
            scheduler=config.scheduler,
            scheduler_kwargs={"warmup_epochs": config.warmup_epochs} if config.warmup_epochs else None,
            label_smoothing=config.label_smoothing,
            loss=config.loss,
            focal_gamma=config.focal_gamma,
            freeze_backbone=config.freeze_backbone,
            cache_features=config.cache_features,
            layer_decay=config.layer_decay,
            unfreeze_schedule=config.unfreeze_schedule,
            ema_decay=config.ema_decay,
            channels_last=config.channels_last,
            compile=config.compile or False,
        )
    except (ValueError, FileNotFoundError) as err:
        if config.checkpoint_path is None or "BackboneConfig `checkpoint_path`" not in str(err):
            raise
        raise type(err)(str(err).replace("BackboneConfig `checkpoint_path`", "--checkpoint-path")) from err
    except PretrainedWeightsUnavailableError as err:
        raise PretrainedWeightsUnavailableError(
            f"--pretrained: cannot get the weights of {config.backbone!r}: the Hugging Face hub is unreachable and "
            "they are not in its local cache (HF_HOME). Drop --pretrained to start from random weights, or fill "
            "the cache on a machine with internet access."
        ) from err
    config_file = write_config(
        dataclasses.replace(config, resume=None, resume_force=False, overwrite=False), output_dir
    )
    _print_data_summary(datamodule, model, config.backbone, output_dir)
    trainer.fit(model, datamodule=datamodule, resume=resume)

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    last = str(trainer.checkpoint_dir / "last.ckpt")
    if has_val and best:
        results = trainer.validate(model, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        title = "Validation metrics of the best checkpoint"
    else:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        title = "Training metrics (no validation split: the best checkpoint is chosen by train/loss)"
    _print_summary(best or last, last if Path(last).is_file() else None, config_file, metrics, title)
    chosen = str(_calibrate(best or last, datamodule, output_dir)) if config.calibrate else best or last
    report = _evaluate_test(chosen, datamodule, output_dir) if config.evaluate else None
    onnx_path = _export_onnx(chosen, output_dir) if config.export_onnx else None
    if trainer.loggers:
        log_to_trackers(trainer.loggers, chosen, report, onnx_path)
        finish_trackers(trainer.loggers)
    command = None if config.evaluate else _evaluate_command(config, _shown(chosen), datamodule.splits)
    if command:
        from autotimm.cli.common import console

        console().print(f"Evaluate on the held-out test split: {command}", highlight=False)
    return 0
