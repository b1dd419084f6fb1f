"""Trackers by name, run for real and offline: MLflow (SQLite store), W&B (offline files), CSV, TensorBoard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from autotimm import AutoTrainer
from autotimm.cli import main
from autotimm.training.loggers import TRACKERS, TrackerConfig, create_loggers

CLASSES = ["circle", "square"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, monkeypatch_module):
    """One real `autotimm train` with MLflow, CSV and W&B (offline), evaluated on its test split."""
    root = tmp_path_factory.mktemp("trackers")
    data = root / "data"
    rng = np.random.default_rng(0)
    for index, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(10):
            pixels = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8) + np.uint8(150 * index)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    monkeypatch_module.setenv("WANDB_SILENT", "true")
    monkeypatch_module.setenv("WANDB_DIR", str(root))
    out = root / "run"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    argv = [
        "train", "--data", str(data), "--backbone", "test_resnet", "--image-size", "16", "--epochs", "2",
        "--batch-size", "8", "--num-workers", "0", "--val-split", "0.2", "--test-split", "0.2",
        "--output-dir", str(out), "--logger", "mlflow", "--logger", "csv", "--logger", "wandb",
        "--wandb-mode", "offline", "--mlflow-tracking-uri", uri, "--experiment", "pets", "--run-name", "first",
        "--tags", "team=vision", "--tags", "baseline", "--evaluate", "--export-onnx",
    ]  # fmt: skip
    assert main(argv) == 0
    return {"out": out, "uri": uri, "data": data}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _mlflow_run(run):
    from mlflow import MlflowClient

    client = MlflowClient(run["uri"])
    runs = client.search_runs([client.get_experiment_by_name("pets").experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.fixture
def tracking_uri(run, monkeypatch):
    """MLflow's global tracking URI set to the run's store for one test, then put back."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", run["uri"])
    mlflow.set_tracking_uri(run["uri"])
    yield run["uri"]
    mlflow.set_tracking_uri(previous)


def test_mlflow_gets_params_metrics_per_epoch_tags_and_best(run):
    from mlflow import MlflowClient

    found = _mlflow_run(run)
    params, metrics, tags = found.data.params, found.data.metrics, found.data.tags
    assert found.info.run_name == "first" and tags["team"] == "vision" and tags["baseline"] == "true"
    assert params["run/backbone"] == "test_resnet" and params["run/num_classes"] == "2"
    assert params["run/classes"] == "circle, square" and params["run/input_size"] == "3x16x16"
    assert int(params["run/train_images"]) + int(params["run/val_images"]) + int(params["run/test_images"]) == 20
    assert params["lr"] == params["run/lr"] and params["backbone/model_name"] == "test_resnet"  # Lightning's, flat
    assert Path(params["run/best_checkpoint"]).is_file() and tags["best_checkpoint"] == params["run/best_checkpoint"]
    assert "best/val/accuracy" in metrics and "test/accuracy" in metrics
    history = MlflowClient(run["uri"]).get_metric_history(found.info.run_id, "val/accuracy")
    assert len({m.step for m in history}) >= 2  # once per epoch (and once more by the final validation)


def test_mlflow_gets_the_report_figures_and_a_pyfunc_model(run, tracking_uri):
    import mlflow
    from mlflow import MlflowClient

    from autotimm import ImageClassifier

    found = _mlflow_run(run)
    client = MlflowClient(run["uri"])
    report = {a.path for a in client.list_artifacts(found.info.run_id, "evaluation-test")}
    assert {"evaluation-test/metrics.json", "evaluation-test/confusion_matrix.png"} <= report
    assert "evaluation-test/reliability_diagram.png" in report
    models = mlflow.search_logged_models(experiment_ids=[found.info.experiment_id], output_format="list")
    by_name = {m.name: m for m in models}
    assert sorted(by_name) == ["model", "model_onnx"]  # --export-onnx: the run's model.onnx too
    assert "onnx" in mlflow.models.get_model_info(by_name["model_onnx"].model_uri).flavors
    assert (run["out"] / "model.onnx").is_file()
    pyfunc = mlflow.pyfunc.load_model(by_name["model"].model_uri)
    images = sorted((run["data"] / "square").glob("*.png"))[:3]
    table = pyfunc.predict([str(p) for p in images])
    expected = ImageClassifier.load(next((run["out"] / "checkpoints").glob("epoch=*.ckpt"))).predict(images)
    assert list(table["label"]) == [p.label for p in expected]
    np.testing.assert_allclose(list(table["probability"]), [p.probability for p in expected], atol=1e-5)
    assert set(table.columns) == {"label", "probability", "labels", "probabilities"}
    onnx_table = mlflow.pyfunc.load_model(by_name["model_onnx"].model_uri).predict([str(p) for p in images])
    assert list(onnx_table["label"]) == list(table["label"])


def test_csv_metrics_file_and_the_report_copy(run):
    folder = run["out"] / "csv" / "version_0"
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    epochs = {row["epoch"] for row in rows if row.get("val/accuracy")}
    assert {"0", "1"} <= epochs and any(row.get("test/accuracy") for row in rows)
    assert (folder / "evaluation-test" / "metrics.json").is_file()
    assert "run/backbone: test_resnet" in (folder / "hparams.yaml").read_text()


def test_wandb_offline_run_files(run):
    runs = sorted((run["out"] / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(name.endswith(".wandb") for name in files)  # the run's records, for `wandb sync`
    # The .wandb file is W&B's record log (protobuf records; history rows and config values as JSON text).
    text = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"val/accuracy" in text and b"test/accuracy" in text and b"run/backbone" in text
    assert b"first" in text and b"baseline" in text


def test_config_yaml_keeps_the_trackers(run):
    import yaml

    saved = yaml.safe_load((run["out"] / "config.yaml").read_text())
    assert saved["logger"] == ["mlflow", "csv", "wandb"] and saved["tags"] == ["team=vision", "baseline"]
    assert json.loads((run["out"] / "eval-test" / "metrics.json").read_text())["num_images"] == 4


def test_names_lists_objects_and_false(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert set(TRACKERS) == {"tensorboard", "csv", "mlflow", "wandb"}
    made = create_loggers(["tensorboard", "csv"], tmp_path)
    assert [type(x) for x in made] == [TensorBoardLogger, CSVLogger]
    own = CSVLogger(tmp_path / "own")
    assert create_loggers(own, tmp_path) == [own] and create_loggers(False, tmp_path) is False
    mlflow_logger = create_loggers("mlflow", tmp_path)[0]
    assert isinstance(mlflow_logger, MLFlowLogger) and mlflow_logger._tracking_uri.endswith(f"{tmp_path}/mlflow.db")
    trainer = AutoTrainer(output_dir=tmp_path, logger="csv", enable_progress_bar=False, max_epochs=1)
    assert [type(x) for x in trainer.loggers] == [CSVLogger]
    assert AutoTrainer(output_dir=tmp_path, logger=False, enable_progress_bar=False).loggers == []


def test_bad_names_and_options_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"`logger` must be one of 'tensorboard', 'csv', 'mlflow', 'wandb'.*'neptune'"):
        create_loggers(["csv", "neptune"], tmp_path)
    with pytest.raises(ValueError, match="twice"):
        create_loggers(["csv", "csv"], tmp_path)
    with pytest.raises(ValueError, match="`wandb_mode` must be one of online, offline, disabled"):
        TrackerConfig(wandb_mode="cloud")
    assert main(["train", "--data", str(tmp_path), "--logger", "neptune"]) == 2
    assert "--logger must be one of tensorboard, csv, mlflow, wandb (or none); got 'neptune'" in capsys.readouterr().err


def test_a_missing_tracker_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"logger='wandb' needs the wandb package: pip install 'autotimm\[wandb\]'"):
        create_loggers("wandb", tmp_path)


def test_a_finished_search_goes_to_its_search_run(tmp_path):
    """What `auto_fit(logger="csv")` sends to the search's run at the end: best config and score, the files."""
    from autotimm import BackboneConfig, ImageClassifier
    from autotimm.auto.results import AutoFitResult
    from autotimm.auto.tracking import SearchTracking, log_search_result

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2)
    (tmp_path / "trials.csv").write_text("number,score\n0,0.75\n")
    (tmp_path / "summary.json").write_text('{"best_score": 0.75}')
    result = AutoFitResult(
        model=model, best_config={"backbone": "test_resnet", "lr": 0.01}, best_score=0.75, metric="accuracy",
        trials=[{"number": 0, "score": 0.75}, {"number": 1, "score": None}], time_used=12.0, time_limit=60.0,
        checkpoint=model.save(tmp_path / "best.ckpt"), output_dir=tmp_path,
    )  # fmt: skip
    log_search_result(SearchTracking(("csv",), TrackerConfig(), tmp_path, group="pets-search"), result)
    folder = tmp_path / "csv" / "version_0"
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert any(row["best/val_accuracy"] == "0.75" and row["search/trials"] == "2.0" for row in rows)
    assert [row["search/trial_accuracy"] for row in rows if row["search/trial_accuracy"]] == ["0.75"]
    assert "best/backbone: test_resnet" in (folder / "hparams.yaml").read_text()
    assert (folder / "search" / "trials.csv").is_file() and (folder / "search" / "summary.json").is_file()


def test_an_onnx_export_is_logged_with_the_onnx_flavour(run, tmp_path, monkeypatch):
    """A run's ONNX export goes to MLflow beside the checkpoint: pyfunc through ONNX Runtime, and the onnx flavour."""
    import mlflow
    import onnx

    from autotimm import ImageClassifier, OnnxPredictor, export
    from autotimm.cli.tracking import log_to_trackers

    checkpoint = next((run["out"] / "checkpoints").glob("epoch=*.ckpt"))
    export(ImageClassifier.load(checkpoint), tmp_path / "model.onnx")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        logger = create_loggers("mlflow", tmp_path, TrackerConfig(experiment="exported", mlflow_tracking_uri=uri))[0]
        log_to_trackers([logger], checkpoint, onnx_path=tmp_path / "model.onnx")
        mlflow.set_tracking_uri(uri)
        models = mlflow.search_logged_models(experiment_ids=[logger.experiment_id], output_format="list")
        by_name = {m.name: m for m in models}
        assert set(by_name) == {"model", "model_onnx"}
        onnx_uri = by_name["model_onnx"].model_uri
        info = mlflow.models.get_model_info(onnx_uri)
        assert {"python_function", "onnx"} <= set(info.flavors) and info.metadata["autotimm_format"] == "onnx"
        assert isinstance(mlflow.onnx.load_model(onnx_uri), onnx.ModelProto)  # the ONNX graph itself
        requirements = Path(mlflow.pyfunc.get_model_dependencies(onnx_uri)).read_text()
        assert "onnxruntime==" in requirements

        images = sorted((run["data"] / "circle").glob("*.png"))[:2] + sorted((run["data"] / "square").glob("*.png"))[:2]
        table = mlflow.pyfunc.load_model(onnx_uri).predict([str(p) for p in images])
        expected = OnnxPredictor(tmp_path / "model.onnx").predict(images, top_k=2)
        assert list(table["label"]) == [p.label for p in expected]
        assert list(table["labels"]) == [list(p.labels) for p in expected]
        np.testing.assert_allclose(np.array(list(table["probabilities"])), [p.probabilities for p in expected],
                                   atol=1e-6)  # fmt: skip
        # the checkpoint's model, through torch, agrees with its ONNX export
        torch_table = mlflow.pyfunc.load_model(by_name["model"].model_uri).predict([str(p) for p in images])
        assert list(torch_table["label"]) == list(table["label"])
        np.testing.assert_allclose(list(torch_table["probability"]), list(table["probability"]), atol=1e-4)
    finally:
        mlflow.set_tracking_uri(previous)
