"""A new user's first hour: the README's first screen and the quickstart, step by step, on a small real folder.

The folder holds crops of three real photographs (``cat``, ``coffee``,
``rocket``; see `data_helpers.write_photo_folder`). Each step is checked
against what the README and the quickstart say it does. The backbone is timm's
tiny ``test_resnet`` instead of ``resnet18``, for speed: the code path is the same.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from data_helpers import write_class_folders, write_photo_folder, write_photos
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from autotimm import (
    AutoTrainer,
    BackboneConfig,
    ImageClassifier,
    ImageDataModule,
    OnnxPredictor,
    evaluate,
    export,
    make_synthetic_dataset,
)
from autotimm.cli import main

CLASSES = ["cat", "coffee", "rocket"]
TINY = BackboneConfig("test_resnet", pretrained=False)
#: Start-up messages the issue saw on every run, none of which helps a user.
NOISE = [
    "Trainer already configured with model summary callbacks",
    "litlogger",
    "LeafSpec",
    "FLOPs",
    "v_num",
    "smaller than the logging interval",
    "Loading `train_dataloader` to estimate",
]


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    """A working folder with ``path/to/images`` (45 photos crops in 3 classes) and ``photos/``."""
    monkeypatch.chdir(tmp_path)
    write_photo_folder(tmp_path / "path" / "to" / "images", per_class=15, size=64)
    write_photos(tmp_path / "photos")
    return tmp_path


def _scalars(run: Path) -> dict[str, int]:
    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    return {tag: len(events.Scalars(tag)) for tag in events.Tags()["scalars"]}


def test_readme_first_screen_then_use_the_trained_model(newcomer, capfd, single_thread):
    # "In a few lines": no num_classes, no output_dir for the data.
    data = ImageDataModule("path/to/images")
    model = ImageClassifier(TINY)
    trainer = AutoTrainer(max_epochs=2, output_dir="runs/pets")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=data)
    shown = capfd.readouterr()
    printed = shown.out + shown.err + "\n".join(str(w.message) for w in caught)

    # The classes come from the data; 20% validation and 10% test are held out, split once, with the run.
    assert model.class_names == CLASSES and model.hparams.num_classes == 3
    assert data.splits == ["train", "val", "test"]
    assert sorted(data.class_counts["test"]) == [1, 1, 2]
    assert sum(map(len, data.tables.values())) == 45 and len(data.tables["val"]) == 9
    split_file = newcomer / "runs" / "pets" / "splits.json"
    assert json.loads(split_file.read_text())["class_names"] == CLASSES
    assert not (newcomer / "autotimm_output").exists()  # the split file went with the run, not elsewhere
    checkpoints = {p.name for p in (newcomer / "runs" / "pets" / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # the best one and last.ckpt

    # What the logs show: a training curve although an epoch has 1 batch, and no start-up noise.
    scalars = _scalars(newcomer / "runs" / "pets")
    assert scalars["train/loss"] == 2 and scalars["train/loss_epoch"] == 2 and scalars["val/accuracy"] == 2
    assert trainer.log_every_n_steps == 1
    assert "Trainable params" in printed  # the model summary is still there
    for noise in NOISE:
        assert noise not in printed, noise

    # "Use the trained model": class names and preprocessing come with the checkpoint.
    model = ImageClassifier.load("runs/pets/checkpoints/last.ckpt")
    assert model.class_names == CLASSES and model.data_config["input_size"] == [3, 160, 160]
    predictions = model.predict("photos/", top_k=3, tta=True)
    assert [Path(p.source).name for p in predictions] == ["cat.jpg", "coffee.jpg", "rocket.jpg"]
    for prediction in predictions:
        assert sorted(prediction.labels) == CLASSES and sum(prediction.probabilities) == pytest.approx(1, abs=1e-4)
        assert str(prediction).startswith(prediction.source) and prediction.label in str(prediction)
    calibration = model.calibrate(data)
    assert calibration.temperature > 0 and float(model.temperature) == pytest.approx(calibration.temperature)
    report = evaluate(model, data, "runs/pets/eval", verbose=False)  # failed before test_split defaulted to 0.1
    assert report.split == "test" and report.num_images == len(data.tables["test"]) and report.class_names == CLASSES
    for name in ("metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.png", "reliability_diagram.png"):
        assert (newcomer / "runs" / "pets" / "eval" / name).is_file(), name
    assert json.loads((newcomer / "runs" / "pets" / "eval" / "metrics.json").read_text())["accuracy"] == report.accuracy
    export(model, "pets.onnx")
    onnx = OnnxPredictor("pets.onnx").predict("photos/", top_k=3)
    torch_top = model.predict("photos/", top_k=3)
    assert [p.labels for p in onnx] == [p.labels for p in torch_top]


def test_quickstart_plain_lightning_takes_the_classes_from_the_data_module(newcomer, single_thread):
    data = ImageDataModule("path/to/images", image_size=32, output_dir=None)
    model = ImageClassifier(TINY)
    plain = pl.Trainer(max_epochs=1, enable_progress_bar=False, enable_model_summary=False)
    plain.fit(model, datamodule=data)
    restored = ImageClassifier.load(plain.checkpoint_callback.best_model_path)
    assert restored.class_names == CLASSES and restored.hparams.num_classes == 3
    assert restored.data_config["input_size"] == [3, 32, 32]  # what the data module fed it
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))  # the checkpoint rebuilds exactly the trained model


def test_autotimm_train_prints_a_data_summary(newcomer, capsys, single_thread):
    assert main(["train", "--data", "path/to/images", "--backbone", "test_resnet", "--epochs", "1",
                 "--image-size", "32", "--output-dir", "runs/cli"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    data = ImageDataModule("path/to/images", output_dir="runs/cli")  # reads the run's split file
    data.setup()
    counts = {split: len(table) for split, table in data.tables.items()}
    assert f"Data: 3 classes, {counts['train']} train, {counts['val']} val, {counts['test']} test" in out
    for name, row in zip(CLASSES, zip(*data.class_counts.values(), strict=True), strict=True):
        assert any(line.split("│")[1:-1] and [c.strip() for c in line.split("│")[1:-1]] == [name, *map(str, row)]
                   for line in out.splitlines()), name  # fmt: skip
    assert "Input: 32x32, 3 channel(s); backbone: test_resnet" in out and "Run folder: runs/cli" in out
    assert "imbalance" not in out
    assert out.index("Data: 3 classes") < out.index("Trainable params")  # before training
    for noise in NOISE:
        assert noise not in out, noise


def test_autotimm_train_warns_on_strong_class_imbalance(tmp_path, capsys, single_thread):
    write_class_folders(tmp_path / "d", {"common": 30, "rare": 5})
    assert main(["train", "--data", str(tmp_path / "d"), "--backbone", "test_resnet", "--epochs", "1",
                 "--image-size", "32", "--output-dir", str(tmp_path / "run")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Warning: strong class imbalance: 'common' has 21 training images, 'rare' 3" in out


# ---------------------------------------------------------------- the pieces, one by one
def test_the_python_test_split_default_is_the_clis(tmp_path):
    from autotimm.cli.train import TrainConfig

    write_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    data = ImageDataModule(tmp_path / "d", output_dir=None)
    data.setup()
    assert data.test_split == TrainConfig(data="x").test_split == 0.1 and data.val_split == TrainConfig.val_split
    assert data.class_counts == {"train": [7, 7], "val": [2, 2], "test": [1, 1]}
    none = ImageDataModule(tmp_path / "d", output_dir=None, test_split=0)
    none.setup()
    assert none.splits == ["train", "val"]


def test_the_split_file_goes_to_the_run_unless_the_user_chose_a_place(tmp_path, single_thread):
    write_class_folders(tmp_path / "d", {"a": 10, "b": 10})
    fit = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    mine = tmp_path / "mine"
    for run, data in [("one", ImageDataModule(tmp_path / "d", image_size=32)),
                      ("two", ImageDataModule(tmp_path / "d", image_size=32, output_dir=mine))]:  # fmt: skip
        AutoTrainer(output_dir=tmp_path / run, **fit).fit(ImageClassifier(TINY), datamodule=data)
    assert (tmp_path / "one" / "splits.json").is_file()
    assert (tmp_path / "mine" / "splits.json").is_file() and not (tmp_path / "two" / "splits.json").exists()
    # An equal path given explicitly is a choice too, and a data module already set up keeps its split file.
    chosen = ImageDataModule(tmp_path / "d", output_dir="autotimm_output")
    assert not chosen.use_run_dir(tmp_path / "three") and chosen.output_dir == Path("autotimm_output")
    ready = ImageDataModule(tmp_path / "d", output_dir=None)
    ready.setup()
    assert not ready.use_run_dir(tmp_path / "four") and ready.output_dir is None
    fresh = ImageDataModule(tmp_path / "d")
    assert fresh.use_run_dir(tmp_path / "five") and fresh.output_dir == tmp_path / "five"


def test_num_classes_from_class_names_or_the_data_and_checked_when_given(tmp_path, single_thread):
    assert ImageClassifier(TINY, class_names=["x", "y", "z"]).hparams.num_classes == 3
    lazy = ImageClassifier(TINY)
    assert lazy.head is None and lazy.hparams.num_classes is None
    with pytest.raises(RuntimeError, match="no head yet: it was built without `num_classes`"):
        lazy(torch.zeros(1, 3, 32, 32))
    with pytest.raises(RuntimeError, match="no head yet"):
        lazy.predict(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="no head yet"):
        lazy.save(tmp_path / "x.ckpt")
    loader = torch.utils.data.DataLoader(make_synthetic_dataset(3, samples_per_class=2, image_size=32), batch_size=6)
    quiet = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match=r"built without `num_classes` and this run's data does not tell it"):
        pl.Trainer(enable_checkpointing=False, **quiet).fit(lazy, loader)
    write_class_folders(tmp_path / "d", {"a": 10, "b": 10, "c": 10})
    wrong = ImageClassifier(TINY, num_classes=2)
    data = ImageDataModule(tmp_path / "d", image_size=32, output_dir=None)
    with pytest.raises(
        ValueError, match=r"the data has 3 classes \(a, b, c\) but the model was built with num_classes=2"
    ):
        AutoTrainer(output_dir=tmp_path / "run", **quiet).fit(wrong, datamodule=data)


def test_a_lazily_built_model_trains_its_head_and_its_checkpoint_is_exact(tmp_path, single_thread):
    write_class_folders(tmp_path / "d", {"a": 8, "b": 8, "c": 8})
    data = ImageDataModule(tmp_path / "d", image_size=32, output_dir=None, class_weights="balanced")
    model = ImageClassifier(TINY, lr=1e-2)
    trainer = AutoTrainer(output_dir=tmp_path / "run", max_epochs=2, enable_progress_bar=False, logger=False)
    trainer.fit(model, datamodule=data)
    head = dict(model.head.named_parameters())
    assert head and all(p.requires_grad for p in head.values())
    assert any(id(p) in {id(q) for g in trainer.optimizers[0].param_groups for q in g["params"]} for p in head.values())
    assert model.hparams.metrics and model.hparams.class_weights is not None and len(model.hparams.class_weights) == 3
    restored = ImageClassifier.load(trainer.checkpoint_dir / "last.ckpt")
    assert restored.hparams.num_classes == 3 and restored.class_names == ["a", "b", "c"]
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_log_interval_fits_the_epoch_unless_given(tmp_path, single_thread):
    images = np.random.default_rng(0).integers(0, 256, (120, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(120) % 3
    data = ImageDataModule(images=images, labels=labels, image_size=16, batch_size=4, output_dir=None)
    quiet = dict(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False)
    # One step is enough: the interval is chosen when training starts, from the epoch's length.
    trainer = AutoTrainer(output_dir=tmp_path / "a", max_steps=1, limit_val_batches=0, monitor="train/loss", **quiet)
    trainer.fit(ImageClassifier(TINY), datamodule=data)
    assert trainer.num_training_batches == 21 and trainer.log_every_n_steps == 2  # about 10 points an epoch
    quiet.pop("logger")  # Lightning warns only with a logger
    given = AutoTrainer(output_dir=tmp_path / "b", log_every_n_steps=7, limit_train_batches=2, limit_val_batches=0,
                        monitor="train/loss", **quiet)  # fmt: skip
    with pytest.warns(UserWarning, match="smaller than the logging interval"):  # the user's choice: Lightning says so
        given.fit(ImageClassifier(TINY), datamodule=data)
    assert given.log_every_n_steps == 7
