"""JPEG draft decoding on real photographs: validation accuracy and training time with and without it.

The data are real photographs that installed packages ship: the 12 photos of
``skimage.data`` that ``benchmarks/recipes.py`` uses, and scikit-learn's two sample
photos (``china.jpg``, ``flower.jpg``). Each is a class ("which photo is this a part
of"). From each photo, ``--per-class`` training crops are cut from its left 60% and a
third as many validation crops from the rest, square, of 35-100% of that region's
largest square (about 110-600 px a side), and saved as JPEG (quality 90), so that the
files are several times larger than the model's input, as camera photos are.

A resnet18 is trained from scratch on them at ``--image-size`` (default 32 px) with
the ``"light"`` augmentation (random resized crop and flip), side by side with
``draft_decode=True`` (the default) and ``draft_decode=False``, for each seed; both
arms see the same seeds, data and steps. At 32 px, the evaluation rule keeps at
least 74 px a side (twice the 37-px resize), so files of 148 px and more (about
half of the validation files) decode at 1/2 or less; in training, crops of at
least 64 px decode reduced. (At 64 px only 8% of these validation files are large
enough to be reduced: the photos are 300-1400 px, so their crops are small.)

Prints, per arm, the validation accuracy and wall time (mean and sd over the seeds),
and the share of files each arm's evaluation decoded reduced.

Run: ``python benchmarks/draft_accuracy.py [--seeds 0 1 2] [--epochs 6] [--image-size 32]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.data.decoding import eval_draft_size


def _photos() -> dict[str, np.ndarray]:
    """skimage.data's photos of ``benchmarks/recipes.py`` and scikit-learn's sample photos, as RGB uint8."""
    from recipes import PHOTOS, skimage_photo  # the sibling benchmark script (this folder is on sys.path)
    from sklearn.datasets import load_sample_images

    photos = {name: skimage_photo(name) for name in PHOTOS}
    sample = load_sample_images()
    for name, image in zip(sample.filenames, sample.images, strict=True):
        photos[Path(name).stem] = np.asarray(image)
    return photos


def make_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """Write ``root/train`` and ``root/val`` once (JPEG crops of each photo); return ``root``."""
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    for name, photo in _photos().items():
        h, w = photo.shape[:2]
        cut = int(w * 0.6)
        for split, count, (lo, hi) in (("train", per_class, (0, cut)), ("val", per_class // 3, (cut, w))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            largest = min(h, hi - lo)
            for i in range(count):
                side = int(rng.uniform(0.35, 1.0) * largest)
                y = int(rng.integers(0, h - side + 1))
                x = int(rng.integers(lo, hi - side + 1))
                Image.fromarray(photo[y : y + side, x : x + side]).save(folder / f"{i:04d}.jpg", quality=90)
    (root / "done").touch()
    return root


def reduced_share(root: Path, image_size: int) -> float:
    """The share of validation files that the evaluation rule decodes reduced at ``image_size``."""
    width, height = eval_draft_size({"input_size": (3, image_size, image_size), "crop_pct": 0.875})
    files = sorted((root / "val").rglob("*.jpg"))
    reduced = 0
    for path in files:
        with Image.open(path) as image:
            reduced += image.size[0] >= 2 * width and image.size[1] >= 2 * height
    return reduced / len(files)


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def run(root: Path, draft: bool, seed: int, epochs: int, image_size: int) -> dict:
    """Train resnet18 from scratch with or without draft decoding; return accuracy and seconds."""
    data = ImageDataModule(
        root, image_size=image_size, batch_size=64, num_workers=0, augmentation="light",
        draft_decode=draft, test_split=0.0, output_dir=None,
    )  # fmt: skip
    classes = len(list((root / "train").iterdir()))
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=classes)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="draft-accuracy-") as work:
        trainer = AutoTrainer(
            output_dir=work, max_epochs=epochs, seed=seed, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        trainer.fit(model, datamodule=data)
    return {"accuracy": float(trainer.callback_metrics["val/accuracy"]), "seconds": time.perf_counter() - start}


def main() -> None:
    """Build the photo folder, train both arms per seed, print the table and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=120, help="training crops per photo (val: a third)")
    parser.add_argument("--dir", default="autotimm_output/draft_accuracy")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    console = Console()
    out = Path(args.dir)
    root = make_folder(out / "data", args.per_class)
    share = reduced_share(root, args.image_size)
    console.print(
        f"{len(list((root / 'train').rglob('*.jpg')))} training and {len(list((root / 'val').rglob('*.jpg')))} "
        f"validation JPEGs of {len(list((root / 'train').iterdir()))} photos; {share:.0%} of the validation files "
        f"decode reduced at {args.image_size} px; {torch.get_num_threads()} torch threads"
    )
    results: dict[str, list[dict]] = {"draft": [], "full": []}
    for seed in args.seeds:
        for arm, draft in (("draft", True), ("full", False)):
            result = run(root, draft, seed, args.epochs, args.image_size)
            results[arm].append({"seed": seed, **result})
            console.print(f"seed {seed} {arm:5s} accuracy {result['accuracy']:.4f} in {result['seconds']:.1f} s")

    table = Table(
        title=f"resnet18 from scratch, {args.epochs} epochs at {args.image_size} px, seeds {args.seeds}",
        title_justify="left",
    )
    for column in ("decoding", "val accuracy (mean ± sd)", "wall time s (mean ± sd)", "time / full"):
        table.add_column(column)
    full_time = statistics.fmean(r["seconds"] for r in results["full"])
    for arm, label in (("draft", "draft_decode=True"), ("full", "draft_decode=False")):
        acc = [r["accuracy"] for r in results[arm]]
        sec = [r["seconds"] for r in results[arm]]
        table.add_row(
            label,
            f"{statistics.fmean(acc):.4f} ± {_sd(acc):.4f}",
            f"{statistics.fmean(sec):.1f} ± {_sd(sec):.1f}",
            f"{statistics.fmean(sec) / full_time:.2f}x",
        )
    console.print(table)
    diffs = [d["accuracy"] - f["accuracy"] for d, f in zip(results["draft"], results["full"], strict=True)]
    console.print(f"accuracy draft − full per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "reduced_share": share, **results}, indent=2))


if __name__ == "__main__":
    main()
