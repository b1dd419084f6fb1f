"""``autotimm train``: train a classifier on a class folder, a CSV file or a built-in dataset."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from autotimm.cli.options import UsageError, check_precision, number, parse_devices

__all__ = ["CONFIG", "TrainConfig", "run"]

NAME = "train"
HELP = "Train a classifier on a class folder, a CSV file or a built-in dataset."
DESCRIPTION = """\
Train an image classifier: a timm backbone and a linear head, with AutoTrainer.

The number of classes and their names come from the data. The run folder
(--output-dir) gets checkpoints/ (the best and last.ckpt), logs/ (TensorBoard),
splits.json (the validation/test images) and config.yaml (every option, to
repeat the run with --config). At the end the best checkpoint and its
validation metrics are printed."""
EXAMPLES = """\
examples:
  autotimm train --data data/pets --backbone resnet18 --epochs 10
  autotimm train --data labels.csv --image-size 224 --augmentation randaugment --lr 3e-4
  autotimm train --data digits --image-size 32 --epochs 3 --output-dir runs/digits
  autotimm train --data data/pets --pretrained --freeze-backbone --optimizer sgd --lr 0.01

  # print every option as YAML, edit it, run from it (options after --config override it)
  autotimm train --data data/pets --epochs 5 --print_config > run.yaml
  autotimm train --config run.yaml --lr 1e-4
  autotimm train --config runs/pets/config.yaml     # repeat a run exactly"""


@dataclass
class TrainConfig:
    """Options of ``autotimm train``; the YAML keys of ``--config`` files.

    Args:
        data: Training data: a class folder (<class>/<image>, or train/, val/, test/ folders of class folders), a
            CSV file with image and label columns, or a built-in dataset name (cifar10, cifar100, digits,
            fashion-mnist, mnist, mnist5k).
        backbone: A timm model name; `autotimm models PATTERN` lists them.
        pretrained: Start from timm's pretrained weights (needs the Hugging Face hub or its local cache).
        epochs: Training epochs (>= 1).
        batch_size: Images per batch (>= 1).
        image_size: Input size in pixels (>= 1); null for the backbone's default.
        augmentation: Training augmentation preset: none, light, crop_flip, randaugment, autoaugment, trivialaugment
            or augmix.
        optimizer: Optimizer: adamw, adam, sgd, rmsprop, adagrad, adamp, sgdp, adabelief, radam, lamb, lars, madgrad
            or novograd.
        scheduler: Learning-rate schedule: none, cosine, onecycle, step, multistep, exponential, plateau or
            cosine_with_restarts.
        lr: Learning rate (> 0).
        weight_decay: Weight decay (>= 0), not applied to biases and norms.
        warmup_epochs: Epochs of linear learning-rate warm-up before the schedule (>= 0).
        label_smoothing: Label smoothing of the loss, in [0, 1).
        freeze_backbone: Train only the head (a linear probe on the backbone's features).
        cache_features: With --freeze_backbone: compute the backbone's features once and train the head on them.
        layer_decay: Layer-wise learning-rate decay in (0, 1]: each backbone layer learns at this fraction of the
            rate of the layer above it; null for one rate.
        unfreeze_schedule: Progressive unfreezing as JSON, {epoch: stages}: from each epoch on, that many backbone
            stages (from the top) or "all" train; before the first epoch listed only the head does. Example:
            '{"0": 0, "2": 1, "4": "all"}'.
        ema_decay: Validate and save an exponential moving average of the weights with this decay in (0, 1), e.g.
            0.999; null for none.
        channels_last: Channels-last memory format (faster convolutions on recent CPUs and GPUs).
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
    """

    data: str
    backbone: str = "resnet18"
    pretrained: bool = False
    epochs: int = field(default=10, metadata=number(1))
    batch_size: int = field(default=32, metadata=number(1))
    image_size: int | None = field(default=None, metadata=number(1))
    augmentation: str = "light"
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    lr: float = field(default=1e-3, metadata=number(0, low_open=True))
    weight_decay: float = field(default=1e-4, metadata=number(0))
    warmup_epochs: int = field(default=0, metadata=number(0))
    label_smoothing: float = field(default=0.0, metadata=number(0, 1))
    freeze_backbone: bool = False
    cache_features: bool = False
    layer_decay: float | None = None
    unfreeze_schedule: dict[str, int | str] | None = None
    ema_decay: float | None = None
    channels_last: bool = False
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


#: The options dataclass of this subcommand.
CONFIG = TrainConfig


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


def _shown(path: str) -> str:
    """A path relative to the working folder when it lies inside it (shorter to copy), else as given."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


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
    from autotimm.data.sources import data_source

    source = data_source(config.data)
    _check_names(config)
    devices = parse_devices(config.devices)

    from autotimm.classifier.module import ImageClassifier
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.models.backbone import BackboneConfig, PretrainedWeightsUnavailableError
    from autotimm.training.trainer import AutoTrainer

    output_dir = Path(config.output_dir)
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
    )
    datamodule.setup("fit")  # the classes come from the data
    has_val = "val" in datamodule.splits
    # Built before the model: the trainer seeds everything, so the initial weights repeat too.
    trainer = AutoTrainer(
        output_dir=output_dir,
        seed=config.seed,
        monitor=None if has_val else "train/loss",
        mode=None if has_val else "min",
        early_stopping_patience=config.early_stopping_patience,
        max_epochs=config.epochs,
        precision=config.precision,
        accelerator=config.accelerator,
        devices=devices,
    )
    try:
        model = ImageClassifier(
            BackboneConfig(config.backbone, pretrained=config.pretrained),
            num_classes=datamodule.num_classes,
            class_names=datamodule.class_names,
            multi_label=datamodule.multi_label,
            lr=config.lr,
            weight_decay=config.weight_decay,
            optimizer=config.optimizer,
            scheduler=config.scheduler,
            scheduler_kwargs={"warmup_epochs": config.warmup_epochs} if config.warmup_epochs else None,
            label_smoothing=config.label_smoothing,
            freeze_backbone=config.freeze_backbone,
            cache_features=config.cache_features,
            layer_decay=config.layer_decay,
            unfreeze_schedule=config.unfreeze_schedule,
            ema_decay=config.ema_decay,
            channels_last=config.channels_last,
        )
    except PretrainedWeightsUnavailableError as err:
        raise PretrainedWeightsUnavailableError(
            f"--pretrained: cannot get the weights of {config.backbone!r}: the Hugging Face hub is unreachable and "
            "they are not in its local cache (HF_HOME). Drop --pretrained to start from random weights, or fill "
            "the cache on a machine with internet access."
        ) from err
    config_file = write_config(config, output_dir)
    trainer.fit(model, datamodule=datamodule)

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
    command = _evaluate_command(config, _shown(best or last), datamodule.splits)
    if command and not datamodule.multi_label:  # evaluate is single-label only
        from autotimm.cli.common import console

        console().print(f"Evaluate on the held-out test split: {command}", highlight=False)
    return 0
