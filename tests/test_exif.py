"""EXIF orientation: images are decoded upright, as photo viewers show them, for training, prediction and serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config, read_folder
from autotimm.data.images import check_images, decode_image, load_image

CLASSES = ["cat", "dog"]
ORIENTATION = 0x0112
#: What each EXIF orientation asks for, to turn the stored pixels upright.
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def write_tagged(path: Path, orientation: int | None, size: tuple[int, int] = (48, 30), fmt: str = "JPEG") -> Path:
    """Write a non-square random image with an EXIF orientation tag (``None``: no EXIF at all)."""
    rng = np.random.default_rng(orientation or 0)
    width, height = size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    path.parent.mkdir(parents=True, exist_ok=True)
    if orientation is None:
        image.save(path, format=fmt)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        image.save(path, format=fmt, exif=exif.tobytes())
    return path


def stored(path: Path) -> Image.Image:
    """The pixels as stored in the file, ignoring the orientation tag."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def upright(path: Path, orientation: int) -> Image.Image:
    """The stored pixels turned by hand, as a photo viewer shows them."""
    return stored(path).transpose(TRANSPOSE[orientation])


# ------------------------------------------------------------------ decoding
def test_orientation_6_is_turned_upright(tmp_path):
    path = write_tagged(tmp_path / "photo.jpg", 6)
    assert stored(path).size == (48, 30)
    image = load_image(path)
    assert image.size == (30, 48)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(upright(path, 6)))
    assert image.getexif().get(ORIENTATION) is None  # the tag is removed: turning the image again is a no-op


@pytest.mark.parametrize("orientation", sorted(TRANSPOSE))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_every_orientation_and_format(tmp_path, orientation, fmt):
    path = write_tagged(tmp_path / f"photo.{fmt.lower()}", orientation, fmt=fmt)
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(upright(path, orientation)))


@pytest.mark.parametrize("orientation", [None, 1])
def test_untagged_and_upright_images_are_as_stored(tmp_path, orientation):
    path = write_tagged(tmp_path / "photo.jpg", orientation)
    np.testing.assert_array_equal(np.asarray(load_image(path)), np.asarray(stored(path)))


def test_bytes_and_files_decode_the_same(tmp_path):
    path = write_tagged(tmp_path / "photo.jpg", 8)
    from_bytes = decode_image(path.read_bytes())
    with path.open("rb") as handle:
        from_handle = decode_image(handle)
    for image in (from_bytes, from_handle):
        assert image.size == (30, 48)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(upright(path, 8)))


def test_corrupt_exif_keeps_the_stored_pixels(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (48, 30), "red").save(path, exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    with pytest.warns(UserWarning, match="Corrupt EXIF"):  # Pillow's own warning
        assert load_image(path).size == (48, 30)


# ------------------------------------------------------------------ training data
def test_training_folders_decode_upright(tmp_path):
    write_tagged(tmp_path / "cat" / "a.jpg", 6)
    write_tagged(tmp_path / "dog" / "b.jpg", None)
    table = read_folder(tmp_path).splits["train"]
    assert check_images([table.path(i) for i in range(len(table))], skip_bad_images=False) == [0, 1]
    assert table.load(0).size == (30, 48) and table.load(1).size == (48, 30)
    gray = np.asarray(upright(table.path(0), 6).convert("L"))
    np.testing.assert_array_equal(np.asarray(table.load(0, in_chans=1)), gray)


# ------------------------------------------------------------------ prediction
@pytest.fixture(scope="module")
def model() -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=len(CLASSES), class_names=CLASSES)
    config = make_data_config(model.backbone, 3, 32)
    config["crop_pct"] = 0.9
    model.apply_data_info(CLASSES, config)
    with torch.no_grad():
        model.head.fc.weight.mul_(20)
    return model.eval()


def _same_logits(predictor, path: Path, orientation: int) -> None:
    tagged, _ = predictor.predict_logits(path)
    turned, _ = predictor.predict_logits(upright(path, orientation))
    as_stored, _ = predictor.predict_logits(stored(path))
    np.testing.assert_allclose(tagged, turned, atol=1e-5, rtol=0)
    assert not np.allclose(tagged, as_stored, atol=1e-3)  # the test would catch an ignored tag


def test_predict_logits_on_a_tagged_file_equals_the_turned_image(tmp_path, model):
    path = write_tagged(tmp_path / "photo.jpg", 6)
    _same_logits(model, path, 6)


def test_onnx_predictor_turns_tagged_files_too(tmp_path, model):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from autotimm import export
    from autotimm.prediction.onnx_predictor import OnnxPredictor

    onnx_path = tmp_path / "model.onnx"
    export(model, onnx_path, check_samples=2)
    path = write_tagged(tmp_path / "photo.jpg", 6)
    _same_logits(OnnxPredictor(onnx_path), path, 6)


# ------------------------------------------------------------------ serving
def test_service_decode_upload_turns_uploads(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi import HTTPException

    from autotimm.serving.http import decode_upload

    path = write_tagged(tmp_path / "photo.jpg", 6)
    image = decode_upload(path.read_bytes(), "photo.jpg", max_pixels=10_000)
    assert image.size == (30, 48)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(upright(path, 6)))
    with pytest.raises(HTTPException, match=r"'photo.jpg' is 48x30 pixels; the limit is 1,000 pixels \(JPEG\)") as err:
        decode_upload(path.read_bytes(), "photo.jpg", max_pixels=1_000)
    assert err.value.status_code == 413
