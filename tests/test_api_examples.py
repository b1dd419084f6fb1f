"""Every example of the ImageClassifier API page, as written, with ``pretrained=False`` added (offline)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer
from torch.utils.data import DataLoader

from autotimm import BackboneConfig, ImageClassifier, LoggingConfig, MetricConfig, make_synthetic_dataset

metrics = [
    MetricConfig(
        name="accuracy",
        backend="torchmetrics",
        metric_class="Accuracy",
        params={"task": "multiclass"},
        stages=["train", "val", "test"],
        prog_bar=True,
    ),
]
RESNET50 = BackboneConfig("resnet50", pretrained=False)


def _fit_one_step(model: ImageClassifier, tmp_path, image_size: int = 32) -> None:
    num_classes = model.hparams.num_classes
    data = make_synthetic_dataset(num_classes, samples_per_class=2, image_size=image_size)
    loader = DataLoader(data, batch_size=4)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "val/accuracy" in trainer.callback_metrics


def test_basic_usage(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    _fit_one_step(model, tmp_path)


def test_with_backbone_config(tmp_path):
    cfg = BackboneConfig(
        model_name="vit_base_patch16_224",
        pretrained=False,
        drop_path_rate=0.1,
    )
    model = ImageClassifier(
        backbone=cfg,
        num_classes=100,
        metrics=metrics,
    )
    assert model.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 100)


def test_with_enhanced_logging(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        logging_config=LoggingConfig(
            log_learning_rate=True,
            log_gradient_norm=True,
            log_confusion_matrix=True,
        ),
    )
    _fit_one_step(model, tmp_path)
    assert {"train/lr", "train/grad_norm"} <= set(model.trainer.callback_metrics)


def test_with_custom_optimizer(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=1e-4,
        optimizer_kwargs={"betas": (0.9, 0.999)},
    )
    _fit_one_step(model, tmp_path)
    optimizer = model.trainer.optimizers[0]
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert sorted(group["weight_decay"] for group in optimizer.param_groups) == [0.0, 1e-4]


def test_with_custom_scheduler(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        scheduler="onecycle",
        scheduler_kwargs={"max_lr": 1e-2},
    )
    _fit_one_step(model, tmp_path)
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert scheduler.optimizer.param_groups[0]["max_lr"] == 1e-2


def test_frozen_backbone_linear_probing(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        freeze_backbone=True,
        lr=1e-2,
    )
    assert not any(p.requires_grad for p in model.backbone.parameters())
    _fit_one_step(model, tmp_path)


def test_with_regularization(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        label_smoothing=0.1,
        mixup_alpha=0.2,
        head_dropout=0.5,
    )
    assert model.head.dropout.p == 0.5
    _fit_one_step(model, tmp_path)


def test_custom_optimizer_and_scheduler_dicts(tmp_path):
    model = ImageClassifier(
        backbone=RESNET50,
        num_classes=10,
        metrics=metrics,
        optimizer={
            "class": "torch.optim.AdamW",
            "params": {"betas": (0.9, 0.999)},
        },
        scheduler={
            "class": "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts",
            "params": {"T_0": 10},
        },
    )
    _fit_one_step(model, tmp_path)
    scheduler = model.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingWarmRestarts)


def test_architecture_matches_the_page():
    model = ImageClassifier(backbone=RESNET50, num_classes=10, metrics=metrics, head_dropout=0.5)
    assert model.backbone.num_classes == 0 and model.backbone.num_features == 2048
    assert isinstance(model.head.dropout, torch.nn.Dropout)
    assert (model.head.fc.in_features, model.head.fc.out_features) == (2048, 10)
    assert isinstance(model.criterion, torch.nn.CrossEntropyLoss)
    plain = ImageClassifier(backbone=RESNET50, num_classes=10, metrics=metrics)
    assert isinstance(plain.head.dropout, torch.nn.Identity)
