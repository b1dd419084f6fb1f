"""Generated image folders, CSV files and image bytes for the data and service tests."""

from __future__ import annotations

import csv
import io
import struct
import zlib
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


def write_photo_folder(root: Path, per_class: int = 15, size: int = 96, seed: int = 0) -> Path:
    """Write ``root/{cat,coffee,rocket}/*.jpg``: random crops of three real photographs (scikit-image's).

    A small real folder for the newcomer and docs tests: each image is a crop of
    40-90% of the photo's shorter side at a random place, maybe mirrored,
    resized to ``size`` pixels.
    """
    rng = np.random.default_rng(seed)
    for name, photo in _photos():
        image = Image.fromarray(photo)
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(min(image.size) * rng.uniform(0.4, 0.9))
            left = int(rng.integers(0, image.width - side + 1))
            top = int(rng.integers(0, image.height - side + 1))
            crop = image.crop((left, top, left + side, top + side)).resize((size, size))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            crop.save(root / name / f"{i}.jpg", quality=90)
    return root


def write_photos(folder: Path, size: int = 128) -> Path:
    """Write ``folder/cat.jpg``, ``coffee.jpg`` and ``rocket.jpg``, the whole photographs, to predict on."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in _photos():
        Image.fromarray(photo).resize((size, size)).save(folder / f"{name}.jpg", quality=90)
    return folder


def _photos() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    return [("cat", data.chelsea()), ("coffee", data.coffee()), ("rocket", data.rocket())]


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost none: decoding it fails as truncated."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(100)))


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` encoded as a JPEG file."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo(long_side: int) -> Image.Image:
    """A real photo (scikit-image's astronaut, 512x512), scaled to ``long_side`` pixels a side."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((long_side, long_side), Image.Resampling.LANCZOS)
