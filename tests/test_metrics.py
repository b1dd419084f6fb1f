"""MetricConfig validation and MetricManager behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from autotimm import BackboneConfig, ImageClassifier, MetricConfig, MetricManager, default_metrics


def test_torchmetrics_class_gets_num_classes_and_task_injected():
    metric = MetricConfig(name="acc", metric_class="Accuracy").build(num_classes=7)
    assert isinstance(metric, MulticlassAccuracy) and metric.num_classes == 7
    f1 = MetricConfig(name="f1", metric_class="MulticlassF1Score", params={"average": "macro"}).build(3)
    assert isinstance(f1, MulticlassF1Score) and f1.num_classes == 3 and f1.average == "macro"


def test_custom_backend_takes_a_dotted_path():
    cfg = MetricConfig(name="auroc", backend="custom", metric_class="torchmetrics.classification.MulticlassAUROC")
    assert isinstance(cfg.build(4), MulticlassAUROC)


def test_manager_holds_one_instance_per_stage_in_module_dicts():
    configs = [
        MetricConfig(name="acc", metric_class="Accuracy", stages=["train", "val"]),
        MetricConfig(name="f1", metric_class="F1Score", params={"average": "macro"}, stages=["test"]),
    ]
    manager = MetricManager(configs, num_classes=3)
    assert isinstance(manager.train_metrics, nn.ModuleDict)
    assert list(manager.get_metrics("train")) == ["acc"]
    assert list(manager.get_metrics("val")) == ["acc"]
    assert list(manager.get_metrics("test")) == ["f1"]
    assert manager.get_metrics("train")["acc"] is not manager.get_metrics("val")["acc"]
    assert [cfg.name for cfg, _ in manager.items("train")] == ["acc"]
    # Metric state moves with the module (here: dtype, the CPU stand-in for a device move).
    state = manager.get_metrics("val")["acc"]
    manager.to(torch.float64)
    assert isinstance(state, MulticlassAccuracy)
    with pytest.raises(ValueError, match=r"unknown stage 'predict'; accepted: train, val, test"):
        manager.get_metrics("predict")


def test_metrics_are_submodules_of_the_classifier_and_compute_correctly():
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=3)
    assert model.metrics.val_metrics["accuracy"] in list(model.modules())
    metric = model.metrics.get_metrics("val")["accuracy"]
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    metric.update(logits, torch.tensor([0, 1, 2, 1]))
    assert metric.compute().item() == pytest.approx(0.75)


def test_default_metrics():
    assert [c.name for c in default_metrics(5)] == ["accuracy", "f1_macro"]
    assert [c.name for c in default_metrics(6)] == ["accuracy", "top5_accuracy", "f1_macro"]
    top5 = default_metrics(10)[1].build(10)
    assert top5.top_k == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric_class": "Acuracy"}, r"torchmetrics has no metric_class 'Acuracy'; did you mean 'Accuracy'"),
        (
            {"metric_class": "Accuracy", "backend": "sklearn"},
            r"unknown `backend` 'sklearn'; accepted: torchmetrics, custom",
        ),
        ({"metric_class": "Accuracy", "stages": ["train", "predict"]}, r"unknown `stages` \['predict'\]"),
        ({"metric_class": "Accuracy", "stages": []}, r"unknown `stages` \[\]"),
        ({"metric_class": ""}, r"`metric_class` is required"),
        ({"metric_class": "torch.nn.Linear", "backend": "custom"}, r"'torch.nn.Linear' is not a torchmetrics.Metric"),
        ({"metric_class": "nowhere.Metric", "backend": "custom"}, r"cannot import module 'nowhere'"),
        ({"metric_class": "Accuracy", "log_on_step": False, "log_on_epoch": False}, r"logs nothing"),
    ],
)
def test_bad_config_fails_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MetricConfig(name="m", **kwargs)


def test_bad_name_params_and_duplicates():
    with pytest.raises(ValueError, match=r"`name` must be letters, digits, '_' or '-', got 'val.acc'"):
        MetricConfig(name="val.acc", metric_class="Accuracy")
    bad_params = MetricConfig(name="acc", metric_class="Accuracy", params={"bogus": 1})
    with pytest.raises(ValueError, match=r"MetricConfig 'acc': Accuracy\(.*bogus.*\) failed"):
        MetricManager([bad_params], num_classes=3)
    acc = MetricConfig(name="acc", metric_class="Accuracy")
    with pytest.raises(ValueError, match=r"duplicate metric names: \['acc'\]"):
        MetricManager([acc, acc], num_classes=3)
    with pytest.raises(ValueError, match=r"`metrics` must hold MetricConfig objects, got str"):
        MetricManager(["accuracy"], num_classes=3)


def test_epoch_values_compute_over_every_step_then_reset():
    configs = [
        MetricConfig(name="accuracy", metric_class="Accuracy"),
        MetricConfig(name="acc_both", metric_class="Accuracy", log_on_step=True, log_on_epoch=True),
    ]
    manager = MetricManager(configs, num_classes=3)
    preds = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    step = manager.step_values("val", preds[:2], torch.tensor([0, 1]))  # both right
    assert [(k, round(float(v), 3)) for k, v, _ in step] == [("val/acc_both_step", 1.0)]
    manager.step_values("val", preds[2:], torch.tensor([0, 0]))  # one right of two
    epoch = {k: round(float(v), 3) for k, v, _ in manager.epoch_values("val")}
    assert epoch == {"val/accuracy": 0.75, "val/acc_both_epoch": 0.75}
    assert manager.epoch_values("val") == []  # reset: nothing seen since
