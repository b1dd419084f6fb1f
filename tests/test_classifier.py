"""ImageClassifier: training, linear probing, checkpoints, regularisation and argument errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import pytorch_lightning as pl
import torch
from conftest import NUM_CLASSES, make_trainer
from torch import nn

from autotimm import BackboneConfig, ImageClassifier, LoggingConfig, MetricConfig, MetricManager, create_backbone
from autotimm.training.mixing import mix_batch

RESNET = BackboneConfig("resnet18", pretrained=False)


def _model(**kwargs) -> ImageClassifier:
    options = dict(backbone=RESNET, num_classes=NUM_CLASSES)
    options.update(kwargs)
    return ImageClassifier(**options)


def test_forward_returns_logits_and_predict_step_probabilities():
    model = _model().eval()
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)
    assert logits.shape == (3, NUM_CLASSES)
    probs = model.predict_step((x, torch.zeros(3)), 0)
    torch.testing.assert_close(probs, logits.softmax(1))
    torch.testing.assert_close(model.predict_step(x, 0).sum(1), torch.ones(3))


def test_fit_lowers_loss_and_raises_accuracy(tmp_path, train_loader, val_loader):
    pl.seed_everything(0)
    model = _model(lr=1e-3, scheduler="cosine")
    trainer = make_trainer(tmp_path, max_epochs=4)
    before = trainer.validate(model, val_loader, verbose=False)[0]
    losses: dict[int, list[float]] = {}

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.setdefault(trainer.current_epoch, []).append(outputs["loss"].item())

    trainer = make_trainer(tmp_path, max_epochs=4, callbacks=[Record()])
    trainer.fit(model, train_loader, val_loader)
    after = trainer.validate(model, val_loader, verbose=False)[0]
    epoch_means = [sum(v) / len(v) for _, v in sorted(losses.items())]
    assert epoch_means[-1] < 0.5 * epoch_means[0], epoch_means
    assert before["val/accuracy"] < 0.5  # chance is 0.25
    assert after["val/accuracy"] >= 0.9, after
    assert after["val/loss"] < before["val/loss"]


def test_linear_probe_keeps_backbone_and_bn_stats_bit_identical(tmp_path, train_loader, val_loader):
    model = _model(freeze_backbone=True, lr=1e-2)
    backbone_before = copy.deepcopy(model.backbone.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    modes = []

    class Watch(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((pl_module.backbone.training, pl_module.head.training))

    trainer = make_trainer(tmp_path, max_epochs=2, callbacks=[Watch()], num_sanity_val_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. Lightning's "modules in eval mode" warning
        trainer.fit(model, train_loader, val_loader)

    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.head.parameters()}
    assert all(p.grad is None for p in model.backbone.parameters())
    assert modes and all(not backbone and head for backbone, head in modes)
    after = model.backbone.state_dict()
    assert any("running_mean" in k for k in after)
    for key, value in backbone_before.items():
        assert torch.equal(value, after[key]), key
    assert not torch.equal(head_before["fc.weight"], model.head.state_dict()["fc.weight"])


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, train_loader):
    weights = tmp_path / "backbone.pth"
    torch.save(create_backbone(RESNET).state_dict(), weights)
    model = _model(
        backbone=BackboneConfig("resnet18", pretrained=False, checkpoint_path=weights, drop_path_rate=0.05),
        metrics=[MetricConfig(name="acc", metric_class="Accuracy", params={"task": "multiclass"})],
        logging_config=LoggingConfig(log_learning_rate=True),
        class_names=["ant", "bee", "cat", "dog"],
        optimizer_kwargs={"betas": (0.9, 0.99)},
        head_dropout=0.2,
    )
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(model, train_loader)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    weights.unlink()  # loading needs neither the weights file nor the hub

    loaded = ImageClassifier.load_from_checkpoint(path)
    x = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert loaded.class_names == ["ant", "bee", "cat", "dog"]
    assert list(loaded.metrics.get_metrics("val")) == ["acc"]
    assert loaded.logging_config.log_learning_rate
    assert loaded.hparams.backbone["drop_path_rate"] == 0.05
    assert isinstance(loaded.head.dropout, nn.Dropout)


def test_mixup_mixes_inputs_and_targets():
    model = _model(mixup_alpha=0.4)
    x = torch.randn(5, 3, 8, 8)  # odd batch: timm's Mixup class would refuse it
    y = torch.tensor([0, 1, 2, 3, 0])
    torch.manual_seed(0)
    mixed, target = mix_batch(x, y, NUM_CLASSES, mixup_alpha=model.hparams.mixup_alpha)
    assert mixed.shape == x.shape and not torch.equal(mixed, x)
    assert target.shape == (5, NUM_CLASSES)
    torch.testing.assert_close(target.sum(1), torch.ones(5))
    lam = target[1, 1].item()  # sample 1 (class 1) is mixed with sample 3 (class 3)
    torch.testing.assert_close(target[1, 3], torch.tensor(1 - lam))
    torch.testing.assert_close(mixed[1], lam * x[1] + (1 - lam) * x[3])


def test_label_smoothing_applies_to_the_training_loss_only():
    model = _model(label_smoothing=0.1).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert model.training_step((x, y), 0).item() == pytest.approx(
        nn.functional.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5
    )
    assert model.validation_step((x, y), 0).item() == pytest.approx(
        nn.functional.cross_entropy(logits, y).item(), rel=1e-5
    )


def test_mixup_and_label_smoothing_train(tmp_path, train_loader):
    model = _model(mixup_alpha=0.2, label_smoothing=0.1, head_dropout=0.5)
    assert model.criterion.label_smoothing == 0.1
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    trainer.fit(model, train_loader)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_default_metrics_follow_the_number_of_classes():
    assert list(_model(num_classes=3).metrics.get_metrics("val")) == ["accuracy", "f1_macro"]
    assert list(_model(num_classes=10).metrics.get_metrics("train")) == ["accuracy", "top5_accuracy", "f1_macro"]


def test_unknown_optimizer_and_scheduler_fail_at_construction():
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamx'.*adamw"):
        _model(optimizer="adamx")
    with pytest.raises(ValueError, match=r"Unknown scheduler 'cosin'.*cosine_with_restarts"):
        _model(scheduler="cosin")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, r"`num_classes` must be an int >= 2 \(a softmax classifier .*\) or None, got 0"),
        ({"num_classes": 1}, r"`num_classes` must be an int >= 2 .*, got 1"),
        ({"num_classes": 2.5}, r"`num_classes` must be an int >= 2 .*, got 2.5"),
        ({"lr": 0.0}, r"`lr` must be a number > 0, got 0.0"),
        ({"lr": -1e-3}, r"`lr` must be a number > 0, got -0.001"),
        ({"lr": "0.1"}, r"`lr` must be a number > 0, got '0.1'"),
        ({"weight_decay": -0.1}, r"`weight_decay` must be a number >= 0, got -0.1"),
        ({"weight_decay": None}, r"`weight_decay` must be a number >= 0, got None"),
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be a number in \[0, 1\), got 1.0"),
        ({"label_smoothing": -0.1}, r"`label_smoothing` must be a number in \[0, 1\), got -0.1"),
        ({"head_dropout": 1.0}, r"`head_dropout` must be a number in \[0, 1\), got 1.0"),
        ({"mixup_alpha": -0.5}, r"`mixup_alpha` must be a number >= 0, got -0.5"),
        ({"optimizer": 3}, r"`optimizer` must be a name from list_optimizers\(\) or a .* dict, got 3"),
        ({"scheduler": 5}, r"`scheduler` must be a name from list_schedulers\(\), None or a .* dict, got 5"),
        (
            {"scheduler_kwargs": {"warmup_steps": 1, "warmup_epochs": 1}},
            r"`scheduler_kwargs` takes warmup_epochs or warmup_steps, not both",
        ),
        ({"class_names": ["a", "b"]}, r"`class_names` has 2 names for num_classes=4"),
        ({"optimizer_kwargs": [1]}, r"`optimizer_kwargs` must be a dict or None, got \[1\]"),
        ({"backbone": 3}, r"`backbone` must be a model name or a BackboneConfig, got int"),
        ({"metrics": "accuracy"}, r"`metrics` must be a MetricManager or a list of MetricConfig"),
        (
            {"metrics": MetricManager([MetricConfig(name="acc", metric_class="Accuracy")], num_classes=3)},
            r"`metrics` was built for 3 classes, but num_classes=4",
        ),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)
