"""The model's default test-time augmentation: used by predict and evaluate, saved, exported."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autotimm import BackboneConfig, ImageClassifier, evaluate, export
from autotimm.data import make_data_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = make_data_config(in_chans=3, image_size=32)
    return ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, tta=True, data_config=config)


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_predict_uses_the_models_tta_unless_told_otherwise(model, images):
    assert model.default_tta == "flip" and model.hparams.tta == "flip"
    default, _ = model.predict_logits(images)
    flipped, _ = model.predict_logits(images, tta="flip")
    plain, _ = model.predict_logits(images, tta=False)
    np.testing.assert_allclose(default, flipped, rtol=0, atol=0)
    assert not np.allclose(default, plain, atol=1e-4)
    mirrored, _ = model.predict_logits(images[:, :, ::-1], tta=False)
    np.testing.assert_allclose(default, (plain + mirrored) / 2, atol=1e-5)
    assert model.predict(images, tta="none")[0].probabilities != model.predict(images)[0].probabilities
    assert ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3).default_tta == "none"


def test_saved_evaluated_and_exported_with_the_model(model, images, tmp_path):
    model.save(tmp_path / "m.ckpt")
    loaded = ImageClassifier.load(tmp_path / "m.ckpt")
    assert loaded.default_tta == "flip"
    report = evaluate(loaded, (images, [0, 1, 2, 0, 1, 2]), tmp_path / "report", verbose=False)
    assert report.tta == "flip"
    pytest.importorskip("onnxruntime")
    from autotimm.prediction.onnx_predictor import OnnxPredictor

    result = export(loaded, tmp_path / "m.onnx", onnx_exporter="legacy")
    predictor = OnnxPredictor(result.path)
    assert result.metadata["tta"] == "flip" and predictor.default_tta == "flip"
    expected, _ = loaded.predict_logits(images)
    np.testing.assert_allclose(predictor.predict_logits(images)[0], expected, atol=1e-4)


def test_bad_value_is_named():
    with pytest.raises(ValueError, match=r"`tta` must be True, False or one of .*got 'rotate'"):
        ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, tta="rotate")
