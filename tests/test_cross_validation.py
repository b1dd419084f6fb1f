"""K-fold cross-validation: stratified disjoint folds, out-of-fold predictions, resuming, refusal, the fold ensemble."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from autotimm import BackboneConfig, ImageDataModule
from autotimm.auto.cross_validation import cross_validate, stratified_folds
from autotimm.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")

COLOURS = np.array([[230, 30, 30], [30, 230, 30], [30, 30, 230]], np.uint8)


def _arrays(per_class=(9, 7, 5), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    noise = rng.integers(-25, 25, size=(len(labels), 16, 16, 3))
    images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return images, labels


def _data(images, labels):
    return ImageDataModule(
        images=images, labels=labels, class_names=["red", "green", "blue"], val_split=0.2, test_split=0.2,
        seed=0, batch_size=8, num_workers=0, output_dir=None,
    )  # fmt: skip


MODEL = {"backbone": BackboneConfig("test_resnet", pretrained=False), "lr": 1e-2, "scheduler": None}
TRAINER = {"max_epochs": 1, "accelerator": "cpu", "logger": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "cv"
    data = _data(*_arrays())
    result = cross_validate(data, MODEL, k=3, seed=1, trainer_kwargs=TRAINER, output_dir=out, ensemble=True)
    return data, result, out


def test_stratified_folds_are_disjoint_cover_and_keep_proportions():
    targets = np.repeat(np.arange(4), [13, 7, 5, 1])
    folds = stratified_folds(targets, k=5, seed=3)
    flat = [i for fold in folds for i in fold]
    assert sorted(flat) == list(range(len(targets)))  # disjoint and covering
    for c in range(4):
        counts = [int(np.sum(targets[fold] == c)) for fold in folds]
        assert max(counts) - min(counts) <= 1, (c, counts)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert stratified_folds(targets, k=5, seed=3) == folds  # seeded
    with pytest.raises(ValueError, match="`k` must be an int"):
        stratified_folds(targets, k=1)


def test_folds_come_from_training_data_only_and_oof_has_one_row_per_image(cv_run):
    data, result, out = cv_run
    tables = data.tables
    train_items = sorted(tables["train"].items + tables["val"].items)
    test_items = set(tables["test"].items)
    saved = json.loads((out / "cv_folds.json").read_text())
    assert saved["num_images"] == len(train_items)
    with open(out / "oof_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = sorted(int(row["path"].lstrip("#")) for row in rows)
    assert paths == train_items and not test_items & set(paths)
    assert {row["true"] for row in rows} == {"red", "green", "blue"}
    for row in rows[:3]:
        probabilities = [float(row[f"p_{name}"]) for name in ("red", "green", "blue")]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert [fold["fold"] for fold in result.folds] == [0, 1, 2]
    assert sum(fold["val_images"] for fold in result.folds) == len(train_items)
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["k"] == 3 and set(summary["mean"]) == set(summary["std"]) and "accuracy" in summary["mean"]
    assert summary["mean"]["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in result.folds]))
    with open(out / "cv_folds.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_fold_ensemble_predicts_and_is_scored_on_the_test_split(cv_run):
    data, result, out = cv_run
    assert len(result.ensemble.members) == 3
    images = next(
        iter(ImageDataModule.derived_from(data, data_config=result.ensemble.data_config).eval_dataloader("test"))
    )[0]
    probabilities = result.ensemble(images).softmax(dim=1)
    assert probabilities.shape == (len(images), 3)
    assert torch.allclose(probabilities.sum(1), torch.ones(len(images)), atol=1e-5)
    assert 0.0 <= result.test_metrics["accuracy"] <= 1.0
    assert (out / "ensemble" / "ensemble.json").is_file()


def test_rerun_resumes_finished_folds_and_refuses_changed_data(cv_run, tmp_path):
    import shutil

    _, result, out = cv_run
    copy = tmp_path / "cv"
    shutil.copytree(out, copy)
    (copy / "fold_2" / "fold_result.json").unlink()  # as if killed during the last fold
    kept = (copy / "fold_0" / "fold_result.json").stat().st_mtime_ns
    again = cross_validate(
        _data(*_arrays()), MODEL, k=3, seed=1, trainer_kwargs=TRAINER, output_dir=copy, verbose=False
    )
    assert (copy / "fold_0" / "fold_result.json").stat().st_mtime_ns == kept  # not retrained
    assert (copy / "fold_2" / "fold_result.json").is_file()
    assert again.folds[0] == result.folds[0]
    changed = _arrays(seed=5)
    with pytest.raises(ValueError, match="holds folds of other data"):
        cross_validate(_data(*changed), MODEL, k=3, seed=1, trainer_kwargs=TRAINER, output_dir=copy)
    with pytest.raises(ValueError, match="not k=4"):
        cross_validate(_data(*_arrays()), MODEL, k=4, seed=1, trainer_kwargs=TRAINER, output_dir=copy)


def test_cli_cv_on_a_class_folder(tmp_path, capsys):
    images, labels = _arrays()
    folder = tmp_path / "images"
    from PIL import Image

    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / str(label) / f"{i}.png")
    code = main(["cv", "--data", str(folder), "--folds", "2", "--backbone", "test_resnet", "--epochs", "1",
                 "--image-size", "16", "--batch-size", "8", "--num-workers", "0", "--output-dir", str(tmp_path / "cv"),
                 "--accelerator", "cpu"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "2-fold cross-validation" in capsys.readouterr().out
    assert json.loads((tmp_path / "cv" / "cv_summary.json").read_text())["k"] == 2


# ---------------------------------------------------------------------- multi-label
def test_iterative_stratified_folds_are_disjoint_cover_and_keep_each_labels_share():
    from autotimm.auto.cross_validation import iterative_stratified_folds

    for seed in range(3):
        rng = np.random.default_rng(seed)
        y = rng.random((150, 6)) < np.array([0.6, 0.4, 0.2, 0.08, 0.04, 0.5])  # common and rare labels
        y[:5] = False  # a few images without labels
        label_sets = [np.flatnonzero(row).tolist() for row in y]
        folds = iterative_stratified_folds(label_sets, num_classes=6, k=5, seed=seed)
        assert sorted(i for fold in folds for i in fold) == list(range(150))  # disjoint and covering
        for c in range(6):
            share = y[:, c].sum() / 5
            counts = [int(y[fold, c].sum()) for fold in folds]
            # rare labels (placed first) within one image of their share, common ones within three (random
            # folds: up to 8 off); measured over 40 seeds: 0.8 and 2.6
            tolerance = 1 if share < 10 else 3
            assert all(abs(n - share) <= tolerance for n in counts), (seed, c, share, counts)
        assert max(map(len, folds)) - min(map(len, folds)) <= 4
        assert iterative_stratified_folds(label_sets, 6, k=5, seed=seed) == folds  # seeded
    with pytest.raises(ValueError, match=r"class index outside \[0, 2\)"):
        iterative_stratified_folds([[0], [2]], num_classes=2, k=2)
    with pytest.raises(ValueError, match="`k` must be an int"):
        iterative_stratified_folds([[0], [1]], num_classes=2, k=1)


def test_multi_label_cross_validation_writes_per_label_oof_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    hot = rng.random((30, 3)) < 0.5  # each colour channel lit or not
    hot[np.arange(30), rng.integers(0, 3, 30)] = True  # at least one label per image
    noise = rng.integers(0, 30, size=(30, 16, 16, 3))
    images = np.clip(hot[:, None, None, :] * 200 + noise, 0, 255).astype(np.uint8)
    data = ImageDataModule(
        images=images, labels=hot.astype(np.int64), class_names=["red", "green", "blue"], val_split=0.2,
        test_split=0.2, seed=0, batch_size=8, num_workers=0, output_dir=None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="`ensemble`=True needs single-label data"):
        cross_validate(data, MODEL, k=2, trainer_kwargs=TRAINER, output_dir=tmp_path / "refused", ensemble=True)
    out = tmp_path / "cv"
    result = cross_validate(data, MODEL, k=2, seed=0, trainer_kwargs=TRAINER, output_dir=out, verbose=False)
    tables = data.tables
    train_items = sorted(tables["train"].items + tables["val"].items)
    with open(out / "oof_predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(int(row["path"].lstrip("#")) for row in rows) == train_items
    assert not set(tables["test"].items) & set(train_items)
    for row in rows:
        index = int(row["path"].lstrip("#"))
        assert set(row["true"].split(";")) == {
            n for n, on in zip(["red", "green", "blue"], hot[index], strict=True) if on
        }
        probabilities = [float(row[f"p_{name}"]) for name in ("red", "green", "blue")]
        assert all(0.0 <= p <= 1.0 for p in probabilities)
        assert float(row["probability"]) == pytest.approx(max(probabilities), abs=1e-6)
    assert "mean_average_precision" in result.mean and "accuracy" not in result.mean
    assert sum(fold["val_images"] for fold in result.folds) == len(train_items)
    saved = json.loads((out / "cv_folds.json").read_text())
    assert sorted(i for fold in saved["folds"] for i in fold) == list(range(len(train_items)))
