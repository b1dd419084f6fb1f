"""``autotimm cv``: k-fold cross-validation of a backbone on the training data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autotimm.cli.options import number

__all__ = ["CONFIG", "CvConfig", "run"]

NAME = "cv"
HELP = "K-fold cross-validation: per-fold metrics, mean ± sd and out-of-fold predictions."
DESCRIPTION = """\
Cross-validate a backbone on DATA: its training (and validation) images are
split into --folds stratified folds (the held-out test split is never used);
each fold trains a fresh model on the others and is evaluated on itself. Writes
cv_summary.json (per-fold metrics, mean and standard deviation), cv_folds.csv,
oof_predictions.csv (every training image's out-of-fold prediction) and
cv_folds.json (the folds) to --output-dir. Rerun the same command to resume
after a kill: finished folds are not retrained, and changed data is refused.
--ensemble also averages the fold models and scores them on the test split."""
EXAMPLES = """\
examples:
  autotimm cv --data data/pets --folds 5 --backbone resnet18 --epochs 10 --output-dir runs/pets-cv
  autotimm cv --data digits --folds 3 --backbone test_resnet --image-size 32 --epochs 3 --ensemble"""


@dataclass
class CvConfig:
    """Options of ``autotimm cv``.

    Args:
        data: A class folder, a CSV file or a built-in dataset name (as for `autotimm train`).
        folds: Number of folds (>= 2).
        backbone: A timm model name.
        pretrained: Start from timm's pretrained weights.
        epochs: Training epochs of each fold (>= 1).
        batch_size: Images per batch (>= 1).
        image_size: Input size in pixels (>= 1); null for the backbone's default.
        augmentation: Training augmentation preset.
        optimizer: Optimizer name.
        scheduler: Learning-rate schedule name.
        lr: Learning rate (> 0); null for the default recipe's.
        weight_decay: Weight decay (>= 0).
        loss: Training loss: cross_entropy or focal.
        focal_gamma: With --loss focal: the focusing parameter (>= 0).
        seed: Seed of the folds, the test split and the training (>= 0).
        test_split: Fraction held out for testing when DATA has no test split, in [0, 1); the folds never use it.
        ensemble: Average the fold models into an ensemble (saved to OUTPUT_DIR/ensemble) scored on the test split.
        accelerator: Lightning accelerator: auto, cpu, gpu, ...
        num_workers: Data-loading processes (>= 0); null for one per CPU core, up to 8.
        dataset_root: Where built-in datasets are cached.
        check_images: How image files are checked before training: header (open each file's header: fast; a file
            that fails to decode later is skipped, counted and listed in bad_images.txt), full (decode every file
            first: finds truncated files, slow on large folders) or none.
        output_dir: The cross-validation's folder (one fold_<i> run folder per fold).
    """

    data: str
    folds: int = field(default=5, metadata=number(2))
    backbone: str = "resnet18"
    pretrained: bool = False
    epochs: int = field(default=10, metadata=number(1))
    batch_size: int = field(default=32, metadata=number(1))
    image_size: int | None = field(default=None, metadata=number(1))
    augmentation: str = "auto"
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    lr: float | None = field(default=None, metadata=number(0, low_open=True))
    weight_decay: float = field(default=1e-4, metadata=number(0))
    loss: str = "cross_entropy"
    focal_gamma: float = field(default=2.0, metadata=number(0))
    seed: int = field(default=42, metadata=number(0))
    test_split: float = field(default=0.1, metadata=number(0, 1))
    ensemble: bool = False
    accelerator: str = "auto"
    num_workers: int | None = field(default=None, metadata=number(0))
    dataset_root: str | None = None
    check_images: Literal["header", "full", "none"] = "header"
    output_dir: str = "autotimm_output/cv"


#: The options dataclass of this subcommand.
CONFIG = CvConfig


def run(config: CvConfig) -> int:
    """Cross-validate as ``config`` says and print the table of folds.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        ValueError: An unknown backbone or unusable data, or an output folder holding folds of other data.
    """
    from autotimm.auto.cross_validation import cross_validate
    from autotimm.cli.common import console
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.data.sources import data_source
    from autotimm.models.backbone import BackboneConfig, check_model_name
    from autotimm.training.losses import check_loss

    check_model_name(config.backbone)
    check_loss(config.loss, config.focal_gamma)
    data = ImageDataModule(
        **data_source(config.data),
        dataset_root=config.dataset_root,
        val_split=0.0,  # the folds are the validation sets
        test_split=config.test_split,
        seed=config.seed,
        output_dir=None,
        image_size=config.image_size,
        augmentation=config.augmentation,
        batch_size=config.batch_size,
        num_workers=config.num_workers,
        check_images=config.check_images,
    )
    model = {
        "backbone": BackboneConfig(config.backbone, pretrained=config.pretrained),
        "lr": config.lr,
        "weight_decay": config.weight_decay,
        "optimizer": config.optimizer,
        "scheduler": config.scheduler,
        "loss": config.loss,
        "focal_gamma": config.focal_gamma,
    }
    trainer_kwargs = {"max_epochs": config.epochs, "seed": config.seed, "accelerator": config.accelerator}
    result = cross_validate(
        data, model, k=config.folds, seed=config.seed, trainer_kwargs=trainer_kwargs,
        output_dir=config.output_dir, ensemble=config.ensemble,
    )  # fmt: skip
    console().print(f"Summary: {result.files['summary']}; out-of-fold predictions: {result.files['oof']}")
    return 0
