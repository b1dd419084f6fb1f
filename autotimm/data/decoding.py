"""JPEG draft decoding for loaders: decode no more pixels than the transform keeps.

libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 of its size in the DCT domain
(Pillow's ``Image.draft``), which skips most of the inverse DCT and colour
conversion and leaves a smaller image to resize. Two rules decide how far:

- Evaluation (resize, centre crop): the image keeps at least twice the resize
  target per side ([`eval_draft_size`][autotimm.data.decoding.eval_draft_size]),
  the rule of [`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]
  that prediction and the REST service use.
- Training with a random resized crop: the crop box is drawn first, from the
  file's header, and the JPEG is then decoded at the largest reduction that still
  leaves the *crop* at least the output size per side
  ([`decode_random_resized_crop`][autotimm.data.decoding.decode_random_resized_crop]).
  The crop is downscaled to the output size anyway, so no detail that reaches the
  model is lost; small crops (zoomed in) decode at full size.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from autotimm.data.images import convert_image, decode_image, image_mode

__all__ = [
    "EVAL_DRAFT_GAP",
    "RandomCropDecoder",
    "decode_random_resized_crop",
    "eval_draft_size",
    "random_crop_decoder",
]

#: How much larger than the evaluation resize target a JPEG decoded reduced stays, per side
#: (the same factor as ``autotimm.prediction.DRAFT_REDUCING_GAP``).
EVAL_DRAFT_GAP = 2.0

_PIL_FILTERS = {
    InterpolationMode.NEAREST: Image.Resampling.NEAREST,
    InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
    InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
    InterpolationMode.BOX: Image.Resampling.BOX,
    InterpolationMode.HAMMING: Image.Resampling.HAMMING,
    InterpolationMode.LANCZOS: Image.Resampling.LANCZOS,
}

#: EXIF orientation tag: images stored turned by 90 degrees decode through the plain path.
_ORIENTATION = 0x0112


def eval_draft_size(data_config: dict[str, Any]) -> tuple[int, int]:
    """``(width, height)`` a JPEG may be decoded reduced to for the evaluation transform of ``data_config``.

    The resize target before the centre crop (``input_size / crop_pct``) times
    `EVAL_DRAFT_GAP`, as [`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]
    computes it for prediction.

    Example:
        >>> eval_draft_size({"input_size": [3, 224, 224], "crop_pct": 0.875})
        (512, 512)
    """
    _, height, width = (int(v) for v in data_config["input_size"])
    crop_pct = float(data_config.get("crop_pct") or 0.875)
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    return math.ceil(scale_w * EVAL_DRAFT_GAP), math.ceil(scale_h * EVAL_DRAFT_GAP)


class RandomCropDecoder:
    """A training transform split into its random resized crop (decoded with a draft) and the stages after it.

    Built by [`random_crop_decoder`][autotimm.data.decoding.random_crop_decoder].

    Args:
        crop: The transform's first stage: timm's ``RandomResizedCropAndInterpolation``
            or torchvision's ``RandomResizedCrop``.
        rest: The stages after it (flip, policy, to tensor, normalise).
    """

    def __init__(self, crop: Any, rest: Callable) -> None:
        self.crop = crop
        self.rest = rest

    def __call__(self, path: str | Path, in_chans: int = 3) -> Any:
        """Decode ``path`` cropped and resized as the crop stage would, then apply the rest of the transform."""
        return self.rest(decode_random_resized_crop(path, self.crop, in_chans))


def random_crop_decoder(transform: Callable | None) -> RandomCropDecoder | None:
    """Split a ``Compose`` that starts with a random resized crop, so that the crop can be decoded with a draft.

    Args:
        transform: A training transform.

    Returns:
        A [`RandomCropDecoder`][autotimm.data.decoding.RandomCropDecoder], or ``None`` when the
        transform does not start with timm's or torchvision's random resized crop (or uses an
        interpolation Pillow lacks).
    """
    stages = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not stages:
        return None
    crop = stages[0]
    if not isinstance(crop, (RandomResizedCropAndInterpolation, T.RandomResizedCrop)):
        return None
    modes = crop.interpolation if isinstance(crop.interpolation, (list, tuple)) else [crop.interpolation]
    if not all(mode in _PIL_FILTERS for mode in modes):
        return None
    return RandomCropDecoder(crop, T.Compose(list(stages[1:])))


def _upright_size(image: Image.Image) -> tuple[int, int] | None:
    """``(width, height)`` of an opened image if its EXIF orientation keeps it as stored; ``None`` otherwise."""
    try:
        orientation = int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # malformed EXIF counts as upright, as decode_image does
        orientation = 1
    return image.size if orientation in (1, 2, 3, 4) else None


def decode_random_resized_crop(path: str | Path, crop: Any, in_chans: int = 3) -> Image.Image:
    """Decode an image file through a random resized crop, reading a JPEG at the largest DCT reduction it allows.

    Draws the crop box with the stage's own ``get_params`` on the image's header (no
    pixels decoded yet), asks libjpeg for the largest reduction (1/2, 1/4, 1/8) that
    keeps the box at least the stage's output size per side, decodes, and resizes
    the box to the output size with the stage's interpolation. The result is
    distributed as the stage's own output; only resampling differs, by the DCT
    reduction of pixels that the resize would average anyway. Images stored turned
    (EXIF orientation 5-8) and non-JPEG files decode at full size.

    Args:
        path: The image file.
        crop: timm's ``RandomResizedCropAndInterpolation`` or torchvision's ``RandomResizedCrop``.
        in_chans: 1 or 3.

    Returns:
        The crop, of the stage's ``size``, in mode ``"L"`` or ``"RGB"``.

    Raises:
        OSError: The file is missing, unreadable or truncated.
    """
    mode = image_mode(in_chans)
    out_h, out_w = crop.size
    interpolation = crop.interpolation
    if isinstance(interpolation, (list, tuple)):
        interpolation = random.choice(interpolation)
    with Image.open(path) as opened:
        size = _upright_size(opened)
        if size is None:  # turned by EXIF: crop the upright image as the stage would
            return crop(convert_image(decode_image(path), in_chans))
        width, height = size
        top, left, box_h, box_w = crop.get_params(opened, crop.scale, crop.ratio)
        # The reduced image must keep the box at least out_w x out_h: Pillow never drafts below the size asked.
        wanted = (max(1, math.ceil(width * out_w / max(box_w, 1))), max(1, math.ceil(height * out_h / max(box_h, 1))))
        if wanted[0] < width and wanted[1] < height:
            opened.draft(opened.mode, wanted)
        opened.load()
        image = convert_image(opened, in_chans) if opened.mode != mode else opened
        sx, sy = image.width / width, image.height / height
        box = (left * sx, top * sy, (left + box_w) * sx, (top + box_h) * sy)
        return image.resize((out_w, out_h), _PIL_FILTERS[interpolation], box=box)
