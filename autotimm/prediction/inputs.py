"""What ``predict`` accepts: files, folders, globs, Pillow images, arrays and tensors, as one list of sources.

Needs only numpy and Pillow: the ONNX predictor uses it without torch. Torch
tensors are recognised by their type's module, without importing torch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotimm.data.images import IMAGE_EXTENSIONS, array_to_image, convert_image, list_image_files, load_image

__all__ = ["ImageSource", "collect_inputs", "image_files", "is_tensor"]

_ACCEPTED = (
    "a file path, a folder, a glob pattern, a Pillow image, a numpy array (H, W), (H, W, C) or (N, H, W, C), "
    "a torch tensor (C, H, W) or (N, C, H, W), or a list of those"
)


@dataclass(frozen=True)
class ImageSource:
    """One image to predict on: a file (read when needed) or an image in memory.

    Args:
        source: The file path as given, or ``None`` for an in-memory image.
        path: The file to decode.
        image: The in-memory image.
    """

    source: str | None
    path: Path | None = None
    image: Image.Image | None = None

    def load(self, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode (files) or convert (in-memory images) to ``in_chans`` channels.

        Args:
            in_chans: 1 or 3.
            draft_size: Decode a JPEG file reduced, to no less than this ``(width, height)``
                (see [`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]);
                ``None``: full size. In-memory images are never resized here.

        Raises:
            OSError: The file is missing or cannot be decoded.
        """
        if self.image is not None:
            return convert_image(self.image, in_chans)
        if self.path is None:
            raise ValueError("An ImageSource needs a path or an image")
        return load_image(self.path, in_chans, draft_size=draft_size)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_files(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively and sorted, skipping hidden files and folders.

    The same search as for training folders (``autotimm.data.images.list_image_files``):
    symlinked files and folders are followed, and a symlink loop is skipped with a warning.

    Args:
        folder: A folder.

    Returns:
        The paths of files with an image extension (see ``IMAGE_EXTENSIONS``).
    """
    return list_image_files(folder)


def _from_path(value: str | os.PathLike[str]) -> list[ImageSource]:
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.is_dir():
        files = image_files(path)
        if not files:
            raise ValueError(
                f"Folder {text!r} has no images; looked recursively for files of types {', '.join(IMAGE_EXTENSIONS)}"
            )
        return [ImageSource(str(f), f) for f in files]
    if path.is_file():
        return [ImageSource(text, path)]
    if glob.has_magic(text):
        matches = [Path(m) for m in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
        files = [m for m in matches if m.is_file() and _is_image_file(m)]
        if not files:
            raise FileNotFoundError(f"No image files match the pattern {text!r}")
        return [ImageSource(str(f), f) for f in files]
    raise FileNotFoundError(f"Image file or folder not found: {text!r}")


def _to_uint8(pixels: np.ndarray, what: str) -> np.ndarray:
    """Pixels as uint8: floats in ``[0, 1]`` are scaled, 16-bit integers divided by 257."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255
    if pixels.size and np.issubdtype(pixels.dtype, np.floating):
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if low < 0:
            raise ValueError(
                f"{what} has negative values (min {low:.3g}): it looks normalised already. Pass raw images "
                "(uint8 0-255, or floats in [0, 1]); predict applies the model's own normalisation."
            )
        scale = 255.0 if high <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(pixels) * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(pixels.dtype, np.integer):
        high = int(pixels.max(initial=0))
        if int(pixels.min(initial=0)) < 0:
            raise ValueError(f"{what} has negative pixel values; expected 0-255 (or 0-65535 for 16-bit)")
        return (pixels if high <= 255 else pixels / 257.0).astype(np.uint8)
    raise TypeError(f"{what} has dtype {pixels.dtype}; expected uint8, 16-bit integers or floats in [0, 1]")


def _from_array(array: np.ndarray, channels_first: bool) -> list[ImageSource]:
    kind = "tensor" if channels_first else "numpy array"
    shape = tuple(array.shape)
    if channels_first and array.ndim in (3, 4):
        array = np.moveaxis(array, -3, -1)  # (..., C, H, W) -> (..., H, W, C)
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        hint = " (a (C, H, W) array? transpose it to (H, W, C))" if shape[0] in (1, 3, 4) else ""
        raise ValueError(f"A {kind} of shape {shape} is not an image: expected {_layouts(channels_first)}{hint}")
    if array.ndim == 4 and array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"A {kind} of shape {shape} is not a batch of images: expected {_layouts(channels_first)}")
    if array.ndim not in (2, 3, 4) or 0 in array.shape:
        raise ValueError(f"A {kind} of shape {shape} is not an image: expected {_layouts(channels_first)}")
    pixels = _to_uint8(array, f"A {kind} of shape {shape}")
    batch = pixels if pixels.ndim == 4 else pixels[None]
    images = [array_to_image(image, 1 if image.shape[-1] == 1 or image.ndim == 2 else 3) for image in batch]
    return [ImageSource(None, image=image) for image in images]


def _layouts(channels_first: bool) -> str:
    if channels_first:
        return "(H, W), (C, H, W) or (N, C, H, W) with C in 1, 3 or 4"
    return "(H, W), (H, W, C) or (N, H, W, C) with C in 1, 3 or 4"


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (checked without importing torch)."""
    return type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach")


def _collect_one(value: Any) -> list[ImageSource]:
    if isinstance(value, ImageSource):
        return [value]
    if isinstance(value, (str, os.PathLike)):
        return _from_path(value)
    if isinstance(value, Image.Image):
        return [ImageSource(None, image=value)]
    if isinstance(value, np.ndarray):
        return _from_array(value, channels_first=False)
    if is_tensor(value):
        tensor = value.detach().cpu()
        if tensor.dtype.is_floating_point:
            tensor = tensor.float()  # bf16/fp16 have no numpy dtype
        return _from_array(tensor.numpy(), channels_first=True)
    raise TypeError(f"Cannot predict on a {type(value).__name__}; `inputs` must be {_ACCEPTED}")


def collect_inputs(inputs: Any) -> list[ImageSource]:
    """Turn any accepted ``inputs`` into a flat list of image sources, in order.

    Args:
        inputs: A file path, a folder (searched recursively), a glob pattern
            (``"photos/*.jpg"``, ``"**"`` allowed), a Pillow image, a numpy
            array (``(H, W)``, ``(H, W, C)`` or a ``(N, H, W, C)`` batch; uint8,
            or floats in ``[0, 1]``), a torch tensor (``(C, H, W)`` or
            ``(N, C, H, W)``), an [`ImageSource`][autotimm.prediction.inputs.ImageSource],
            or a list or tuple of any of these.

    Returns:
        One source per image. Files are only read when predicted on.

    Raises:
        FileNotFoundError: A path that does not exist, or a glob with no match.
        ValueError: No inputs, an empty folder, or an array that is not an image.
        TypeError: A value of another type.

    Example:
        >>> import numpy as np
        >>> len(collect_inputs([np.zeros((8, 8, 3), np.uint8), np.zeros((2, 8, 8, 1), np.uint8)]))
        3
    """
    values: Iterable[Any] = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    sources = [source for value in values for source in _collect_one(value)]
    if not sources:
        raise ValueError(f"`inputs` is empty; pass {_ACCEPTED}")
    return sources
