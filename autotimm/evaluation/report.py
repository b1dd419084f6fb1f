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

from autotimm.evaluation.calibration import expected_calibration_error, negative_log_likelihood, softmax
from autotimm.evaluation.labelled_data import check_single_label, resolve_labelled_data
from autotimm.evaluation.plots import image_grid_figure, message_figure, reliability_diagram, save_figure
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
def _write_tables(report: EvaluationReport, out: Path) -> None:
    with open(out / "per_class.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_PER_CLASS_KEYS))
        writer.writeheader()
        writer.writerows(report.per_class)
    (out / "per_class.json").write_text(json.dumps(report.per_class, indent=2))


def _write_predictions(path: Path, ids: list[str], labels: np.ndarray, probs: np.ndarray, names: list[str]) -> None:
    preds = probs.argmax(axis=1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "source", "true", "predicted", "probability", "true_probability", "correct"])
        for i, (source, y, p) in enumerate(zip(ids, labels, preds, strict=True)):
            writer.writerow([i, source, names[y], names[p], f"{probs[i, p]:.6f}", f"{probs[i, y]:.6f}", int(p == y)])


def _confidently_wrong(
    model: Any,
    sources: list[Any],
    ids: list[str],
    labels: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    count: int,
    path: Path,
) -> list[dict[str, Any]]:
    preds = probs.argmax(axis=1)
    confidence = probs[np.arange(len(preds)), preds]
    wrong = np.flatnonzero(preds != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:count]
    rows = [
        {
            "index": int(i),
            "source": ids[i],
            "true": names[labels[i]],
            "predicted": names[preds[i]],
            "probability": float(confidence[i]),
        }
        for i in chosen
    ]
    if not rows:
        figure = message_figure(f"No misclassified images: all {len(labels)} predictions are right.")
    else:
        pre = model.preprocessor
        images = [pre.denormalize(pre(sources[i].load(pre.in_chans))) for i in chosen]
        titles = []
        for row in rows:
            text = f"true: {row['true']}\npred: {row['predicted']} ({row['probability']:.2f})"
            if not row["source"].startswith("#"):
                text += f"\n{Path(row['source']).name[:28]}"
            titles.append(text)
        figure = image_grid_figure(images, titles, columns=4, title=f"Most confidently wrong ({len(wrong)} wrong)")
    save_figure(figure, path)
    return rows


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
) -> EvaluationReport:
    """Evaluate a classifier on labelled images, print the metrics and write a report folder.

    Images get the model's own evaluation preprocessing through
    ``model.predict_logits``. Metrics come from torchmetrics; calibration is
    measured with temperature 1 and with the model's temperature (the same
    when the model was never calibrated).

    Files written to ``output_dir``: ``metrics.json``, ``per_class.csv``,
    ``per_class.json``, ``predictions.csv``, ``confusion_matrix.png``,
    ``confusion_matrix_normalized.png``, ``reliability_diagram.png`` and
    ``confidently_wrong.png`` (a message image when nothing is wrong; not
    written with ``num_wrong=0``).

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

    Returns:
        The [`EvaluationReport`][autotimm.evaluation.report.EvaluationReport].

    Raises:
        ValueError: Unusable data (see ``resolve_labelled_data``), a
            multi-label model, or an argument out of range.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("top_k", top_k, 1),
        ("n_bins", n_bins, 1),
        ("num_wrong", num_wrong, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}")
    check_single_label(model, "evaluate")
    if tta is None:
        tta = getattr(model, "default_tta", "none")
    names = [str(n) for n in model.class_names]
    sources, labels = resolve_labelled_data(data, names, split=split)
    logits, _ = model.predict_logits(sources, batch_size=batch_size, tta=tta, progress=progress)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != (len(labels), len(names)):
        raise ValueError(
            f"`predict_logits` returned shape {logits.shape} for {len(labels)} images and {len(names)} classes"
        )
    temperature = float(model.temperature)
    raw, calibrated = softmax(logits), softmax(logits, temperature)
    metrics = classification_metrics(logits, labels, top_k)
    report = EvaluationReport(
        num_images=len(labels),
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
        temperature=temperature,
        ece_before=expected_calibration_error(raw, labels, n_bins),
        ece_after=expected_calibration_error(calibrated, labels, n_bins),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        n_bins=n_bins,
        split=split if _has_splits(data) else None,
        tta=tta,
        output_dir=Path(output_dir),
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": out / "metrics.json",
        "per_class_csv": out / "per_class.csv",
        "per_class_json": out / "per_class.json",
        "predictions": out / "predictions.csv",
        "confusion_matrix": out / "confusion_matrix.png",
        "confusion_matrix_normalized": out / "confusion_matrix_normalized.png",
        "reliability_diagram": out / "reliability_diagram.png",
    }
    ids = [s.source if s.source is not None else f"#{i}" for i, s in enumerate(sources)]
    _write_tables(report, out)
    _write_predictions(files["predictions"], ids, labels, calibrated, names)
    matrix = np.asarray(metrics["confusion_matrix"])
    save_figure(confusion_matrix_figure(matrix, names, title="Confusion matrix (counts)"), files["confusion_matrix"])
    shares = confusion_matrix_figure(matrix, names, normalize=True, title="Confusion matrix (share of each true class)")
    save_figure(shares, files["confusion_matrix_normalized"])
    save_figure(
        reliability_diagram(raw, labels, n_bins, calibrated if temperature != 1.0 else None, temperature),
        files["reliability_diagram"],
    )
    if num_wrong > 0:
        files["confidently_wrong"] = out / "confidently_wrong.png"
        report.confidently_wrong = _confidently_wrong(
            model, sources, ids, labels, calibrated, names, num_wrong, files["confidently_wrong"]
        )
    report.files = files
    files["metrics"].write_text(json.dumps(report.to_dict(), indent=2))
    if verbose:
        _print_tables(report)
    return report


def _has_splits(data: Any) -> bool:
    """Whether ``split`` picked the images: a data module, or a folder with ``train/``, ``val/``, ``test/``."""
    from autotimm.data.datamodule import ImageDataModule

    if isinstance(data, ImageDataModule):
        return True
    return isinstance(data, (str, os.PathLike)) and (Path(data).expanduser() / "train").is_dir()
