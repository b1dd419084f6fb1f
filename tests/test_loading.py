"""`load_model`: one loader for checkpoints, ONNX exports, ensemble folders and loaded models."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from autotimm import BackboneConfig, EnsembleClassifier, ImageClassifier
from autotimm.classifier.loading import MODEL_KINDS, load_model, model_kind

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c"]


def _member(seed: int) -> ImageClassifier:
    torch.manual_seed(seed)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, class_names=NAMES)
    config = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear",
              "crop_pct": 1.0, "crop_mode": "center"}  # fmt: skip
    model.apply_data_info(NAMES, config)
    with torch.no_grad():
        model.head.fc.weight.mul_(20)  # spread the probabilities, so that orders are not decided by rounding
    return model.eval()


@pytest.fixture(scope="module")
def model() -> ImageClassifier:
    return _member(0)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    return model.save(tmp_path_factory.mktemp("loading") / "model.ckpt")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)


def _same_predictions(got, expected) -> None:
    assert got.labels == expected.labels
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5)


def test_a_checkpoint_loads_as_an_image_classifier(model, checkpoint, image):
    loaded = load_model(checkpoint, device="cpu")
    assert isinstance(loaded, ImageClassifier) and loaded.class_names == NAMES
    _same_predictions(loaded.predict(image, top_k=3)[0], model.predict(image, top_k=3)[0])
    assert isinstance(load_model(str(checkpoint)), ImageClassifier)  # a str path too


def test_an_onnx_file_loads_as_an_onnx_predictor(model, tmp_path, image):
    pytest.importorskip("onnxruntime")
    from autotimm.exporting.exporter import export
    from autotimm.prediction.onnx_predictor import OnnxPredictor

    path = tmp_path / "model.onnx"
    export(model, path, check_samples=2)
    loaded = load_model(path)
    assert isinstance(loaded, OnnxPredictor) and list(loaded.class_names) == NAMES
    _same_predictions(loaded.predict(image, top_k=3)[0], model.predict(image, top_k=3)[0])


def test_an_ensemble_folder_loads_as_an_ensemble(model, tmp_path, image):
    ensemble = EnsembleClassifier([model, _member(1)], weights=[3, 1]).eval()
    folder = ensemble.save(tmp_path / "ensemble")
    loaded = load_model(folder, device="cpu")
    assert isinstance(loaded, EnsembleClassifier) and loaded.class_names == NAMES
    _same_predictions(loaded.predict(image, top_k=3)[0], ensemble.predict(image, top_k=3)[0])


def test_a_loaded_model_is_returned_as_it_is(model):
    assert load_model(model) is model
    assert model_kind(model) == "loaded"


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_default_device_is_auto_cuda_when_available(checkpoint, monkeypatch, device):
    assert inspect.signature(load_model).parameters["device"].default == "auto"
    calls = []
    record = classmethod(lambda cls, path, map_location: calls.append(map_location))
    monkeypatch.setattr(ImageClassifier, "load", record)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    load_model(checkpoint, device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    load_model(checkpoint, device)
    assert calls == (["cuda", "cpu"] if device == "auto" else ["cpu", "cpu"])


def test_errors_name_the_argument_the_value_and_the_kinds(tmp_path, checkpoint):
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(FileNotFoundError, match=f"`model_or_path` {re.escape(repr(str(missing)))} does not exist"):
        load_model(missing)
    other = tmp_path / "model.pt"
    other.write_bytes(b"x")
    kinds = re.escape(MODEL_KINDS)
    with pytest.raises(ValueError, match=rf"`model_or_path` must be {kinds}; got the file .*model\.pt"):
        load_model(other)
    with pytest.raises(ValueError, match=r"got the folder .*, with no ensemble\.json"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match=rf"`model_or_path` must be {kinds}; got a dict"):
        load_model({})
    with pytest.raises(TypeError, match="`model` must be"):
        model_kind(42, "model")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("garbage")
    with pytest.raises(ValueError, match="is not an autotimm checkpoint"):
        load_model(garbage)
    assert model_kind(checkpoint) == "checkpoint"


def test_one_loader_everywhere():
    import autotimm.classifier
    import autotimm.classifier.loading

    assert autotimm.classifier.load_model is autotimm.classifier.loading.load_model
    service = pytest.importorskip("autotimm.serving.app")
    assert service.load_model is load_model


def test_loading_an_onnx_file_needs_no_torch(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from autotimm.exporting.exporter import export

    path = tmp_path / "model.onnx"
    export(model, path, check_samples=2)
    script = (
        "import sys\n"
        "from autotimm.classifier.loading import load_model\n"
        f"model = load_model({str(path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(type(model).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OnnxPredictor"


def test_the_cli_loads_an_ensemble_folder_and_words_its_errors(model, tmp_path):
    from autotimm.cli.common import load_predictor, model_path

    folder = EnsembleClassifier([model, _member(1)]).save(tmp_path / "ensemble")
    assert isinstance(load_predictor(str(folder), "cpu"), EnsembleClassifier)
    with pytest.raises(FileNotFoundError, match=r"CKPT 'no/such\.ckpt' does not exist; pass a \.ckpt checkpoint"):
        model_path("no/such.ckpt")
    (tmp_path / "run.yaml").write_text("x: 1\n")
    with pytest.raises(ValueError, match=r"must be a \.ckpt checkpoint or an \.onnx export, .*got a \.yaml file"):
        model_path(str(tmp_path / "run.yaml"))
    with pytest.raises(ValueError, match="got a folder that is not an ensemble"):
        model_path(str(tmp_path))
