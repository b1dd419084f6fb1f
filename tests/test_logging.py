"""LoggingConfig: what reaches TensorBoard, and the norm helper."""

from __future__ import annotations

import pytest
import torch
from conftest import NUM_CLASSES, make_trainer
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autotimm import BackboneConfig, ImageClassifier, LoggingConfig
from autotimm.training.diagnostics import confusion_matrix_figure, total_norm

CLASS_NAMES = ["ant", "bee", "cat", "dog"]
EXTRA_TAGS = {"train/lr", "train/grad_norm", "train/weight_norm"}


def _fit_and_read_events(tmp_path, train_loader, val_loader, logging_config):
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False),
        num_classes=NUM_CLASSES,
        class_names=CLASS_NAMES,
        logging_config=logging_config,
    )
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=3, logger=logger, log_every_n_steps=1)
    trainer.fit(model, train_loader, val_loader)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return model, events.Tags()


def test_all_options_reach_tensorboard(tmp_path, train_loader, val_loader):
    config = LoggingConfig(
        log_learning_rate=True, log_gradient_norm=True, log_weight_norm=True, log_confusion_matrix=True
    )
    model, tags = _fit_and_read_events(tmp_path, train_loader, val_loader, config)
    assert EXTRA_TAGS <= set(tags["scalars"])
    assert {"train/loss", "val/loss", "val/accuracy", "train/accuracy", "val/f1_macro"} <= set(tags["scalars"])
    assert "val/confusion_matrix" in tags["images"]
    matrix = model.val_confusion_matrix_values
    assert matrix.shape == (NUM_CLASSES, NUM_CLASSES) and matrix.sum() == 48


def test_nothing_extra_when_not_asked(tmp_path, train_loader, val_loader):
    _, tags = _fit_and_read_events(tmp_path, train_loader, val_loader, None)
    assert not EXTRA_TAGS & set(tags["scalars"])
    assert "val/loss" in tags["scalars"]
    assert tags["images"] == []


def test_logged_values_are_the_real_ones(tmp_path, train_loader):
    """train/lr equals the optimizer's lr, and the norms equal the plain per-tensor computation."""
    seen = {}
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False),
        num_classes=NUM_CLASSES,
        lr=3e-3,
        scheduler=None,
        logging_config=LoggingConfig(log_learning_rate=True, log_gradient_norm=True, log_weight_norm=True),
    )

    original = model.on_before_optimizer_step

    def spy(optimizer):
        params = [p for p in model.parameters() if p.requires_grad]
        seen["grad"] = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))
        seen["weight"] = torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params))
        original(optimizer)

    model.on_before_optimizer_step = spy
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    trainer.fit(model, train_loader)
    metrics = trainer.callback_metrics
    assert metrics["train/lr"].item() == pytest.approx(3e-3)
    assert metrics["train/grad_norm"].item() == pytest.approx(seen["grad"].item(), rel=1e-4)
    # rel=1e-4: a float32 sum over 11M values differs from the float64 one in the 6th digit.
    assert metrics["train/weight_norm"].item() == pytest.approx(seen["weight"].item(), rel=1e-4)


def test_other_loggers_are_skipped_without_error(tmp_path, train_loader, val_loader):
    model = ImageClassifier(
        BackboneConfig("resnet18", pretrained=False),
        num_classes=NUM_CLASSES,
        logging_config=LoggingConfig(log_confusion_matrix=True),
    )
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, logger=CSVLogger(str(tmp_path)))
    trainer.fit(model, train_loader, val_loader)
    assert model.val_confusion_matrix_values.sum() == 48


def test_total_norm_matches_torch_and_handles_empty():
    tensors = [torch.randn(3, 4), torch.randn(7)]
    expected = torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))
    torch.testing.assert_close(total_norm(tensors), expected)
    assert total_norm([]).item() == 0.0


def test_confusion_matrix_figure_has_class_names_on_both_axes():
    figure = confusion_matrix_figure(torch.tensor([[3, 1], [0, 4]]), ["cat", "dog"])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog"]
    assert ax.get_xlabel() == "Predicted" and ax.get_ylabel() == "True"
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1", "3", "4"]
