"""The model folder for sharing: save_pretrained / from_pretrained / plain timm / export --format hf / push."""

from __future__ import annotations

import json
import time

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open

from autotimm import BackboneConfig, ImageClassifier
from autotimm.classifier.pretrained import (
    HubUnavailableError,
    check_repo_id,
    is_pretrained_folder,
    load_pretrained,
    upload_folder,
)
from autotimm.cli import main
from autotimm.exporting import export_pretrained

CLASSES = ["cat", "dog", "fox"]
DATA_CONFIG = {
    "input_size": [3, 16, 16],
    "mean": [0.4, 0.5, 0.6],
    "std": [0.2, 0.25, 0.3],
    "interpolation": "bilinear",
    "crop_pct": 0.9,
    "crop_mode": "center",
}


@pytest.fixture(scope="module")
def model() -> ImageClassifier:
    torch.manual_seed(0)
    model = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), class_names=CLASSES, data_config=DATA_CONFIG, tta="flip"
    ).eval()
    model.temperature.fill_(1.7)
    return model


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return model.save_pretrained(
        tmp_path_factory.mktemp("hub") / "pets", metrics={"accuracy": 0.875, "name": "x"}, training_data="toy data"
    )


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 20, 24, 3), dtype=np.uint8)


def test_folder_holds_safetensors_timm_config_and_card(folder):
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert is_pretrained_folder(folder)
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "fc.weight" in keys and not any(k.startswith(("backbone.", "head.")) for k in keys)  # timm's own names
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 3
    assert config["label_names"] == CLASSES
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 16, 16] and cfg["mean"] == DATA_CONFIG["mean"] and cfg["std"] == DATA_CONFIG["std"]
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 0.9 and cfg["license"] == "apache-2.0"
    assert "tag" not in cfg and "paper_ids" not in cfg  # timm's original weights are not these
    meta = config["autotimm"]
    assert meta["class_names"] == CLASSES and meta["temperature"] == pytest.approx(1.7) and meta["tta"] == "flip"
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "license: apache-2.0" in card and "library_name: timm" in card
    assert "`cat`, `dog`, `fox`" in card and "| accuracy | 0.8750 |" in card and "toy data" in card
    assert "ImageClassifier.from_pretrained" in card and 'timm.create_model("hf-hub:' in card


def test_from_pretrained_predicts_exactly_as_the_model(model, folder, images):
    loaded = ImageClassifier.from_pretrained(folder)
    assert loaded.class_names == CLASSES and float(loaded.temperature) == pytest.approx(1.7)
    assert loaded.default_tta == "flip" and loaded.data_config == DATA_CONFIG
    ours, theirs = model.predict(images, top_k=3), loaded.predict(images, top_k=3)
    assert [p.labels for p in ours] == [p.labels for p in theirs]
    np.testing.assert_allclose([p.probabilities for p in ours], [p.probabilities for p in theirs], atol=1e-6)
    from autotimm.classifier.loading import load_model, model_kind

    assert model_kind(folder) == "pretrained"  # so predict, evaluate, serve and demo take the folder too
    assert [p.labels for p in load_model(folder, device="cpu").predict(images, top_k=3)] == [p.labels for p in ours]


def test_plain_timm_loads_the_folder_with_equal_logits(model, folder):
    plain = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert plain.pretrained_cfg["label_names"] == CLASSES
    assert timm.data.resolve_data_config({}, model=plain)["input_size"] == (3, 16, 16)
    x = torch.rand(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(plain(x), model(x))


def test_a_plain_timm_folder_loads_as_a_classifier(tmp_path):
    """A timm folder without autotimm's entry (as on the Hub) gets its classes and preprocessing."""
    from timm.models import save_for_hf

    net = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    save_for_hf(net, str(tmp_path), model_config={"label_names": ["a", "b"]}, safe_serialization=True)
    loaded = ImageClassifier.from_pretrained(tmp_path)
    assert loaded.class_names == ["a", "b"] and loaded.hparams.num_classes == 2
    x = torch.rand(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), net(x))


def test_export_pretrained_and_the_cli(model, tmp_path, capsys):
    result = export_pretrained(model, tmp_path / "exported")
    assert result.max_abs_diff <= 1e-4 and result.weights_size > 0 and result.files[0].name == "model.safetensors"
    run = tmp_path / "run"
    ckpt = model.save(run / "checkpoints" / "best.ckpt")
    (run / "eval-test").mkdir()
    (run / "eval-test" / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "f1_macro": 0.25, "files": {}}))
    assert main(["export", str(ckpt), "--format", "hf", "--license", "mit"]) == 0
    out = capsys.readouterr().out
    folder = run / "checkpoints" / "best-hf"
    assert "Parity check passed" in out and is_pretrained_folder(folder)
    card = (folder / "README.md").read_text()
    assert "license: mit" in card and "| f1_macro | 0.2500 |" in card  # the run's evaluation, found by itself


def test_repo_ids_are_checked_with_huggingface_hub():
    assert check_repo_id("me/pets-resnet18.v2") == "me/pets-resnet18.v2"
    for bad in ("me/pets/resnet", "me--x", "", "bad id", "x" * 97, None):
        with pytest.raises(ValueError, match="`repo_id` must be a Hugging Face Hub id"):
            check_repo_id(bad)


def test_push_offline_fails_at_once(model, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"offline.*'me/pets' was not uploaded"):
        model.push_to_hub("me/pets")
    assert time.perf_counter() - start < 5
    with pytest.raises(FileNotFoundError, match="neither a folder nor a Hugging Face Hub repository id"):
        ImageClassifier.from_pretrained("no/such/folder/here")
    with pytest.raises(HubUnavailableError, match="cannot download 'me/pets'"):
        load_pretrained(ImageClassifier, "hf-hub:me/pets")
    ckpt = model.save(tmp_path / "m.ckpt")
    assert main(["push", str(ckpt), "me/pets"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("autotimm push: error: Hugging Face Hub offline") and "\n" not in err
    assert main(["push", str(ckpt), "me//pets"]) == 2
    assert "REPO_ID must be a Hugging Face Hub id" in capsys.readouterr().err


def test_push_without_a_network_is_one_plain_error(folder, monkeypatch):
    """Everything up to the network call runs for real: the Hub at a closed local port refuses the connection."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(HubUnavailableError, match="Hugging Face Hub unreachable: cannot upload to 'me/pets'"):
        upload_folder(folder, "me/pets", endpoint="http://127.0.0.1:9", token="hf_not_a_real_token")


def test_a_head_timm_cannot_hold_is_refused(tmp_path):
    from autotimm.models.head import ClassificationHead

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2)
    model.head = ClassificationHead(model.backbone.num_features, 2, hidden_features=8)
    with pytest.raises(ValueError, match="hidden layer"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_an_ensemble_is_refused_with_a_plain_error(model, tmp_path):
    from autotimm.classifier.ensemble import EnsembleClassifier

    ensemble = EnsembleClassifier([model, model])
    with pytest.raises(TypeError, match="a model folder holds one ImageClassifier, got EnsembleClassifier"):
        ensemble.save_pretrained(tmp_path / "ensemble")
    assert not (tmp_path / "ensemble").exists()
