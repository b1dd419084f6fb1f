"""The ``autotimm`` command line, end to end on generated images: train -> evaluate -> predict -> export."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from autotimm import ImageClassifier
from autotimm.cli import COMMANDS, main
from autotimm.cli.options import normalize_argv, one_line

CLASSES = ("circle", "square", "stripes")
PER_CLASS = 12
SIZE = 32


def _draw(kind: str, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(12, 20, 2)
    if kind == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        image[mask] = (230, 60, 60)
    elif kind == "square":
        image[cy - 7 : cy + 7, cx - 7 : cx + 7] = (60, 200, 60)
    else:
        image[(xx // 4) % 2 == 0] = (60, 90, 230)
    return image


def _run(args: list[str]) -> tuple[int, str, str]:
    """``main(args)`` with stdout and stderr captured (rich and Lightning write to the current sys.stdout)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        folder = root / "shapes" / kind
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_draw(kind, rng)).save(folder / f"{kind}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run(workdir) -> dict:
    """Print a config, then train from it with an override (--output-dir): the round trip and the run in one."""
    data = str(workdir / "shapes")
    args = ["train", "--data", data, "--backbone", "resnet18", "--epochs", "1", "--batch-size", "8"]
    args += ["--image-size", "32", "--num-workers", "0", "--accelerator", "cpu", "--seed", "0"]
    code, printed, _ = _run([*args, "--print_config"])
    assert code == 0
    config_file = workdir / "run.yaml"
    config_file.write_text(printed)
    out_dir = workdir / "run"
    code, stdout, stderr = _run(["train", "--config", str(config_file), "--output-dir", str(out_dir)])
    assert code == 0, stderr
    best = next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("Best checkpoint:"))
    return {"data": data, "printed": printed, "out_dir": out_dir, "stdout": stdout, "best": Path(best)}


# ------------------------------------------------------------------ help
def test_top_level_help_lists_every_command(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("autotimm ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"\n    {name} " in out
    assert "examples:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"autotimm {command}" in out.split("examples:")[1]


def test_help_lists_the_library_names():
    from autotimm import list_augmentation_presets, list_builtin_datasets, list_optimizers, list_schedulers

    _, out, _ = _run(["train", "--help"])
    text = " ".join(out.split()).replace("- ", "-")  # argparse wraps lines after a hyphen
    for name in [*list_augmentation_presets(), *list_optimizers(), *list_schedulers(), *list_builtin_datasets()]:
        assert name in text


def test_parser_needs_no_torch():
    code = "import sys\nfrom autotimm.cli import build_parser\nbuild_parser()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------ train and --config
def test_train_prints_best_checkpoint_and_validation_metrics(run):
    assert run["best"].is_file() and run["best"].parent == run["out_dir"] / "checkpoints"
    assert (run["out_dir"] / "checkpoints" / "last.ckpt").is_file()
    assert (run["out_dir"] / "splits.json").is_file()
    assert "Validation metrics of the best checkpoint" in run["stdout"]
    assert "val/accuracy" in run["stdout"] and "val/loss" in run["stdout"]

    from autotimm import ImageClassifier

    model = ImageClassifier.load(run["best"])
    assert model.class_names == list(CLASSES)  # num_classes came from the data
    assert model.data_config["input_size"] == [3, 32, 32]


def test_config_round_trip(run, workdir):
    printed = yaml.safe_load(run["printed"])
    assert printed["epochs"] == 1 and printed["batch_size"] == 8 and printed["data"] == run["data"]
    saved = yaml.safe_load((run["out_dir"] / "config.yaml").read_text())
    assert saved == {**printed, "output_dir": str(run["out_dir"])}  # the run's config: printed + the override
    # Rerunning from the saved file resolves to the same config; an override changes just that key.
    code, again, _ = _run(["train", "--config", str(run["out_dir"] / "config.yaml"), "--print_config"])
    assert code == 0 and yaml.safe_load(again) == saved
    saved_file = str(run["out_dir"] / "config.yaml")
    code, changed, _ = _run(["train", "--config", saved_file, "--lr", "0.01", "--print_config"])
    assert code == 0 and yaml.safe_load(changed) == {**saved, "lr": 0.01}


def test_rerun_from_saved_config_repeats_the_run(run, workdir):
    import torch

    again = workdir / "run-again"
    code, _, err = _run(["train", "--config", str(run["out_dir"] / "config.yaml"), "--output-dir", str(again)])
    assert code == 0, err
    first = torch.load(run["out_dir"] / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    second = torch.load(again / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, same split, same weights
    assert (again / "splits.json").read_text() == (run["out_dir"] / "splits.json").read_text()


def test_train_without_validation_split(run, workdir):
    out_dir = workdir / "no-val"
    args = ["train", "--config", str(run["out_dir"] / "config.yaml"), "--output-dir", str(out_dir)]
    code, out, err = _run([*args, "--val-split", "0", "--test-split", "0"])
    assert code == 0, err
    assert "no validation split: the best checkpoint is chosen by train/loss" in out
    assert "train/loss" in out and "Evaluate on the held-out test split" not in out
    assert (out_dir / "checkpoints" / "last.ckpt").is_file()


def test_train_passes_fine_tuning_options_to_the_model(run, workdir):
    out_dir = workdir / "finetune"
    args = ["train", "--config", str(run["out_dir"] / "config.yaml"), "--output-dir", str(out_dir)]
    args += ["--layer-decay", "0.8", "--ema-decay", "0.9", "--no-channels-last"]
    args += ["--unfreeze-schedule", '{"0": 0, "1": "all"}', "--backbone", "test_resnet"]
    code, _, err = _run(args)
    assert code == 0, err
    hparams = ImageClassifier.load(out_dir / "checkpoints" / "last.ckpt").hparams
    assert (hparams.layer_decay, hparams.ema_decay, hparams.channels_last) == (0.8, 0.9, False)
    assert hparams.unfreeze_schedule == {0: 0, 1: "all"}
    code, line = _error(["train", "--data", run["data"], "--cache-features"])
    assert code == 1 and "needs `freeze_backbone=True`" in line


def test_data_source_kinds(workdir, tmp_path):
    from autotimm.data.sources import data_source

    assert data_source(str(workdir / "shapes")) == {"data_dir": workdir / "shapes"}
    (tmp_path / "labels.csv").write_text("image,label\n")
    assert data_source(str(tmp_path / "labels.csv")) == {"train_csv": tmp_path / "labels.csv"}
    assert data_source("digits") == {"dataset": "digits"}
    (tmp_path / "labels.txt").write_text("")
    with pytest.raises(ValueError, match=r"not a \.csv"):
        data_source(str(tmp_path / "labels.txt"))


def test_underscore_options_and_print_config_flags():
    assert normalize_argv(["--batch_size", "4", "--print-config", "--x_y=1", "--", "--a_b"]) == [
        "--batch-size", "4", "--print_config", "--x-y=1", "--", "--a_b",
    ]  # fmt: skip
    code, out, _ = _run(["train", "--data", "digits", "--batch_size", "4", "--print_config"])
    assert code == 0 and yaml.safe_load(out)["batch_size"] == 4


# ------------------------------------------------------------------ evaluate
def test_evaluate_checkpoint_writes_report(run, workdir):
    report_dir = workdir / "eval"
    code, out, err = _run(["evaluate", str(run["best"]), run["data"], "--output-dir", str(report_dir)])
    assert code == 0, err
    for name in ("metrics.json", "per_class.csv", "predictions.csv", "confusion_matrix.png", "reliability_diagram.png"):
        assert (report_dir / name).is_file()
    metrics = json.loads((report_dir / "metrics.json").read_text())
    test_items = json.loads((run["out_dir"] / "splits.json").read_text())["splits"]["test"]
    assert metrics["num_images"] == len(test_items)  # the same held-out images as training carved
    assert "accuracy" in out and "Per class" in out and str(report_dir) in out


# ------------------------------------------------------------------ predict
def _images(workdir: Path) -> list[str]:
    return [str(workdir / "shapes" / kind / f"{kind}_00.png") for kind in CLASSES]


def test_predict_table(run, workdir):
    code, out, _ = _run(["predict", str(run["best"]), *_images(workdir), "--top-k", "2"])
    assert code == 0
    assert "Predictions (3 images)" in out
    assert sum(name in out for name in CLASSES) >= 2
    assert "%" in out


def test_predict_json_is_the_only_stdout(run, workdir):
    code, out, _ = _run(["predict", str(run["best"]), *_images(workdir), "--format", "json", "--top-k", "3"])
    assert code == 0
    predictions = json.loads(out)
    assert [p["source"] for p in predictions] == _images(workdir)
    for p in predictions:
        assert sorted(p["labels"]) == sorted(CLASSES)
        assert p["probabilities"] == sorted(p["probabilities"], reverse=True)
        assert sum(p["probabilities"]) == pytest.approx(1.0, abs=1e-4)


def test_predict_csv_on_a_folder_with_tta(run, workdir):
    code, out, _ = _run(["predict", str(run["best"]), str(workdir / "shapes" / "circle"), "--format", "csv", "--tta"])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == PER_CLASS * len(CLASSES)  # top-k defaults to every class when there are fewer than 5
    assert {r["rank"] for r in rows} == {"1", "2", "3"}
    assert {r["label"] for r in rows} == set(CLASSES)
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)


# ------------------------------------------------------------------ export, then the ONNX file
def test_export_onnx_and_torchscript_then_use_the_onnx_file(run, workdir):
    onnx_path, ts_path = workdir / "export" / "shapes.onnx", workdir / "export" / "shapes.pt"
    code, out, err = _run(["export", str(run["best"]), "--output", str(onnx_path), "--quantize"])
    assert code == 0, err
    assert onnx_path.is_file() and (workdir / "export" / "shapes.int8.onnx").is_file()
    assert "Parity check passed" in out and "onnx export" in out
    code, out, err = _run(["export", str(run["best"]), "--format", "torchscript", "--output", str(ts_path)])
    assert code == 0, err
    assert ts_path.is_file() and "Parity check passed" in out

    code, out, _ = _run(["predict", str(onnx_path), *_images(workdir), "--format", "json"])
    assert code == 0
    code, ckpt_out, _ = _run(["predict", str(run["best"]), *_images(workdir), "--format", "json"])
    onnx_probs = [p["probabilities"] for p in json.loads(out)]
    ckpt_probs = [p["probabilities"] for p in json.loads(ckpt_out)]
    np.testing.assert_allclose(onnx_probs, ckpt_probs, atol=1e-4)
    code, out, err = _run(["evaluate", str(onnx_path), run["data"], "--split", "val", "--num-wrong", "0"])
    assert code == 0, err
    assert (workdir / "export" / "eval-val" / "metrics.json").is_file()


# ------------------------------------------------------------------ models
def test_models_with_parameter_counts(capsys):
    assert main(["models", "resnet18", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "resnet18 " in out and "11.2M" in out and "512" in out  # headless resnet18: 11.18M params, 512 features


def test_models_long_list_says_how_to_narrow(capsys):
    assert main(["models", "resnet", "--limit", "25"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Showing 25 of" in out and "narrow the pattern" in out and "M " not in out


# ------------------------------------------------------------------ serve
def test_serve_passes_its_options_to_the_service(run, monkeypatch):
    import inspect

    service = pytest.importorskip("autotimm.serving.app")
    calls = []

    def fake_run_server(model, host, port, log_level, **options):
        inspect.signature(service.create_app).bind(model, **options)  # every option is one create_app takes
        calls.append((model, host, port, log_level, options))

    monkeypatch.setattr(service, "run_server", fake_run_server)
    code, _, err = _run(["serve", str(run["best"]), "--port", "8123", "--top-k", "2", "--max-batch-size", "4"])
    assert code == 0, err
    [(model, host, port, log_level, options)] = calls
    assert (host, port, log_level) == ("127.0.0.1", 8123, "info")
    assert not isinstance(model, str) and len(model.class_names) == 3  # loaded before uvicorn starts
    assert options["top_k"] == 2 and options["max_batch_size"] == 4 and options["device"] == "cpu"


def test_serve_errors_are_one_line(run, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("garbage")
    code, line = _error(["serve", str(bad)])
    assert code == 1 and "is not an autotimm checkpoint" in line
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, line = _error(["serve", str(run["best"]), "--port", str(busy.getsockname()[1])])
    assert code == 1 and "cannot listen on 127.0.0.1:" in line


# ------------------------------------------------------------------ errors: exit code and one line
def _error(args: list[str]) -> tuple[int, str]:
    code, _, err = _run(args)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["train", "--data", "no/such/folder"], 1, "nor a built-in dataset (cifar10, cifar100"),
        (["train", "--backbone", "resnet1800"], 1, "Unknown backbone 'resnet1800'"),
        (["train", "--optimizer", "adamx"], 1, "adamw"),
        (["train", "--scheduler", "cosinus"], 1, "cosine_with_restarts"),
        (["train", "--augmentation", "heavy"], 1, "randaugment"),
        (["train", "--precision", "8"], 2, "--precision must be one of"),
        (["train", "--epochs", "-1"], 2, "--epochs must be an integer >= 1, got -1"),
        (["train", "--lr", "abc"], 2, "--lr: expected a number or null, got 'abc'"),
        (["train", "--lr", "0"], 2, "--lr must be a number > 0, got 0.0"),
        (["train", "--val-split", "1.5"], 2, "--val-split must be a number in [0, 1), got 1.5"),
        (["train", "--image-size", "big"], 2, "--image-size: expected an integer or null, got 'big'"),
        (["train", "--bogus", "1"], 2, "unrecognized arguments: --bogus 1"),
        (["train", "--config", "no/such.yaml"], 2, "--config"),
        (["evaluate", "no/such.ckpt", "DATA"], 1, "CKPT 'no/such.ckpt' does not exist"),
        (["evaluate", "CKPT", "DATA", "--split", "everything"], 2, "--split: expected one of"),
        (["predict", "CKPT", "x.png", "--format", "xml"], 2, "--format: expected one of 'table', 'json', 'csv'"),
        (["predict", "CKPT", "x.png", "--top-k", "0"], 2, "--top-k must be an integer >= 1, got 0"),
        (["export", "no/such.ckpt"], 1, "does not exist"),
        (["export", "CKPT", "--format", "tflite"], 2, "--format: expected one of 'onnx', 'torchscript'"),
        (["models", "--limit", "0"], 2, "--limit must be an integer >= 1"),
        (["models", "zzzqqq"], 1, "no timm backbone matches 'zzzqqq'"),
        (["serve", "no/such.ckpt"], 1, "does not exist"),
        (["serve", "CKPT", "--port", "70000"], 2, "--port must be an integer in [1, 65536)"),
        (["tran"], 2, "invalid choice: 'tran'"),
        ([], 2, "choose a command"),
    ],
)
def test_bad_input_gives_one_line_error(args, code, expected, workdir):
    data = str(workdir / "shapes")
    if args[:1] == ["train"] and "--data" not in args:
        args = [*args, "--data", data]
    args = [data if a == "DATA" else a for a in args]
    args = [str(workdir / "shapes" / "circle" / "circle_00.png") if a == "CKPT" else a for a in args]
    got, line = _error(args)
    assert got == code, line
    assert line.startswith("autotimm")
    assert expected in line


def test_missing_required_option_is_named(capsys):
    code, line = _error(["train"])
    assert code == 2 and "--data" in line


def test_bad_values_in_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: digits\nepochs: 0\n")
    code, line = _error(["train", "--config", str(config)])
    assert code == 2 and "--epochs must be an integer >= 1, got 0" in line


def test_predict_missing_input_and_wrong_model_file(run, workdir):
    code, line = _error(["predict", str(run["best"]), str(workdir / "missing.png")])
    assert code == 1 and "missing.png" in line
    code, line = _error(["predict", str(workdir / "run.yaml"), _images(workdir)[0]])
    assert code == 1 and "must be a .ckpt checkpoint or an .onnx export" in line


def test_verbose_shows_the_traceback():
    code, _, err = _run(["train", "--data", "no/such/folder", "--verbose"])
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("autotimm train: error:")


def test_one_line_folds_jsonargparse_messages():
    message = "Parser key \"top_k\":\n  Errors:\n  Subtypes: [<class 'int'>, <class 'NoneType'>]\n  Given value: x"
    assert one_line(message) == "--top-k: expected an integer or null, got 'x'"
    assert one_line("a\n  b") == "a b"


def test_console_script_exit_code_and_one_line_error(tmp_path):
    beside = Path(sys.executable).with_name("autotimm")  # the venv's console script
    script = str(beside) if beside.is_file() else shutil.which("autotimm")
    assert script, "the autotimm console script is not installed (pip install -e .)"
    command = [script]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*command, "train", "--data", str(tmp_path / "nothing")], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("autotimm train: error: --data")
