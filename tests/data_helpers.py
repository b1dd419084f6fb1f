"""Generated image folders and CSV files for the data tests."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, seed: int = 0, mode: str = "RGB", size: int = 12) -> Path:
    """Write a small random image in ``mode`` (``"RGB"``, ``"L"``, ``"P"``, ``"RGBA"``) to ``path``."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = image.convert(mode)
    image.save(path)
    return path


def write_class_folders(root: Path, counts: dict[str, int], seed: int = 0, mode: str = "RGB") -> Path:
    """Write ``root/<class>/<i>.png`` with ``counts[class]`` images each."""
    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_image(root / name / f"{i}.png", seed=seed * 1000 + c * 100 + i, mode=mode)
    return root


def write_csv(path: Path, rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("image", "label")) -> Path:
    """Write a two-column CSV with a header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path
