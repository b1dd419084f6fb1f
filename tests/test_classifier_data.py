"""ImageClassifier features the data drives: multi-label, cutmix, class weights, apply_data_info."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import NUM_CLASSES, make_trainer
from torch.utils.data import DataLoader, TensorDataset

from autotimm import BackboneConfig, ImageClassifier, LoggingConfig, make_synthetic_dataset
from autotimm.training.mixing import mix_batch

RESNET = BackboneConfig("resnet18", pretrained=False)
DATA_CONFIG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear"}


def _multi_label_data(seed: int) -> TensorDataset:
    """Two synthetic single-label images side by side: the label set is both images' classes."""
    left = make_synthetic_dataset(NUM_CLASSES, samples_per_class=16, image_size=32, seed=seed)
    right = make_synthetic_dataset(NUM_CLASSES, samples_per_class=16, image_size=32, seed=seed + 100)
    (xl, yl), (xr, yr) = left.tensors, right.tensors
    images = torch.cat([xl[..., :16], xr[..., 16:]], dim=-1)
    targets = torch.zeros(len(yl), NUM_CLASSES, dtype=torch.long)
    targets[torch.arange(len(yl)), yl] = 1
    targets[torch.arange(len(yr)), yr] = 1
    return TensorDataset(images, targets)


def test_multi_label_model_trains_and_predicts_sigmoids(tmp_path):
    pl.seed_everything(0)
    model = ImageClassifier(RESNET, num_classes=NUM_CLASSES, multi_label=True, lr=2e-3, label_smoothing=0.05)
    assert isinstance(model.criterion, torch.nn.BCEWithLogitsLoss)
    assert type(model.metrics.get_metrics("val")["accuracy"]).__name__ == "MultilabelAccuracy"
    train = DataLoader(_multi_label_data(0), batch_size=16, shuffle=True)
    val = DataLoader(_multi_label_data(1), batch_size=64)
    trainer = make_trainer(tmp_path, max_epochs=4)
    before = trainer.validate(model, val, verbose=False)[0]
    trainer.fit(model, train, val)
    after = trainer.validate(model, val, verbose=False)[0]
    assert after["val/loss"] < 0.7 * before["val/loss"]
    assert after["val/accuracy"] > before["val/accuracy"] + 0.15
    probs = model.eval().predict_step(next(iter(val))[0][:5], 0)
    assert probs.shape == (5, NUM_CLASSES) and ((probs >= 0) & (probs <= 1)).all()
    assert not torch.allclose(probs.sum(1), torch.ones(5))  # independent sigmoids, not a softmax


def test_multi_label_mixup_trains(tmp_path):
    model = ImageClassifier(RESNET, num_classes=NUM_CLASSES, multi_label=True, mixup_alpha=0.4, cutmix_alpha=1.0)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(model, DataLoader(_multi_label_data(0), batch_size=8))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    torch.manual_seed(0)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(4)])
    mixed, target = mix_batch(x, torch.tensor([0, 1, 2, 3]), 4, cutmix_alpha=1.0)
    pasted = (mixed[0] == 3.0).float().mean().item()  # sample 0 receives a box of sample 3
    assert 0 < pasted < 1 and set(mixed[0].unique().tolist()) <= {0.0, 3.0}
    assert target[0, 3].item() == pytest.approx(pasted)
    assert target[0, 0].item() == pytest.approx(1 - pasted)
    with pytest.raises(ValueError, match="mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0"):
        mix_batch(x, torch.tensor([0, 1, 2, 3]), 4)


def test_class_weights_weight_the_training_loss_and_survive_checkpoints(tmp_path, train_loader):
    weights = [1.0, 2.0, 3.0, 4.0]
    model = ImageClassifier(RESNET, num_classes=NUM_CLASSES, class_weights=weights).eval()
    x, y = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 3, 3, 3, 2, 1])
    expected = torch.nn.functional.cross_entropy(model(x), y, weight=torch.tensor(weights))
    assert model.training_step((x, y), 0).item() == pytest.approx(expected.item(), rel=1e-5)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    trainer.fit(model, train_loader)
    trainer.save_checkpoint(tmp_path / "w.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "w.ckpt")
    assert loaded.criterion.weight.tolist() == weights


def test_apply_data_info_is_stored_in_checkpoints(tmp_path, train_loader):
    model = ImageClassifier(RESNET, num_classes=NUM_CLASSES)
    model.apply_data_info(["ant", "bee", "cat", "dog"], data_config=DATA_CONFIG, class_weights=torch.ones(4) * 2)
    assert model.class_names == ["ant", "bee", "cat", "dog"]
    assert model.criterion.weight.tolist() == [2.0] * 4
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1)
    trainer.fit(model, train_loader)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.class_names == ["ant", "bee", "cat", "dog"]
    assert loaded.data_config == {**DATA_CONFIG}
    with pytest.raises(
        ValueError, match=r"the data has 3 classes \(a, b, c\) but the model was built with num_classes=4"
    ):
        model.apply_data_info(["a", "b", "c"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cutmix_alpha": -1.0}, r"`cutmix_alpha` must be a number >= 0, got -1.0"),
        ({"class_weights": [1.0, 2.0]}, r"`class_weights` must be 4 numbers >= 0, not all 0, got \[1.0, 2.0\]"),
        ({"class_weights": [1.0, -1.0, 1.0, 1.0]}, r"`class_weights` must be 4 numbers >= 0, not all 0"),
        ({"class_weights": [0.0] * 4}, r"`class_weights` must be 4 numbers >= 0, not all 0"),
        (
            {"multi_label": True, "logging_config": LoggingConfig(log_confusion_matrix=True)},
            r"`logging_config.log_confusion_matrix` is for single-label models, not multi_label=True",
        ),
    ],
)
def test_bad_data_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(RESNET, num_classes=NUM_CLASSES, **kwargs)
