"""Tests for `autotimm.models.head.ClassificationHead`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autotimm import ClassificationHead


def test_no_dropout_by_default() -> None:
    head = ClassificationHead(16, 4)
    assert isinstance(head.dropout, nn.Identity)
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())


def test_zero_dropout_is_identity() -> None:
    assert isinstance(ClassificationHead(16, 4, dropout=0.0).dropout, nn.Identity)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.99])
def test_positive_dropout(p: float) -> None:
    head = ClassificationHead(16, 4, dropout=p)
    assert isinstance(head.dropout, nn.Dropout)
    assert head.dropout.p == p


@pytest.mark.parametrize(("in_features", "num_classes"), [(1, 1), (512, 10), (1280, 1000)])
def test_linear_shapes(in_features: int, num_classes: int) -> None:
    head = ClassificationHead(in_features, num_classes)
    assert isinstance(head.fc, nn.Linear)
    assert head.fc.in_features == in_features
    assert head.fc.out_features == num_classes
    assert head(torch.randn(3, in_features)).shape == (3, num_classes)


def test_forward_is_linear_without_dropout() -> None:
    head = ClassificationHead(8, 3).train()
    x = torch.randn(5, 8)
    assert torch.allclose(head(x), x @ head.fc.weight.T + head.fc.bias)


def test_dropout_active_in_train_only() -> None:
    torch.manual_seed(0)
    head = ClassificationHead(64, 2, dropout=0.5)
    x = torch.randn(8, 64)
    head.train()
    assert not torch.equal(head(x), head(x))
    head.eval()
    assert torch.equal(head(x), head(x))
    assert torch.allclose(head(x), head.fc(x))


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"in_features": 0, "num_classes": 2}, "in_features"),
        ({"in_features": -3, "num_classes": 2}, "in_features"),
        ({"in_features": 8, "num_classes": 0}, "num_classes"),
        ({"in_features": 8, "num_classes": 2, "dropout": 1.0}, "dropout"),
        ({"in_features": 8, "num_classes": 2, "dropout": -0.1}, "dropout"),
        ({"in_features": 8, "num_classes": 2, "dropout": float("nan")}, "dropout"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=f"`{arg}`"):
        ClassificationHead(**kwargs)
