"""OnnxPredictor: the same predictions as ImageClassifier.predict, without torch; metadata, quantization, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config
from autotimm.exporting.exporter import export
from autotimm.exporting.quantization import quantize_onnx
from autotimm.prediction.metadata import read_metadata
from autotimm.prediction.onnx_predictor import OnnxPredictor

CLASSES = ["cat", "dog", "fox", "owl"]
ROOT = Path(__file__).resolve().parents[1]


def _build(name: str, temperature: float, multi_label: bool = False) -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(
        BackboneConfig(name, pretrained=False), num_classes=len(CLASSES), class_names=CLASSES, multi_label=multi_label
    )
    config = make_data_config(model.backbone, 3, 32)
    config["crop_pct"] = 0.9  # a real resize and crop in the preprocessing
    model.apply_data_info(CLASSES, config)
    model.temperature.fill_(temperature)
    # Spread the head's outputs, so that top-k orders are not decided by rounding.
    with torch.no_grad():
        model.head.fc.weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _build("resnet18", temperature=2.0)
    path = tmp_path_factory.mktemp("onnx") / "resnet.onnx"
    export(model, path, check_samples=2)
    return model, path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(folder / "gray.jpg")
    return folder


def _same(onnx_preds, torch_preds):
    assert len(onnx_preds) == len(torch_preds) > 0
    for a, b in zip(onnx_preds, torch_preds, strict=True):
        assert a.labels == b.labels and a.indices == b.indices and a.source == b.source
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_predictions_match_pytorch(exported, images):
    model, path = exported
    predictor = OnnxPredictor(path)
    rng = np.random.default_rng(1)
    inputs = [
        images,  # a folder
        str(images / "*.png"),  # a glob
        [images / "img0.png", Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8))],
        rng.integers(0, 256, (3, 45, 45, 3), dtype=np.uint8),  # an NHWC batch
        rng.random((33, 33)),  # a float grayscale image in [0, 1]
    ]
    for value in inputs:
        _same(predictor.predict(value, top_k=3), model.predict(value, top_k=3))
    _same(predictor.predict(images, tta="flip_crops", batch_size=2), model.predict(images, tta="flip_crops"))
    files = predictor.predict(images)
    assert [p.source for p in files] == [str(p) for p in sorted(images.iterdir())]
    assert len(files[0].labels) == 4  # top_k=None: every class when there are fewer than 5

    logits, sources = predictor.predict_logits(images, batch_size=3)
    expected, expected_sources = model.predict_logits(images)
    assert logits.dtype == np.float32 and sources == expected_sources
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)  # raw: the temperature multiplied back
    assert np.abs(logits).max() > 1.0  # a real test of the scale


def test_multi_label_and_quantized_copy(tmp_path, images):
    model = _build("test_efficientnet", temperature=0.7, multi_label=True)
    path = export(model, tmp_path / "ml.onnx", check_samples=2).path
    predictor = OnnxPredictor(path, intra_op_threads=1)
    assert predictor.multi_label
    for threshold in (0.3, 0.5):
        _same(predictor.predict(images, threshold=threshold), model.predict(images, threshold=threshold))

    report = quantize_onnx(path, tmp_path / "q" / "small.onnx", inputs=images, labels=np.eye(4)[[0, 1, 2, 3]])
    assert report.path == tmp_path / "q" / "small.onnx" and report.num_images == 4
    assert report.fp32_accuracy is not None and 0 <= report.int8_accuracy <= 1
    int8 = OnnxPredictor(report.path)
    assert int8.metadata["quantization"] and int8.class_names == CLASSES and int8.temperature == pytest.approx(0.7)
    assert len(int8.predict(images)) == 4


def test_quantize_single_label_report(exported, images, tmp_path):
    _, path = exported
    report = quantize_onnx(path, tmp_path / "r.int8.onnx", inputs=images, labels=["cat", "dog", 2, "owl"])
    assert report.num_images == 4 and 0.0 <= report.top1_agreement <= 1.0
    assert report.fp32_size > 2.5 * report.int8_size  # weights in 8 bits instead of 32 (untrained: some shared)
    assert report.to_dict()["size_ratio"] == pytest.approx(report.size_ratio)
    assert "accuracy: fp32" in str(report)
    with pytest.raises(ValueError, match=r"`labels` must be 4 class indices .* got 2 labels"):
        quantize_onnx(path, tmp_path / "x.onnx", inputs=images, labels=[0, 1])
    with pytest.raises(ValueError, match="bad 'zebra'"):
        quantize_onnx(path, tmp_path / "x.onnx", inputs=images, labels=[0, 1, 2, "zebra"])
    with pytest.raises(ValueError, match="`output_path` must differ from `path`"):
        quantize_onnx(path, path)
    assert not (tmp_path / "x.onnx").exists()


def test_properties(exported):
    model, path = exported
    predictor = OnnxPredictor(path, providers=["CPUExecutionProvider"])
    assert predictor.class_names == CLASSES and predictor.num_classes == 4
    assert predictor.data_config == model.data_config
    assert predictor.multi_label is False and predictor.temperature == pytest.approx(2.0)
    assert predictor.metadata == read_metadata(path)
    assert predictor.preprocessor.input_size == (3, 32, 32)
    assert predictor.providers == ["CPUExecutionProvider"]
    assert "classes=4" in repr(predictor)


def test_errors(exported, tmp_path, monkeypatch):
    _, path = exported
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OnnxPredictor(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.onnx"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(ValueError, match=r"has no autotimm metadata .* autotimm\.export\(model, path\)"):
        OnnxPredictor(plain)
    scripted = tmp_path / "m.pt"  # TorchScript files are zip archives
    with zipfile.ZipFile(scripted, "w") as archive:
        archive.writestr("m/extra/autotimm.json", "{}")
    with pytest.raises(ValueError, match="is a TorchScript file"):
        OnnxPredictor(scripted)
    with pytest.raises(ValueError, match="`providers` must be a non-empty list from"):
        OnnxPredictor(path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="`intra_op_threads` must be an int >= 1 or None, got 0"):
        OnnxPredictor(path, intra_op_threads=0)

    predictor = OnnxPredictor(path)
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, 4\] \(the model has 4 classes\), got 5"):
        predictor.predict(image, top_k=5)
    with pytest.raises(ValueError, match="`batch_size` must be an int >= 1, got 0"):
        predictor.predict_logits(image, batch_size=0)
    with pytest.raises(ValueError, match="`tta` must be"):
        predictor.predict(image, tta="rotate")
    with pytest.raises(ValueError, match="`threshold`"):
        predictor.predict(image, threshold=1.5)
    with pytest.raises(TypeError, match="Cannot predict on a dict"):
        predictor.predict({"a": 1})
    with pytest.raises(FileNotFoundError):
        predictor.predict(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        assert len(predictor.predict([bad, image], skip_bad_images=True)) == 1

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"autotimm\[onnx\]"):
        OnnxPredictor(path)


def test_runs_without_torch(exported, images):
    """The deployment promise: numpy, Pillow and onnxruntime only."""
    _, path = exported
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("torch", "torchvision", "timm", "pytorch_lightning", "lightning", "torchmetrics"):
            sys.modules[name] = None  # any import of these now raises ImportError
        import numpy as np
        from autotimm.prediction.onnx_predictor import OnnxPredictor
        from autotimm.prediction.metadata import read_metadata
        from autotimm.exporting.quantization import quantize_onnx

        predictor = OnnxPredictor({str(path)!r})
        predictions = predictor.predict({str(images)!r}, top_k=2)
        logits, _ = predictor.predict_logits(np.zeros((2, 20, 20, 3), np.uint8))
        report = quantize_onnx({str(path)!r}, {str(images.parent / "nt.int8.onnx")!r}, inputs={str(images)!r})
        assert read_metadata({str(path)!r})["class_names"] == predictor.class_names
        assert all(sys.modules[name] is None for name in ("torch", "timm", "pytorch_lightning"))
        print(len(predictions), predictions[0].labels, logits.shape, report.num_images)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("4 [") and done.stdout.rstrip().endswith("(2, 4) 4"), done.stdout
