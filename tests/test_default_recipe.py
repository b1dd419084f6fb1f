"""The default recipe's rules: augmentation by image size, the BatchNorm head, and what they do to training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autotimm import ClassificationHead, ImageDataModule
from autotimm.data.array_batches import ArrayBatchDataset
from autotimm.data.transforms import (
    SMALL_IMAGE_SIZE,
    build_eval_transform,
    build_train_transform,
    make_data_config,
    resolve_augmentation,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("size", "expected"),
    [(16, "none"), (32, "none"), ((64, 48), "none"), (SMALL_IMAGE_SIZE, "none"), ((65, 32), "light"), (224, "light")],
)
def test_auto_augmentation_follows_the_longer_side(size, expected):
    assert resolve_augmentation("auto", make_data_config(image_size=size)) == expected


@pytest.mark.parametrize("preset", ["none", "light", "crop_flip", "randaugment"])
def test_named_presets_resolve_to_themselves(preset):
    assert resolve_augmentation(preset, make_data_config(image_size=32)) == preset


def test_unknown_preset_still_raises_with_the_accepted_names():
    with pytest.raises(ValueError, match=r"`augmentation` must be one of \['auto', 'none', 'light'"):
        resolve_augmentation("strong", make_data_config(image_size=32))


def test_auto_keeps_a_small_image_whole_and_zooms_into_a_large_one():
    from PIL import Image

    rng = np.random.default_rng(0)
    small = make_data_config(image_size=32)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    auto, plain = build_train_transform("auto", small), build_eval_transform(small)
    assert all(torch.equal(auto(image), plain(image)) for _ in range(3))  # no random crop or flip at 32 px

    large = make_data_config(image_size=96)
    big = Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    transform = build_train_transform("auto", large)
    names = [type(t).__name__ for t in transform.transforms]
    assert "RandomResizedCropAndInterpolation" in names and "RandomHorizontalFlip" in names
    assert not torch.equal(transform(big), transform(big))


def test_data_module_defaults_to_auto_and_keeps_small_arrays_on_the_batched_path():
    rng = np.random.default_rng(0)
    data = ImageDataModule(
        images=rng.integers(0, 256, (40, 12, 12), dtype=np.uint8),
        labels=np.arange(40) % 4,
        output_dir=None,
        image_size=12,
        in_chans=1,
        batch_size=8,
        val_split=0.25,
        test_split=0.0,
    )
    assert data.augmentation == "auto"
    data.setup("fit")
    train = data.dataset("train")
    assert isinstance(train, ArrayBatchDataset)  # "auto" is "none" at 12 px: no per-image Pillow transform


def test_batchnorm_head_is_fastais_head():
    head = ClassificationHead(32, 5, dropout=0.5, hidden_features=16)
    kinds = [type(m) for m in head.hidden]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear, nn.ReLU, nn.BatchNorm1d]
    assert head.hidden[1].p == 0.25 and head.dropout.p == 0.5
    assert (head.fc.in_features, head.fc.out_features) == (16, 5)
    assert head(torch.randn(4, 32)).shape == (4, 5)


def test_batchnorm_head_normalises_badly_scaled_features():
    # Pooled features of a random backbone can sit far from zero with a large spread; the head's first
    # BatchNorm standardises them, so its logits do not blow up with the features' scale.
    torch.manual_seed(0)
    head = ClassificationHead(64, 3, hidden_features=32).train()
    plain = ClassificationHead(64, 3).train()
    features = 50 + 200 * torch.rand(256, 64)
    assert head(features).abs().mean() < 5 < plain(features).abs().mean()


def test_batchnorm_head_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 8) * 30 + 100
    y = (x[:, 0] > 100).long()
    head = ClassificationHead(8, 2, hidden_features=16)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = nn.functional.cross_entropy(head(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head.eval()
    assert losses[-1] < 0.5 * losses[0]
    assert (head(x).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("hidden", [0, -1, 2.5, "512"])
def test_bad_hidden_features_raise(hidden):
    with pytest.raises(ValueError, match=r"`hidden_features` must be an int >= 1 or None"):
        ClassificationHead(8, 2, hidden_features=hidden)


def test_default_lr_follows_the_weights_the_backbone_starts_from(tmp_path):
    from autotimm import BackboneConfig, ImageClassifier
    from autotimm.models.backbone import create_backbone
    from autotimm.optim import default_lr

    scratch = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3)
    assert scratch.hparams.lr == default_lr(pretrained=False) == 3e-3

    weights = tmp_path / "weights.pth"
    torch.save(create_backbone(BackboneConfig("test_resnet", pretrained=False)).state_dict(), weights)
    tuned = ImageClassifier(BackboneConfig("test_resnet", pretrained=False, checkpoint_path=weights), num_classes=3)
    assert tuned.hparams.lr == default_lr(pretrained=True) == 1e-3

    explicit = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=0.02)
    assert explicit.hparams.lr == 0.02
    # A checkpoint stores the resolved rate: loading it (where the backbone no longer says "pretrained") keeps it.
    loaded = ImageClassifier.load(tuned.save(tmp_path / "tuned.ckpt"))
    assert loaded.hparams.lr == 1e-3


def test_auto_fit_presets_start_from_the_default_lr_rule(monkeypatch):
    from autotimm.auto import presets, recipes
    from autotimm.auto.presets import PRESETS, rule_lr_range
    from autotimm.auto.recipes import ADAMW_COSINE, SGD_ONECYCLE, Recipe
    from autotimm.optim import default_lr

    assert ADAMW_COSINE.lr == ADAMW_COSINE.base_lr(pretrained=False) == default_lr(pretrained=False)
    assert ADAMW_COSINE.base_lr(pretrained=True) == default_lr(pretrained=True)
    assert Recipe().base_lr(pretrained=True) == default_lr(pretrained=True)
    assert SGD_ONECYCLE.base_lr(pretrained=False) == SGD_ONECYCLE.base_lr(pretrained=True) == 0.2  # its own rule
    # Linear scaling above the batch its rate is for (256); never below it.
    assert SGD_ONECYCLE.base_lr(False, batch_size=512) == 0.4 and SGD_ONECYCLE.base_lr(False, batch_size=32) == 0.2
    assert ADAMW_COSINE.base_lr(False, batch_size=512) == ADAMW_COSINE.lr  # no rule: the same rate
    for preset in PRESETS.values():
        space = preset.space_for(224)
        assert space.recipe.optimizer == "adamw"
        low, high = space.lr
        # Whatever weights a search starts from, the rule's rate (the first trial's) lies inside its range.
        assert low < default_lr(pretrained=True) <= default_lr(pretrained=False) < high
    assert PRESETS["fast"].space.lr == rule_lr_range(2, 3) == (5e-4, 9e-3)

    # The ranges are built from the rule function, not copied from it.
    monkeypatch.setattr(presets, "default_lr", lambda pretrained: 2e-4 if pretrained else 6e-4)
    assert rule_lr_range(2, 3) == (1e-4, 1.8e-3)
    assert recipes.default_lr is default_lr


@pytest.mark.parametrize(("below", "above"), [(0.5, 3), (2, 0), (2, float("nan"))])
def test_rule_lr_range_rejects_factors_under_one(below, above):
    from autotimm.auto.presets import rule_lr_range

    with pytest.raises(ValueError, match=r"`below` and `above` must be >= 1"):
        rule_lr_range(below, above)
