"""Focal loss: hand-computed values, its cross-entropy limit, and its use by ImageClassifier."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autotimm import BackboneConfig, ImageClassifier
from autotimm.training.losses import FocalLoss, focal_loss

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
TARGET = torch.tensor([0, 2])


def _softmax_row(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def test_single_label_matches_a_hand_computation():
    gamma = 2.0
    terms = []
    for row, label in zip(LOGITS.tolist(), TARGET.tolist(), strict=True):
        p = _softmax_row(row)[label]
        terms.append(-((1 - p) ** gamma) * math.log(p))
    assert float(focal_loss(LOGITS, TARGET, gamma=gamma)) == pytest.approx(sum(terms) / 2, rel=1e-6)


def test_per_class_alpha_is_a_weighted_mean_like_cross_entropy():
    weight = torch.tensor([0.25, 1.0, 3.0])
    gamma = 1.5
    p0, p1 = _softmax_row(LOGITS[0].tolist())[0], _softmax_row(LOGITS[1].tolist())[2]
    hand = (0.25 * -((1 - p0) ** gamma) * math.log(p0) + 3.0 * -((1 - p1) ** gamma) * math.log(p1)) / (0.25 + 3.0)
    assert float(FocalLoss(gamma, weight)(LOGITS, TARGET)) == pytest.approx(hand, rel=1e-6)
    # gamma=0 is torch's weighted cross-entropy, with or without label smoothing
    for smoothing in (0.0, 0.2):
        expected = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(LOGITS, TARGET)
        got = FocalLoss(0.0, weight, label_smoothing=smoothing)(LOGITS, TARGET)
        assert float(got) == pytest.approx(float(expected), rel=1e-6)


def test_soft_targets_from_mixing():
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6]])
    expected = nn.CrossEntropyLoss()(LOGITS, soft)
    assert float(focal_loss(LOGITS, soft, gamma=0.0)) == pytest.approx(float(expected), rel=1e-6)
    assert float(focal_loss(LOGITS, soft, gamma=2.0)) < float(expected)  # easy parts are down-weighted


def test_multi_label_matches_a_hand_computation():
    logits = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    target = torch.tensor([[1, 0], [0, 1]])
    weight = torch.tensor([2.0, 0.5])
    gamma = 2.0
    total = 0.0
    for i in range(2):
        for c in range(2):
            p = 1 / (1 + math.exp(-logits[i, c].item()))
            t = target[i, c].item()
            term = -(t * (1 - p) ** gamma * math.log(p) + (1 - t) * p**gamma * math.log(1 - p))
            total += weight[c].item() * term
    got = FocalLoss(gamma, weight, multi_label=True)(logits, target)
    assert float(got) == pytest.approx(total / 4, rel=1e-6)
    expected = nn.BCEWithLogitsLoss(weight=weight)(logits, target.float())
    assert float(FocalLoss(0.0, weight, multi_label=True)(logits, target)) == pytest.approx(float(expected), rel=1e-6)


def test_classifier_uses_focal_loss_with_class_weights_as_alpha():
    model = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False),
        num_classes=3,
        loss="focal",
        focal_gamma=3.0,
        class_weights=[1.0, 2.0, 0.5],
    )
    assert isinstance(model.criterion, FocalLoss)
    assert model.criterion.gamma == 3.0
    assert model.criterion.weight.tolist() == [1.0, 2.0, 0.5]
    assert model.hparams.loss == "focal"
    x = torch.randn(4, 3, 16, 16)
    loss = model.training_step((x, torch.tensor([0, 1, 2, 0])), 0)
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())
    multi = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), num_classes=3, multi_label=True, loss="focal"
    )
    assert multi.criterion.multi_label


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss": "hinge"}, "`loss` must be one of 'cross_entropy', 'focal'; got 'hinge'"),
        ({"focal_gamma": -1}, "focal_gamma"),
    ],
)
def test_bad_loss_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, **kwargs)
