"""Evaluation preprocessing in numpy and Pillow: timm's eval transform without torch, plus test-time views.

Written here rather than calling timm's ``create_transform`` because the ONNX
predictor must run where only numpy, Pillow and onnxruntime are installed.
It follows timm's ``transforms_imagenet_eval`` step for step (the same Pillow
resize calls, crop offsets, scaling and normalisation), and the tests check
that both give the same arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

from autotimm.data.images import convert_image, crop_padding

__all__ = ["DRAFT_REDUCING_GAP", "TTA_MODES", "Preprocessor", "check_tta"]

#: How much larger than the resize target a JPEG decoded reduced stays (see `Preprocessor.draft_size`).
#: Pillow's own default for ``Image.thumbnail(reducing_gap=...)``: "very close to fair resampling".
DRAFT_REDUCING_GAP = 2.0

#: Test-time augmentation modes: the views each image is predicted on (their logits are averaged).
TTA_MODES: dict[str, str] = {
    "none": "the evaluation crop only",
    "flip": "the crop and its horizontal mirror (tta=True)",
    "crops": "five crops: center and the four corners of the resized image (of the image padded, when used whole)",
    "flip_crops": "the five crops and their mirrors (ten views)",
}

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}


def check_tta(tta: bool | str) -> str:
    """Return the test-time augmentation mode for ``tta``.

    Args:
        tta: ``False`` / ``"none"``, ``True`` / ``"flip"``, ``"crops"`` or ``"flip_crops"``.

    Raises:
        ValueError: Any other value; the message lists the modes.

    Example:
        >>> check_tta(True), check_tta(False), check_tta("crops")
        ('flip', 'none', 'crops')
    """
    if tta is True:
        return "flip"
    if tta is False or tta is None:
        return "none"
    if isinstance(tta, str) and tta in TTA_MODES:
        return tta
    raise ValueError(f"`tta` must be True, False or one of {list(TTA_MODES)}, got {tta!r}")


def _resize(image: Image.Image, height: int, width: int, interpolation: int) -> Image.Image:
    # torchvision's resize returns the image untouched when it already has the size.
    if (image.height, image.width) == (height, width):
        return image
    return image.resize((width, height), interpolation)


def _crop(image: Image.Image, top: int, left: int, height: int, width: int, fill: Any) -> Image.Image:
    """Crop, padding with ``fill`` where the crop is larger than the image (torchvision's center_crop)."""
    if width > image.width or height > image.height:
        pad_left = (width - image.width) // 2 if width > image.width else 0
        pad_top = (height - image.height) // 2 if height > image.height else 0
        pad_right = (width - image.width + 1) // 2 if width > image.width else 0
        pad_bottom = (height - image.height + 1) // 2 if height > image.height else 0
        canvas = Image.new(image.mode, (image.width + pad_left + pad_right, image.height + pad_top + pad_bottom), fill)
        canvas.paste(image, (pad_left, pad_top))
        image = canvas
        top = round((image.height - height) / 2.0)
        left = round((image.width - width) / 2.0)
    return image.crop((left, top, left + width, top + height))


class Preprocessor:
    """A model's evaluation preprocessing: resize, crop, scale to ``[0, 1]``, normalise.

    Equal to timm's evaluation transform for the same data config
    (``crop_mode`` ``"center"``, ``"squash"`` or ``"border"``), with images first
    converted to the model's channels (``"L"`` or ``"RGB"``).

    Args:
        data_config: ``input_size`` ``[C, H, W]``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct`` and ``crop_mode`` (as stored in a
            checkpoint by [`make_data_config`][autotimm.data.make_data_config]).

    Raises:
        ValueError: A missing key or an unknown interpolation.

    Example:
        >>> pre = Preprocessor({"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3,
        ...                     "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"})
        >>> pre(Image.new("RGB", (64, 48), "white")).shape
        (3, 32, 32)
    """

    def __init__(self, data_config: dict[str, Any]) -> None:
        missing = [key for key in ("input_size", "mean", "std") if key not in data_config]
        if missing:
            raise ValueError(f"`data_config` lacks {missing}; got keys {sorted(data_config)}")
        self.data_config = dict(data_config)
        channels, height, width = (int(v) for v in data_config["input_size"])
        self.in_chans = channels
        self.input_size = (channels, height, width)
        self.mean = np.asarray(data_config["mean"], dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(data_config["std"], dtype=np.float32).reshape(-1, 1, 1)
        interpolation = str(data_config.get("interpolation", "bilinear"))
        if interpolation not in _FILTERS:
            raise ValueError(f"`interpolation` must be one of {list(_FILTERS)}, got {interpolation!r}")
        self.interpolation = _FILTERS[interpolation]
        self.crop_pct = float(data_config.get("crop_pct") or 0.875)
        self.crop_mode = str(data_config.get("crop_mode") or "center")
        self.scale_size = (math.floor(height / self.crop_pct), math.floor(width / self.crop_pct))

    @property
    def draft_size(self) -> tuple[int, int]:
        """``(width, height)`` a JPEG may be decoded reduced to (``decode_image(draft_size=...)``) for this model.

        The resize target before cropping times `DRAFT_REDUCING_GAP` (2): the
        image keeps at least twice the pixels per side that the resize needs,
        so that the resize after libjpeg's DCT reduction stays close to a
        resize of the full image (the serving guide gives the measured
        differences).
        """
        scale_h, scale_w = self.scale_size
        return math.ceil(scale_w * DRAFT_REDUCING_GAP), math.ceil(scale_h * DRAFT_REDUCING_GAP)

    # ------------------------------------------------------------------ the steps
    def _keep_ratio_size(self, image: Image.Image, longest: float) -> tuple[int, int]:
        """Like timm's ``ResizeKeepRatio``: scale so one edge (shortest, or longest with ``longest=1``) fits."""
        ratio_h = image.height / self.scale_size[0]
        ratio_w = image.width / self.scale_size[1]
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        return round(image.height / ratio), round(image.width / ratio)

    def resized(self, image: Image.Image) -> Image.Image:
        """Convert channels and resize, before cropping (the first step of the transform)."""
        image = convert_image(image, self.in_chans)
        scale_h, scale_w = self.scale_size
        if self.crop_mode == "squash":
            return _resize(image, scale_h, scale_w, self.interpolation)
        if self.crop_mode == "border":
            return _resize(image, *self._keep_ratio_size(image, longest=1.0), self.interpolation)
        if scale_h == scale_w:  # torchvision's Resize(int): the shorter edge to scale_h
            short, long = sorted((image.width, image.height))
            new_short, new_long = scale_h, int(scale_h * long / short)
            width, height = (new_short, new_long) if image.width <= image.height else (new_long, new_short)
            return _resize(image, height, width, self.interpolation)
        return _resize(image, *self._keep_ratio_size(image, longest=0.0), self.interpolation)

    def _fill(self) -> Any:
        if self.crop_mode != "border":
            return 0
        fill = tuple(round(255 * float(v)) for v in self.mean.ravel())
        return fill[0] if self.in_chans == 1 else fill

    def _crop_at(self, image: Image.Image, where: str) -> Image.Image:
        _, height, width = self.input_size
        if where == "center":
            top = round((image.height - height) / 2.0)
            left = round((image.width - width) / 2.0)
        else:
            top = 0 if where[0] == "t" else max(image.height - height, 0)
            left = 0 if where[1] == "l" else max(image.width - width, 0)
        return _crop(image, top, left, height, width, self._fill())

    def _with_margin(self, resized: Image.Image) -> Image.Image:
        """The resized image, padded when it is no larger than the crop (``crop_pct`` 1: small images used whole).

        Its four corner crops would repeat the centre crop; padded by the margin
        of the ``"crop_flip"`` training augmentation (`crop_padding`), they are
        the shifted views that augmentation trains on.
        """
        _, height, width = self.input_size
        if resized.height > height or resized.width > width:
            return resized
        pad = crop_padding(height, width)
        return _crop(resized, 0, 0, resized.height + 2 * pad, resized.width + 2 * pad, self._fill())

    def to_array(self, image: Image.Image) -> np.ndarray:
        """Scale a cropped image to ``[0, 1]`` and normalise: ``(C, H, W)`` float32."""
        pixels = np.asarray(image, dtype=np.uint8)
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        array = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return (array - self.mean) / self.std

    # ------------------------------------------------------------------ public API
    def __call__(self, image: Image.Image) -> np.ndarray:
        """Preprocess one image exactly as timm's evaluation transform does.

        Args:
            image: A Pillow image in any mode.

        Returns:
            ``(C, H, W)`` float32.
        """
        return self.to_array(self._crop_at(self.resized(image), "center"))

    @staticmethod
    def num_views(tta: bool | str) -> int:
        """The number of views per image for a test-time augmentation mode."""
        return {"none": 1, "flip": 2, "crops": 5, "flip_crops": 10}[check_tta(tta)]

    def views(self, image: Image.Image, tta: bool | str = False) -> np.ndarray:
        """The test-time views of one image, the evaluation crop first.

        Args:
            image: A Pillow image.
            tta: A mode from [`TTA_MODES`][autotimm.prediction.preprocess.TTA_MODES], or ``True`` for ``"flip"``.

        Returns:
            ``(V, C, H, W)`` float32 with ``V = num_views(tta)``.
        """
        mode = check_tta(tta)
        if mode in ("none", "flip"):
            crops = [self(image)]
        else:
            resized = self._with_margin(self.resized(image))
            crops = [self.to_array(self._crop_at(resized, where)) for where in ("center", "tl", "tr", "bl", "br")]
        if mode in ("flip", "flip_crops"):
            crops += [crop[:, :, ::-1] for crop in crops]
        return np.ascontiguousarray(np.stack(crops))

    def denormalize(self, array: np.ndarray) -> np.ndarray:
        """Undo the normalisation of a ``(C, H, W)`` array, for drawing.

        Returns:
            ``(H, W, 3)`` uint8 (grayscale repeated to three channels).
        """
        pixels = np.clip((np.asarray(array, dtype=np.float32) * self.std + self.mean) * 255.0, 0, 255)
        pixels = np.rint(pixels).astype(np.uint8).transpose(1, 2, 0)
        return np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]

    def __repr__(self) -> str:
        return f"Preprocessor({self.data_config!r})"
