"""Model profiles: MACs against hand counts and timm's published figure, sizes, latency, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from autotimm import BackboneConfig, ImageClassifier
from autotimm.cli import main
from autotimm.models.profile import ModelProfile, count_macs, profile_model, profile_table


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_macs_match_a_hand_count_for_a_tiny_conv_net():
    # conv: every one of the 8 x 10 x 10 outputs takes 3 * 3 * 3 multiply-adds; the linear layer 8 * 5.
    hand = 8 * 10 * 10 * 3 * 3 * 3 + 8 * 5
    assert count_macs(TinyNet(), torch.zeros(1, 3, 10, 10)) == hand
    profile = profile_model(TinyNet(), image_size=(3, 10, 10), latency=False)
    assert profile.gmacs * 1e9 == pytest.approx(hand)
    assert profile.params == 8 * 27 + 8 * 5 + 5
    assert profile.size_mb_fp32 == pytest.approx(profile.params * 4 / 1e6)
    assert profile.size_mb_int8 == pytest.approx(profile.params / 1e6)


def test_resnet18_at_224_matches_timms_published_gmacs():
    profile = profile_model("resnet18", image_size=224, latency=False)
    assert profile.gmacs == pytest.approx(1.82, rel=0.03)  # timm's results table: 1.82 GMACs
    assert profile.params == pytest.approx(11.18e6, rel=0.01)  # headless
    assert profile.image_size == (3, 224, 224)


def test_classifier_profile_counts_trainable_params_and_measures_latency():
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, freeze_backbone=True)
    profile = profile_model(model, image_size=16, batch_size=2, repeats=1)
    head = sum(p.numel() for p in model.head.parameters())
    assert profile.trainable_params == head < profile.params
    assert profile.name == "test_resnet"
    assert profile.latency_ms > 0 and profile.images_per_second > 0
    pytest.importorskip("onnxruntime")
    assert profile.onnx_latency_ms > 0 and profile.onnx_images_per_second > 0
    assert model.training  # mode restored


def test_several_models_side_by_side_in_one_table():
    profiles = profile_model(
        ["test_resnet", BackboneConfig("test_vit", pretrained=False)], image_size=32, latency=False
    )
    assert [p.name for p in profiles] == ["test_resnet", "test_vit"]
    assert all(isinstance(p, ModelProfile) for p in profiles)
    table = profile_table(profiles)
    assert [c.header for c in table.columns] == ["Model", "Params", "MB fp32", "MB int8", "GMACs"]
    assert json.loads(json.dumps(profiles[0].to_dict()))["image_size"] == [3, 32, 32]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="batch_size"):
        profile_model("test_resnet", batch_size=0)
    with pytest.raises(ValueError, match="image_size"):
        profile_model("test_resnet", image_size=(1, 2, 3, 4), latency=False)


def test_cli_profile_json_and_errors(capsys):
    assert main(["models", "test_resnet", "test_vit", "--profile", "--no-latency", "--image-size", "32", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["test_resnet", "test_vit"]
    assert rows[0]["gmacs"] > 0 and rows[0]["latency_ms"] is None
    assert main(["models", "resnet_zzz", "--profile"]) == 1
    assert "'resnet_zzz' is not one" in capsys.readouterr().err
