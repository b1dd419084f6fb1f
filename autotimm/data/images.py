"""Decoding images with Pillow into the channels a backbone expects, and checking files up front."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "READ_ERRORS",
    "array_to_image",
    "check_images",
    "convert_image",
    "image_mode",
    "load_image",
    "read_problem",
    "unreadable_image_error",
    "usable_cores",
]

#: File extensions read as images (torchvision's ``ImageFolder`` list), matched case-insensitively.
#: Written out, not imported from torchvision, so that this module (used by the ONNX predictor) needs no torch.
IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")

_MODES = {1: "L", 3: "RGB"}


def image_mode(in_chans: int) -> str:
    """Return the Pillow mode for a number of input channels (1 -> ``"L"``, 3 -> ``"RGB"``).

    Args:
        in_chans: Channels the backbone expects.

    Raises:
        ValueError: For any other channel count.
    """
    if in_chans not in _MODES:
        raise ValueError(f"`in_chans` must be one of {sorted(_MODES)}, got {in_chans!r}")
    return _MODES[in_chans]


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float grayscale image to an 8-bit ``"L"`` image.

    Pillow's own conversion clips these values at 255 instead of scaling them,
    which turns a 16-bit image white. Integers are taken as 16-bit (0-65535);
    floats in ``[0, 1]`` are scaled to 0-255, other floats are taken as 0-255.
    """
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode != "F":
        pixels = pixels / 257.0
    elif np.nanmax(pixels, initial=0.0) <= 1.0:
        pixels = pixels * 255.0
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(pixels)), 0, 255).astype(np.uint8), "L")


def _convert(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    # Palette images with a transparent colour go through RGBA, as Pillow asks; alpha is then dropped.
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == mode else image.convert(mode)


def convert_image(image: Image.Image, in_chans: int = 3) -> Image.Image:
    """Convert a Pillow image of any mode to ``"L"`` (``in_chans=1``) or ``"RGB"`` (``in_chans=3``).

    Alpha is dropped, palette images keep their transparent colour's RGB, and
    16-bit or float grayscale images are scaled to 8 bits.

    Raises:
        ValueError: ``in_chans`` is not 1 or 3.
    """
    return _convert(image, image_mode(in_chans))


def load_image(path: str | Path, in_chans: int = 3) -> Image.Image:
    """Decode an image file with Pillow and convert it to ``in_chans`` channels.

    Grayscale, palette, CMYK and RGBA images all become ``"L"`` (one channel) or
    ``"RGB"`` (three channels); an alpha channel is dropped, and 16-bit or float
    grayscale images are scaled to 8 bits.

    Args:
        path: The image file.
        in_chans: 1 or 3.

    Returns:
        The decoded image, fully loaded (the file is closed).

    Raises:
        OSError: The file is missing, unreadable or truncated.
    """
    mode = image_mode(in_chans)
    with Image.open(path) as image:
        image.load()
        return _convert(image, mode)


def array_to_image(array: np.ndarray, in_chans: int = 3) -> Image.Image:
    """Turn one ``(H, W)`` or ``(H, W, C)`` uint8 array into a Pillow image with ``in_chans`` channels.

    Args:
        array: uint8 pixels; ``C`` is 1, 3 or 4.
        in_chans: 1 or 3; grayscale arrays are repeated to three channels when 3.

    Returns:
        The image, in mode ``"L"`` or ``"RGB"``.
    """
    mode = image_mode(in_chans)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return _convert(Image.fromarray(np.ascontiguousarray(array)), mode)


#: What Pillow raises for a file it cannot read (``FileNotFoundError`` is an ``OSError``).
READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, Image.DecompressionBombError)


def read_problem(err: Exception) -> str:
    """Say why an image could not be read: ``"file not found"`` or the error's type and message."""
    return "file not found" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"


def unreadable_image_error(what: str, problem: str, more: str = "", unit: str = "images") -> Exception:
    """The error for an image that cannot be read: ``FileNotFoundError`` for a missing file, else ``ValueError``.

    Args:
        what: The image, as named in the message (e.g. ``"image file 'a.png'"``).
        problem: From [`read_problem`][autotimm.data.images.read_problem].
        more: Appended to the problem (e.g. how many more files are bad).
        unit: What ``skip_bad_images=True`` skips, in the hint.
    """
    message = (
        f"Cannot read {what}: {problem}{more}. "
        f"Fix or remove it, or pass skip_bad_images=True to skip unreadable {unit}."
    )
    return FileNotFoundError(message) if problem == "file not found" else ValueError(message)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. from a job scheduler), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _problem(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()  # a full decode: verify() misses truncated files
    except READ_ERRORS as err:
        return read_problem(err)
    return None


def check_images(paths: Sequence[Path], skip_bad_images: bool, what: str = "images") -> list[int]:
    """Decode every file once and return the indices of the good ones.

    Runs when the data is set up, so a bad file fails fast instead of in the
    middle of an epoch. Decoding runs in threads: Pillow releases the GIL.

    Args:
        paths: The image files.
        skip_bad_images: Skip bad files with one warning that counts them,
            instead of raising on the first.
        what: How the files are named in messages.

    Returns:
        Indices into ``paths`` of the files that decode.

    Raises:
        FileNotFoundError: A file is missing and ``skip_bad_images`` is False.
        ValueError: A file cannot be decoded and ``skip_bad_images`` is False.
    """
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_problem, paths))
    bad = [(i, p) for i, p in enumerate(problems) if p is not None]
    if bad and not skip_bad_images:
        index, problem = bad[0]
        more = f" ({len(bad) - 1} more bad files)" if len(bad) > 1 else ""
        raise unreadable_image_error(f"image file {str(paths[index])!r}", problem, more, unit="files")
    if bad:
        examples = ", ".join(repr(str(paths[i])) for i, _ in bad[:3])
        warnings.warn(
            f"Skipped {len(bad)} unreadable image file(s) of {len(paths)} {what} (skip_bad_images=True), "
            f"e.g. {examples}",
            UserWarning,
            stacklevel=3,
        )
    return [i for i, p in enumerate(problems) if p is None]
