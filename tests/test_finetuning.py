"""Fine-tuning recipes: layer decay, progressive unfreezing, EMA, cached-feature probe, channels_last."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import make_trainer

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule, make_synthetic_dataset
from autotimm.models.stages import backbone_layers, backbone_stages
from autotimm.training.ema import EMA, ema_decay_at
from autotimm.training.feature_cache import FeatureDataModule, FeatureDataset, compute_features
from autotimm.training.unfreezing import UnfreezeSchedule

RESNET = BackboneConfig("test_resnet", pretrained=False)


def _classifier(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    kwargs.setdefault("scheduler", None)
    return ImageClassifier(RESNET, num_classes=4, **kwargs)


def _lr_by_name(model: ImageClassifier, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if id(p) in lr_of}


# ----------------------------------------------------------------- layer decay
def test_layer_decay_gives_the_documented_per_layer_learning_rates():
    model = _classifier(lr=0.01, layer_decay=0.5)
    layers = backbone_layers(model.backbone)
    assert len(layers) == 5  # test_resnet: the stem and 4 one-block stages
    lrs = _lr_by_name(model, model.configure_optimizers())
    assert lrs["head.fc.weight"] == pytest.approx(0.01)
    assert lrs["backbone.layer4.0.conv1.weight"] == pytest.approx(0.01 * 0.5)
    assert lrs["backbone.layer3.0.conv1.weight"] == pytest.approx(0.01 * 0.5**2)
    assert lrs["backbone.conv1.0.weight"] == pytest.approx(0.01 * 0.5**5)
    for depth, names in enumerate(layers):
        for name in names:
            assert lrs[f"backbone.{name}"] == pytest.approx(0.01 * 0.5 ** (5 - depth)), name
    plain = _classifier(lr=0.01)
    without = _lr_by_name(plain, plain.configure_optimizers())
    assert len(without) == len(lrs) and set(without.values()) == {0.01}


def test_layer_decay_survives_onecycle_and_warmup_schedules(train_loader):
    """Per-group rates keep their ratios through a schedule (OneCycle gets one max_lr per group)."""
    model = _classifier(
        lr=0.01, layer_decay=0.5, scheduler="onecycle", scheduler_kwargs={"warmup_steps": 2}, freeze_backbone=False
    )
    trainer = make_trainer(max_epochs=1, limit_train_batches=4)
    trainer.fit(model, train_loader)
    optimizer = trainer.optimizers[0]
    head = next(g for g in optimizer.param_groups if g["layer"] == -1)
    stem = min((g for g in optimizer.param_groups if g["layer"] == 0), key=lambda g: g["weight_decay"])
    assert stem["lr"] / head["lr"] == pytest.approx(0.5**5, rel=1e-6)


def test_layer_decay_on_a_vit_follows_timms_blocks():
    model = ImageClassifier(
        BackboneConfig("test_vit", pretrained=False), num_classes=3, lr=1.0, layer_decay=0.8, scheduler=None
    )
    layers = backbone_layers(model.backbone)
    lrs = _lr_by_name(model, model.configure_optimizers())
    assert lrs["backbone.patch_embed.proj.weight"] == pytest.approx(0.8 ** len(layers))
    last_block = max(int(n.split(".")[2]) for n in lrs if n.startswith("backbone.blocks."))
    assert lrs[f"backbone.blocks.{last_block}.mlp.fc1.weight"] == pytest.approx(0.8)


# ----------------------------------------------------------- progressive unfreezing
class _Recorder(pl.Callback):
    """Trainable names, weights and BatchNorm statistics at each epoch's first batch and at its end."""

    def __init__(self) -> None:
        self.trainable: list[set[str]] = []
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.trainable.append({n for n, p in pl_module.named_parameters() if p.requires_grad})
            self.before.append(copy.deepcopy(pl_module.state_dict()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_epoch_end(self, trainer, pl_module):
        self.after.append(copy.deepcopy(pl_module.state_dict()))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


def test_unfreeze_schedule_changes_exactly_the_expected_trainable_set(train_loader):
    """Head only, then layer4, then all; OneCycle keeps stepping through each unfreeze (no rebuild, no crash)."""
    model = _classifier(unfreeze_schedule={0: 0, 1: 1, 2: "all"}, scheduler="onecycle", lr=0.01)
    recorder = _Recorder()
    trainer = make_trainer(max_epochs=3, limit_train_batches=3, callbacks=[recorder])
    trainer.fit(model, train_loader)

    head = {"head.fc.weight", "head.fc.bias"}
    layer4 = {n for n, _ in model.named_parameters() if n.startswith("backbone.layer4.")}
    assert recorder.trainable[0] == head
    assert recorder.trainable[1] == head | layer4
    assert recorder.trainable[2] == {n for n, _ in model.named_parameters()}

    for epoch, (before, after) in enumerate(zip(recorder.before, recorder.after, strict=True)):
        assert _changed(before, after, "head."), epoch
        # Weights and BatchNorm statistics of frozen stages stay exactly as they were.
        assert _changed(before, after, "backbone.layer4.") == (epoch >= 1), epoch
        assert _changed(before, after, "backbone.layer1.") == (epoch >= 2), epoch
        assert _changed(before, after, "backbone.bn1.running_mean") == (epoch >= 2), epoch
    # One optimizer and one OneCycle schedule throughout: the lr curve is continuous and completes.
    assert len(trainer.optimizers[0].param_groups) == len(model.configure_optimizers()[0][0].param_groups)
    assert recorder.lrs[-1] < recorder.lrs[len(recorder.lrs) // 2]


def test_unfreeze_schedule_resumes_at_the_right_stage(tmp_path, train_loader):
    model = _classifier(unfreeze_schedule=[(0, 0), (1, "all")])
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, enable_checkpointing=True)
    trainer.fit(model, train_loader)
    checkpoint = next(Path(tmp_path).rglob("*.ckpt"))
    resumed = ImageClassifier.load(checkpoint)
    assert resumed.hparams.unfreeze_schedule == {0: 0, 1: "all"}
    recorder = _Recorder()
    make_trainer(max_epochs=2, limit_train_batches=2, callbacks=[recorder]).fit(
        _classifier(unfreeze_schedule={0: 0, 1: "all"}), train_loader, ckpt_path=checkpoint
    )
    assert recorder.trainable == [{n for n, _ in resumed.named_parameters()}]


def test_backbone_stages_and_schedule_lookup():
    import timm

    assert backbone_stages(timm.create_model("resnet18", num_classes=0)) == [
        "conv1+bn1",
        "layer1",
        "layer2",
        "layer3",
        "layer4",
    ]
    schedule = UnfreezeSchedule({"2": 1, 0: 0, 5: "all"})  # YAML keys may be strings
    assert [schedule.stages_at(e) for e in range(7)] == [0, 0, 1, 1, 1, "all", "all"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer_decay": 0}, "`layer_decay` must be a number in \\(0, 1\\]"),
        ({"layer_decay": 1.5}, "`layer_decay`.*got 1.5"),
        ({"ema_decay": 1.0}, "`ema_decay` must be a number in \\(0, 1\\)"),
        ({"cache_features": True}, "needs `freeze_backbone=True`"),
        ({"cache_features": True, "freeze_backbone": True, "mixup_alpha": 0.2}, "cannot mix images"),
        ({"channels_last": "yes"}, "`channels_last` must be True or False"),
        ({"unfreeze_schedule": {0: 1}, "freeze_backbone": True}, "does not go with `freeze_backbone=True`"),
        ({"unfreeze_schedule": {-1: 1}}, "`unfreeze_schedule epoch` must be an int >= 0 .*got -1"),
        ({"unfreeze_schedule": {0: 2, 3: 1}}, "must never freeze again"),
        ({"unfreeze_schedule": {0: "most"}}, "`unfreeze_schedule stages at epoch 0` must be an int >= 0 .*got 'most'"),
        ({"unfreeze_schedule": {}}, "is empty"),
        ({"unfreeze_schedule": 3}, "must be \\{epoch: stages\\}"),
    ],
)
def test_bad_fine_tuning_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(RESNET, num_classes=4, **kwargs)


# ------------------------------------------------------------------------ EMA
def _eval_loss(model: ImageClassifier, loader) -> float:
    model.eval()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y, reduction="sum") for x, y in loader]
    return float(sum(losses) / len(loader.dataset))


def test_ema_weights_are_validated_saved_and_restored(tmp_path, train_loader, val_loader):
    model = _classifier(ema_decay=0.9, lr=0.01)
    trainer = AutoTrainer(
        output_dir=tmp_path,
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        monitor="val/loss",
    )
    trainer.fit(model, train_loader, val_loader)
    assert any(isinstance(c, EMA) for c in trainer.callbacks)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ema, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.endswith("weight"))

    # The saved (EMA) weights are the ones validated: they reproduce the logged val/loss; raw ones do not.
    loaded = ImageClassifier.load(tmp_path / "checkpoints" / "last.ckpt")
    assert all(torch.equal(loaded.state_dict()[k], ema[k]) for k in ema)
    logged = float(trainer.callback_metrics["val/loss"])
    assert _eval_loss(loaded, val_loader) == pytest.approx(logged, rel=1e-4)
    raw_model = _classifier(ema_decay=0.9)
    raw_model.load_state_dict(raw)
    assert _eval_loss(raw_model, val_loader) != pytest.approx(logged, rel=1e-3)
    # After fit the model in memory holds the average too.
    assert all(torch.equal(model.state_dict()[k], ema[k]) for k in ema)

    # Resume: the raw weights go back into the model, the average into the EMA.
    seen = {}

    class Peek(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            ema_cb = next(c for c in trainer.callbacks if isinstance(c, EMA))
            seen["raw"] = {k: v.clone() for k, v in pl_module.state_dict().items()}
            seen["ema"] = {k: v.clone() for k, v in ema_cb.average_model.module.state_dict().items()}

    resumed = _classifier(ema_decay=0.9, lr=0.01)
    make_trainer(max_epochs=3, callbacks=[Peek()]).fit(
        resumed, train_loader, val_loader, ckpt_path=tmp_path / "checkpoints" / "last.ckpt"
    )
    assert all(torch.equal(seen["raw"][k], raw[k]) for k in raw)
    assert all(torch.equal(seen["ema"][k], ema[k]) for k in ema)


def test_ema_decay_warms_up_like_timm():
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert ema_decay_at(0.5, 0, warmup=False) == 0.5
    with pytest.raises(ValueError, match="ema_decay"):
        EMA(decay=1.5)


# ------------------------------------------------------------ cached-feature probe
def _array_module(tmp_path: Path) -> ImageDataModule:
    """Separable generated images as uint8 arrays: a random-init backbone's features still separate them."""
    images, labels = make_synthetic_dataset(4, samples_per_class=40, image_size=32, seed=0, noise=0.5).tensors
    pixels = ((images - images.min()) / (images.max() - images.min()) * 255).byte().permute(0, 2, 3, 1).numpy()
    return ImageDataModule(
        images=pixels,
        labels=labels.numpy(),
        augmentation="none",
        batch_size=32,
        output_dir=tmp_path,
        image_size=32,
        test_split=0.0,
    )


def _probe(tmp_path: Path, cache: bool) -> tuple[ImageClassifier, AutoTrainer]:
    torch.manual_seed(0)
    model = ImageClassifier(RESNET, num_classes=4, freeze_backbone=True, cache_features=cache, lr=0.05, scheduler=None)
    trainer = AutoTrainer(
        output_dir=tmp_path / f"cache{cache}",
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        seed=0,
    )
    trainer.fit(model, _array_module(tmp_path))
    return model, trainer


def test_cached_and_uncached_linear_probes_agree(tmp_path):
    cached, trainer = _probe(tmp_path, cache=True)
    assert isinstance(trainer.datamodule, FeatureDataModule)
    assert trainer.datamodule.features["train"].tensors[0].shape == (128, cached.backbone.num_features)
    plain, plain_trainer = _probe(tmp_path, cache=False)
    cached_acc = float(trainer.callback_metrics["val/accuracy"])
    plain_acc = float(plain_trainer.callback_metrics["val/accuracy"])
    assert cached_acc >= 0.9 and abs(cached_acc - plain_acc) <= 0.05, (cached_acc, plain_acc)
    assert all(
        torch.equal(a, b) for a, b in zip(cached.backbone.parameters(), plain.backbone.parameters(), strict=True)
    )
    # The saved checkpoint is the whole model: it classifies images.
    best = ImageClassifier.load(trainer.checkpoint_callback.best_model_path)
    data = _array_module(tmp_path)
    data.setup()
    images, labels = next(iter(data.eval_dataloader("val")))
    assert (best(images).argmax(1) == labels).float().mean().item() >= 0.9


def test_the_cache_pass_runs_channels_last_in_large_batches_and_restores_the_backbone(tmp_path):
    model = _classifier(freeze_backbone=True, cache_features=True, channels_last=False)
    data = _array_module(tmp_path)
    batch_sizes = []
    eval_dataloader = data.eval_dataloader

    def recording_eval_dataloader(split, batch_size=None):
        batch_sizes.append(batch_size)
        return eval_dataloader(split, batch_size=batch_size)

    data.eval_dataloader = recording_eval_dataloader
    formats = []
    conv = model.backbone.conv1[0]
    hook = conv.register_forward_pre_hook(
        lambda module, args: formats.append(
            (args[0].is_contiguous(memory_format=torch.channels_last), module.weight.is_contiguous())
        )
    )
    cache = FeatureDataModule(model, data, progress=False)
    cache.setup("fit")
    hook.remove()
    assert batch_sizes == [128, 128]  # on the CPU: at least 128 images a batch, whatever the training batch
    assert formats and all(f == (True, False) for f in formats)  # channels-last images and weights
    assert all(p.is_contiguous() for p in model.backbone.parameters())  # the weights' format is restored
    features, targets = compute_features(model.backbone, eval_dataloader("train"), progress=False)
    torch.testing.assert_close(cache.features["train"].tensors[0], features, atol=1e-4, rtol=1e-4)
    assert torch.equal(cache.features["train"].tensors[1], targets)

    images, labels = next(iter(cache.train_dataloader()))
    assert images.shape == (32, model.backbone.num_features) and labels.shape == (32,)
    validation = list(cache.val_dataloader())
    assert len(validation) == 1 and len(validation[0][0]) == len(cache.features["val"])  # one batch

    data.eval_dataloader = recording_eval_dataloader
    batch_sizes.clear()
    FeatureDataModule(model, data, cache_batch_size=48, progress=False).setup("fit")
    assert batch_sizes == [48, 48]
    with pytest.raises(ValueError, match="batch_size"):
        eval_dataloader("train", batch_size=0)
    with pytest.raises(ValueError, match="cache_batch_size"):
        FeatureDataModule(model, data, cache_batch_size=0)
    with pytest.raises(ValueError, match="channels_last"):
        FeatureDataModule(model, data, channels_last="yes")


def test_fit_takes_a_feature_data_module_with_its_own_settings(tmp_path):
    model = _classifier(freeze_backbone=True, cache_features=True, lr=0.05)
    data = _array_module(tmp_path)
    features = FeatureDataModule(model, data, cache_batch_size=16, channels_last=False, progress=False)
    trainer = AutoTrainer(
        output_dir=tmp_path / "run", max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, seed=0
    )
    trainer.fit(model, features)
    assert trainer.datamodule is features and len(features.features["train"]) == 128
    assert model.hparams.class_names == data.class_names  # the wrapped data module's class info reached the model
    assert float(trainer.callback_metrics["val/accuracy"]) >= 0.9

    with pytest.raises(ValueError, match="another model"):
        trainer.fit(_classifier(freeze_backbone=True, cache_features=True), features)
    with pytest.raises(ValueError, match="cache_features=True"):
        trainer.fit(_classifier(), FeatureDataModule(model, data))
    loaders = FeatureDataModule(model, train_dataloader=data.eval_dataloader("train"))
    with pytest.raises(ValueError, match="built from a data module"):
        trainer.fit(model, loaders)


def test_feature_dataset_gathers_a_batch_like_single_samples():
    dataset = FeatureDataset(torch.randn(10, 4), torch.arange(10))
    pairs = dataset.__getitems__([3, 7, 1])
    assert len(pairs) == 3
    for (feature, target), index in zip(pairs, [3, 7, 1], strict=True):
        expected_feature, expected_target = dataset[index]
        assert torch.equal(feature, expected_feature) and torch.equal(target, expected_target)
    features, targets = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert torch.equal(features, dataset.tensors[0][:4]) and torch.equal(targets, torch.arange(4))


def test_cache_features_on_a_plain_trainer_warns_and_trains_on_images(train_loader):
    model = ImageClassifier(RESNET, num_classes=4, freeze_backbone=True, cache_features=True, scheduler=None)
    with pytest.warns(UserWarning, match="trains on images, not cached features"):
        make_trainer(max_epochs=1, limit_train_batches=1).fit(model, train_loader)


# --------------------------------------------------------------- channels_last
def test_channels_last_is_the_default_gives_the_same_logits_and_trains(train_loader):
    plain = _classifier(channels_last=False)
    fast = _classifier()  # channels-last by default
    fast.load_state_dict(plain.state_dict())
    assert fast.hparams.channels_last is True and not plain.hparams.channels_last
    assert fast.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.backbone.conv1[0].weight.is_contiguous()
    x = torch.randn(3, 3, 32, 32)
    plain.eval(), fast.eval()
    np.testing.assert_allclose(plain(x).detach().numpy(), fast(x).detach().numpy(), atol=1e-5)
    make_trainer(max_epochs=1, limit_train_batches=2).fit(fast, train_loader)
    assert fast.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_weight_decay_follows_shapes_recorded_before_fsdp_flattens_parameters():
    model = _classifier(layer_decay=0.5, weight_decay=0.05)
    for param in model.parameters():
        param.data = param.data.reshape(-1)  # what FSDP's flat shards look like to configure_optimizers
    decay = {id(p): g["weight_decay"] for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert decay[id(model.backbone.layer4[0].conv1.weight)] == 0.05
    assert decay[id(model.head.fc.weight)] == 0.05
    assert decay[id(model.head.fc.bias)] == 0.0


@pytest.mark.parametrize("name", ["lcnet_050", "mobilenetv3_small_050"])
def test_head_matches_backbones_that_keep_a_conv_head(name):
    model = ImageClassifier(BackboneConfig(name, pretrained=False), num_classes=3, scheduler=None).eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
