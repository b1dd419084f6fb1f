"""auto_fit with trackers, run for real and offline: one MLflow run per trial nested under the search's run,
W&B runs in the search's group, CSV files per trial; with one worker and with two (forked) workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from autotimm import ImageClassifier, ImageDataModule, load_builtin_dataset
from autotimm.auto import auto_fit
from autotimm.cli import main
from autotimm.training.loggers import TrackerConfig

pytest.importorskip("optuna")
pytest.importorskip("mlflow")

OPTIONS = dict(backbones=["test_resnet"], image_size=16, seed=0, verbose=False)


def small_digits(out: Path) -> ImageDataModule:
    """600 digits: short epochs, two trials in a small budget."""
    digits = load_builtin_dataset("digits")["train"]
    return ImageDataModule(
        images=digits.images[:600], labels=digits.labels[:600], class_names=digits.class_names, val_split=0.25,
        test_split=0.0, seed=0, output_dir=out,
    )  # fmt: skip


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """One search (up to two trials), sent to MLflow (SQLite), CSV and W&B (offline)."""
    root = tmp_path_factory.mktemp("auto_tracking")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_SILENT", "true")
        patch.setenv("WANDB_DIR", str(root))
        uri = f"sqlite:///{root / 'mlflow.db'}"
        tracking = TrackerConfig(
            experiment="digits-search", run_name="search-1", tags=["team=vision"], mlflow_tracking_uri=uri,
            wandb_mode="offline",
        )  # fmt: skip
        out = root / "search"
        try:
            result = auto_fit(small_digits(out), 30, output_dir=out, n_trials=2, n_workers=1,
                              logger=["mlflow", "csv", "wandb"], tracking=tracking, **OPTIONS)  # fmt: skip
        finally:
            torch.set_num_threads(threads)
    return {"result": result, "uri": uri, "out": out}


def _runs(uri: str, experiment: str) -> tuple[object, list[object]]:
    """(the search's run, the trials' runs by name) of an experiment."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("autotimm.role") == "search"]
    assert len(parents) == 1
    return parents[0], sorted((r for r in runs if r is not parents[0]), key=lambda r: r.info.run_name)


def test_each_trial_is_an_mlflow_run_nested_under_the_search(search):
    from mlflow import MlflowClient

    result = search["result"]
    parent, children = _runs(search["uri"], "digits-search")
    rows = {row["number"]: row for row in result.trials}
    assert [c.info.run_name for c in children] == [f"trial_{n:03d}" for n in sorted(rows)]
    client = MlflowClient(search["uri"])
    for child in children:
        params, metrics, tags = child.data.params, child.data.metrics, child.data.tags
        row = rows[int(params["trial/number"])]
        assert tags["mlflow.parentRunId"] == parent.info.run_id and tags["team"] == "vision"
        assert child.info.status == "FINISHED" and params["trial/state"] == row["state"]
        assert params["trial/backbone"] == "test_resnet" and float(params["trial/lr"]) == pytest.approx(row["lr"])
        assert float(params["lr"]) == pytest.approx(row["lr"])  # the model's hyper-parameters too
        assert metrics["trial/score"] == pytest.approx(row["score"]) and metrics["trial/epochs"] == row["epochs"]
        history = client.get_metric_history(child.info.run_id, "val/accuracy")
        assert len({m.step for m in history}) == row["epochs"]  # once per epoch


def test_the_search_run_gets_the_summary_files_and_the_model(search, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    result = search["result"]
    parent, _ = _runs(search["uri"], "digits-search")
    params, metrics = parent.data.params, parent.data.metrics
    assert parent.info.run_name == "search-1" and parent.info.status == "FINISHED"
    assert params["search/preset"] == "fast" and params["search/metric"] == "accuracy"
    assert params["best/backbone"] == "test_resnet"
    assert metrics["best/val_accuracy"] == pytest.approx(result.best_score)
    assert metrics["search/trials"] == len(result.trials) >= 1
    client = MlflowClient(search["uri"])
    history = client.get_metric_history(parent.info.run_id, "search/trial_accuracy")
    assert sorted((m.step, m.value) for m in history) == sorted(
        (row["number"], pytest.approx(row["score"])) for row in result.trials
    )
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert files == {"search/trials.csv", "search/summary.json"}
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", search["uri"])
    mlflow.set_tracking_uri(search["uri"])
    try:
        models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
        assert [m.source_run_id for m in models] == [parent.info.run_id]
        digits = load_builtin_dataset("digits")["train"]
        images = [np.asarray(digits.images[i]) for i in range(700, 704)]
        table = mlflow.pyfunc.load_model(models[0].model_uri).predict(images)
        expected = ImageClassifier.load(result.checkpoint).predict(images)
        assert list(table["label"]) == [p.label for p in expected]
    finally:
        mlflow.set_tracking_uri(previous)


def test_csv_writes_one_folder_per_trial_and_one_for_the_search(search):
    result, out = search["result"], search["out"]
    for row in result.trials:
        metrics = out / "trials" / f"trial_{row['number']:03d}" / "csv" / "version_0" / "metrics.csv"
        lines = list(csv.DictReader(metrics.open()))
        assert len([line for line in lines if line.get("val/accuracy")]) == row["epochs"]
        assert float(next(line["trial/score"] for line in lines if line.get("trial/score"))) == pytest.approx(
            row["score"]
        )
    summary = list(csv.DictReader((out / "csv" / "version_0" / "metrics.csv").open()))
    assert any(line.get("best/val_accuracy") for line in summary)


def test_wandb_runs_share_the_search_group(search):
    out = search["out"]
    trial_runs = sorted((out / "trials").glob("trial_*/wandb/offline-run-*/*.wandb"))
    search_runs = sorted((out / "wandb").glob("offline-run-*/*.wandb"))
    assert len(trial_runs) == len(search["result"].trials) and len(search_runs) == 1
    for record in [*trial_runs, *search_runs]:
        text = record.read_bytes()
        assert b"search-1" in text  # the group (and the search run's name)
    assert all(b"trial/score" in path.read_bytes() for path in trial_runs)
    assert b"best/val_accuracy" in search_runs[0].read_bytes()


def test_cli_search_with_two_workers_nests_every_trial(tmp_path, monkeypatch):
    """`autotimm auto --workers 2 --logger mlflow`: each forked worker creates its trials' runs under one parent."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [
        "auto", "--data", "digits", "--time-limit", "40", "--n-trials", "2", "--workers", "2", "--backbones",
        "test_resnet", "--image-size", "16", "--test-split", "0", "--output-dir", str(tmp_path / "out"),
        "--logger", "mlflow", "--mlflow-tracking-uri", uri, "--experiment", "parallel",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    parent, children = _runs(uri, "parallel")
    with open(tmp_path / "out" / "trials.csv") as handle:
        assert len(children) == len(list(csv.DictReader(handle))) >= 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" and "trial/score" in c.data.metrics for c in children)
    workers = {name for name, numbers in summary["workers"].items() if numbers}
    assert len(workers) == 2  # both workers ran trials, each logging its own runs


def test_bad_loggers_are_refused_before_the_search(tmp_path):
    with pytest.raises(ValueError, match=r"`logger` must be one of 'tensorboard', 'csv'.*'neptune'"):
        auto_fit("digits", 30, output_dir=tmp_path, logger="neptune")
    with pytest.raises(ValueError, match=r"Logger object cannot give each trial a run of its own"):
        auto_fit("digits", 30, output_dir=tmp_path, logger=CSVLogger(tmp_path))
    with pytest.raises(ValueError, match=r"`trainer_kwargs` must not set 'logger'"):
        auto_fit("digits", 30, output_dir=tmp_path, logger="csv", trainer_kwargs={"logger": False})
    with pytest.raises(ValueError, match=r"`tracking` must be a TrackerConfig"):
        auto_fit("digits", 30, output_dir=tmp_path, logger="csv", tracking={"experiment": "x"})
    assert not (tmp_path / "study.db").exists()
