"""Data at scale: set-up time of a large folder, sample-table memory, and training-loader speed on camera JPEGs.

Generates, in a temporary folder (or ``--dir``):

- ``--small`` small JPEGs (default 100,000 of 64x48 px in 100 class folders) for the set-up figure;
- ``--large`` camera-sized JPEGs (default 2,000 of 1600x1200, about 400 kB each: a smooth colour
  field plus blurred grain, so that they compress like photos) for the decode figure.

Prints:

(a) ``ImageDataModule.setup()`` time and files/s with ``check_images="header"``, ``"full"`` and
    ``"none"`` (warm page cache), and the memory of the sample table: bytes per sample held by the
    compact table, the peak while listing (tracemalloc), and the same names held as a list of
    ``pathlib.Path`` plus a list of ints, as before;
(b) training-loader images/s at 224 px with the default augmentation (random resized crop and
    flip, bicubic) per worker count, for ``ImageDataModule`` and for torchvision's ``ImageFolder``
    with timm's ``create_transform`` (same settings: ``color_jitter=None``, bicubic) on the same
    files in the same run, and the ratio. Each loader reads every large image once per run
    (the first batch, with the worker start-up, is not timed); the two loaders take turns.

Targets on a 2-core CPU: set-up >= 10,000 files/s with ``"header"``; loader >= 1.5x the
torchvision + timm baseline on camera-sized JPEGs.

Run: ``python benchmarks/data_scale.py [--small 20000] [--large 300] [--workers 0 1 2]``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import timm.data
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from autotimm.data import ImageDataModule, read_folder

_DISTINCT = 64  # distinct encoded images; the rest of the files are copies of them (decoding cost is the same)


def _camera_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth colour field plus blurred grain: compresses (and decodes) about as a camera photo does."""
    low = Image.fromarray(rng.integers(0, 256, (height // 100 + 2, width // 100 + 2, 3), dtype=np.uint8))
    field = np.asarray(low.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = Image.fromarray((rng.normal(0, 25, (height, width)).clip(-127, 127) + 128).astype(np.uint8))
    grain = np.asarray(grain.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.int16) - 128
    return Image.fromarray((field + grain[:, :, None]).clip(0, 255).astype(np.uint8))


def _write_folder(root: Path, count: int, classes: int, size: tuple[int, int], seed: int) -> float:
    """``count`` JPEGs in ``classes`` class folders; returns the mean file size in bytes."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(min(_DISTINCT, count)):
        path = root / "blob.jpg"
        root.mkdir(parents=True, exist_ok=True)
        _camera_image(rng, *size).save(path, quality=90)
        blobs.append(path.read_bytes())
        path.unlink()
    for c in range(classes):
        (root / f"class_{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"class_{i % classes:03d}" / f"IMG_{i:07d}.jpg").write_bytes(blobs[i % len(blobs)])
    return float(np.mean([len(b) for b in blobs]))


def setup_figures(folder: Path, count: int) -> None:
    os.sync()  # the files just written reach the disk first: their write-back does not overlap the timings
    print(f"\n(a) set-up of {count:,} files (warm page cache)")
    for mode in ("header", "full", "none"):
        dm = ImageDataModule(folder, check_images=mode, output_dir=None, val_split=0.0, test_split=0.0)
        start = time.perf_counter()
        dm.setup()
        seconds = time.perf_counter() - start
        print(f"  check_images={mode!r:9} {seconds:7.2f} s  {count / seconds:10,.0f} files/s")
    tracemalloc.start()
    table = read_folder(folder).splits["train"]
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    names = list(table.items)
    labels = np.asarray(table.targets).tolist()
    gc.collect()
    tracemalloc.start()
    as_paths = [folder / name for name in names]
    as_ints = [label + 0 for label in labels]
    old = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del as_paths, as_ints
    mean_name = np.mean([len(n) for n in names[:10000]])
    print(
        f"  sample table: {table.nbytes / count:.1f} bytes/sample held (names of {mean_name:.0f} characters; "
        f"tracemalloc: {held / count:.1f} held, {peak / count:.1f} peak while listing); "
        f"a list of Path plus a list of int: {old / count:.0f} bytes/sample"
    )


def _loader_rate(loader: DataLoader) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and the first batch are not timed
    images, start = 0, time.perf_counter()
    for batch, _ in iterator:
        images += len(batch)
    return images / (time.perf_counter() - start)


def loader_figures(folder: Path, count: int, workers: list[int], batch_size: int, rounds: int) -> None:
    print(f"\n(b) training loader, {count:,} camera JPEGs, 224 px, random resized crop + flip, batch {batch_size}")
    dm = ImageDataModule(folder, output_dir=None, val_split=0.0, test_split=0.0, check_images="none")
    dm.setup()
    config = dm.data_config
    transform = timm.data.create_transform(
        input_size=tuple(config["input_size"]),
        is_training=True,
        color_jitter=None,
        interpolation=config["interpolation"],
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )
    baseline = ImageFolder(str(folder), transform=transform)
    print(f"  {'workers':>7}  {'autotimm img/s':>14}  {'ImageFolder+timm img/s':>22}  {'ratio':>6}")
    for count_workers in workers:
        ours, theirs = [], []
        for _ in range(rounds):  # in turns, so that drift in this machine's speed hits both alike
            dm.num_workers = count_workers
            dm.batch_size = batch_size
            ours.append(_loader_rate(dm.train_dataloader()))
            loader = DataLoader(
                baseline, batch_size=batch_size, shuffle=True, num_workers=count_workers, drop_last=True
            )
            theirs.append(_loader_rate(loader))
        mine, base = float(np.median(ours)), float(np.median(theirs))
        print(f"  {count_workers:>7}  {mine:14.1f}  {base:22.1f}  {mine / base:5.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000, help="small files for the set-up figure")
    parser.add_argument("--small-size", type=int, nargs=2, default=(64, 48), metavar=("W", "H"))
    parser.add_argument("--large", type=int, default=2_000, help="camera-sized files for the decode figure")
    parser.add_argument("--large-size", type=int, nargs=2, default=(1600, 1200), metavar=("W", "H"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="runs of each loader per worker count (median)")
    parser.add_argument("--dir", type=Path, default=None, help="generate here and keep the files")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.dir or Path(tempfile.mkdtemp(prefix="autotimm-data-scale-"))
    try:
        print(f"{os.cpu_count()} CPU cores; files in {root}")
        if args.small:
            start = time.perf_counter()
            size = _write_folder(root / "small", args.small, 100, tuple(args.small_size), seed=0)
            print(f"wrote {args.small:,} files of {args.small_size[0]}x{args.small_size[1]} ({size / 1e3:.1f} kB) "
                  f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
            setup_figures(root / "small", args.small)
        if args.large:
            start = time.perf_counter()
            size = _write_folder(root / "large", args.large, 10, tuple(args.large_size), seed=1)
            print(f"\nwrote {args.large:,} files of {args.large_size[0]}x{args.large_size[1]} "
                  f"({size / 1e3:.0f} kB) in {time.perf_counter() - start:.0f} s")  # fmt: skip
            loader_figures(root / "large", args.large, args.workers, args.batch_size, args.rounds)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
