"""Evaluate a trained classifier on labelled images and write a report folder.

[`evaluate`][autotimm.evaluation.report.evaluate] predicts on a data module split, a
class-folder tree or ``(images, labels)`` arrays, computes the metrics with
torchmetrics, prints them as tables and writes ``metrics.json``,
``per_class.csv``/``.json``, ``predictions.csv``, confusion matrices, a
reliability diagram and a grid of the most confidently wrong images.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from autotimm.checks import require_number
from autotimm.evaluation.calibration import expected_calibration_error, negative_log_likelihood
from autotimm.evaluation.labelled_data import is_multi_label, resolve_labelled_data
from autotimm.evaluation.multi_label import MultiLabelEvaluationReport, evaluate_multi_label
from autotimm.evaluation.plots import (
    add_legend,
    class_labels,
    image_grid_figure,
    message_figure,
    per_class_bar_figure,
    reliability_diagram,
    sample_indices,
    save_figure,
)
from autotimm.prediction.inputs import ImageSource
from autotimm.prediction.predict import softmax
from autotimm.training.diagnostics import confusion_matrix_figure

__all__ = ["EvaluationReport", "classification_metrics", "evaluate"]

#: Per-class tables longer than this are printed as the worst classes by F1 only (the files have all).
MAX_PRINTED_CLASSES = 40
_PER_CLASS_KEYS = ("class", "precision", "recall", "f1", "support")


@dataclass
class EvaluationReport:
    """Everything [`evaluate`][autotimm.evaluation.report.evaluate] measured, and the files it wrote.

    Args:
        num_images: Images evaluated.
        class_names: The model's class names, in its output order.
        accuracy: Top-1 accuracy.
        top_k: ``k`` of the top-k accuracy, ``min(top_k, num_classes)`` (0: not computed).
        top_k_accuracy: Share of images whose true class is among the ``k`` most probable.
        precision_macro: Precision averaged over classes (classes with no
            images and no predictions are left out, as torchmetrics does).
        recall_macro: Recall averaged over classes.
        f1_macro: F1 averaged over classes.
        precision_weighted: Precision averaged with weights = class support.
        recall_weighted: Recall averaged with weights = class support (equals accuracy).
        f1_weighted: F1 averaged with weights = class support.
        per_class: One dict per class: ``class``, ``precision``, ``recall``, ``f1``, ``support``.
        confusion_matrix: ``C x C`` counts, rows true classes, columns predictions.
        temperature: The model's temperature used for ``ece_after``/``nll_after``.
        ece_before: Expected calibration error with temperature 1.
        ece_after: Expected calibration error with the model's temperature.
        nll_before: Mean negative log-likelihood with temperature 1.
        nll_after: Mean negative log-likelihood with the model's temperature.
        n_bins: ECE bins.
        split: The split evaluated (``None`` for arrays and plain class folders, which are used whole).
        tta: The test-time augmentation used.
        confidently_wrong: The most confidently wrong images drawn, most confident
            first: ``index``, ``source``, ``true``, ``predicted``, ``probability``.
        output_dir: The report folder.
        files: The files written, by kind.
    """

    num_images: int
    class_names: list[str]
    accuracy: float
    top_k: int
    top_k_accuracy: float | None
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_weighted: float
    recall_weighted: float
    f1_weighted: float
    per_class: list[dict[str, Any]]
    confusion_matrix: list[list[int]]
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    n_bins: int = 15
    split: str | None = None
    tta: bool | str = False
    confidently_wrong: list[dict[str, Any]] = field(default_factory=list)
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers by name, with the top-k accuracy named ``top{k}_accuracy``."""
        numbers = {"accuracy": self.accuracy}
        if self.top_k_accuracy is not None:
            numbers[f"top{self.top_k}_accuracy"] = self.top_k_accuracy
        for name in ("precision", "recall", "f1"):
            numbers[f"{name}_macro"] = getattr(self, f"{name}_macro")
        for name in ("precision", "recall", "f1"):
            numbers[f"{name}_weighted"] = getattr(self, f"{name}_weighted")
        numbers.update(ece_before=self.ece_before, ece_after=self.ece_after)
        numbers.update(nll_before=self.nll_before, nll_after=self.nll_after)
        return numbers

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data: every number, the class names and the file paths (as strings)."""
        data = asdict(self)
        data.pop("top_k_accuracy")
        data = {"num_images": data.pop("num_images"), **self.summary, **data}
        data["output_dir"] = None if self.output_dir is None else str(self.output_dir)
        data["files"] = {kind: str(path) for kind, path in self.files.items()}
        return data

    def __str__(self) -> str:
        lines = [f"Evaluation on {self.num_images} images, {len(self.class_names)} classes"]
        lines += [f"  {name:<20} {value:.4f}" for name, value in self.summary.items()]
        lines.append(f"  {'temperature':<20} {self.temperature:.4f}")
        if self.output_dir is not None:
            lines.append(f"  report in {self.output_dir}")
        return "\n".join(lines)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, top_k: int = 5) -> dict[str, Any]:
    """Single-label classification metrics with torchmetrics.

    Args:
        logits: ``(N, C)`` logits or probabilities.
        labels: ``(N,)`` true class indices.
        top_k: ``k`` of the top-k accuracy (capped at ``C``; ``< 2`` skips it).

    Returns:
        ``accuracy``, ``top_k`` and ``top_k_accuracy``, the macro and weighted
        precision, recall and F1, per-class ``precision``/``recall``/``f1``/``support``
        lists, and the ``confusion_matrix`` (rows true, columns predicted).

    Example:
        >>> m = classification_metrics(np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), np.array([0, 1, 1]))
        >>> round(m["accuracy"], 4), m["confusion_matrix"]
        (0.6667, [[1, 0], [1, 1]])
    """
    scores = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    target = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    num_classes = scores.shape[1]
    preds = torch.as_tensor(np.asarray(logits).argmax(axis=1))
    common = {"num_classes": num_classes, "validate_args": False}
    k = min(int(top_k), num_classes)
    out: dict[str, Any] = {
        "accuracy": float(multiclass_accuracy(preds, target, average="micro", **common)),
        "top_k": k if k >= 2 else 0,
        "top_k_accuracy": float(multiclass_accuracy(scores, target, average="micro", top_k=k, **common))
        if k >= 2
        else None,
    }
    for name, fn in (("precision", multiclass_precision), ("recall", multiclass_recall), ("f1", multiclass_f1_score)):
        out[f"{name}_macro"] = float(fn(preds, target, average="macro", **common))
        out[f"{name}_weighted"] = float(fn(preds, target, average="weighted", **common))
        out[name] = fn(preds, target, average="none", **common).tolist()
    out["support"] = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).tolist()
    out["confusion_matrix"] = multiclass_confusion_matrix(preds, target, **common).tolist()
    return out


# ---------------------------------------------------------------------- what evaluate passes on
@dataclass
class _Predictions:
    """The labelled images and the model's logits on them."""

    class_names: list[str]
    sources: list[ImageSource]
    labels: np.ndarray
    logits: np.ndarray

    @property
    def ids(self) -> list[str]:
        """Each image's file path, or ``#<index>`` for an image in memory."""
        return [s.source if s.source is not None else f"#{i}" for i, s in enumerate(self.sources)]


@dataclass
class _Computed:
    """Everything computed from the logits: metrics, probabilities and calibration."""

    metrics: dict[str, Any]
    temperature: float
    raw: np.ndarray
    calibrated: np.ndarray
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float


# ---------------------------------------------------------------------- printing
def _print_tables(report: EvaluationReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"Evaluation ({report.num_images} images)", title_justify="left")
    summary.add_column("Metric")
    summary.add_column("Value", justify="right")
    for name, value in report.summary.items():
        summary.add_row(name, f"{value:.4f}")
    summary.add_row("temperature", f"{report.temperature:.4f}")
    console.print(summary)
    rows = report.per_class
    title = "Per class"
    if len(rows) > MAX_PRINTED_CLASSES:
        rows = sorted(rows, key=lambda r: r["f1"])[:MAX_PRINTED_CLASSES]
        title = f"Per class: the {MAX_PRINTED_CLASSES} lowest F1 of {len(report.per_class)} (all in per_class.csv)"
    table = Table(title=title, title_justify="left")
    for column in ("Class", "Precision", "Recall", "F1", "Support"):
        table.add_column(column, justify="left" if column == "Class" else "right")
    for row in rows:
        table.add_row(
            row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"])
        )
    console.print(table)


# ---------------------------------------------------------------------- files
def _write_tables(report: EvaluationReport) -> None:
    with open(report.files["per_class_csv"], "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_PER_CLASS_KEYS))
        writer.writeheader()
        writer.writerows(report.per_class)
    report.files["per_class_json"].write_text(json.dumps(report.per_class, indent=2))


def _write_predictions(path: Path, predictions: _Predictions, probs: np.ndarray) -> None:
    names, labels = predictions.class_names, predictions.labels
    preds = probs.argmax(axis=1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "source", "true", "predicted", "probability", "true_probability", "correct"])
        for i, (source, y, p) in enumerate(zip(predictions.ids, labels, preds, strict=True)):
            writer.writerow([i, source, names[y], names[p], f"{probs[i, p]:.6f}", f"{probs[i, y]:.6f}", int(p == y)])


def _write_files(report: EvaluationReport, predictions: _Predictions, computed: _Computed) -> None:
    """Write ``per_class.csv``/``.json``, ``predictions.csv`` and, last, ``metrics.json`` (which lists every file)."""
    _write_tables(report)
    _write_predictions(report.files["predictions"], predictions, computed.calibrated)
    report.files["metrics"].write_text(json.dumps(report.to_dict(), indent=2))


# ---------------------------------------------------------------------- figures
def _confidently_wrong_figure(
    model: Any, predictions: _Predictions, rows: list[dict[str, Any]], probs: np.ndarray, shown: dict[str, str]
) -> Any:
    """A grid of the most confidently wrong images (``rows``), or a message image when every prediction is right.

    ``shown`` maps each class name to what is drawn for it (the name, or its index; see `class_labels`).
    """
    labels = predictions.labels
    if not rows:
        return message_figure(f"No misclassified images: all {len(labels)} predictions are right.")
    wrong = int(np.count_nonzero(probs.argmax(axis=1) != labels))
    pre = model.preprocessor
    images = [pre.denormalize(pre(predictions.sources[row["index"]].load(pre.in_chans))) for row in rows]
    titles = []
    for row in rows:
        text = f"true: {shown[row['true']]}\npred: {shown[row['predicted']]} ({row['probability']:.2f})"
        if not row["source"].startswith("#"):
            text += f"\n{Path(row['source']).name[:28]}"
        titles.append(text)
    return image_grid_figure(images, titles, columns=4, title=f"Most confidently wrong ({wrong} wrong)")


def _draw_figures(model: Any, report: EvaluationReport, predictions: _Predictions, computed: _Computed) -> None:
    """Save the confusion matrices, the reliability diagram and (when asked for) the confidently wrong images."""
    files, names, labels = report.files, predictions.class_names, predictions.labels
    shown, legend, fonts = class_labels(names)  # a font with the names' glyphs, or indices and a legend
    matrix = np.asarray(report.confusion_matrix)
    with fonts.context():
        counts = confusion_matrix_figure(matrix, shown, title="Confusion matrix (counts)")
        add_legend(counts, legend)
        save_figure(counts, files["confusion_matrix"])
        title = "Confusion matrix (share of each true class)"
        shares = confusion_matrix_figure(matrix, shown, normalize=True, title=title)
        add_legend(shares, legend)
        save_figure(shares, files["confusion_matrix_normalized"])
        temperature = computed.temperature
        calibrated = computed.calibrated if temperature != 1.0 else None
        diagram = reliability_diagram(computed.raw, labels, report.n_bins, calibrated, temperature)
        save_figure(diagram, files["reliability_diagram"])
        if "confidently_wrong" in files:
            rows, probs = report.confidently_wrong, computed.calibrated
            figure = _confidently_wrong_figure(model, predictions, rows, probs, dict(zip(names, shown, strict=True)))
            add_legend(figure, legend if rows else None)
            save_figure(figure, files["confidently_wrong"])
        if "samples" in files:
            figure = _samples_figure(model, predictions, computed.calibrated, shown, report.split)
            add_legend(figure, legend)
            save_figure(figure, files["samples"])
        if "per_class_recall" in files:
            recall = [row["recall"] for row in report.per_class]
            support = [row["support"] for row in report.per_class]
            save_figure(per_class_bar_figure(shown, recall, support, "recall"), files["per_class_recall"])


def _samples_figure(
    model: Any, predictions: _Predictions, probs: np.ndarray, shown: list[str], split: str | None
) -> Any:
    """A stratified grid of images (a few per class) with true and predicted class: green right, red wrong."""
    chosen = sample_indices(predictions.labels)
    pre = model.preprocessor
    images = [pre.denormalize(pre(predictions.sources[i].load(pre.in_chans))) for i in chosen]
    preds = probs.argmax(axis=1)
    titles, colours = [], []
    for i in chosen:
        right = preds[i] == predictions.labels[i]
        titles.append(f"true: {shown[predictions.labels[i]]}\npred: {shown[preds[i]]} ({probs[i, preds[i]]:.2f})")
        colours.append("#1a7f37" if right else "#cf222e")
    correct = sum(c == "#1a7f37" for c in colours)
    where = f"{split} split, " if split else ""
    classes, total = len(set(predictions.labels[chosen].tolist())), len(set(predictions.labels.tolist()))
    spread = f"a few of each of {classes} classes" if classes == total else f"one each of {classes} of {total} classes"
    title = f"Sample predictions ({where}{len(chosen)} images, {spread}; {correct} right)"
    return image_grid_figure(images, titles, columns=6, title=title, colors=colours)


# ---------------------------------------------------------------------- steps of evaluate
def _check_arguments(batch_size: Any, top_k: Any, n_bins: Any, num_wrong: Any) -> None:
    require_number("batch_size", batch_size, 1, integer=True)
    require_number("top_k", top_k, 1, integer=True)
    require_number("n_bins", n_bins, 1, integer=True)
    require_number("num_wrong", num_wrong, 0, integer=True)


def _predict(
    model: Any, data: Any, split: str, batch_size: int, tta: bool | str, progress: bool | None
) -> _Predictions:
    """Resolve the labelled images and run the model on them.

    Raises:
        ValueError: Unusable data, or logits of the wrong shape.
    """
    names = [str(n) for n in model.class_names]
    sources, labels = resolve_labelled_data(data, names, split=split)
    logits, _ = model.predict_logits(sources, batch_size=batch_size, tta=tta, progress=progress)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (len(labels), len(names)):
        raise ValueError(
            f"`predict_logits` returned shape {logits.shape} for {len(labels)} images and {len(names)} classes"
        )
    return _Predictions(names, sources, labels, logits)


def _compute(predictions: _Predictions, temperature: float, top_k: int, n_bins: int) -> _Computed:
    """The classification metrics, and the calibration with temperature 1 and with the model's."""
    logits, labels = predictions.logits, predictions.labels
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    return _Computed(
        metrics=classification_metrics(logits, labels, top_k),
        temperature=temperature,
        raw=raw,
        calibrated=calibrated,
        ece_before=expected_calibration_error(raw, labels, n_bins),
        ece_after=expected_calibration_error(calibrated, labels, n_bins),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
    )


def _confidently_wrong(predictions: _Predictions, probs: np.ndarray, count: int) -> list[dict[str, Any]]:
    """The ``count`` wrong predictions made with the highest probability, most confident first."""
    names, labels, ids = predictions.class_names, predictions.labels, predictions.ids
    preds = probs.argmax(axis=1)
    confidence = probs[np.arange(len(preds)), preds]
    wrong = np.flatnonzero(preds != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    return [
        {
            "index": int(i),
            "source": ids[i],
            "true": names[labels[i]],
            "predicted": names[preds[i]],
            "probability": float(confidence[i]),
        }
        for i in chosen
    ]


def _report_files(out: Path, num_wrong: int) -> dict[str, Path]:
    """The files of the report folder, by kind (``confidently_wrong`` only with ``num_wrong > 0``)."""
    files = {
        "metrics": out / "metrics.json",
        "per_class_csv": out / "per_class.csv",
        "per_class_json": out / "per_class.json",
        "predictions": out / "predictions.csv",
        "confusion_matrix": out / "confusion_matrix.png",
        "confusion_matrix_normalized": out / "confusion_matrix_normalized.png",
        "reliability_diagram": out / "reliability_diagram.png",
        "samples": out / "samples.png",
        "per_class_recall": out / "per_class_recall.png",
    }
    if num_wrong > 0:
        files["confidently_wrong"] = out / "confidently_wrong.png"
    return files


def _build_report(
    predictions: _Predictions,
    computed: _Computed,
    n_bins: int,
    num_wrong: int,
    split: str | None,
    tta: bool | str,
    output_dir: Path,
) -> EvaluationReport:
    """The report of the computed numbers, the confidently wrong images and the files it is to write."""
    metrics, names = computed.metrics, predictions.class_names
    return EvaluationReport(
        num_images=len(predictions.labels),
        class_names=names,
        accuracy=metrics["accuracy"],
        top_k=metrics["top_k"],
        top_k_accuracy=metrics["top_k_accuracy"],
        **{f"{m}_{avg}": metrics[f"{m}_{avg}"] for m in ("precision", "recall", "f1") for avg in ("macro", "weighted")},
        per_class=[
            {key: (name if key == "class" else metrics[key][c]) for key in _PER_CLASS_KEYS}
            for c, name in enumerate(names)
        ],
        confusion_matrix=metrics["confusion_matrix"],
        temperature=computed.temperature,
        ece_before=computed.ece_before,
        ece_after=computed.ece_after,
        nll_before=computed.nll_before,
        nll_after=computed.nll_after,
        n_bins=n_bins,
        split=split,
        tta=tta,
        confidently_wrong=_confidently_wrong(predictions, computed.calibrated, num_wrong) if num_wrong > 0 else [],
        output_dir=output_dir,
        files=_report_files(output_dir, num_wrong),
    )


def evaluate(
    model: Any,
    data: Any,
    output_dir: str | Path,
    split: str = "test",
    batch_size: int = 32,
    tta: bool | str | None = None,
    top_k: int = 5,
    n_bins: int = 15,
    num_wrong: int = 16,
    progress: bool | None = None,
    verbose: bool = True,
    threshold: float | None = None,
) -> EvaluationReport | MultiLabelEvaluationReport:
    """Evaluate a classifier on labelled images, print the metrics and write a report folder.

    Images get the model's own evaluation preprocessing through
    ``model.predict_logits``. Metrics come from torchmetrics; calibration is
    measured with temperature 1 and with the model's temperature (the same
    when the model was never calibrated).

    Files written to ``output_dir``: ``metrics.json``, ``per_class.csv``,
    ``per_class.json``, ``predictions.csv``, ``confusion_matrix.png``,
    ``confusion_matrix_normalized.png``, ``reliability_diagram.png``,
    ``samples.png`` (a stratified grid of images, a few per class, with true
    and predicted class and probability: green right, red wrong),
    ``per_class_recall.png`` (recall per class, worst first, with support
    counts; the 40 worst when there are more) and ``confidently_wrong.png``
    (a message image when nothing is wrong; not written with ``num_wrong=0``).

    A multi-label model is evaluated by
    [`evaluate_multi_label`][autotimm.evaluation.multi_label.evaluate_multi_label]: per-class
    precision, recall and F1 at ``threshold``, the average precision of each class and their mean
    (mAP); ``top_k``, ``n_bins`` and ``num_wrong`` do not apply.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier], or any object
            with ``predict_logits``, ``class_names``, ``temperature`` and
            ``preprocessor`` (such as the ONNX predictor).
        data: Labelled images, as
            [`resolve_labelled_data`][autotimm.evaluation.labelled_data.resolve_labelled_data]
            accepts: an ``ImageDataModule``, a class-folder path or ``(images, labels)``.
        output_dir: The report folder (created).
        split: The data module split (or sub-folder of a train/val/test tree).
        batch_size: Images per forward pass.
        tta: Test-time augmentation passed to ``predict_logits`` (``True``, ``"flip"``, ``"crops"``, ...);
            ``None``: the model's ``default_tta`` (``"none"`` unless set, e.g. by ``auto_fit``).
        top_k: ``k`` of the top-k accuracy, capped at the number of classes.
        n_bins: ECE and reliability-diagram bins.
        num_wrong: How many confidently wrong images to draw.
        progress: Show a progress bar (``None``: for more than a few batches).
        verbose: Print the summary and per-class tables.
        threshold: Multi-label models: the probability a label needs; ``None``: the model's, else 0.5.

    Returns:
        The [`EvaluationReport`][autotimm.evaluation.report.EvaluationReport], or a
        [`MultiLabelEvaluationReport`][autotimm.evaluation.multi_label.MultiLabelEvaluationReport]
        for a multi-label model.

    Raises:
        ValueError: Unusable data (see ``resolve_labelled_data``), or an argument out of range.
    """
    _check_arguments(batch_size, top_k, n_bins, num_wrong)
    if is_multi_label(model):
        return evaluate_multi_label(model, data, output_dir, split, batch_size, tta, threshold, progress, verbose)
    if tta is None:
        tta = getattr(model, "default_tta", "none")
    predictions = _predict(model, data, split, batch_size, tta, progress)
    computed = _compute(predictions, float(model.temperature), top_k, n_bins)
    split_used = split if _has_splits(data) else None
    report = _build_report(predictions, computed, n_bins, num_wrong, split_used, tta, Path(output_dir))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    _draw_figures(model, report, predictions, computed)
    _write_files(report, predictions, computed)
    if verbose:
        _print_tables(report)
    return report


def _has_splits(data: Any) -> bool:
    """Whether ``split`` picked the images: a data module, or a folder with ``train/``, ``val/``, ``test/``."""
    from autotimm.data.datamodule import ImageDataModule

    if isinstance(data, ImageDataModule):
        return True
    return isinstance(data, (str, os.PathLike)) and (Path(data).expanduser() / "train").is_dir()
