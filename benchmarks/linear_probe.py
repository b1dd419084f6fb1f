"""Linear probe: cached backbone features against the uncached probe, same data, same backbone, same epochs.

Both runs train ``ImageClassifier(freeze_backbone=True)`` (resnet18 with random
weights by default) for ``--epochs`` epochs with ``AutoTrainer`` on the same
``ImageDataModule``. The data are generated PNG files in class folders, in a
temporary directory; 20% of them are held out for validation.

- ``uncached``: every epoch decodes and transforms every image and runs the
  frozen backbone on it, for training and for validation.
- ``cached``: ``cache_features=True``. ``AutoTrainer.fit`` runs the backbone
  once over the training and validation images with the evaluation transform
  (``FeatureDataModule``: on the CPU in batches of at least 128, channels-last).
  Each epoch then trains the head on the stored features.

With ``--augmentation none`` (the default) the uncached run trains on the same
evaluation-transformed images that the cached run encodes once. Both runs then
fit the same head on the same features, so their validation accuracies must
agree within noise. With ``--augmentation light`` the uncached run trains on
random crops and flips, as a probe without a cache usually does. Both
accuracies are measured after training with ``AutoTrainer.validate`` on the
validation images, through the whole model.

The wall time of each ``fit`` is printed, along with the speed-up. A table
then breaks down what the time goes to. It times one pass of decoding and
transforming the images (the data module's loaders, no model). It times one
backbone pass over the decoded images in inference mode, at the training batch
size in the default memory format, as the uncached run computes them. It shows the cache's
own time (``FeatureDataModule.seconds``) and the time of the cached run's head
epochs. With E epochs the speed-up is at most about E: the uncached run makes
E backbone passes, the cached run one. It falls below E when the cached run's
fixed costs stand out: its head epochs (Lightning's per-step overhead, the
metrics), and setting up its loaders and workers.

Logging, checkpoints, the progress bar and the model summary are off in both
runs (``--checkpoints`` turns checkpointing on). The two fits run one after
the other; ``--repeats 2`` runs each twice, in alternating order, and takes
the median of each.

Last, the cache pass alone runs ``--cache-passes`` times with its defaults and
with the training batch size in the default memory format, interleaved, and
the ratio of their medians is printed.

Run: ``python benchmarks/linear_probe.py [--images 3000] [--image-size 64] [--epochs 10]
[--augmentation none|light] [--threads N] [--checkpoints] [--repeats 1] [--cache-passes 3]``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.data.synthetic import make_synthetic_dataset
from autotimm.training.feature_cache import FeatureDataModule, compute_features

NUM_CLASSES = 10
TARGET = 10.0


def write_images(folder: Path, count: int, size: int, noise: float) -> None:
    """Write ``count`` generated PNGs in ``folder/<class>/``; the classes are colour-and-stripe patterns."""
    images, labels = make_synthetic_dataset(
        NUM_CLASSES, count // NUM_CLASSES, image_size=size, noise=noise, seed=0, pattern_seed=1
    ).tensors
    pixels = (images * 40 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name in range(NUM_CLASSES):
        (folder / f"class_{name}").mkdir(parents=True)
    for i, (image, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"class_{label}" / f"{i:05d}.png")


class EpochTimer(pl.Callback):
    """Wall time of every training epoch, validation included (stamps at each epoch's end)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.stamps = [time.perf_counter()]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.stamps.append(time.perf_counter())


def trainer(args: argparse.Namespace, folder: Path, callbacks: list[pl.Callback] | None = None) -> AutoTrainer:
    return AutoTrainer(
        output_dir=folder,
        accelerator="cpu",
        devices=1,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=args.checkpoints,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )


def datamodule(args: argparse.Namespace, images: Path, output: Path) -> ImageDataModule:
    return ImageDataModule(
        images,
        val_split=0.2,
        image_size=args.image_size,
        augmentation=args.augmentation,
        batch_size=args.batch_size,
        output_dir=output,
        num_workers=args.workers,
    )


def run(cached: bool, args: argparse.Namespace, images: Path, work: Path) -> dict[str, Any]:
    """Train one probe; return its fit time, epoch times, cache time and validation accuracy."""
    output = work / ("cached" if cached else "uncached")
    data = datamodule(args, images, output)
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(
        BackboneConfig(args.model, pretrained=False),
        num_classes=NUM_CLASSES,
        freeze_backbone=True,
        cache_features=cached,
        lr=args.lr,
    )
    timer = EpochTimer()
    fitter = trainer(args, output, [timer])
    start = time.perf_counter()
    fitter.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    cache_seconds = fitter.datamodule.seconds if isinstance(fitter.datamodule, FeatureDataModule) else 0.0
    metrics = trainer(args, output).validate(model, datamodule=data, verbose=False)[0]
    epochs = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return {
        "seconds": seconds,
        "epochs": epochs,
        "cache": cache_seconds,
        "accuracy": metrics["val/accuracy"],
        "val_images": len(data._require_setup()["val"]),
    }


def breakdown(args: argparse.Namespace, images: Path, work: Path) -> dict[str, float]:
    """Seconds of one pass over train + val: decoding and transforms alone, and the backbone in inference mode."""
    data = datamodule(args, images, work / "breakdown")
    model = ImageClassifier(BackboneConfig(args.model, pretrained=False), num_classes=NUM_CLASSES)
    data.configure_for(model.backbone)
    data.setup("fit")
    loaders = {"train": data.train_dataloader(), "val": data.val_dataloader()}
    start = time.perf_counter()
    batches = [batch for loader in loaders.values() for batch in loader]
    decode = time.perf_counter() - start
    start = time.perf_counter()
    compute_features(model.backbone, batches, progress=False)
    forward = time.perf_counter() - start
    return {"decode": decode, "forward": forward}


def cache_passes(args: argparse.Namespace, images: Path, work: Path) -> dict[str, list[float]]:
    """Seconds of the cache pass with its defaults against training-size batches in the default memory format."""
    data = datamodule(args, images, work / "passes")
    model = ImageClassifier(
        BackboneConfig(args.model, pretrained=False), num_classes=NUM_CLASSES, freeze_backbone=True, cache_features=True
    )
    data.configure_for(model.backbone)
    data.setup("fit")
    settings = {
        "defaults": {},
        "training batches, contiguous": {"cache_batch_size": args.batch_size, "channels_last": False},
    }
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.cache_passes):
        for name, kwargs in settings.items():
            features = FeatureDataModule(model, data, progress=False, **kwargs)
            features.setup("fit")
            seconds[name].append(features.seconds)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    parser.add_argument("--images", type=int, default=3000, help="generated images (80%% train, 20%% val)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate of the head")
    parser.add_argument("--noise", type=float, default=3.0, help="pixel noise of the generated images")
    parser.add_argument("--augmentation", default="none", choices=["none", "light"], help="uncached training")
    parser.add_argument("--workers", type=int, default=None, help="loader workers; default: the data module's")
    parser.add_argument("--checkpoints", action="store_true", help="keep AutoTrainer's checkpoints on")
    parser.add_argument("--repeats", type=int, default=1, help="fits of each probe, in alternating order")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--cache-passes", type=int, default=3, help="interleaved cache passes of each setting")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    console = Console(width=150)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} (random weights, frozen), "
        f"{args.images} PNGs {args.image_size}x{args.image_size}, {NUM_CLASSES} classes, batch {args.batch_size}, "
        f"{args.epochs} epochs, augmentation of the uncached run: {args.augmentation!r}"
    )
    with tempfile.TemporaryDirectory(prefix="autotimm-probe-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_images(work / "images", args.images, args.image_size, args.noise)
        console.print(f"  wrote {args.images} PNGs in {time.perf_counter() - start:.1f} s")
        results: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for repeat in range(args.repeats):
            for cached in (False, True) if repeat % 2 == 0 else (True, False):
                result = run(cached, args, work / "images", work / f"run{repeat}")
                results[cached].append(result)
                console.print(
                    f"  {'cached' if cached else 'uncached'}: fit {result['seconds']:.1f} s, "
                    f"val accuracy {result['accuracy']:.3f}"
                )
        parts = breakdown(args, work / "images", work)
        passes = cache_passes(args, work / "images", work)
    report(results, parts, args, console)
    if args.cache_passes:
        report_passes(passes, console)


def report(results: dict[bool, list[dict[str, Any]]], parts: dict[str, float], args: Any, console: Console) -> None:
    def median(cached: bool, key: str) -> float:
        return statistics.median(r[key] for r in results[cached])

    uncached, cached = median(False, "seconds"), median(True, "seconds")
    cache = median(True, "cache")
    head_epochs = statistics.median(statistics.median(r["epochs"]) for r in results[True])
    image_epochs = statistics.median(statistics.median(r["epochs"]) for r in results[False])
    table = Table(title=f"Linear probe, {args.epochs} epochs: uncached vs cached features")
    for column in ("run", "fit wall s", "s per epoch", "val accuracy", "speed-up"):
        table.add_column(column, justify="left" if column == "run" else "right")
    acc_u, acc_c = median(False, "accuracy"), median(True, "accuracy")
    table.add_row("uncached", f"{uncached:.1f}", f"{image_epochs:.2f}", f"{acc_u:.3f}", "1.0x")
    speedup = uncached / cached
    table.add_row(
        "cached", f"{cached:.1f}", f"{head_epochs:.2f} (+{cache:.1f} s cache)", f"{acc_c:.3f}", f"{speedup:.1f}x"
    )
    console.print(table)
    n_val = results[True][0]["val_images"]
    noise = (2 * max(acc_u * (1 - acc_u), 1 / n_val) / n_val) ** 0.5
    console.print(
        f"Accuracy difference {acc_c - acc_u:+.3f}; the standard error of a difference of two accuracies on "
        f"{n_val} images is about {noise:.3f}."
    )

    other = cached - cache - args.epochs * head_epochs
    parts_table = Table(title="What the time goes to (wall seconds)")
    parts_table.add_column("part")
    parts_table.add_column("seconds", justify="right")
    parts_table.add_row(
        "one pass over train + val: decoding + transforms only (data module loaders)", f"{parts['decode']:.1f}"
    )
    parts_table.add_row(
        "one pass over train + val: backbone in inference mode, training batches (pre-decoded)",
        f"{parts['forward']:.1f}",
    )
    parts_table.add_row("uncached: one epoch (train + validation)", f"{image_epochs:.2f}")
    parts_table.add_row("cached: computing the feature cache (FeatureDataModule.seconds)", f"{cache:.1f}")
    parts_table.add_row("cached: one head epoch (train + validation on features)", f"{head_epochs:.2f}")
    parts_table.add_row(f"cached: {args.epochs} head epochs", f"{args.epochs * head_epochs:.1f}")
    parts_table.add_row("cached: the rest of fit (set-up, loaders, teardown)", f"{other:.1f}")
    console.print(parts_table)
    bound = args.epochs * image_epochs / (cache + args.epochs * head_epochs)
    console.print(
        f"Speed-up {speedup:.1f}x (target >= {TARGET:.0f}x: {'met' if speedup >= TARGET else 'NOT met'}). "
        f"Without the cached run's set-up it would be {bound:.1f}x."
    )
    other_epochs = [e for e in (20, 50) if e != args.epochs]
    projected = ", ".join(
        f"{e} epochs {e * image_epochs / (cache + e * head_epochs + other):.1f}x" for e in other_epochs
    )
    console.print(f"The same costs projected to other epoch counts: {projected}.")
    share = args.epochs * head_epochs / cached
    console.print(
        f"The cached run spends {cache / cached:.0%} of its time computing the cache and {share:.0%} on the "
        f"head epochs. An uncached epoch costs {image_epochs / cache:.2f}x the cache pass."
    )


def report_passes(passes: dict[str, list[float]], console: Console) -> None:
    table = Table(title="The cache pass alone (FeatureDataModule.setup), interleaved")
    for column in ("setting", "median s", "runs"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for name, seconds in passes.items():
        table.add_row(name, f"{statistics.median(seconds):.2f}", ", ".join(f"{s:.2f}" for s in seconds))
    console.print(table)
    default, plain = (statistics.median(v) for v in passes.values())
    console.print(f"The default cache pass is {plain / default:.2f}x as fast as one at the training batch, contiguous.")


if __name__ == "__main__":
    main()
