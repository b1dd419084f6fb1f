"""predict's inference copy: batch norms folded, channels-last, bf16; exact against the plain path, model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from autotimm import BackboneConfig, ImageClassifier
from autotimm.classifier.predictor import check_precision
from autotimm.data import make_data_config
from autotimm.models.inference import RELATIVE_TOLERANCE, fold_batch_norms, inference_copy

SIZE = 64


def _classifier(name: str) -> ImageClassifier:
    """A classifier with random, non-trivial batch-norm statistics (so that folding changes the weights)."""
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig(name, pretrained=False), num_classes=7, scheduler=None)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    model.apply_data_info([str(i) for i in range(7)], make_data_config(model.backbone, 3, SIZE))
    return model


def _images(count: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)


def _snapshot(model: nn.Module) -> dict[str, tuple[torch.Tensor, int, bool]]:
    return {
        name: (t.detach().clone(), t.data_ptr(), t.is_contiguous())
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])  # a resnet, and depthwise convolutions
def test_fast_path_matches_the_plain_path_and_leaves_the_model_alone(name: str) -> None:
    model = _classifier(name)
    before = _snapshot(model)
    kinds = [type(m) for m in model.modules()]
    images = _images()

    plain, _ = model.predict_logits(images, optimize=False)
    fast, _ = model.predict_logits(images)
    assert np.abs(fast - plain).max() <= RELATIVE_TOLERANCE * np.abs(plain).max()
    assert (np.argsort(-fast, axis=1)[:, :3] == np.argsort(-plain, axis=1)[:, :3]).all()
    plain_top = [p.indices for p in model.predict(images, top_k=3, optimize=False)]
    assert [p.indices for p in model.predict(images, top_k=3)] == plain_top

    # The model the user holds: same tensors (values, storage, NCHW layout), same modules, still in train mode.
    assert model.training
    assert [type(m) for m in model.modules()] == kinds
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for key, (tensor, pointer, contiguous) in before.items():
        assert torch.equal(after[key][0], tensor) and after[key][1:] == (pointer, contiguous), key


def test_the_copy_is_folded_channels_last_and_cached_until_the_weights_change() -> None:
    model = _classifier("test_resnet").eval()
    example = torch.randn(1, 3, SIZE, SIZE)
    copy = inference_copy(model, example)
    assert copy is not None and copy.channels_last and copy.dtype == torch.float32
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert copy.folded == norms and not any(isinstance(m, nn.BatchNorm2d) for m in copy.module.modules())
    assert copy.max_relative_diff is not None and copy.max_relative_diff <= RELATIVE_TOLERANCE

    images = _images(3)
    first, _ = model.predict_logits(images)
    again, _ = model.predict_logits(images)
    assert np.array_equal(first, again)
    with torch.no_grad():  # an in-place change (as an optimizer step makes) must reach the next predict
        model.head.fc.bias.add_(1.0)
    shifted, _ = model.predict_logits(images)
    np.testing.assert_allclose(shifted, first + 1.0, rtol=1e-4, atol=1e-4)


class _Residual(nn.Module):
    """conv -> bn, where the conv's output also feeds a sum: that norm must not be folded."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4)
        self.shared = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = self.bn1(y) + y  # conv1's output used twice
        y = self.bn2(self.conv2(y))  # foldable (depthwise)
        return self.shared(self.shared(y))  # called twice


def test_fold_only_where_the_convolution_output_feeds_the_norm_alone() -> None:
    torch.manual_seed(0)
    model = _Residual().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
    assert fold_batch_norms(model, x[:1]) == 1
    assert isinstance(model.bn1, nn.BatchNorm2d) and isinstance(model.bn2, nn.Identity)
    assert isinstance(model.shared, nn.BatchNorm2d)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_nothing_to_do_for_a_vit_and_for_other_devices_dtypes() -> None:
    torch.manual_seed(0)
    vit = ImageClassifier(BackboneConfig("test_vit", pretrained=False), num_classes=3, scheduler=None).eval()
    example = torch.randn(1, 3, 160, 160)
    assert inference_copy(vit, example) is None  # no batch norm, one convolution: the model as it is
    assert inference_copy(vit, example, optimize=False) is None
    half = inference_copy(vit, example, dtype=torch.bfloat16)
    assert half is not None and half.dtype == torch.bfloat16 and half(example).dtype == torch.float32
    assert next(vit.parameters()).dtype == torch.float32


def test_bf16_precision_runs_a_bf16_copy_close_to_fp32() -> None:
    model = _classifier("test_efficientnet")
    images = _images()
    fp32, _ = model.predict_logits(images, precision="fp32")
    bf16, _ = model.predict_logits(images, precision="bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert 0 < np.abs(bf16 - fp32).max() <= 0.1 * np.abs(fp32).max()
    assert next(model.parameters()).dtype == torch.float32
    predictions = model.predict(images, precision="bf16", top_k=2)
    assert len(predictions) == len(images)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "fp16"}, r"`precision` must be None \(the model's own dtype\), 'fp32' or 'bf16'; got 'fp16'"),
        ({"precision": "BF16"}, r"got 'BF16'"),
        ({"precision": 16}, r"`precision` must be .* got 16"),
        ({"optimize": "yes"}, r"`optimize` must be True or False, got 'yes'"),
    ],
)
def test_predict_checks_precision_and_optimize(kwargs: dict, match: str) -> None:
    model = _classifier("test_resnet")
    with pytest.raises(ValueError, match=match):
        model.predict(_images(1), **kwargs)
    with pytest.raises(ValueError, match=match):
        model.predict_logits(_images(1), **kwargs)


def test_check_precision() -> None:
    assert check_precision(None) is None
    assert check_precision("fp32") is torch.float32 and check_precision("bf16") is torch.bfloat16


def test_an_ensemble_predicts_through_one_copy_of_all_members() -> None:
    from autotimm.classifier.ensemble import EnsembleClassifier

    ensemble = EnsembleClassifier([_classifier("test_resnet"), _classifier("test_resnet")])
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in ensemble.modules())
    images = _images(4)
    plain, _ = ensemble.predict_logits(images, optimize=False)
    fast, _ = ensemble.predict_logits(images)
    assert np.abs(fast - plain).max() <= RELATIVE_TOLERANCE * np.abs(plain).max()
    assert (fast.argmax(1) == plain.argmax(1)).all()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ensemble.modules()) == norms > 0
