"""What the service's decoding relies on, one layer down: ``decode_image``'s pixel limit and JPEG draft, and
``Preprocessor.draft_size``. Real images, no server (tests/test_service.py calls the server), so these tests
need no serve extra."""

from __future__ import annotations

import io

import numpy as np
import pytest
from data_helpers import jpeg, photo, png_header
from PIL import ExifTags, Image

from autotimm.data.images import STORED_SIZE_KEY, ImageTooLargeError, convert_image, decode_image
from autotimm.prediction.preprocess import DRAFT_REDUCING_GAP, Preprocessor


def config(size: int, crop_pct: float = 0.875, crop_mode: str = "center") -> dict:
    return {
        "input_size": [3, size, size],
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "interpolation": "bilinear",
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


def test_draft_size_is_twice_the_resize_target():
    pre = Preprocessor(config(224))
    assert pre.scale_size == (256, 256) and DRAFT_REDUCING_GAP == 2.0
    assert pre.draft_size == (512, 512)
    assert Preprocessor(config(32, crop_pct=1.0)).draft_size == (64, 64)


@pytest.mark.parametrize(("side", "scale"), [(600, 1), (1024, 2), (2048, 4), (4096, 8), (6000, 8)])
def test_a_jpeg_is_decoded_at_the_largest_reduction_that_keeps_the_draft_size(side, scale):
    data = jpeg(photo(side))
    image = decode_image(data, draft_size=(512, 512))
    assert image.size == (-(-side // scale),) * 2  # libjpeg rounds up
    assert min(image.size) >= 512 or scale == 1
    assert image.info.get(STORED_SIZE_KEY) == (None if scale == 1 else (side, side))
    assert decode_image(data).size == (side, side) and STORED_SIZE_KEY not in decode_image(data).info


def test_other_formats_are_decoded_in_full():
    for fmt in ("PNG", "WEBP", "BMP"):
        buffer = io.BytesIO()
        photo(1024).save(buffer, format=fmt)
        image = decode_image(buffer.getvalue(), draft_size=(64, 64))
        assert image.size == (1024, 1024) and STORED_SIZE_KEY not in image.info, fmt


def test_the_draft_size_is_meant_upright():
    """A sideways photo (EXIF orientation 6) is reduced so that it keeps the size as shown, not as stored."""
    stored = photo(1000).resize((4000, 2000))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif)
    image = decode_image(buffer.getvalue(), draft_size=(500, 1000))  # shown: 2000 wide, 4000 high
    assert image.size == (500, 1000)  # reduced 4x and turned upright; without the swap only 2x would fit
    assert image.info[STORED_SIZE_KEY] == (4000, 2000)


def test_the_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageTooLargeError, match=r"9000x9000 pixels; the limit is 40,000,000 pixels \(PNG\)"):
        decode_image(png_header(9000, 9000), max_pixels=40_000_000)  # its pixels are truncated: never read
    with pytest.raises(OSError, match="truncated"):
        decode_image(png_header(300, 200), max_pixels=40_000_000)
    with pytest.raises(ImageTooLargeError, match="1001x1001 pixels"):
        decode_image(jpeg(photo(1001)), max_pixels=1_000_000, draft_size=(64, 64))  # the stored size counts


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "F01"])
def test_high_bit_depth_conversion_in_bands_equals_the_formula(mode):
    """16/32-bit images are converted a band of rows at a time (bounded memory); the result is the formula's."""
    rng = np.random.default_rng(0)
    shape = (2600, 900)  # 2.3 megapixels: three bands
    if mode == "I;16":
        pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
    elif mode == "I":
        pixels = rng.integers(-70_000, 140_000, shape, dtype=np.int32)
    else:
        pixels = rng.random(shape, dtype=np.float32) * (1.0 if mode == "F01" else 400.0)
        pixels[0, :5] = np.nan
    image = Image.fromarray(pixels)
    values = np.asarray(image, dtype=np.float64)
    if mode in ("I;16", "I"):
        values = values / 257.0
    elif mode == "F01":
        values = values * 255.0
    want = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
    got = np.asarray(convert_image(image, 1))
    assert got.dtype == np.uint8 and np.array_equal(got, want)
