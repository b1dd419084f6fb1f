"""Grad-CAM and attention rollout: they find a planted patch, and the API behaves.

The task: 64 px noise images where ONLY a 12 px square decides the class (bright
square: "patch", dark square: "plain"), at a random place. A model that solves it
must look at the square, so a faithful heat-map puts its mass there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config
from autotimm.evaluation.explanations import Explanation, explain

SIZE, PATCH = 64, 12
AREA_SHARE = PATCH * PATCH / (SIZE * SIZE)
CLASSES = ["plain", "patch"]


def make_patch_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """uint8 (n, 64, 64, 3) noise; label 1 has a bright square, label 0 a dark one; plus each square's corner."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(0.5, 0.15, (n, SIZE, SIZE, 3)), 0, 1)
    labels = rng.integers(0, 2, n)
    corners = []
    for i in range(n):
        top, left = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, 2))
        images[i, top : top + PATCH, left : left + PATCH] = 1.0 if labels[i] else 0.0
        corners.append((top, left))
    return (images * 255).round().astype(np.uint8), labels, corners


def make_model(name: str, **extra) -> ImageClassifier:
    backbone = BackboneConfig(name, pretrained=False, extra_kwargs=extra)
    model = ImageClassifier(backbone, num_classes=2, class_names=CLASSES)
    config = make_data_config(model.backbone, 3, SIZE)
    config.update(crop_pct=1.0, interpolation="bilinear")  # the model sees the image as is: boxes stay in place
    model.apply_data_info(CLASSES, config)
    return model


def train(model: ImageClassifier, steps: int, seed: int = 0) -> ImageClassifier:
    images, labels, _ = make_patch_images(steps * 32, seed)
    config = model.data_config
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = slice(step * 32, (step + 1) * 32)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: two threads on a busy 2-core machine are far slower
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def held_out():
    return make_patch_images(40, seed=1)


@pytest.fixture(scope="module")
def cnn(one_thread):
    torch.manual_seed(0)
    # output_stride=8: an 8x8 last feature map at 64 px, fine enough to place a 12 px square
    return train(make_model("test_resnet", output_stride=8), steps=20)


@pytest.fixture(scope="module")
def vit(one_thread):
    torch.manual_seed(0)
    return train(make_model("test_vit", img_size=SIZE, patch_size=8), steps=40)


def mass_ratios(model, held_out, method: str, count: int = 6) -> list[float]:
    """Heat-map mass inside the square / total mass, over the square's share of the area, per image."""
    images, labels, corners = held_out
    ratios = []
    for i in np.flatnonzero(labels == 1)[:count]:
        result = explain(model, images[i], target="patch", method=method)
        top, left = corners[i]
        inside = result.heatmap[top : top + PATCH, left : left + PATCH].sum() / result.heatmap.sum()
        ratios.append(float(inside) / AREA_SHARE)
    return ratios


def accuracy(model, held_out) -> float:
    images, labels, _ = held_out
    predicted = [CLASSES.index(p.label) for p in model.predict(list(images))]
    return float(np.mean(np.array(predicted) == labels))


# ---------------------------------------------------------------------- localisation
def test_cnn_gradcam_finds_the_planted_patch(cnn, held_out):
    assert accuracy(cnn, held_out) >= 0.95
    ratios = mass_ratios(cnn, held_out, "gradcam")
    assert min(ratios) >= 3.0, ratios


def test_vit_rollout_finds_the_planted_patch(vit, held_out):
    assert accuracy(vit, held_out) >= 0.95
    ratios = mass_ratios(vit, held_out, "rollout")
    assert np.median(ratios) >= 3.0 and min(ratios) >= 2.0, ratios


def test_untrained_cnn_does_not_find_the_patch(held_out):
    # the localisation above comes from training, not from the method: a random model is near chance
    torch.manual_seed(0)
    ratios = mass_ratios(make_model("test_resnet", output_stride=8), held_out, "gradcam")
    assert np.median(ratios) < 2.5, ratios


@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_vit_maps_have_the_input_shape_and_range(vit, held_out, method):
    # ViT Grad-CAM (last block) is only checked for sanity: whether it lands on the square depends on the seed.
    result = explain(vit, held_out[0][0], method=method)
    assert result.method == method
    assert result.heatmap.shape == (SIZE, SIZE) and result.heatmap.dtype == np.float32
    assert result.heatmap.min() == 0.0 and result.heatmap.max() == pytest.approx(1.0)
    assert result.heatmap.std() > 0.01
    assert result.image.shape == (SIZE, SIZE, 3) and result.image.dtype == np.uint8


# ---------------------------------------------------------------------- targets and probabilities
def test_target_by_name_index_or_prediction(cnn, held_out):
    image = held_out[0][np.flatnonzero(held_out[1] == 1)[0]]
    by_name = explain(cnn, image, target="patch")
    by_index = explain(cnn, image, target=np.int64(1))
    predicted = explain(cnn, image)
    other = explain(cnn, image, target="plain")
    assert (by_name.target, by_name.target_name) == (1, "patch")
    np.testing.assert_array_equal(by_name.heatmap, by_index.heatmap)
    prediction = cnn.predict(image)[0]
    assert predicted.target_name == prediction.label == "patch"
    assert predicted.probability == pytest.approx(prediction.probability, abs=1e-5)
    assert other.target == 0 and other.probability == pytest.approx(1 - by_name.probability, abs=1e-5)
    assert not np.allclose(other.heatmap, by_name.heatmap)


def test_probability_uses_the_calibrated_temperature(held_out):
    torch.manual_seed(0)
    model = make_model("test_resnet")
    image = held_out[0][0]
    logits = torch.from_numpy(model.predict_logits(image)[0][0])
    model.temperature.fill_(3.0)
    result = explain(model, image, target=1)
    assert result.probability == pytest.approx(float((logits / 3.0).softmax(0)[1]), abs=1e-5)


def test_multi_label_probability_is_a_sigmoid(held_out):
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, multi_label=True)
    image = held_out[0][0]
    logits = torch.from_numpy(model.predict_logits(image)[0][0])
    result = explain(model, image, target="2")
    assert result.probability == pytest.approx(float(logits[2].sigmoid()), abs=1e-5)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "dog"}, r"'dog' is not a class name.*'plain', 'patch'"),
        ({"target": 2}, r"index 2 is out of range; use 0 to 1"),
        ({"target": -1}, r"index -1 is out of range"),
        ({"target": True}, r"`target` must be None, a class index"),
        ({"target": 1.0}, r"`target` must be None, a class index"),
        ({"method": "lime"}, r"`method` must be one of \['gradcam', 'rollout'\], got 'lime'"),
        ({"alpha": 1.5}, r"`alpha` must be a number in \[0, 1\], got 1.5"),
        ({"method": "rollout"}, r"rollout' needs a ViT-style backbone.*method='gradcam'"),
    ],
)
def test_bad_arguments_are_refused(cnn, held_out, kwargs, message):
    with pytest.raises(ValueError, match=message):
        explain(cnn, held_out[0][0], **kwargs)


def test_exactly_one_image(cnn, held_out, tmp_path):
    images = held_out[0]
    with pytest.raises(ValueError, match=r"`image` must be exactly one image, got 2"):
        explain(cnn, [images[0], images[1]])
    with pytest.raises(ValueError, match=r"exactly one image, got 3"):
        explain(cnn, images[:3])  # an (N, H, W, C) batch
    for i in range(2):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match=r"got 2 \(.*0\.png"):
        explain(cnn, tmp_path)
    with pytest.raises(FileNotFoundError):
        explain(cnn, tmp_path / "missing.png")


# ---------------------------------------------------------------------- inputs
def test_every_input_kind_gives_the_same_map(cnn, held_out, tmp_path):
    image = held_out[0][0]
    Image.fromarray(image).save(tmp_path / "image.png")
    reference = explain(cnn, image)
    assert reference.source is None
    assert np.abs(reference.image.astype(int) - image.astype(int)).max() <= 1  # the input, as the model saw it
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    for value in (str(tmp_path / "image.png"), tmp_path / "image.png", Image.fromarray(image), tensor):
        result = explain(cnn, value)
        np.testing.assert_allclose(result.heatmap, reference.heatmap, atol=1e-4)
    assert explain(cnn, tmp_path / "image.png").source == str(tmp_path / "image.png")


def test_images_are_resized_to_the_model_input(cnn):
    result = explain(cnn, np.full((100, 150, 3), 128, np.uint8))
    assert result.heatmap.shape == (SIZE, SIZE) and result.image.shape == (SIZE, SIZE, 3)
    assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0


# ---------------------------------------------------------------------- model state
def test_frozen_backbone_still_gets_a_map(held_out):
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2, freeze_backbone=True)
    vit = ImageClassifier(BackboneConfig("test_vit", pretrained=False), num_classes=2, freeze_backbone=True)
    for frozen in (model, vit):
        flags = [p.requires_grad for p in frozen.parameters()]
        result = explain(frozen, held_out[0][0])
        assert result.heatmap.max() == pytest.approx(1.0)
        assert [p.requires_grad for p in frozen.parameters()] == flags
        assert not any(flags[: len(list(frozen.backbone.parameters()))])
        assert all(p.grad is None for p in frozen.parameters())


@pytest.mark.parametrize("method", ["gradcam", "rollout"])
def test_modes_are_restored(method, held_out):
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_vit", pretrained=False), num_classes=2, freeze_backbone=True)
    model.train()  # a frozen backbone stays in eval mode: a mixed state that must come back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    assert modes[""] and not modes["backbone"]
    explain(model, held_out[0][0], method=method)
    assert {name: module.training for name, module in model.named_modules()} == modes
    with torch.inference_mode():  # works inside inference mode too, trainable backbone or not
        assert explain(model, held_out[0][0], method=method).heatmap.max() == pytest.approx(1.0)
        model.backbone.requires_grad_(True)
        assert explain(model, held_out[0][0], method=method).heatmap.max() == pytest.approx(1.0)
    assert {name: module.training for name, module in model.named_modules()} == modes


def test_rollout_restores_attention_settings_even_on_error(held_out, monkeypatch):
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_vit", pretrained=False), num_classes=2)
    attns = [block.attn for block in model.backbone.blocks]
    for attn in attns:
        attn.fused_attn = True
    model.train()
    monkeypatch.setattr(model.head, "forward", lambda features: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, held_out[0][0], method="rollout")
    assert all(attn.fused_attn for attn in attns)
    assert all(not attn.attn_drop._forward_hooks for attn in attns)
    assert all(module.training for module in model.modules())


# ---------------------------------------------------------------------- pictures
def test_overlay_blends_with_alpha(cnn, held_out):
    result = explain(cnn, held_out[0][0], alpha=0.3)
    assert isinstance(result, Explanation) and result.alpha == 0.3
    overlay = result.overlay()
    assert overlay.shape == (SIZE, SIZE, 3) and overlay.dtype == np.uint8
    np.testing.assert_array_equal(result.overlay(alpha=0.0), result.image)
    jet = result.overlay(alpha=1.0).astype(int)
    hot, cold = (
        np.unravel_index(result.heatmap.argmax(), result.heatmap.shape),
        np.unravel_index(result.heatmap.argmin(), result.heatmap.shape),
    )
    assert jet[hot][0] > jet[hot][2] and jet[cold][2] > jet[cold][0]  # jet: hot is red, cold is blue
    with pytest.raises(ValueError, match="alpha"):
        result.overlay(alpha=-0.1)


def test_save_writes_a_readable_png(cnn, held_out, tmp_path):
    images, labels, _ = held_out
    image = images[np.flatnonzero(labels == 1)[0]]
    result = explain(cnn, image, output_path=tmp_path / "out" / "explained.png")
    written = tmp_path / "out" / "explained.png"
    with Image.open(written) as picture:
        assert picture.format == "PNG" and picture.width > 300 and picture.height > 150
    assert result.save(tmp_path / "again") == tmp_path / "again"
    with Image.open(tmp_path / "again") as picture:
        assert picture.format == "PNG"
