"""``make demo``: fit a small classifier on generated images and print its metrics.

Run with ``python -m autotimm.demo``. Everything is offline: the backbone is
randomly initialised and the data is generated.
"""

from __future__ import annotations

import tempfile

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader

from autotimm import BackboneConfig, ImageClassifier, LoggingConfig, make_synthetic_dataset

CLASS_NAMES = ["pattern A", "pattern B", "pattern C", "pattern D"]


def main(max_epochs: int = 3) -> dict[str, float]:
    """Train ``resnet18`` on four generated classes and print validation metrics.

    Args:
        max_epochs: Epochs to train.

    Returns:
        The final validation metrics.
    """
    console = Console()
    pl.seed_everything(0, verbose=False)
    train = make_synthetic_dataset(num_classes=4, samples_per_class=48, image_size=32, seed=0)
    val = make_synthetic_dataset(num_classes=4, samples_per_class=16, image_size=32, seed=1)
    model = ImageClassifier(
        backbone=BackboneConfig("resnet18", pretrained=False),
        num_classes=4,
        class_names=CLASS_NAMES,
        lr=1e-3,
        scheduler="cosine",
        scheduler_kwargs={"warmup_steps": 4},
        logging_config=LoggingConfig(log_learning_rate=True, log_confusion_matrix=True),
    )
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            max_epochs=max_epochs,
            default_root_dir=logdir,
            callbacks=[RichProgressBar()],
            enable_checkpointing=False,
            log_every_n_steps=4,
        )
        before = trainer.validate(model, DataLoader(val, batch_size=64), verbose=False)[0]
        trainer.fit(model, DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=64))
        after = trainer.validate(model, DataLoader(val, batch_size=64), verbose=False)[0]

    table = Table(title="resnet18 on generated images: validation")
    table.add_column("metric")
    table.add_column("before training", justify="right")
    table.add_column("after training", justify="right")
    for key in after:
        table.add_row(key, f"{before[key]:.4f}", f"{after[key]:.4f}")
    console.print(table)
    if model.val_confusion_matrix_values is not None:
        matrix = Table(title="confusion matrix (rows: true, columns: predicted)")
        matrix.add_column("")
        for name in CLASS_NAMES:
            matrix.add_column(name, justify="right")
        for name, row in zip(CLASS_NAMES, model.val_confusion_matrix_values.tolist(), strict=True):
            matrix.add_row(name, *map(str, row))
        console.print(matrix)
    return after


if __name__ == "__main__":
    main()
