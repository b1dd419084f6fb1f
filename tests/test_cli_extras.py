"""The command line does what the Python API does: local/torchvision weights, calibration, explanations,
multi-label evaluation, a torch-free ONNX predict, UTF-8 output and figures with CJK class names."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autotimm import ImageClassifier
from autotimm.cli import main

# "café" (non-ASCII, but in the default font) and "猫" (CJK: in no font installed here, unless one is).
CLASSES = ("café", "猫", "stripes")
PER_CLASS = 12
SIZE = 32


def _draw(kind: int, rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if kind == 0:
        image[(yy - 16) ** 2 + (xx - 16) ** 2 < 64] = (230, 60, 60)
    elif kind == 1:
        image[9:23, 9:23] = (60, 200, 60)
    else:
        image[(xx // 4) % 2 == 0] = (60, 90, 230)
    return image


def _run(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def _error(args: list[str]) -> tuple[int, str]:
    code, _, err = _run(args)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-extras")
    rng = np.random.default_rng(0)
    for kind, name in enumerate(CLASSES):
        folder = root / "shapes" / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.fromarray(_draw(kind, rng)).save(folder / f"{kind}_{i:02d}.png")
    return root


COMMON = ["--backbone", "test_resnet", "--epochs", "2", "--batch-size", "8", "--image-size", str(SIZE)]
COMMON += ["--num-workers", "0", "--accelerator", "cpu", "--seed", "0", "--lr", "0.01"]


@pytest.fixture(scope="module")
def calibrated(workdir) -> dict:
    """``autotimm train --calibrate`` on the shapes: the run, its output and the calibrated model."""
    out_dir = workdir / "run"
    code, stdout, stderr = _run(["train", "--data", str(workdir / "shapes"), *COMMON, "--output-dir", str(out_dir)])
    assert code == 0, stderr
    code, stdout, stderr = _run(
        ["train", "--data", str(workdir / "shapes"), *COMMON, "--output-dir", str(workdir / "cal"), "--calibrate"]
    )
    assert code == 0, stderr
    return {"plain": out_dir, "dir": workdir / "cal", "stdout": stdout}


# ------------------------------------------------------------------ --checkpoint-path
def test_train_starts_the_backbone_from_a_torchvision_file(workdir) -> None:
    import timm
    import torchvision

    from autotimm.models import torchvision_to_timm

    torch.manual_seed(0)
    weights = torchvision.models.mobilenet_v2(width_mult=1.0).state_dict()
    path = workdir / "mobilenet_v2_torchvision.pth"
    torch.save(weights, path)
    out_dir = workdir / "from-torchvision"
    args = ["train", "--data", str(workdir / "shapes"), *COMMON, "--backbone", "mobilenetv2_100"]
    args += ["--checkpoint-path", str(path), "--freeze-backbone", "--epochs", "1", "--output-dir", str(out_dir)]
    code, _, err = _run(args)
    assert code == 0, err
    # The backbone was frozen: after training it still holds exactly the torchvision weights, converted.
    expected = torchvision_to_timm(weights, "mobilenet_v2")
    backbone = ImageClassifier.load(out_dir / "checkpoints" / "last.ckpt").backbone.state_dict()
    assert set(backbone) == set(expected) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(backbone[key], expected[key]) for key in backbone)
    assert not torch.equal(backbone["conv_stem.weight"], timm.create_model("mobilenetv2_100").conv_stem.weight)


def test_checkpoint_path_errors_are_one_line(workdir) -> None:
    data = ["train", "--data", str(workdir / "shapes"), *COMMON, "--output-dir", str(workdir / "bad-weights")]
    code, line = _error([*data, "--checkpoint-path", str(workdir / "missing.pth")])
    assert code == 1 and "--checkpoint-path" in line and "does not exist" in line
    wrong = workdir / "resnet_keys.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    code, line = _error([*data, "--overwrite", "--checkpoint-path", str(wrong)])
    assert code == 1 and line.startswith("autotimm train: error: --checkpoint-path") and "does not fit" in line
    code, line = _error([*data, "--checkpoint-path", str(wrong), "--checkpoint-format", "keras"])
    assert code == 2 and "--checkpoint-format: expected one of 'auto', 'timm', 'torchvision'" in line


# ------------------------------------------------------------------ --calibrate
def test_train_calibrate_saves_the_temperature_with_the_model(calibrated) -> None:
    stdout = calibrated["stdout"]
    line = next(line for line in stdout.splitlines() if line.startswith("Calibration on "))
    temperature = float(line.split("temperature ")[1].split(",")[0])
    assert "validation images" in line and "ECE " in line and " -> " in line
    model_file = calibrated["dir"] / "model.ckpt"
    assert f"Calibrated model: {model_file}" in stdout or "Calibrated model: " in stdout
    model = ImageClassifier.load(model_file)
    assert float(model.temperature) == pytest.approx(temperature, abs=5e-5)
    assert float(model.temperature) != 1.0
    assert "model.ckpt" in next(line for line in stdout.splitlines() if line.startswith("Evaluate on the held-out"))
    # The checkpoints themselves are the uncalibrated training ones.
    assert float(ImageClassifier.load(calibrated["dir"] / "checkpoints" / "last.ckpt").temperature) == 1.0


def test_evaluate_calibrate_reports_ece_before_and_after(calibrated, workdir) -> None:
    report_dir = workdir / "eval-cal"
    ckpt = calibrated["plain"] / "checkpoints" / "last.ckpt"
    args = [
        "evaluate",
        str(ckpt),
        str(workdir / "shapes"),
        "--calibrate",
        "--seed",
        "0",
        "--output-dir",
        str(report_dir),
    ]
    code, out, err = _run(args)
    assert code == 0, err
    metrics = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    saved = ImageClassifier.load(report_dir / "model.ckpt")
    assert metrics["temperature"] == pytest.approx(float(saved.temperature)) and metrics["temperature"] != 1.0
    assert f"{metrics['ece_before']:.4f} before calibration (T = 1), {metrics['ece_after']:.4f} after" in out
    assert "Calibration on " in out and "validation images" in out
    assert float(ImageClassifier.load(ckpt).temperature) == 1.0  # CKPT itself is left alone


def test_calibrate_refusals_are_one_line(calibrated, workdir, tmp_path) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really")
    code, line = _error(["evaluate", str(onnx), str(workdir / "shapes"), "--calibrate"])
    assert code == 2 and "--calibrate" in line and "ONNX export" in line and "export that again" in line
    ckpt = str(calibrated["plain"] / "checkpoints" / "last.ckpt")
    code, line = _error(["evaluate", ckpt, str(workdir / "shapes"), "--calibrate", "--split", "all"])
    assert code == 2 and "--split all leaves none" in line
    no_val = ["--val-split", "0", "--output-dir", str(tmp_path / "no-val")]
    code, line = _error(["train", "--data", str(workdir / "shapes"), "--calibrate", *no_val])
    assert code == 2 and "--calibrate fits the temperature on the validation split" in line


# ------------------------------------------------------------------ explain
def test_explain_writes_one_png_per_image(calibrated, workdir) -> None:
    ckpt = str(calibrated["plain"] / "checkpoints" / "last.ckpt")
    images = [str(workdir / "shapes" / name / f"{k}_00.png") for k, name in enumerate(CLASSES)]
    out_dir = workdir / "explained"
    code, out, err = _run(["explain", ckpt, *images, "--output", str(out_dir), "--target", "stripes"])
    assert code == 0, err
    files = sorted(p.name for p in out_dir.iterdir())
    assert files == ["0_00_gradcam.png", "1_00_gradcam.png", "2_00_gradcam.png"]
    with Image.open(out_dir / "0_00_gradcam.png") as picture:
        assert picture.size[0] > 300 and picture.size[1] > 200  # the input beside its overlay
    assert "Explanations (3 images)" in out and out.count("stripes") >= 3  # every row explains the target class

    from autotimm import explain

    model = ImageClassifier.load(ckpt)
    expected = explain(model, images[0], target="stripes")
    assert f"{expected.probability:.1%}" in out


def test_explain_refusals_are_one_line(calibrated, workdir, tmp_path) -> None:
    ckpt = str(calibrated["plain"] / "checkpoints" / "last.ckpt")
    image = str(workdir / "shapes" / "stripes" / "2_00.png")
    code, line = _error(["explain", ckpt, image, "--method", "rollout", "--output", str(tmp_path)])
    assert code == 1 and "rollout" in line and "gradcam" in line
    onnx = tmp_path / "x.onnx"
    onnx.write_bytes(b"x")
    code, line = _error(["explain", str(onnx), image])
    assert code == 2 and "CKPT must be a .ckpt checkpoint to explain" in line
    code, line = _error(["explain", ckpt, image, "--target", "unicorn", "--output", str(tmp_path)])
    assert code == 1 and "'unicorn' is not a class name" in line


def test_explain_rollout_on_a_vit(tmp_path) -> None:
    from autotimm import BackboneConfig

    model = ImageClassifier(BackboneConfig("test_vit", pretrained=False), num_classes=2, class_names=["a", "b"])
    ckpt = model.save(tmp_path / "vit.ckpt")
    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    code, _, err = _run(["explain", str(ckpt), str(image), "--method", "rollout", "--output", str(tmp_path / "o")])
    assert code == 0, err
    assert (tmp_path / "o" / "x_rollout.png").is_file()


# ------------------------------------------------------------------ multi-label evaluate
def test_evaluate_a_multi_label_model(workdir) -> None:
    rng = np.random.default_rng(1)
    folder = workdir / "tags"
    folder.mkdir()
    rows = []
    for i in range(40):
        image = rng.integers(0, 60, (SIZE, SIZE, 3)).astype(np.uint8)
        labels = []
        if i % 2 == 0:
            image[:, :16] = (230, 60, 60)
            labels.append("red")
        if i % 3 == 0:
            image[16:, :] = (60, 90, 230)
            labels.append("blue")
        labels = labels or ["none"]
        Image.fromarray(image).save(folder / f"{i:02d}.png")
        rows.append((f"{i:02d}.png", ";".join(labels)))
    with open(folder / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("image", "label"), *rows])
    run_dir = workdir / "tags-run"
    code, out, err = _run(["train", "--data", str(folder / "labels.csv"), *COMMON, "--output-dir", str(run_dir)])
    assert code == 0, err
    assert "Evaluate on the held-out test split" in out  # evaluate takes multi-label models now
    report_dir = workdir / "tags-eval"
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    code, out, err = _run(["evaluate", ckpt, str(folder / "labels.csv"), "--split", "val", "--threshold", "0.4",
                           "--output-dir", str(report_dir)])  # fmt: skip
    assert code == 0, err
    metrics = json.loads((report_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["multi_label"] is True and metrics["threshold"] == 0.4
    assert "mean_average_precision" in out and "Per class (threshold 0.4)" in out

    # The numbers, recomputed by hand from predictions.csv (true label sets and every probability).
    with open(report_dir / "predictions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    names = metrics["class_names"]
    truth = np.array([[name in row["true"].split(";") for name in names] for row in table])
    probs = np.array([[float(row[f"p_{name}"]) for name in names] for row in table])
    assert len(table) == metrics["num_images"]
    predicted = probs >= 0.4
    for c, entry in enumerate(metrics["per_class"]):
        tp = int((predicted[:, c] & truth[:, c]).sum())
        assert entry["support"] == int(truth[:, c].sum())
        assert entry["precision"] == pytest.approx(tp / max(int(predicted[:, c].sum()), 1), abs=1e-4)
        assert entry["recall"] == pytest.approx(tp / max(int(truth[:, c].sum()), 1), abs=1e-4)
        if entry["support"]:
            order = np.argsort(-probs[:, c], kind="stable")
            hits = truth[order, c]
            precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            assert entry["average_precision"] == pytest.approx(
                float((precision_at * hits).sum() / hits.sum()), abs=1e-3
            )
    defined = [e["average_precision"] for e in metrics["per_class"] if e["average_precision"] is not None]
    assert metrics["mean_average_precision"] == pytest.approx(float(np.mean(defined)), abs=1e-6)


# ------------------------------------------------------------------ torch-free predict, UTF-8 JSON
_BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = {"torch", "torchvision", "timm", "lightning", "pytorch_lightning", "lightning_fabric", "torchmetrics",
               "jsonargparse", "rich", "docstring_parser", "matplotlib", "yaml"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Block())
    import importlib.util
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else real(name, *a)
    from autotimm.cli import main
    code = main(sys.argv[1:])
    assert not BLOCKED & {m.split(".")[0] for m in sys.modules}, sorted(BLOCKED & set(sys.modules))
    sys.exit(code)
    """
)


def _torch_free(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}  # a terminal that is not UTF-8: JSON must still be UTF-8
    return subprocess.run([sys.executable, "-c", _BLOCKER, *args], capture_output=True, env=env, timeout=120)


def test_torch_free_predict_with_an_onnx_file(calibrated, workdir) -> None:
    pytest.importorskip("onnxruntime")
    onnx = workdir / "shapes.onnx"
    code, _, err = _run(["export", str(calibrated["dir"] / "model.ckpt"), "--output", str(onnx)])
    assert code == 0, err
    images = [str(workdir / "shapes" / name / f"{k}_01.png") for k, name in enumerate(CLASSES)]
    result = _torch_free(["predict", str(onnx), *images, "--format", "json", "--top-k", "2"])
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode("utf-8")
    assert '"café"' in text and "猫" in text and "\\u" not in text  # UTF-8, not ASCII escapes
    light = json.loads(text)
    code, full, _ = _run(["predict", str(onnx), *images, "--format", "json", "--top-k", "2"])
    assert code == 0 and light == json.loads(full)  # the same answer as the full command line

    table = _torch_free(["predict", str(onnx), images[0]])
    assert table.returncode == 0, table.stderr.decode()
    assert "Predictions (1 image)" in table.stdout.decode("utf-8")
    bad = _torch_free(["predict", str(onnx), images[0], "--top-k", "0"])
    assert (
        bad.returncode == 2
        and bad.stderr.decode().strip() == "autotimm predict: error: --top-k must be an integer >= 1, got 0"
    )


def test_torch_free_install_names_the_install_command(calibrated, workdir) -> None:
    result = _torch_free(["train", "--data", str(workdir / "shapes")])
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1
    assert lines[0].startswith("autotimm train: error:") and "pip install autotimm" in lines[0]
    ckpt = str(calibrated["dir"] / "model.ckpt")
    result = _torch_free(["predict", ckpt, str(workdir / "shapes" / "stripes" / "2_00.png")])
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "pip install autotimm" in lines[0], lines
    assert "ModuleNotFoundError" not in lines[0]


def test_predict_json_writes_utf8_class_names(calibrated, workdir) -> None:
    script = "import sys; from autotimm.cli import main; sys.exit(main(sys.argv[1:]))"
    image = str(workdir / "shapes" / "café" / "0_00.png")
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "HF_HUB_OFFLINE": "1"}
    args = ["predict", str(calibrated["dir"] / "model.ckpt"), image, "--format", "json", "--top-k", "3"]
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    raw = result.stdout
    assert "café".encode() in raw and "猫".encode() in raw and b"\\u" not in raw
    assert sorted(json.loads(raw.decode("utf-8"))[0]["labels"]) == sorted(CLASSES)


# ------------------------------------------------------------------ figures with CJK class names, repr
def test_evaluation_figures_with_cjk_class_names_do_not_warn(calibrated, workdir) -> None:
    from autotimm.evaluation.plots import class_labels, font_fallback

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = _run(["evaluate", str(calibrated["dir"] / "model.ckpt"), str(workdir / "shapes"),
                             "--split", "all", "--output-dir", str(workdir / "eval-cjk")])  # fmt: skip
    assert code == 0, err
    assert not [w for w in caught if "missing from font" in str(w.message)]
    for name in ("confusion_matrix.png", "confidently_wrong.png", "reliability_diagram.png"):
        assert (workdir / "eval-cjk" / name).is_file()
    labels, legend, fonts = class_labels(CLASSES)
    if fonts.uncovered:  # no installed font has 猫: indices on the axes, names (escaped) in the legend
        assert labels == ["0", "1", "2"] and "0: café" in legend and "1: U+732B" in legend
    else:  # a CJK font is installed: the names themselves, drawn with it
        assert labels == list(CLASSES) and legend is None and fonts.families
    assert font_fallback(["café", "dog"]).families == ()  # the default font has é


def test_font_fallback_uses_an_installed_font_that_has_the_glyphs() -> None:
    from matplotlib import font_manager, ft2font
    from matplotlib.figure import Figure

    from autotimm.evaluation.plots import font_fallback

    default = set(ft2font.FT2Font(font_manager.findfont("DejaVu Sans")).get_charmap())
    stix = next(f.fname for f in font_manager.fontManager.ttflist if f.name == "STIXGeneral")
    extra = sorted(c for c in ft2font.FT2Font(stix).get_charmap() if c > 0x2000 and c not in default)
    if not extra:
        pytest.skip("every STIX glyph is in DejaVu Sans here")
    text = "x" + chr(extra[0])
    fonts = font_fallback([text])
    assert fonts.families and not fonts.uncovered
    with warnings.catch_warnings(record=True) as caught, fonts.context():
        warnings.simplefilter("always")
        figure = Figure()
        figure.add_subplot().set_title(text)
        figure.savefig(io.BytesIO(), format="png")
    assert not [w for w in caught if "missing from font" in str(w.message)]


def test_explanation_repr_shows_shapes_not_arrays() -> None:
    from autotimm import BackboneConfig, explain

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2, class_names=["猫", "b"])
    result = explain(model, np.zeros((48, 48, 3), np.uint8), target="猫")
    text = repr(result)
    assert "heatmap=<float32 array (" in text and "image=<uint8 array (" in text and ", 3)>" in text
    assert "target_name='猫'" in text and len(text) < 400
