"""AutoTrainer: defaults, data hand-over, best checkpoint, resuming, seeding, bf16, tuning and its errors."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichModelSummary,
    RichProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader

from autotimm import BackboneConfig, ImageClassifier, ImageDataModule, MetricConfig, make_synthetic_dataset
from autotimm.training.trainer import AutoTrainer, TunerConfig, default_monitor
from autotimm.training.tuner import LR_FINDER_PLOT_FILE, TUNING_RESULTS_FILE

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = BackboneConfig("test_resnet", pretrained=False)
NAMES = ["ant", "bee", "cat", "dog"]
DATA_CONFIG = {
    "input_size": (3, 32, 32),
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "interpolation": "bilinear",
    "crop_pct": 1.0,
}
LABELS = [i % len(NAMES) for i in range(48)]
QUIET = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, num_sanity_val_steps=0)


class SyntheticDataModule(pl.LightningDataModule):
    """A stand-in for ImageDataModule: generated 32 px images, class names, data config, ``batch_size``."""

    def __init__(self, class_names=NAMES, batch_size: int = 16, samples_per_class: int = 16, shuffle: bool = True):
        super().__init__()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.data_config = dict(DATA_CONFIG)
        self.batch_size = batch_size
        self.samples_per_class = samples_per_class
        self.shuffle = shuffle
        self.configured_for = None
        self.train = self.val = None

    def configure_for(self, backbone):
        self.configured_for = backbone
        return self

    def setup(self, stage=None):
        if self.train is None:
            self.train = make_synthetic_dataset(self.num_classes, self.samples_per_class, 32, seed=0)
            self.val = make_synthetic_dataset(self.num_classes, 8, 32, seed=1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=64)


class LRRecorder(Callback):
    """Records the learning rate of every training step."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


class StopAfter(Callback):
    """Interrupts training after ``epochs`` epochs, as a crash or a pre-emption would."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _model(**kwargs) -> ImageClassifier:
    return ImageClassifier(**{"backbone": TINY, "num_classes": len(NAMES), "lr": 3e-3, **kwargs})


# ---------------------------------------------------------------- defaults
def test_defaults_logger_callbacks_and_user_callbacks(tmp_path):
    recorder = LRRecorder()
    trainer = AutoTrainer(output_dir=tmp_path, callbacks=[recorder], early_stopping_patience=3)
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert Path(trainer.logger.log_dir).parent == tmp_path / "logs"
    assert Path(trainer.default_root_dir) == tmp_path
    for kind in (RichProgressBar, RichModelSummary, ModelCheckpoint, EarlyStopping):
        assert any(isinstance(c, kind) for c in trainer.callbacks), kind
    assert recorder in trainer.callbacks
    best, last = trainer.checkpoint_callbacks
    assert best is trainer.checkpoint_callback and best.monitor == "val/loss" and best.save_top_k == 1
    assert last.monitor is None and last.filename == "last"
    assert Path(best.dirpath) == Path(last.dirpath) == tmp_path / "checkpoints" == trainer.checkpoint_dir
    assert trainer.early_stopping_callback.patience == 3


def test_switches_and_pass_through(tmp_path):
    trainer = AutoTrainer(
        output_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=TQDMProgressBar(),
        max_epochs=7,
        accumulate_grad_batches=2,
    )
    assert trainer.logger is None
    assert trainer.checkpoint_callback is None and trainer.early_stopping_callback is None
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    assert not any(isinstance(c, (RichProgressBar, RichModelSummary)) for c in trainer.callbacks)
    assert trainer.max_epochs == 7 and trainer.accumulate_grad_batches == 2
    csv = CSVLogger(tmp_path)
    assert AutoTrainer(output_dir=tmp_path, logger=csv).logger is csv


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "up"}, "`mode` must be 'min', 'max' or None, got 'up'"),
        ({"early_stopping_patience": -1}, "`early_stopping_patience` must be an int >= 0 or None, got -1"),
        ({"seed": "0"}, "`seed` must be an int or None, got '0'"),
        ({"monitor": ""}, "`monitor` must be a logged metric name"),
        ({"tuner_config": {"auto_lr": True}}, "`tuner_config` must be a TunerConfig, True (the learning-rate finder)"),
        ({"tuner_config": 1}, "False or None (no tuners), got 1"),
        ({"output_dir": None}, "`output_dir` must be a folder path"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AutoTrainer(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"auto_lr": 1}, "TunerConfig `auto_lr` must be True or False, got 1"),
        (
            {"lr_find_kwargs": {"max_lr": 1, "lr_max": 2}},
            "TunerConfig `lr_find_kwargs` got unknown arguments ['lr_max']",
        ),
        ({"batch_size_kwargs": {"datamodule": None}}, "got unknown arguments ['datamodule']; accepted: batch_arg_name"),
        ({"batch_size_kwargs": [("mode", "power")]}, "TunerConfig `batch_size_kwargs` must be a dict"),
    ],
)
def test_tuner_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TunerConfig(**kwargs)


def test_default_monitor_follows_the_metrics(tmp_path):
    assert default_monitor(_model()) == ("val/accuracy", "max")
    f1_only = [MetricConfig(name="f1", metric_class="F1Score", params={"average": "macro"})]
    assert default_monitor(_model(metrics=f1_only)) == ("val/loss", "min")
    assert AutoTrainer(output_dir=tmp_path, monitor="val/f1", **QUIET).checkpoint_callback.mode == "max"
    assert AutoTrainer(output_dir=tmp_path, monitor="val/f1", mode="min", **QUIET).checkpoint_callback.mode == "min"


# ------------------------------------------------------- data and checkpoint
def test_fit_hands_data_to_model_and_best_checkpoint_carries_it(tmp_path):
    data = SyntheticDataModule()
    model = _model()
    trainer = AutoTrainer(output_dir=tmp_path, max_epochs=2, early_stopping_patience=5, **QUIET)
    trainer.fit(model, data)  # the data module also goes second, positionally
    assert data.configured_for is model.backbone
    assert trainer.checkpoint_callback.monitor == "val/accuracy" and trainer.checkpoint_callback.mode == "max"
    assert trainer.early_stopping_callback.monitor == "val/accuracy"
    best = Path(trainer.checkpoint_callback.best_model_path)
    assert best.parent == tmp_path / "checkpoints" and (tmp_path / "checkpoints" / "last.ckpt").is_file()

    loaded = ImageClassifier.load_from_checkpoint(best)
    assert loaded.class_names == NAMES and loaded.hparams.data_config == DATA_CONFIG
    images, labels = data.val.tensors
    probs = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).predict(
        loaded, DataLoader(images, batch_size=64)
    )[0]
    assert probs.shape == (len(images), len(NAMES))
    torch.testing.assert_close(probs.sum(1), torch.ones(len(images)))
    accuracy = (probs.argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(trainer.checkpoint_callback.best_model_score.item(), abs=1e-6)


def test_class_count_mismatch_is_an_error(tmp_path):
    trainer = AutoTrainer(output_dir=tmp_path, max_epochs=1, **QUIET)
    with pytest.raises(ValueError, match=r"the data has 3 classes \(a, b, c\) .*num_classes=4"):
        trainer.fit(_model(), datamodule=SyntheticDataModule(class_names=["a", "b", "c"]))
    assert not (tmp_path / "checkpoints").exists()


def _array_data(labels, in_chans: int = 3, **kwargs) -> ImageDataModule:
    """A small ImageDataModule of random 16 px images (grey for ``in_chans=1``) with the given labels."""
    shape = (len(labels), 16, 16) + ((3,) if in_chans == 3 else ())
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8).numpy()
    options = dict(image_size=16, augmentation="none", batch_size=16, output_dir=None, class_names=NAMES, seed=0)
    return ImageDataModule(images=images, labels=labels, **{**options, **kwargs})


def test_no_validation_data_is_an_error_before_training(tmp_path, train_loader):
    # Lightning would only warn and leave best_model_path empty (or, with early stopping, fail after an epoch).
    for trainer_kwargs, data in [
        ({}, (train_loader,)),
        ({"early_stopping_patience": 2}, (_array_data(LABELS, val_split=0),)),
    ]:
        trainer = AutoTrainer(output_dir=tmp_path, max_epochs=1, **trainer_kwargs, **QUIET)
        with pytest.raises(ValueError, match=r"monitors 'val/accuracy' .* but this run has no validation data"):
            trainer.fit(_model(), *data)
        assert trainer.global_step == 0
    trainer = AutoTrainer(output_dir=tmp_path, max_epochs=1, monitor="train/loss", **QUIET)
    trainer.fit(_model(), train_loader)
    assert Path(trainer.checkpoint_callback.best_model_path).is_file()


def test_user_model_checkpoints_work_beside_autotimms(tmp_path):
    # A plain ModelCheckpoint() shared its state key with autotimm's last-checkpoint callback (Lightning refused it),
    # and one on val/accuracy with the best-checkpoint callback (their states were merged in checkpoints).
    mine = [ModelCheckpoint(dirpath=tmp_path / "mine"), ModelCheckpoint(monitor="val/accuracy", mode="max")]
    trainer = AutoTrainer(output_dir=tmp_path, max_epochs=1, callbacks=mine, **QUIET)
    trainer.fit(_model(), SyntheticDataModule(samples_per_class=4))
    assert trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")
    assert Path(mine[0].best_model_path).parent == tmp_path / "mine"
    states = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    checkpoint_states = [key for key in states if key.startswith(("ModelCheckpoint", "_AutotimmCheckpoint"))]
    assert len(checkpoint_states) == 4, list(states)  # four checkpoint callbacks, four states


def test_evaluation_configures_the_data_for_the_model(tmp_path):
    # A fresh data module defaults to 3 channels and timm's default preprocessing; the model decides.
    model = _model(backbone=BackboneConfig("test_resnet", pretrained=False, in_chans=1))
    trainer = AutoTrainer(output_dir=tmp_path, **QUIET)
    assert trainer.validate(model, _array_data(LABELS, in_chans=1), verbose=False)[0]["val/loss"] > 0
    assert trainer.test(model, datamodule=_array_data(LABELS, in_chans=1, test_split=0.2), verbose=False)
    assert trainer.predict(model, _array_data(LABELS, in_chans=1))[0].shape[1] == len(NAMES)


def test_balanced_class_weights_with_a_class_missing_from_training(tmp_path):
    data = _array_data([0] * 24 + [1] * 12 + [2] * 12, class_weights="balanced")  # no image of "dog"
    model = _model()
    AutoTrainer(output_dir=tmp_path, max_epochs=1, **QUIET).fit(model, data)
    weights = model.criterion.weight.tolist()
    assert weights == data.class_weights_tensor.tolist() and weights[3] == 0 and min(weights[:3]) > 0
    assert ImageClassifier.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt").hparams.class_weights[3] == 0


def test_resume_continues_epochs_steps_and_lr_schedule(tmp_path):
    initial = _model().state_dict()

    def run(output_dir, callbacks, ckpt_path=None):
        model = _model()
        model.load_state_dict(initial)
        recorder = LRRecorder()
        trainer = AutoTrainer(output_dir=output_dir, max_epochs=4, seed=0, callbacks=[recorder, *callbacks], **QUIET)
        trainer.fit(model, datamodule=SyntheticDataModule(shuffle=False), ckpt_path=ckpt_path)
        return trainer, model, recorder.lrs

    full, full_model, full_lrs = run(tmp_path / "full", [])
    first, _, first_lrs = run(tmp_path / "split", [StopAfter(2)])
    assert (first.current_epoch, first.global_step) == (2, 8)
    last = tmp_path / "split" / "checkpoints" / "last.ckpt"
    resumed, resumed_model, resumed_lrs = run(tmp_path / "split", [], ckpt_path=last)
    assert (resumed.current_epoch, resumed.global_step) == (full.current_epoch, full.global_step) == (4, 16)
    assert len(first_lrs) == len(resumed_lrs) == 8
    assert first_lrs + resumed_lrs == pytest.approx(full_lrs, rel=1e-12)
    assert full_lrs[-1] < full_lrs[8] < full_lrs[0]  # a decaying cosine, not a restart
    for name, value in full_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[name], value, msg=name)


def test_seed_makes_runs_repeat_with_deterministic_algorithms(tmp_path):
    weights = []
    for run in range(2):
        trainer = AutoTrainer(output_dir=tmp_path / str(run), seed=7, deterministic=True, max_epochs=1, **QUIET)
        model = _model(mixup_alpha=0.2)  # created after the trainer: same seeded initial weights
        trainer.fit(model, datamodule=SyntheticDataModule())
        weights.append(model.state_dict())
    assert torch.are_deterministic_algorithms_enabled()
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0, msg=name)
    torch.use_deterministic_algorithms(False)


def test_bf16_mixed_precision_fit_on_cpu(tmp_path):
    trainer = AutoTrainer(output_dir=tmp_path, precision="bf16-mixed", max_epochs=1, **QUIET)
    model = _model()
    trainer.fit(model, datamodule=SyntheticDataModule())
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 4
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_early_stopping_stops_a_stalled_run(tmp_path):
    trainer = AutoTrainer(output_dir=tmp_path, monitor="val/loss", early_stopping_patience=1, max_epochs=20, **QUIET)
    trainer.fit(_model(lr=1e-12, optimizer="sgd", scheduler=None), datamodule=SyntheticDataModule())
    assert trainer.current_epoch < 20 and trainer.early_stopping_callback.stopped_epoch > 0


# ------------------------------------------------------------------ tuning
class WeightsAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module):
        self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}


def test_tuners_change_lr_and_batch_size_and_write_results(tmp_path, capsys):
    data = SyntheticDataModule(batch_size=4, samples_per_class=32)
    model = _model(lr=1e-6)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    spy = WeightsAtTrainStart()
    config = TunerConfig(
        auto_lr=True,
        auto_batch_size=True,
        lr_find_kwargs={"num_training": 30, "min_lr": 1e-5, "max_lr": 1.0},
        batch_size_kwargs={"init_val": 4, "max_trials": 3, "steps_per_trial": 1},
    )
    trainer = AutoTrainer(output_dir=tmp_path, tuner_config=config, max_epochs=1, callbacks=[spy], **QUIET)
    trainer.fit(model, datamodule=data)

    results = json.loads((tmp_path / TUNING_RESULTS_FILE).read_text())
    assert results == trainer.tuning_results
    assert results["batch_size"]["initial"] == 4 and results["batch_size"]["found"] == data.batch_size == 16
    assert results["lr"]["initial"] == 1e-6
    assert results["lr"]["suggested"] == results["lr"]["applied"] == model.hparams.lr != 1e-6
    assert 1e-5 <= model.hparams.lr <= 1.0
    assert (tmp_path / LR_FINDER_PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "learning rate" in capsys.readouterr().out
    # The searches trained the model; Lightning put the initial weights back before the real run.
    for name, value in initial.items():
        torch.testing.assert_close(spy.weights[name], value, rtol=0, atol=0, msg=name)
    assert trainer.global_step == 128 // 16 and trainer.optimizers[0].param_groups[0]["initial_lr"] == model.hparams.lr
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["lr"] == model.hparams.lr


def test_tuning_leaves_the_tensorboard_hparams_file_intact(tmp_path):
    # The finder's trial run used to write an empty hparams.yaml ("{}") that the real run could not overwrite.
    config = TunerConfig(auto_lr=True, lr_find_kwargs={"num_training": 15, "early_stop_threshold": None})
    trainer = AutoTrainer(
        output_dir=tmp_path, tuner_config=config, max_epochs=1, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(_model(), SyntheticDataModule(samples_per_class=4))
    log_dir = Path(trainer.logger.log_dir)
    assert "num_classes: 4" in (log_dir / "hparams.yaml").read_text()
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1


def test_tuner_config_false_runs_no_tuner_and_true_the_lr_finder(tmp_path):
    off = AutoTrainer(output_dir=tmp_path / "off", tuner_config=False, max_epochs=1, **QUIET)
    model = _model()
    off.fit(model, datamodule=SyntheticDataModule(samples_per_class=4))
    assert not off.tuner_config.enabled and off.tuning_results == {} and model.hparams.lr == _model().hparams.lr
    assert not (tmp_path / "off" / TUNING_RESULTS_FILE).exists()

    on = AutoTrainer(output_dir=tmp_path / "on", tuner_config=True, max_epochs=1, **QUIET)
    assert on.tuner_config == TunerConfig(auto_lr=True)
    on.tuner_config.lr_find_kwargs.update(num_training=20, early_stop_threshold=None)  # a short sweep
    on.fit(model, datamodule=SyntheticDataModule())
    result = on.tuning_results["lr"]
    assert len(result["curve"]["lr"]) == 20 and model.hparams.lr == result["applied"] == result["suggested"]
    assert (tmp_path / "on" / TUNING_RESULTS_FILE).exists()


def test_lr_finder_without_suggestion_raises(tmp_path):
    trainer = AutoTrainer(
        output_dir=tmp_path,
        tuner_config=TunerConfig(auto_lr=True, lr_find_kwargs={"num_training": 8}),
        max_epochs=1,
        **QUIET,
    )
    with pytest.raises(RuntimeError, match=r"could not suggest a learning rate: it recorded 8 losses"):
        trainer.fit(_model(), datamodule=SyntheticDataModule())
    assert trainer.global_step == 0 and not (tmp_path / TUNING_RESULTS_FILE).exists()


def test_tuner_failures_raise_with_the_cause(tmp_path, train_loader, val_loader):
    bad_attr = TunerConfig(auto_lr=True, lr_find_kwargs={"attr_name": "base_lr"})
    trainer = AutoTrainer(output_dir=tmp_path, tuner_config=bad_attr, max_epochs=1, **QUIET)
    with pytest.raises(RuntimeError, match=r"learning-rate finder failed: AttributeError: .*base_lr") as info:
        trainer.fit(_model(), datamodule=SyntheticDataModule())
    assert isinstance(info.value.__cause__, AttributeError)

    no_datamodule = AutoTrainer(output_dir=tmp_path, tuner_config=TunerConfig(auto_batch_size=True), **QUIET)
    with pytest.raises(ValueError, match=r"auto_batch_size=True\) needs a data module"):
        no_datamodule.fit(_model(), train_loader, val_loader)


def test_last_checkpoint_follows_every_epoch_while_best_stays(tmp_path):
    # Lightning 2.6's save_last writes last.ckpt only along with a new best; ours must follow every epoch.
    trainer = AutoTrainer(output_dir=tmp_path, monitor="epoch", mode="min", max_epochs=3, **QUIET)
    trainer.fit(_model(), datamodule=SyntheticDataModule(samples_per_class=4))
    assert Path(trainer.checkpoint_callback.best_model_path).name == "epoch=0-step=1.ckpt"
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch=0-step=1.ckpt", "last.ckpt"]


def test_lr_finder_sweeps_a_model_with_warmup(tmp_path):
    config = TunerConfig(auto_lr=True, lr_find_kwargs={"num_training": 20, "early_stop_threshold": None})
    trainer = AutoTrainer(output_dir=tmp_path, tuner_config=config, max_epochs=30, **QUIET)
    trainer.fit(_model(scheduler_kwargs={"warmup_steps": 10}), datamodule=SyntheticDataModule(samples_per_class=4))
    lrs = trainer.tuning_results["lr"]["curve"]["lr"]
    assert len(lrs) == 20 and all(b > a for a, b in itertools.pairwise(lrs))


# ------------------------------------------------------------- end to end
def test_digits_end_to_end_reaches_90_percent(tmp_path):
    pytest.importorskip("sklearn")
    from autotimm.data import ImageDataModule

    data = ImageDataModule(
        dataset="digits", image_size=32, augmentation="none", batch_size=64, num_workers=0, output_dir=tmp_path
    )
    model = ImageClassifier(TINY, num_classes=10, lr=1e-2, weight_decay=0.0)
    trainer = AutoTrainer(output_dir=tmp_path, max_epochs=4, seed=0, **QUIET)
    trainer.fit(model, datamodule=data)
    assert trainer.checkpoint_callback.best_model_score.item() >= 0.90

    best = ImageClassifier.load_from_checkpoint(trainer.checkpoint_callback.best_model_path)
    assert best.class_names == [str(d) for d in range(10)]
    assert tuple(best.hparams.data_config["input_size"]) == (3, 32, 32)
    images, labels = next(iter(data.val_dataloader()))
    accuracy = (best.eval()(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.85
