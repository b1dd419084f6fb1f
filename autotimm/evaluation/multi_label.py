"""Evaluate a multi-label classifier: per-class precision, recall and F1 at its threshold, and the mean AP.

[`evaluate`][autotimm.evaluation.report.evaluate] hands multi-label models to
[`evaluate_multi_label`][autotimm.evaluation.multi_label.evaluate_multi_label]. A label is predicted when its
sigmoid probability (with the model's temperature) is at least the threshold, as ``model.predict`` does; the
average precision (AP) of each class does not depend on the threshold. Metrics come from torchmetrics.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
)

from autotimm.checks import require_number
from autotimm.evaluation.labelled_data import resolve_multi_label_data
from autotimm.evaluation.plots import add_legend, class_labels, per_class_bar_figure, save_figure
from autotimm.prediction.inputs import ImageSource
from autotimm.prediction.predict import sigmoid

__all__ = ["DEFAULT_THRESHOLD", "MultiLabelEvaluationReport", "evaluate_multi_label", "multi_label_metrics"]

#: The threshold of a model that does not set one: ``model.predict``'s default.
DEFAULT_THRESHOLD = 0.5
_PER_CLASS_KEYS = ("class", "precision", "recall", "f1", "average_precision", "support")


@dataclass
class MultiLabelEvaluationReport:
    """What [`evaluate_multi_label`][autotimm.evaluation.multi_label.evaluate_multi_label] measured, and its files.

    Args:
        num_images: Images evaluated.
        class_names: The model's class names, in its output order.
        threshold: The probability a label needed to be predicted.
        mean_average_precision: The mean over classes of the average precision (classes with no positive image
            are left out: their AP is undefined).
        precision_macro: Precision at ``threshold``, averaged over classes.
        recall_macro: Recall at ``threshold``, averaged over classes.
        f1_macro: F1 at ``threshold``, averaged over classes.
        precision_micro: Precision at ``threshold`` over every (image, label) pair.
        recall_micro: Recall at ``threshold`` over every (image, label) pair.
        f1_micro: F1 at ``threshold`` over every (image, label) pair.
        exact_match: Share of images whose predicted label set is exactly the true one.
        per_class: One dict per class: ``class``, ``precision``, ``recall``, ``f1``, ``average_precision``
            (``None`` without positives) and ``support`` (images having the label).
        temperature: The model's temperature, applied before the sigmoid.
        split: The split evaluated (``None`` for arrays).
        tta: The test-time augmentation used.
        output_dir: The report folder.
        files: The files written, by kind.
    """

    num_images: int
    class_names: list[str]
    threshold: float
    mean_average_precision: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    precision_micro: float
    recall_micro: float
    f1_micro: float
    exact_match: float
    per_class: list[dict[str, Any]]
    temperature: float = 1.0
    split: str | None = None
    tta: bool | str = False
    output_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    multi_label = True

    @property
    def summary(self) -> dict[str, float]:
        """The headline numbers by name (the threshold included)."""
        names = ("mean_average_precision", "precision_macro", "recall_macro", "f1_macro")
        names += ("precision_micro", "recall_micro", "f1_micro", "exact_match", "threshold")
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data: every number, the class names and the file paths (as strings)."""
        data = {"num_images": self.num_images, "multi_label": True, **self.summary, **asdict(self)}
        data["output_dir"] = None if self.output_dir is None else str(self.output_dir)
        data["files"] = {kind: str(path) for kind, path in self.files.items()}
        return data

    def __str__(self) -> str:
        lines = [f"Multi-label evaluation on {self.num_images} images, {len(self.class_names)} classes"]
        lines += [f"  {name:<24} {value:.4f}" for name, value in self.summary.items()]
        if self.output_dir is not None:
            lines.append(f"  report in {self.output_dir}")
        return "\n".join(lines)


def multi_label_metrics(probs: np.ndarray, targets: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Multi-label metrics with torchmetrics.

    Args:
        probs: ``(N, C)`` per-class probabilities (sigmoid outputs).
        targets: ``(N, C)`` 0/1 true labels.
        threshold: A label is predicted when its probability is at least this.

    Returns:
        ``mean_average_precision``, the macro and micro ``precision``/``recall``/``f1``, ``exact_match``, and
        per-class lists ``precision``, ``recall``, ``f1``, ``average_precision`` (``None`` for a class without
        positives) and ``support``.

    Raises:
        ValueError: Shapes that differ or are not ``(N, C)``, or a threshold outside ``(0, 1)``.

    Example:
        >>> probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.1, 0.8]])
        >>> m = multi_label_metrics(probs, np.array([[1, 0], [0, 1], [0, 1]]))
        >>> round(m["mean_average_precision"], 4), [round(p, 4) for p in m["precision"]]
        (1.0, [0.5, 1.0])
    """
    require_number("threshold", threshold, 0, 1, low_open=True)
    p = torch.as_tensor(np.asarray(probs, dtype=np.float32))
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    if p.ndim != 2 or p.shape != y.shape:
        raise ValueError(f"`probs` and `targets` must both be (N, C), got {tuple(p.shape)} and {tuple(y.shape)}")
    common = {"num_labels": p.shape[1], "threshold": float(threshold), "validate_args": False}
    # torchmetrics predicts a label when prob > threshold; model.predict keeps labels with prob >= threshold.
    preds = (p >= threshold).float()
    support = y.sum(dim=0)
    out: dict[str, Any] = {}
    for name, fn in (("precision", multilabel_precision), ("recall", multilabel_recall), ("f1", multilabel_f1_score)):
        out[f"{name}_macro"] = float(fn(preds, y, average="macro", **common))
        out[f"{name}_micro"] = float(fn(preds, y, average="micro", **common))
        out[name] = fn(preds, y, average="none", **common).tolist()
    out["exact_match"] = float(multilabel_exact_match(preds, y, **common))
    with warnings.catch_warnings():  # a class without positives: its AP is reported as None below
        warnings.filterwarnings("ignore", message="No positive samples found in target")
        ap = multilabel_average_precision(p, y, num_labels=p.shape[1], average="none", validate_args=False)
    out["average_precision"] = [float(v) if int(n) > 0 else None for v, n in zip(ap.tolist(), support, strict=True)]
    defined = [v for v in out["average_precision"] if v is not None]
    out["mean_average_precision"] = float(np.mean(defined)) if defined else float("nan")
    out["support"] = support.tolist()
    return out


def _model_threshold(model: Any) -> float:
    """The model's own threshold (``model.threshold`` or ``hparams.threshold``), else ``DEFAULT_THRESHOLD``."""
    value = getattr(model, "threshold", None)
    hparams = getattr(model, "hparams", None)
    if value is None and hparams is not None and "threshold" in hparams:
        value = hparams["threshold"]
    return float(value) if value is not None else DEFAULT_THRESHOLD


def _print_tables(report: MultiLabelEvaluationReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"Multi-label evaluation ({report.num_images} images)", title_justify="left")
    summary.add_column("Metric")
    summary.add_column("Value", justify="right")
    for name, value in report.summary.items():
        summary.add_row(name, f"{value:.4f}")
    console.print(summary)
    table = Table(title=f"Per class (threshold {report.threshold:g})", title_justify="left")
    for column in ("Class", "Precision", "Recall", "F1", "AP", "Support"):
        table.add_column(column, justify="left" if column == "Class" else "right")
    for row in report.per_class:
        ap = "-" if row["average_precision"] is None else f"{row['average_precision']:.4f}"
        table.add_row(
            row["class"], f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", ap, str(row["support"])
        )
    console.print(table)


def _write_files(
    report: MultiLabelEvaluationReport, sources: list[ImageSource], targets: np.ndarray, probs: np.ndarray
) -> None:
    names = report.class_names
    with open(report.files["per_class_csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(_PER_CLASS_KEYS))
        writer.writeheader()
        writer.writerows(report.per_class)
    report.files["per_class_json"].write_text(json.dumps(report.per_class, indent=2, ensure_ascii=False), "utf-8")
    with open(report.files["predictions"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "source", "true", "predicted", *(f"p_{name}" for name in names)])
        for i, source in enumerate(sources):
            true = ";".join(n for n, t in zip(names, targets[i], strict=True) if t)
            predicted = ";".join(n for n, p in zip(names, probs[i], strict=True) if p >= report.threshold)
            shown = source.source if source.source is not None else f"#{i}"
            writer.writerow([i, shown, true, predicted, *(f"{p:.6f}" for p in probs[i])])
    report.files["metrics"].write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), "utf-8")


def _draw_per_class(report: MultiLabelEvaluationReport) -> None:
    """``per_class_f1.png``: F1 at the threshold per class, worst first, with support (the 40 worst when more)."""
    shown, legend, fonts = class_labels(report.class_names)
    with fonts.context():
        f1 = [row["f1"] for row in report.per_class]
        support = [row["support"] for row in report.per_class]
        figure = per_class_bar_figure(shown, f1, support, f"F1 at threshold {report.threshold:g}")
        add_legend(figure, legend)
        save_figure(figure, report.files["per_class_f1"])


def evaluate_multi_label(
    model: Any,
    data: Any,
    output_dir: str | Path,
    split: str = "test",
    batch_size: int = 32,
    tta: bool | str | None = None,
    threshold: float | None = None,
    progress: bool | None = None,
    verbose: bool = True,
) -> MultiLabelEvaluationReport:
    """Evaluate a multi-label classifier on labelled images, print the metrics and write a report folder.

    Files written to ``output_dir``: ``metrics.json``, ``per_class.csv``, ``per_class.json``,
    ``predictions.csv`` (true and predicted label sets, separated by ``;``, and every class's probability)
    and ``per_class_f1.png`` (F1 at the threshold per class, worst first, with each class's support: the
    images having the label; the 40 worst when there are more classes).

    Args:
        model: A multi-label [`ImageClassifier`][autotimm.ImageClassifier], or any object with
            ``predict_logits``, ``class_names`` and ``temperature`` (such as the ONNX predictor).
        data: Multi-label images, as
            [`resolve_multi_label_data`][autotimm.evaluation.labelled_data.resolve_multi_label_data] accepts.
        output_dir: The report folder (created).
        split: The data module split.
        batch_size: Images per forward pass.
        tta: Test-time augmentation passed to ``predict_logits``; ``None``: the model's ``default_tta``.
        threshold: The probability a label needs; ``None``: the model's (``model.threshold``), else 0.5.
        progress: Show a progress bar (``None``: for more than a few batches).
        verbose: Print the summary and per-class tables.

    Returns:
        The [`MultiLabelEvaluationReport`][autotimm.evaluation.multi_label.MultiLabelEvaluationReport].

    Raises:
        ValueError: Unusable data, a threshold outside ``(0, 1)`` or ``batch_size < 1``.
    """
    require_number("batch_size", batch_size, 1, integer=True)
    threshold = _model_threshold(model) if threshold is None else threshold
    require_number("threshold", threshold, 0, 1, low_open=True)
    if tta is None:
        tta = getattr(model, "default_tta", "none")
    names = [str(n) for n in model.class_names]
    sources, targets = resolve_multi_label_data(data, names, split=split)
    logits, _ = model.predict_logits(sources, batch_size=batch_size, tta=tta, progress=progress)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape != targets.shape:
        raise ValueError(f"`predict_logits` returned shape {logits.shape} for targets of shape {targets.shape}")
    temperature = float(model.temperature)
    probs = sigmoid(logits / temperature)
    metrics = multi_label_metrics(probs, targets, threshold)
    out = Path(output_dir)
    from autotimm.data.datamodule import ImageDataModule

    report = MultiLabelEvaluationReport(
        num_images=len(targets),
        class_names=names,
        threshold=float(threshold),
        **{key: metrics[key] for key in ("mean_average_precision", "exact_match")},
        **{f"{m}_{avg}": metrics[f"{m}_{avg}"] for m in ("precision", "recall", "f1") for avg in ("macro", "micro")},
        per_class=[
            {key: (name if key == "class" else metrics[key][c]) for key in _PER_CLASS_KEYS}
            for c, name in enumerate(names)
        ],
        temperature=temperature,
        split=split if isinstance(data, ImageDataModule) else None,
        tta=tta,
        output_dir=out,
        files={
            "metrics": out / "metrics.json",
            "per_class_csv": out / "per_class.csv",
            "per_class_json": out / "per_class.json",
            "predictions": out / "predictions.csv",
            "per_class_f1": out / "per_class_f1.png",
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    _draw_per_class(report)
    _write_files(report, sources, targets, probs)
    if verbose:
        _print_tables(report)
    return report
