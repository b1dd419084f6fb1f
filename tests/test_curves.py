"""Training curves: the history AutoTrainer keeps, its files, resuming, and `autotimm plot`."""

from __future__ import annotations

import csv
import json

import pytest
from torch.utils.data import DataLoader

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, make_synthetic_dataset
from autotimm.cli import main
from autotimm.training.curves import TrainingHistory, load_history, plot_curves


def _loaders():
    train = make_synthetic_dataset(3, samples_per_class=8, image_size=16, seed=0)
    val = make_synthetic_dataset(3, samples_per_class=4, image_size=16, seed=1)
    return DataLoader(train, batch_size=8, shuffle=True), DataLoader(val, batch_size=12)


def _fit(run_dir, epochs, resume=None):
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=1e-2)
    trainer = AutoTrainer(
        max_epochs=epochs,
        output_dir=run_dir,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(model, *_loaders(), resume=resume)
    return trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("curves") / "run"
    _fit(path, 2)
    return path


def test_history_has_one_row_per_epoch_with_train_val_and_lr(run_dir):
    history = load_history(run_dir)
    assert [row["epoch"] for row in history["rows"]] == [0, 1]
    for row in history["rows"]:
        assert {"train/loss", "val/loss", "train/accuracy", "val/accuracy", "lr"} <= set(row)
        assert not any(key.endswith(("_step", "_epoch")) for key in row)
    assert (history["monitor"], history["mode"]) == ("val/accuracy", "max")
    with open(run_dir / "history.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert (run_dir / "curves.png").stat().st_size > 10_000


def test_resume_keeps_the_earlier_epochs(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    _fit(copy, 3, resume=True)
    rows = load_history(copy)["rows"]
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[:2] == load_history(run_dir)["rows"]


def test_plot_overlays_runs_and_marks_the_best_epoch(run_dir, tmp_path):
    history = load_history(run_dir)
    other = {**history, "name": "other", "rows": [{**r, "val/accuracy": 0.5} for r in history["rows"]]}
    fig = plot_curves([history, other], tmp_path / "both.png", labels=["a", "b"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "loss" and "accuracy" in titles and titles[-1].startswith("learning rate")
    accuracy = fig.axes[titles.index("accuracy")]
    legend = [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert "a val" in legend and "b train" in legend
    assert sum(label.startswith("best epoch") for label in legend) == 2
    with pytest.raises(ValueError, match="one label per history"):
        plot_curves([history], labels=["a", "b"])
    with pytest.raises(ValueError, match="no epochs"):
        plot_curves([{"rows": []}])


def test_cli_plot(run_dir, tmp_path, capsys):
    output = tmp_path / "overlay.png"
    assert main(["plot", str(run_dir), str(run_dir / "history.json"), "--output", str(output)]) == 0
    assert output.is_file() and "2 epochs" in capsys.readouterr().out
    assert main(["plot", str(tmp_path)]) == 1
    assert "no history.json" in capsys.readouterr().err


def test_history_without_a_folder_stays_in_memory():
    history = TrainingHistory()
    assert history.to_dict() == {"monitor": None, "mode": "min", "rows": []}
    assert json.loads(json.dumps(history.state_dict()))["rows"] == []
    with pytest.raises(ValueError, match="`mode` must be 'min' or 'max'"):
        TrainingHistory(mode="best")
