"""evaluate(): hand-computed metrics and files, the three kinds of labelled data, and clear errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_calibration import NAMES, synthetic_uint8, train_tiny_model
from torchmetrics.functional.classification import multiclass_calibration_error

from autotimm import BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.evaluation.calibration import calibrate_model
from autotimm.evaluation.labelled_data import resolve_labelled_data
from autotimm.evaluation.report import EvaluationReport, evaluate
from autotimm.prediction.inputs import collect_inputs
from autotimm.prediction.predict import softmax
from autotimm.prediction.preprocess import Preprocessor
from autotimm.training.diagnostics import confusion_matrix_figure

pytestmark = pytest.mark.usefixtures("single_thread")

STUB_NAMES = ["cat", "dog", "emu"]
# Six images: labels and logits chosen so that every metric is easy to work out by hand.
LABELS = np.array([0, 0, 0, 1, 1, 2])
LOGITS = np.array(
    [
        [3.0, 1.0, 0.0],  # cat -> cat
        [2.0, 0.0, 1.0],  # cat -> cat
        [1.0, 2.0, 0.0],  # cat -> dog (cat second: right in the top 2)
        [0.0, 2.0, 1.0],  # dog -> dog
        [1.0, 0.0, 3.0],  # dog -> emu (dog last), the most confident mistake
        [0.0, 1.0, 3.0],  # emu -> emu
    ]
)
COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8)
IMAGES = np.broadcast_to(COLOURS[:, None, None, :], (6, 8, 8, 3)).copy()


class StubModel:
    """The predictor API evaluate() needs, returning fixed logits."""

    def __init__(self, logits=LOGITS, temperature=1.0, class_names=STUB_NAMES, multi_label=False):
        self.logits = np.asarray(logits, dtype=np.float32)
        self.class_names = list(class_names)
        self.temperature = torch.tensor(temperature)
        self.multi_label = multi_label
        self.preprocessor = Preprocessor(
            {"input_size": [3, 8, 8], "mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 1.0, "interpolation": "nearest"}
        )
        self.calls = []

    def predict_logits(self, inputs, batch_size=32, tta=False, skip_bad_images=False, progress=None):
        sources = collect_inputs(inputs)
        self.calls.append({"batch_size": batch_size, "tta": tta, "n": len(sources)})
        assert len(sources) == len(self.logits)
        return self.logits.copy(), [s.source for s in sources]


# ---------------------------------------------------------------------- hand-computed report
def test_hand_computed_metrics_and_files(tmp_path):
    model = StubModel()
    report = evaluate(model, (IMAGES, LABELS), tmp_path / "report", top_k=2, batch_size=4, tta=True)
    assert model.calls == [{"batch_size": 4, "tta": True, "n": 6}]
    assert isinstance(report, EvaluationReport) and report.num_images == 6

    # Confusion (rows true): cat 2/1/0, dog 0/1/1, emu 0/0/1.
    assert report.confusion_matrix == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # precision: cat 2/2, dog 1/2, emu 1/2; recall: cat 2/3, dog 1/2, emu 1/1; support 3, 2, 1.
    precision, recall, support = [1.0, 0.5, 0.5], [2 / 3, 0.5, 1.0], [3, 2, 1]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]  # 0.8, 0.5, 2/3
    expected = {
        "accuracy": 4 / 6,
        "top2_accuracy": 5 / 6,
        "precision_macro": 2 / 3,
        "recall_macro": 13 / 18,
        "f1_macro": sum(f1) / 3,
        "precision_weighted": 4.5 / 6,
        "recall_weighted": 4 / 6,
        "f1_weighted": (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6,
    }
    for name, value in expected.items():
        assert report.summary[name] == pytest.approx(value, abs=1e-6), name
    rows = [{"class": n, "precision": p, "recall": r, "f1": f, "support": s}
            for n, p, r, f, s in zip(STUB_NAMES, precision, recall, f1, support, strict=True)]  # fmt: skip

    out = tmp_path / "report"
    expected_files = {
        "metrics.json", "per_class.csv", "per_class.json", "predictions.csv", "confusion_matrix.png",
        "confusion_matrix_normalized.png", "reliability_diagram.png", "confidently_wrong.png", "samples.png",
        "per_class_recall.png",
    }  # fmt: skip
    assert {p.name for p in out.iterdir()} == expected_files
    assert {p.name for p in report.files.values()} == expected_files

    metrics = json.loads((out / "metrics.json").read_text())
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, abs=1e-6), name
    assert metrics["num_images"] == 6 and metrics["class_names"] == STUB_NAMES and metrics["temperature"] == 1.0
    assert metrics["ece_before"] == metrics["ece_after"]  # T = 1: calibration changes nothing
    ece = multiclass_calibration_error(torch.tensor(softmax(LOGITS)), torch.tensor(LABELS), 3, n_bins=15)
    assert metrics["ece_before"] == pytest.approx(float(ece), abs=1e-6)
    assert metrics["confusion_matrix"] == report.confusion_matrix
    assert metrics["files"]["metrics"] == str(out / "metrics.json")

    for got, want in zip(json.loads((out / "per_class.json").read_text()), rows, strict=True):
        assert got["class"] == want.pop("class") and got["support"] == want.pop("support")
        assert {k: got[k] for k in want} == pytest.approx(want)
    with open(out / "per_class.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [r["class"] for r in table] == STUB_NAMES
    assert [float(r["precision"]) for r in table] == pytest.approx(precision)
    assert [float(r["recall"]) for r in table] == pytest.approx(recall)
    assert [float(r["f1"]) for r in table] == pytest.approx(f1)
    assert [int(r["support"]) for r in table] == support

    with open(out / "predictions.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert [r["predicted"] for r in predictions] == ["cat", "cat", "dog", "dog", "emu", "emu"]
    assert [int(r["correct"]) for r in predictions] == [1, 1, 0, 1, 0, 1]
    assert float(predictions[4]["probability"]) == pytest.approx(softmax(LOGITS[4]).max(), abs=1e-6)

    # The most confident mistake first: image 4 (dog -> emu at 0.84), then image 2 (cat -> dog at 0.67).
    assert [(w["index"], w["true"], w["predicted"]) for w in report.confidently_wrong] == [
        (4, "dog", "emu"),
        (2, "cat", "dog"),
    ]
    assert report.confidently_wrong[0]["probability"] == pytest.approx(np.exp(3) / (np.exp(3) + np.e + 1))
    assert metrics["confidently_wrong"] == report.confidently_wrong

    for name in expected_files - {"metrics.json", "per_class.csv", "per_class.json", "predictions.csv"}:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 150, name
    text = str(report)
    assert "accuracy" in text and "0.6667" in text and "top2_accuracy" in text


def test_temperature_changes_calibration_only(tmp_path):
    report = evaluate(StubModel(temperature=2.0), (IMAGES, LABELS), tmp_path, verbose=False)
    plain = evaluate(StubModel(), (IMAGES, LABELS), tmp_path / "plain", verbose=False)
    assert report.temperature == 2.0
    assert report.accuracy == plain.accuracy and report.f1_macro == plain.f1_macro
    assert report.ece_before == plain.ece_before
    ece = multiclass_calibration_error(torch.tensor(softmax(LOGITS, 2.0)), torch.tensor(LABELS), 3, n_bins=15)
    assert report.ece_after == pytest.approx(float(ece), abs=1e-6) and report.ece_after != report.ece_before
    assert report.top_k == 3 and report.top_k_accuracy == 1.0  # k = min(5, 3 classes)
    assert report.confidently_wrong[0]["probability"] == pytest.approx(softmax(LOGITS[4], 2.0).max())


def test_normalized_confusion_matrix_figure():
    figure = confusion_matrix_figure(np.array([[2, 1], [0, 0]]), ["a", "b"], normalize=True, title="Shares")
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.67", "0.33", "0.00", "0.00"]  # an empty row stays 0
    assert ax.get_title() == "Shares" and ax.images[0].get_clim() == (0, 1)


def test_nothing_wrong_writes_a_message_image(tmp_path):
    logits = np.eye(3)[LABELS] * 4
    report = evaluate(StubModel(logits), (IMAGES, LABELS), tmp_path, verbose=False)
    assert report.accuracy == 1.0 and report.confidently_wrong == []
    assert (tmp_path / "confidently_wrong.png").is_file()
    skipped = evaluate(StubModel(logits), (IMAGES, LABELS), tmp_path / "none", num_wrong=0, verbose=False)
    assert "confidently_wrong" not in skipped.files and not (tmp_path / "none" / "confidently_wrong.png").exists()


def test_prints_tables(tmp_path, capsys):
    evaluate(StubModel(), (IMAGES, LABELS), tmp_path)
    printed = capsys.readouterr().out
    assert "precision_macro" in printed and "Per class" in printed and "emu" in printed


def test_bad_arguments_and_models(tmp_path):
    with pytest.raises(ValueError, match="top_k"):
        evaluate(StubModel(), (IMAGES, LABELS), tmp_path, top_k=0)
    with pytest.raises(ValueError, match=r"must be \(N, 3\) 0/1 multi-hot labels"):  # a multi-label model
        evaluate(StubModel(multi_label=True), (IMAGES, LABELS), tmp_path)
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        evaluate(StubModel(), (IMAGES, LABELS[:5]), tmp_path)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        evaluate(StubModel(), (IMAGES, LABELS + 1), tmp_path)
    with pytest.raises(TypeError, match="ImageDataModule"):
        evaluate(StubModel(), {"images": IMAGES}, tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(StubModel(), tmp_path / "missing", tmp_path)


# ---------------------------------------------------------------------- labelled data
def write_tree(root, images, labels, names):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def test_arrays_grayscale_and_tensors():
    gray = np.zeros((3, 8, 8), np.uint8)  # (N, H, W): three grayscale images, not one RGB image
    sources, labels = resolve_labelled_data((gray, [0, 1, 1]), STUB_NAMES)
    assert len(sources) == 3 and labels.tolist() == [0, 1, 1]
    tensors = torch.zeros(2, 3, 8, 8)
    sources, labels = resolve_labelled_data((tensors, torch.tensor([2, 0])), STUB_NAMES)
    assert len(sources) == 2 and labels.tolist() == [2, 0]
    with pytest.raises(ValueError, match="integer class indices"):
        resolve_labelled_data((gray, [0.5, 1, 1]), STUB_NAMES)
    # A data module of grayscale arrays (like the built-in digits).
    data = ImageDataModule(
        images=gray, labels=[0, 1, 1], class_names=STUB_NAMES, val_split=0.0, test_split=0.0, output_dir=None
    )
    sources, labels = resolve_labelled_data(data, STUB_NAMES, split="train")
    assert len(sources) == 3 and sorted(labels.tolist()) == [0, 1, 1] and sources[0].image.size == (8, 8)


def test_folder_maps_class_names_and_rejects_unknown_ones(tmp_path):
    write_tree(tmp_path / "flat", IMAGES, LABELS, STUB_NAMES)
    # The model orders its classes differently: labels follow the model's order, by name.
    sources, labels = resolve_labelled_data(tmp_path / "flat", ["emu", "dog", "cat"])
    by_name = {s.path.parent.name: y for s, y in zip(sources, labels, strict=True)}
    assert by_name == {"cat": 2, "dog": 1, "emu": 0}
    # A subset of the model's classes is fine.
    write_tree(tmp_path / "some", IMAGES[:3], LABELS[:3], STUB_NAMES)
    assert resolve_labelled_data(tmp_path / "some", STUB_NAMES)[1].tolist() == [0, 0, 0]
    write_tree(tmp_path / "flat", IMAGES[:1], [0], ["yak"])
    with pytest.raises(ValueError, match=r"\['yak'\].*\['cat', 'dog', 'emu'\]"):
        resolve_labelled_data(tmp_path / "flat", STUB_NAMES)


def test_split_folders_and_missing_splits(tmp_path):
    write_tree(tmp_path / "train", IMAGES, LABELS, STUB_NAMES)
    write_tree(tmp_path / "test", IMAGES[3:], LABELS[3:], STUB_NAMES)
    sources, labels = resolve_labelled_data(tmp_path, STUB_NAMES, split="test")
    assert labels.tolist() == [1, 1, 2] and all("test" in s.source for s in sources)
    with pytest.raises(ValueError, match=r"'val'.*\['train', 'test'\]"):
        resolve_labelled_data(tmp_path, STUB_NAMES, split="val")
    data = ImageDataModule(data_dir=tmp_path, val_split=0.0, output_dir=None)
    with pytest.raises(ValueError, match=r"`split` 'val' does not exist.*\['train', 'test'\]"):
        resolve_labelled_data(data, STUB_NAMES, split="val")
    with pytest.raises(ValueError, match=r"`split` 'val' does not exist"):
        calibrate_model(StubModel(), data)  # calibrates on "val" by default


def test_datamodule_class_names_must_be_the_models(tmp_path):
    data = ImageDataModule(images=IMAGES, labels=LABELS, class_names=["a", "b", "c"], output_dir=None)
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c'\].*\['cat', 'dog', 'emu'\]"):
        resolve_labelled_data(data, STUB_NAMES, split="train")
    multi = ImageDataModule(images=IMAGES, labels=np.eye(3, dtype=int)[LABELS], output_dir=None)
    with pytest.raises(ValueError, match="multi-label"):
        resolve_labelled_data(multi, ["0", "1", "2"], split="train")


# ---------------------------------------------------------------------- a real model
@pytest.fixture(scope="module")
def trained():
    return train_tiny_model(), synthetic_uint8(seed=1, per_class=8)


def test_real_model_on_datamodule_folder_and_arrays(trained, tmp_path):
    model, (images, labels) = trained
    write_tree(tmp_path / "data" / "train", images, labels, NAMES)
    write_tree(tmp_path / "data" / "test", images, labels, NAMES)
    data = ImageDataModule(data_dir=tmp_path / "data", val_split=0.0, output_dir=None, num_workers=0)

    from_arrays = evaluate(model, (images, labels), tmp_path / "arrays", verbose=False)
    from_folder = evaluate(model, tmp_path / "data" / "test", tmp_path / "folder", verbose=False)
    from_module = evaluate(model, data, tmp_path / "module", split="test", verbose=False)

    logits, _ = model.predict_logits(images)
    assert from_arrays.accuracy == pytest.approx((logits.argmax(1) == labels).mean())
    assert 0.5 < from_arrays.accuracy < 1.0
    assert from_arrays.top_k == 4 and from_arrays.split is None and from_module.split == "test"
    for other in (from_folder, from_module):  # the same images (PNG is lossless), in another order
        assert other.num_images == len(labels)
        assert other.confusion_matrix == from_arrays.confusion_matrix
        for name, value in from_arrays.summary.items():
            assert other.summary[name] == pytest.approx(value, abs=1e-5), name
    wrong = from_folder.confidently_wrong
    assert wrong and all(w["source"].endswith(".png") and w["true"] != w["predicted"] for w in wrong)
    assert [w["probability"] for w in wrong] == sorted((w["probability"] for w in wrong), reverse=True)


def test_real_model_rejects_a_datamodule_with_other_classes(trained, tmp_path):
    model, (images, labels) = trained
    data = ImageDataModule(images=images, labels=labels, output_dir=None)  # classes "0".."3"
    with pytest.raises(ValueError, match=r"does not know: \['0', '1', '2', '3'\]"):
        evaluate(model, data, tmp_path, split="train")


def test_multi_label_classifier_gets_a_multi_label_report(tmp_path):
    from autotimm.evaluation import MultiLabelEvaluationReport

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, multi_label=True)
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    report = evaluate(model, (IMAGES, targets), tmp_path, verbose=False, threshold=0.5)
    assert isinstance(report, MultiLabelEvaluationReport) and report.threshold == 0.5
    assert [row["support"] for row in report.per_class] == targets.sum(axis=0).tolist()
    assert 0 <= report.mean_average_precision <= 1
    assert {path.name for path in report.files.values()} == {
        "metrics.json", "per_class.csv", "per_class.json", "predictions.csv", "per_class_f1.png",
    }  # fmt: skip
    assert all(path.is_file() for path in report.files.values())
    with pytest.raises(ValueError, match="multi-hot"):  # single-label targets for a multi-label model
        evaluate(model, (IMAGES, LABELS), tmp_path)


def test_multi_label_metrics_by_hand():
    from autotimm.evaluation import multi_label_metrics

    probs = np.array([[0.9, 0.2, 0.6], [0.6, 0.7, 0.1], [0.1, 0.8, 0.5], [0.3, 0.4, 0.2]])
    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 0]])
    m = multi_label_metrics(probs, targets, threshold=0.5)
    # class 0: predicted {0, 1}, true {0, 3}: precision 1/2, recall 1/2; AP: 0.9 hit, 0.6, 0.3 hit -> (1 + 2/3) / 2
    assert m["precision"][0] == pytest.approx(0.5) and m["recall"][0] == pytest.approx(0.5)
    assert m["average_precision"][0] == pytest.approx((1 + 2 / 3) / 2)
    # class 2: predicted {0, 2} (0.5 counts: >= threshold, as predict), true {0}: precision 1/2, recall 1
    assert m["precision"][2] == pytest.approx(0.5) and m["recall"][2] == pytest.approx(1.0)
    assert m["exact_match"] == pytest.approx(1 / 4)  # only image 0 ({0, 2}) is exactly right
    assert m["support"] == [2, 2, 1]
    no_positive = multi_label_metrics(probs, np.array([[1, 0, 0]] * 4))
    assert no_positive["average_precision"][1] is None and no_positive["mean_average_precision"] == 1.0


def test_onnx_predictor_gives_the_same_report(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from autotimm.exporting.exporter import export
    from autotimm.prediction.onnx_predictor import OnnxPredictor

    model, (images, labels) = trained
    model.temperature.fill_(1.5)
    try:
        export(model, tmp_path / "model.onnx")
        from_torch = evaluate(model, (images, labels), tmp_path / "torch", verbose=False)
    finally:
        model.temperature.fill_(1.0)
    predictor = OnnxPredictor(tmp_path / "model.onnx")
    from_onnx = evaluate(predictor, (images, labels), tmp_path / "onnx", verbose=False)
    assert from_onnx.temperature == 1.5 and from_onnx.confusion_matrix == from_torch.confusion_matrix
    for name, value in from_torch.summary.items():
        assert from_onnx.summary[name] == pytest.approx(value, abs=1e-4), name
    with pytest.raises(TypeError, match="read-only `temperature`"):
        calibrate_model(predictor, (images, labels))


def test_labels_may_be_class_names():
    gray = np.zeros((2, 8, 8), np.uint8)
    _, labels = resolve_labelled_data((gray, [STUB_NAMES[1], STUB_NAMES[0]]), STUB_NAMES)
    assert labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="class names the model does not know"):
        resolve_labelled_data((gray, ["nope", STUB_NAMES[0]]), STUB_NAMES)
