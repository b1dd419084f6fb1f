"""Knowledge distillation on the digits at 16 px: the same student alone and distilled, over several seeds.

A ``test_resnet`` teacher is trained on the digits outside a 500-image test set;
each seed then draws ``--images`` training images (with ``--noise`` of their
labels replaced at random) and trains the same student twice, with the same
seed and epochs: alone, and under ``Distillation(teacher, alpha, temperature)``.
Prints each seed's test accuracies and the means. ``tests/test_distillation.py``
runs the noisy-label setting with three seeds.

    python benchmarks/distillation.py --images 200 --noise 0.3 --seeds 5
"""

from __future__ import annotations

import argparse

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import load_builtin_dataset
from autotimm.training.distillation import Distillation


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
    )  # fmt: skip


def _model(seed: int, names: list[str]) -> ImageClassifier:
    pl.seed_everything(seed, verbose=False)
    return ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), num_classes=10, class_names=names, lr=3e-3, scheduler=None
    )


def _accuracy(model: ImageClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()
    split = load_builtin_dataset("digits")["train"]
    x = torch.tensor(split.images, dtype=torch.float32)[:, None] / float(split.images.max())
    x = (F.interpolate(x, size=16, mode="bilinear").repeat(1, 3, 1, 1) - 0.5) / 0.5
    y = torch.tensor(split.labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, pool, names = order[:500], order[500:], [str(c) for c in split.class_names]
    teacher = _model(0, names)
    _trainer(6, []).fit(teacher, DataLoader(TensorDataset(x[pool], y[pool]), batch_size=64, shuffle=True))
    print(f"teacher ({len(pool)} images): {_accuracy(teacher, x[test], y[test]):.3f}")
    scores: dict[str, list[float]] = {"alone": [], "distilled": []}
    for seed in range(args.seeds):
        subset = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[: args.images]]
        labels = y[subset].clone()
        noisy = torch.rand(len(subset), generator=torch.Generator().manual_seed(100 + seed)) < args.noise
        labels[noisy] = torch.randint(0, 10, (int(noisy.sum()),), generator=torch.Generator().manual_seed(200 + seed))
        loader = DataLoader(TensorDataset(x[subset], labels), batch_size=32, shuffle=True)
        for kind, values in scores.items():
            student = _model(seed, names)
            callbacks = [Distillation(teacher, args.alpha, args.temperature)] if kind == "distilled" else []
            pl.seed_everything(seed, verbose=False)
            _trainer(args.epochs, callbacks).fit(student, loader)
            values.append(_accuracy(student, x[test], y[test]))
        print(f"seed {seed}: alone {scores['alone'][-1]:.3f}, distilled {scores['distilled'][-1]:.3f}")
    for kind, values in scores.items():
        print(f"{kind}: {np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}")


if __name__ == "__main__":
    main()
