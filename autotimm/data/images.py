"""Decoding images with Pillow into the channels a backbone expects, listing and checking files up front.

``decode_image`` is the one place where image files and bytes are decoded (training, evaluation, prediction and
the REST service all go through it), and ``list_image_files`` the one place where folders are searched for images.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps

__all__ = [
    "CHECK_IMAGES_MODES",
    "IMAGE_EXTENSIONS",
    "READ_ERRORS",
    "STORED_SIZE_KEY",
    "ImageTooLargeError",
    "array_to_image",
    "check_images",
    "check_images_mode",
    "convert_image",
    "crop_padding",
    "decode_image",
    "find_bad_images",
    "image_mode",
    "list_image_files",
    "list_image_names",
    "load_image",
    "probe_image",
    "read_problem",
    "report_bad_images",
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
    Converted a band of rows at a time, so that the float64 temporaries stay
    small (a 40-megapixel 16-bit image took 1 GB when converted at once).
    """
    pixels = np.asarray(image)
    # Floats: scaled by 255 when in [0, 1], else taken as they are. Integers: divided by 257.
    factor = (255.0 if np.nanmax(pixels, initial=0.0) <= 1.0 else 1.0) if image.mode == "F" else None
    converted = np.empty(pixels.shape, dtype=np.uint8)
    rows = max(1, (1 << 20) // max(1, pixels.shape[1]))  # about a megapixel per band
    for top in range(0, pixels.shape[0], rows):
        band = pixels[top : top + rows].astype(np.float64)
        band = band / 257.0 if factor is None else band * factor
        converted[top : top + rows] = np.clip(np.rint(np.nan_to_num(band)), 0, 255)
    return Image.fromarray(converted, "L")


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


class ImageTooLargeError(ValueError):
    """An image has more pixels than the ``max_pixels`` of ``decode_image``.

    Args:
        width: The image's width in pixels.
        height: Its height.
        max_pixels: The limit.
        image_format: Its format, as Pillow names it (``"PNG"``, ``"JPEG"``, ...).
    """

    def __init__(self, width: int, height: int, max_pixels: int, image_format: str | None) -> None:
        super().__init__(f"{width}x{height} pixels; the limit is {max_pixels:,} pixels ({image_format})")
        self.width, self.height, self.max_pixels, self.image_format = width, height, max_pixels, image_format


#: EXIF orientations (tag 0x0112) other than 1 (upright); they ask for a flip and/or a rotation.
_TURNED = frozenset(range(2, 9))


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation of a loaded image in place, as photo viewers do; a no-op without one."""
    if _orientation(image) in _TURNED:  # malformed EXIF counts as upright: the stored pixels are kept
        # Raising here means the pixels are turned and only rewriting the EXIF block failed: keep them.
        with contextlib.suppress(Exception):
            ImageOps.exif_transpose(image, in_place=True)
    return image


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened image (1, upright, when it has none or it is malformed)."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # malformed EXIF (Pillow raises many kinds)
        return 1


#: Orientations that turn the image by 90 degrees: its width and height swap when it is made upright.
_SIDEWAYS = frozenset((5, 6, 7, 8))

#: The ``Image.info`` key where `decode_image` keeps the stored ``(width, height)`` of a JPEG it decoded reduced.
STORED_SIZE_KEY = "autotimm_stored_size"


def _draft(image: Image.Image, draft_size: tuple[int, int]) -> None:
    """Ask Pillow to decode a JPEG at the largest DCT reduction (1/2, 1/4, 1/8) that keeps ``draft_size`` upright.

    Pillow's ``Image.draft`` is a no-op for other formats. A reduced image keeps its
    stored size in ``image.info[STORED_SIZE_KEY]``.
    """
    width, height = draft_size
    if _orientation(image) in _SIDEWAYS:  # the size is asked for as shown; draft works on the stored pixels
        width, height = height, width
    stored = image.size
    if image.draft(image.mode, (width, height)) is not None and image.size != stored:
        image.info[STORED_SIZE_KEY] = stored


def decode_image(
    source: str | os.PathLike[str] | bytes | BinaryIO,
    max_pixels: int | None = None,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode an image file or bytes with Pillow, upright by its EXIF orientation.

    Every image read from a file or from bytes goes through here. A photo whose
    EXIF orientation tag is not 1 (e.g. 6, "rotate 90 degrees clockwise to view")
    is flipped and rotated as photo viewers show it, and the tag is removed;
    images without the tag (or with 1) are returned as stored, without a copy.
    The mode is not changed (``load_image`` converts it).

    The header (format and size) is read first, so ``max_pixels`` refuses an image
    before any of its pixels are decoded. With ``draft_size``, a JPEG is decoded at a
    reduced scale (Pillow's ``Image.draft``: libjpeg's DCT scaling by 1/2, 1/4 or 1/8,
    never below ``draft_size``), which costs a fraction of the memory and time of a full
    decode; other formats are decoded in full.

    Args:
        source: A file path, the file's bytes, or a binary file object.
        max_pixels: Refuse images with more pixels (width times height) before
            their pixels are decoded; ``None``: only Pillow's decompression-bomb limit.
        draft_size: ``(width, height)``, as the upright image is shown, that a JPEG must
            keep at least; ``None``: decode every image at full size. A JPEG decoded reduced
            keeps its stored size in ``image.info[STORED_SIZE_KEY]``.

    Returns:
        The decoded image, fully loaded (a file is closed).

    Raises:
        OSError: The file is missing, unreadable or truncated (``PIL.UnidentifiedImageError``
            when it is not an image).
        ImageTooLargeError: More than ``max_pixels`` pixels.
        PIL.Image.DecompressionBombError: Far more pixels than Pillow allows.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise ImageTooLargeError(image.width, image.height, max_pixels, image.format)
        if draft_size is not None:
            _draft(image, draft_size)
        image.load()
        return _upright(image)


def load_image(path: str | Path, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode an image file with Pillow and convert it to ``in_chans`` channels.

    Decoded by ``decode_image``, so upright by its EXIF orientation. Grayscale,
    palette, CMYK and RGBA images all become ``"L"`` (one channel) or ``"RGB"``
    (three channels); an alpha channel is dropped, and 16-bit or float grayscale
    images are scaled to 8 bits.

    Args:
        path: The image file.
        in_chans: 1 or 3.
        draft_size: Decode a JPEG reduced (libjpeg's DCT scaling), to no less than this
            ``(width, height)`` as the upright image is shown; ``None``: full size.

    Returns:
        The decoded image, fully loaded (the file is closed).

    Raises:
        OSError: The file is missing, unreadable or truncated.
    """
    mode = image_mode(in_chans)
    return _convert(decode_image(path, draft_size=draft_size), mode)


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


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(folder: str, path: str) -> bool:
    """Whether real path ``path`` is ``folder`` or inside it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def list_image_names(folder: str | os.PathLike[str]) -> list[str]:
    """Image files under ``folder`` as POSIX paths relative to it, in the order of `list_image_files`.

    The same search as `list_image_files` without building a ``Path`` per file: the
    listing of a million-image folder stays a list of plain strings.

    Args:
        folder: The folder to search.

    Returns:
        Relative paths such as ``"sub/img.jpg"``, sorted by their parts (as ``Path`` objects sort).
    """
    root = os.fspath(folder)
    found: list[str] = []
    loops: list[str] = []

    def walk(directory: str, prefix: str, chain: list[str]) -> None:
        try:
            with os.scandir(directory) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except OSError:  # unreadable or vanished: skipped, as os.walk and Path.rglob do
            return
        # Names sorted within each folder, folders walked depth-first: the order of the sorted parts.
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir, is_link = entry.is_dir(), entry.is_symlink()
            except OSError:
                continue
            if is_dir:
                path = entry.path
                real = os.path.realpath(path) if is_link else os.path.join(chain[-1], name)
                if is_link and any(_inside(real, outer) for outer in chain):
                    loops.append(f"{str(Path(path))!r} -> {real!r}")
                    continue
                walk(path, f"{prefix}{name}/", [*chain, real])
            elif _is_image_name(name) and (entry.is_file() or (is_link and not os.path.exists(entry.path))):
                found.append(prefix + name)

    walk(root, "", [os.path.realpath(root)])
    if loops:
        warnings.warn(
            f"Skipped {len(loops)} symlinked folder(s) under {str(Path(root))!r} that lead back to a folder they "
            f"are in (a symlink loop): {', '.join(loops[:3])}{' ...' if len(loops) > 3 else ''}",
            UserWarning,
            stacklevel=2,
        )
    return found


def list_image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder``, recursively and sorted, following symbolic links, skipping hidden names.

    The one folder search of training data (class folders) and of prediction
    inputs. Files and folders whose names start with ``"."`` are skipped
    (``.ipynb_checkpoints``); symlinked files and folders are followed. A
    symlinked folder that leads back to a folder it is in (a loop, such as a
    link to its parent) is skipped, with one warning that names it. A symlink
    to a missing file with an image extension is listed, so that reading it
    reports the file as missing instead of it being left out silently.

    Args:
        folder: The folder to search.

    Returns:
        Paths under ``folder`` (not resolved: through the links, as the folder
        shows them) of files with an image extension (``IMAGE_EXTENSIONS``,
        case-insensitive), sorted.
    """
    root = Path(folder)
    return [root / name for name in list_image_names(folder)]


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


#: What ``check_images=`` accepts: how image files are checked when the data is set up.
CHECK_IMAGES_MODES: dict[str, str] = {
    "header": "open each file and read its header (format and size): missing, empty and non-image files fail",
    "full": "decode every file in full, as training does: truncated and corrupt files fail too",
    "none": "trust the files: nothing is opened until training reads it",
}

#: Files checked per batch of threads (bounds the number of pending futures on huge folders).
_CHECK_CHUNK = 4096
# Files one thread checks per task.
_CHECK_TASK = 128


def crop_padding(height: int, width: int) -> int:
    """Pixels of zero padding before the random crop of ``"crop_flip"``: 1/14 of the shorter side, at least 2.

    Here (no torch) so that prediction without torch pads its test-time crops the same way.

    Example:
        >>> crop_padding(28, 28), crop_padding(32, 32), crop_padding(224, 224)
        (2, 2, 16)
    """
    return max(2, min(height, width) // 14)


def check_images_mode(mode: str, argument: str = "check_images") -> str:
    """Validate a ``check_images`` value.

    Args:
        mode: One of `CHECK_IMAGES_MODES`: ``"header"``, ``"full"`` or ``"none"``.
        argument: The argument's name in the message.

    Returns:
        ``mode``.

    Raises:
        ValueError: Any other value; the message names the argument, the value and the accepted ones.
    """
    if not isinstance(mode, str) or mode not in CHECK_IMAGES_MODES:
        raise ValueError(f"`{argument}` must be one of {list(CHECK_IMAGES_MODES)}, got {mode!r}")
    return mode


def _problem(path: str | os.PathLike[str]) -> str | None:
    try:
        decode_image(path)  # a full decode, as training does: verify() misses truncated files
    except READ_ERRORS as err:
        return read_problem(err)
    return None


def _header_problem(path: str | os.PathLike[str]) -> str | None:
    try:
        with Image.open(path) as image:  # reads the header only: format, mode and size
            if image.width < 1 or image.height < 1:
                return f"empty image ({image.width}x{image.height})"
    except READ_ERRORS as err:
        return read_problem(err)
    return None


def check_images(
    paths: Sequence[str | os.PathLike[str]], skip_bad_images: bool, what: str = "images", mode: str = "full"
) -> list[int]:
    """Check every file once and return the indices of the good ones.

    Runs when the data is set up, so a bad file fails fast instead of in the
    middle of an epoch. ``mode="full"`` decodes every image; ``"header"`` opens
    each file and reads its header only (format and size: missing, empty and
    non-image files fail, truncated ones pass and are caught while training);
    ``"none"`` checks nothing. Files are checked in threads (Pillow releases the
    GIL while decoding and reading), a few thousand at a time.

    Args:
        paths: The image files.
        skip_bad_images: Skip bad files with one warning that counts them,
            instead of raising on the first.
        what: How the files are named in messages.
        mode: ``"full"``, ``"header"`` or ``"none"`` (see `CHECK_IMAGES_MODES`).

    Returns:
        Indices into ``paths`` of the files that pass.

    Raises:
        FileNotFoundError: A file is missing and ``skip_bad_images`` is False.
        ValueError: A file cannot be read and ``skip_bad_images`` is False, or an unknown ``mode``.
    """
    check_images_mode(mode, "mode")
    bad = find_bad_images(paths, mode)
    report_bad_images(paths, bad, skip_bad_images, what, stacklevel=4)
    skipped = {i for i, _ in bad}
    return [i for i in range(len(paths)) if i not in skipped]


def find_bad_images(paths: Sequence[str | os.PathLike[str]], mode: str = "full") -> list[tuple[int, str]]:
    """The files that fail the ``mode`` check, as ``(index, problem)`` pairs in index order.

    The checking half of [`check_images`][autotimm.data.check_images]: in threads, nothing raised or warned.

    Args:
        paths: The image files.
        mode: ``"full"``, ``"header"`` or ``"none"`` (see `CHECK_IMAGES_MODES`).

    Raises:
        ValueError: An unknown ``mode``.
    """
    check_images_mode(mode, "mode")
    if mode == "none":
        return []
    probe = _problem if mode == "full" else _header_problem
    workers = min(8, os.cpu_count() or 1)
    bad: list[tuple[int, str]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for first in range(0, len(paths), _CHECK_CHUNK):
            chunk = [paths[i] for i in range(first, min(first + _CHECK_CHUNK, len(paths)))]
            # One task per _CHECK_TASK files: a thread pool's map makes a future per item (its `chunksize`
            # is for process pools), which cost more than the header read itself (measured: 100,000 headers
            # took 12.9 s with a future each, of which 4-5 s were the futures).
            tasks = [chunk[i : i + _CHECK_TASK] for i in range(0, len(chunk), _CHECK_TASK)]
            problems = itertools.chain.from_iterable(pool.map(partial(_check_files, probe), tasks))
            bad += [(first + i, p) for i, p in enumerate(problems) if p is not None]
    return bad


def _check_files(probe: Callable[[Any], str | None], paths: Sequence[Any]) -> list[str | None]:
    return [probe(path) for path in paths]


def report_bad_images(
    paths: Sequence[str | os.PathLike[str]],
    bad: Sequence[tuple[int, str]],
    skip_bad_images: bool,
    what: str = "images",
    stacklevel: int = 3,
) -> None:
    """Raise on the first bad file, or warn once counting them with ``skip_bad_images`` (nothing when none is bad).

    Args:
        paths: The image files.
        bad: ``(index, problem)`` pairs, as [`find_bad_images`][autotimm.data.images.find_bad_images] gives them.
        skip_bad_images: Warn instead of raising.
        what: How the files are named in messages.
        stacklevel: The warning's ``stacklevel``.

    Raises:
        FileNotFoundError: The first bad file is missing and ``skip_bad_images`` is False.
        ValueError: The first bad file cannot be read and ``skip_bad_images`` is False.
    """
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
            stacklevel=stacklevel,
        )


def probe_image(path: str | os.PathLike[str], mode: str = "full") -> str | None:
    """Why one file fails the ``mode`` check (``"full"`` or ``"header"``), or ``None`` when it passes."""
    return (_problem if mode == "full" else _header_problem)(path)
