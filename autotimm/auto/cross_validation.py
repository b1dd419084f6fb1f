"""K-fold cross-validation: stratified folds of the training data, one fresh model per fold, out-of-fold predictions.

Single-label folds deal each class round-robin; multi-label folds use
iterative stratification (Sechidis et al., 2011). The folds are built from
the data module's training and validation images (the test split is never
touched), saved to ``cv_folds.json`` with a digest of the data (reused by a
rerun, refused when the data changed), and each fold's result is written when
it finishes, so a killed run resumes at the first unfinished fold.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotimm.checks import require_number
from autotimm.classifier.ensemble import EnsembleClassifier
from autotimm.classifier.module import ImageClassifier
from autotimm.data.datamodule import ImageDataModule
from autotimm.data.sources import SampleTable
from autotimm.evaluation.multi_label import DEFAULT_THRESHOLD, multi_label_metrics
from autotimm.evaluation.report import classification_metrics
from autotimm.prediction.predict import sigmoid, softmax
from autotimm.training.trainer import AutoTrainer

__all__ = ["CrossValidationResult", "cross_validate", "iterative_stratified_folds", "stratified_folds"]

FOLDS_FILE = "cv_folds.json"
_RESULT_FILE = "fold_result.json"
#: The per-fold metrics summarised (from `classification_metrics`).
_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "top_k_accuracy")
#: The per-fold metrics of multi-label data (from `multi_label_metrics`, at the 0.5 threshold).
_MULTI_LABEL_METRICS = (
    "mean_average_precision",
    "f1_macro",
    "f1_micro",
    "precision_macro",
    "recall_macro",
    "exact_match",
)


def stratified_folds(targets: Sequence[int], k: int, seed: int = 0) -> list[list[int]]:
    """Split sample indices into ``k`` disjoint folds that keep each class's share, within one image per class.

    Each class's samples are shuffled (seeded) and dealt round-robin, starting
    after the fold where the previous class stopped, so fold sizes differ by at
    most one as well. (scikit-learn's ``StratifiedKFold`` does the same job but
    is not a dependency of autotimm.)

    Args:
        targets: The class of each sample.
        k: Number of folds (>= 2).
        seed: Seed of the shuffle.

    Returns:
        ``k`` lists of indices, each sorted.

    Raises:
        ValueError: ``k`` < 2 or more folds than samples.

    Example:
        >>> stratified_folds([0, 0, 0, 0, 1, 1], k=2, seed=0)
        [[1, 2, 5], [0, 3, 4]]
    """
    require_number("k", k, 2, integer=True)
    targets = np.asarray(targets)
    if len(targets) < k:
        raise ValueError(f"`k`={k} folds need at least {k} training images, got {len(targets)}")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    start = 0
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        for offset, index in enumerate(members):
            folds[(start + offset) % k].append(int(index))
        start = (start + len(members)) % k
    return [sorted(fold) for fold in folds]


def iterative_stratified_folds(
    label_sets: Sequence[Sequence[int]], num_classes: int, k: int, seed: int = 0
) -> list[list[int]]:
    """Split multi-label samples into ``k`` disjoint folds that keep each label's share: iterative stratification.

    The algorithm of Sechidis, Tsoumakas and Vlahavas (2011), as scikit-multilearn
    implements it: each fold wants ``1/k`` of the samples and of each label's
    samples. Repeatedly, the label with the fewest samples left (ties: at
    random) is taken, and each of its samples goes to the fold that wants that
    label most (ties: the fold wanting the most samples, then at random); the
    sample's other labels and the fold's size are then counted as given. Rare
    labels are placed first, while every fold still wants them: each fold gets
    a rare label's share within one sample, and a common label's (placed last,
    around the labels already placed) within a few (measured: at most 2.6 images
    off a share of 18 over 40 random 150-image, 6-label sets, against 8 for random
    folds). Fold sizes may differ by a few samples. Samples without labels go to
    the folds that want the most samples. (Written here, in numpy, because
    scikit-multilearn is not a dependency of autotimm and the algorithm is a few lines.)

    Args:
        label_sets: The class indices of each sample (an empty list for none).
        num_classes: Number of classes (every index < this).
        k: Number of folds (>= 2).
        seed: Seed of the tie-breaking and of the order samples are placed in.

    Returns:
        ``k`` lists of indices, each sorted.

    Raises:
        ValueError: ``k`` < 2, more folds than samples, or a class index outside ``[0, num_classes)``.

    Example:
        >>> iterative_stratified_folds([[0], [0, 1], [1], [0], [1], [0, 1]], num_classes=2, k=2, seed=0)
        [[1, 5], [0, 2, 3, 4]]

        Each fold has two samples of each label.
    """
    require_number("k", k, 2, integer=True)
    require_number("num_classes", num_classes, 1, integer=True)
    n = len(label_sets)
    if n < k:
        raise ValueError(f"`k`={k} folds need at least {k} training images, got {n}")
    y = np.zeros((n, num_classes), dtype=bool)
    for i, labels in enumerate(label_sets):
        labels = [int(c) for c in labels]
        if any(c < 0 or c >= num_classes for c in labels):
            raise ValueError(f"`label_sets`[{i}] = {labels} has a class index outside [0, {num_classes})")
        y[i, labels] = True
    rng = np.random.default_rng(seed)
    wanted = np.full(k, n / k)  # samples each fold still wants
    wanted_per_label = np.outer(np.full(k, 1 / k), y.sum(axis=0))  # (k, C): each label's samples each fold wants
    left = np.ones(n, dtype=bool)
    order = rng.permutation(n)  # the order a label's samples are placed in
    fold_of = np.full(n, -1)
    while left.any():
        counts = y[left].sum(axis=0)
        if counts.any():
            rarest = np.flatnonzero(counts == counts[counts > 0].min())
            label: int | None = int(rng.choice(rarest))
            members = order[left[order] & y[order, label]]
        else:  # only samples without labels are left
            label, members = None, order[left[order]]
        for i in members:
            keys = [rng.random(k), wanted] + ([wanted_per_label[:, label]] if label is not None else [])
            fold = int(np.lexsort(keys)[-1])  # the last key decides first
            fold_of[i] = fold
            left[i] = False
            wanted[fold] -= 1
            wanted_per_label[fold, y[i]] -= 1
    return [sorted(int(i) for i in np.flatnonzero(fold_of == f)) for f in range(k)]


@dataclass
class CrossValidationResult:
    """What [`cross_validate`][autotimm.auto.cross_validation.cross_validate] found.

    Args:
        folds: Per fold: ``{"fold", "train_images", "val_images", "checkpoint", <metrics>}``.
        mean: Mean of each metric over the folds.
        std: Sample standard deviation of each metric over the folds (0 for one fold).
        output_dir: The run folder.
        files: ``summary`` (``cv_summary.json``), ``folds`` (``cv_folds.csv``),
            ``oof`` (``oof_predictions.csv``), ``splits`` (``cv_folds.json``).
        ensemble: The fold models as one ``EnsembleClassifier`` (``ensemble=True``), else ``None``.
        test_metrics: The ensemble's metrics on the test split, when there is one.
    """

    folds: list[dict[str, Any]]
    mean: dict[str, float]
    std: dict[str, float]
    output_dir: Path
    files: dict[str, Path] = field(default_factory=dict)
    ensemble: EnsembleClassifier | None = None
    test_metrics: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (what ``cv_summary.json`` holds)."""
        return {
            "k": len(self.folds),
            "mean": self.mean,
            "std": self.std,
            "folds": self.folds,
            "test_metrics": self.test_metrics,
            "files": {name: str(path) for name, path in self.files.items()},
        }


def _pool(data: ImageDataModule) -> SampleTable:
    """The training and validation images as one table (the test split is left out)."""
    tables = data.tables
    parts = [tables[name] for name in ("train", "val") if name in tables]
    first = parts[0]
    if len(parts) == 1:
        return first
    if first.array is not None:  # array sources index rows of one shared array
        if any(p.array is not first.array for p in parts):
            raise ValueError("cannot pool the train and val splits of different arrays for cross-validation")
        return SampleTable(
            [i for p in parts for i in p.items], [t for p in parts for t in p.targets], None, first.array
        )
    if any(p.root != first.root for p in parts):  # make the paths absolute to pool folders with different roots
        items = [str(p.path(i)) for p in parts for i in range(len(p))]
        return SampleTable(items, [t for p in parts for t in p.targets], Path("/"), None)
    return SampleTable([i for p in parts for i in p.items], [t for p in parts for t in p.targets], first.root, None)


def _subset(table: SampleTable, indices: Sequence[int]) -> SampleTable:
    return SampleTable([table.items[i] for i in indices], [table.targets[i] for i in indices], table.root, table.array)


def _sample_name(table: SampleTable, index: int) -> str:
    if table.array is not None:
        return f"#{table.items[index]}"
    return str(table.path(index))


def _fingerprint(table: SampleTable, class_names: Sequence[str]) -> str:
    digest = hashlib.sha256(json.dumps(list(class_names)).encode())
    for index in range(len(table)):
        digest.update(f"{table.items[index]}\t{table.targets[index]}\n".encode())
    if table.array is not None:
        digest.update(hashlib.sha256(np.ascontiguousarray(table.array).tobytes()).digest())
    return digest.hexdigest()


def _folds_for(
    out: Path, table: SampleTable, class_names: Sequence[str], k: int, seed: int, multi_label: bool
) -> list[list[int]]:
    """The saved folds when they fit this data, k and seed; new ones otherwise (refused when the data changed)."""
    path = out / FOLDS_FILE
    fingerprint = _fingerprint(table, class_names)
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{str(path)!r} holds folds of other data (the images, labels or classes changed since): use another "
                "output_dir, or delete that folder to start the cross-validation again"
            )
        if (saved.get("k"), saved.get("seed")) != (k, seed):
            raise ValueError(
                f"{str(path)!r} holds k={saved.get('k')}, seed={saved.get('seed')} folds, not k={k}, seed={seed}: use "
                "the same k and seed to resume, or another output_dir"
            )
        return [list(map(int, fold)) for fold in saved["folds"]]
    if multi_label:
        folds = iterative_stratified_folds(table.targets, len(class_names), k, seed)
    else:
        folds = stratified_folds([int(t) for t in table.targets], k, seed)
    out.mkdir(parents=True, exist_ok=True)
    record = {"k": k, "seed": seed, "fingerprint": fingerprint, "num_images": len(table), "folds": folds}
    _write_json(path, record)
    return folds


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _model_factory(
    model: Callable[[], ImageClassifier] | dict[str, Any], multi_label: bool = False
) -> Callable[[], ImageClassifier]:
    if callable(model):
        return model
    if isinstance(model, dict):  # multi-label data gets a multi-label model unless the arguments say otherwise
        return lambda: ImageClassifier(**{"multi_label": multi_label, **model})
    raise TypeError(
        f"`model` must be a function returning a fresh ImageClassifier, or its keyword arguments; got {model!r}"
    )


def _fold_logits(model: ImageClassifier, data: ImageDataModule, split: str) -> np.ndarray:
    """The model's logits on a split, in the split's order."""
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for batch in data.eval_dataloader(split):
            chunks.append(model(batch[0].to(device)).float().cpu())
    return torch.cat(chunks).numpy().astype(np.float64)


def _summary_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    metrics = classification_metrics(logits, labels)
    return {name: float(metrics[name]) for name in _METRICS if metrics.get(name) is not None}


def _multi_hot(targets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    y = np.zeros((len(targets), num_classes), dtype=np.int64)
    for row, labels in zip(y, targets, strict=True):
        row[list(labels)] = 1
    return y


def _multi_label_summary(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    metrics = multi_label_metrics(probs, targets, DEFAULT_THRESHOLD)
    return {name: float(metrics[name]) for name in _MULTI_LABEL_METRICS if np.isfinite(metrics[name])}


def _run_fold(
    fold: int,
    data: ImageDataModule,
    pool: SampleTable,
    folds: list[list[int]],
    factory: Callable[[], ImageClassifier],
    trainer_kwargs: dict[str, Any],
    out: Path,
) -> dict[str, Any]:
    """Train fold ``fold`` (unless its result exists) and return its result, out-of-fold rows included."""
    fold_dir = out / f"fold_{fold}"
    done = fold_dir / _RESULT_FILE
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    val_idx = folds[fold]
    train_idx = sorted(i for j, other in enumerate(folds) if j != fold for i in other)
    fold_data = ImageDataModule.derived_from(
        data, tables={"train": _subset(pool, train_idx), "val": _subset(pool, val_idx)}
    )
    model = factory()
    kwargs = {"enable_progress_bar": False, "overwrite": True, **trainer_kwargs, "output_dir": fold_dir}
    trainer = AutoTrainer(**kwargs)
    trainer.fit(model, datamodule=fold_data)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        model = ImageClassifier.load(best)
    logits = _fold_logits(model, fold_data, "val")
    if data.multi_label:  # per-label sigmoid probabilities
        probs = sigmoid(logits)
        metrics = _multi_label_summary(probs, _multi_hot([pool.targets[i] for i in val_idx], probs.shape[1]))
    else:
        probs = softmax(logits)
        metrics = _summary_metrics(logits, np.asarray([int(pool.targets[i]) for i in val_idx]))
    result = {
        "fold": fold,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "checkpoint": best or None,
        **metrics,
        "oof": {"indices": list(val_idx), "probabilities": probs.round(6).tolist()},
    }
    if not best:  # without checkpointing the fold's model is kept as a file of its own
        result["checkpoint"] = str(model.save(fold_dir / "model.ckpt"))
    _write_json(done, result)  # last: a fold with this file is finished
    return result


def _write_outputs(
    out: Path, pool: SampleTable, class_names: list[str], results: list[dict[str, Any]], multi_label: bool
) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    files = {"summary": out / "cv_summary.json", "folds": out / "cv_folds.csv", "oof": out / "oof_predictions.csv"}
    files["splits"] = out / FOLDS_FILE
    rows = [{key: value for key, value in r.items() if key != "oof"} for r in results]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(files["folds"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    oof: dict[int, tuple[int, list[float]]] = {}
    for r in results:
        for index, probs in zip(r["oof"]["indices"], r["oof"]["probabilities"], strict=True):
            oof[int(index)] = (r["fold"], probs)
    with open(files["oof"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "fold", "true", "predicted", "probability", *(f"p_{name}" for name in class_names)])
        for index in sorted(oof):
            fold, probs = oof[index]
            if multi_label:  # label sets joined by ";", as evaluate's predictions.csv; probability: the highest
                true_names = ";".join(class_names[c] for c in pool.targets[index])
                chosen = ";".join(name for name, p in zip(class_names, probs, strict=True) if p >= DEFAULT_THRESHOLD)
                writer.writerow(
                    [_sample_name(pool, index), fold, true_names, chosen, f"{max(probs):.6f}",
                     *(f"{p:.6f}" for p in probs)]
                )  # fmt: skip
                continue
            predicted = int(np.argmax(probs))
            true = int(pool.targets[index])
            writer.writerow(
                [_sample_name(pool, index), fold, class_names[true], class_names[predicted], f"{probs[predicted]:.6f}",
                 *(f"{p:.6f}" for p in probs)]
            )  # fmt: skip
    return files, rows


def _print_table(result: CrossValidationResult) -> None:
    from rich.console import Console
    from rich.table import Table

    names = [m for m in (*_METRICS, *_MULTI_LABEL_METRICS) if m in result.mean]
    table = Table(title=f"{len(result.folds)}-fold cross-validation", title_justify="left")
    table.add_column("Fold")
    table.add_column("Images (train/val)", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    for row in result.folds:
        table.add_row(str(row["fold"]), f"{row['train_images']}/{row['val_images']}", *(f"{row[n]:.4f}" for n in names))
    table.add_row("mean ± sd", "", *(f"{result.mean[n]:.4f} ± {result.std[n]:.4f}" for n in names), style="bold")
    Console().print(table)
    if result.test_metrics:
        summary = ", ".join(f"{name} {value:.4f}" for name, value in result.test_metrics.items())
        Console().print(f"Fold ensemble on the test split: {summary}", highlight=False)


def cross_validate(
    data: ImageDataModule,
    model: Callable[[], ImageClassifier] | dict[str, Any],
    k: int = 5,
    seed: int = 0,
    trainer_kwargs: dict[str, Any] | None = None,
    output_dir: str | Path = "autotimm_output/cv",
    ensemble: bool = False,
    verbose: bool = True,
) -> CrossValidationResult:
    """K-fold cross-validation of a classifier on the training data of ``data``.

    The training and validation images of ``data`` are pooled and split into
    ``k`` stratified folds ([`stratified_folds`][autotimm.auto.cross_validation.stratified_folds]);
    the test split is never used for training or choosing. Fold ``i`` trains a
    fresh model (from ``model``) with an [`AutoTrainer`][autotimm.AutoTrainer]
    in ``{output_dir}/fold_i`` on the other folds and is evaluated, with its
    best checkpoint, on fold ``i``. Written to ``output_dir``: ``cv_folds.json``
    (the folds and a digest of the data), ``fold_i/fold_result.json`` as each
    fold finishes, then ``cv_summary.json`` (per-fold metrics, mean and
    standard deviation), ``cv_folds.csv`` and ``oof_predictions.csv`` (each
    training image's out-of-fold prediction: path, fold, true and predicted
    class, and every class's probability).

    Multi-label data gets iteratively stratified folds
    ([`iterative_stratified_folds`][autotimm.auto.cross_validation.iterative_stratified_folds]),
    the metrics of [`multi_label_metrics`][autotimm.evaluation.multi_label.multi_label_metrics]
    at the 0.5 threshold (mAP, macro and micro F1, macro precision and recall, exact match), and
    out-of-fold rows with the true and predicted label sets (joined by ``;``), the highest
    probability and every label's sigmoid probability.

    A rerun into the same ``output_dir`` reuses the saved folds and skips the
    folds already finished (resuming after a kill); it is refused when the
    data, ``k`` or ``seed`` changed.

    Args:
        data: An [`ImageDataModule`][autotimm.ImageDataModule], single- or multi-label.
        model: A function returning a fresh [`ImageClassifier`][autotimm.ImageClassifier],
            or the keyword arguments of one (``{"backbone": ..., "lr": ...}``; ``multi_label``
            defaults to the data's).
        k: Number of folds (>= 2).
        seed: Seed of the folds.
        trainer_kwargs: Arguments of each fold's ``AutoTrainer`` (``max_epochs``, ``seed``, ...).
        output_dir: The cross-validation's folder.
        ensemble: Also average the ``k`` fold models in an
            [`EnsembleClassifier`][autotimm.EnsembleClassifier], saved to
            ``{output_dir}/ensemble`` and evaluated on the test split when ``data`` has one
            (single-label data only: the ensemble averages softmax probabilities).
        verbose: Print the table of folds.

    Returns:
        The [`CrossValidationResult`][autotimm.auto.cross_validation.CrossValidationResult].

    Raises:
        ValueError: ``ensemble=True`` with multi-label data, ``k`` out of range, or an
            ``output_dir`` holding folds of other data (or another ``k`` or ``seed``).
        TypeError: ``model`` is neither a function nor a dict.
    """
    require_number("k", k, 2, integer=True)
    require_number("seed", seed, None, integer=True)
    _model_factory(model)  # a wrong type fails before the data is read
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise ValueError(f"`trainer_kwargs` must be a dict of AutoTrainer arguments or None, got {trainer_kwargs!r}")
    for reserved in ("output_dir",):
        if reserved in (trainer_kwargs or {}):
            raise ValueError(f"`trainer_kwargs` must not set {reserved!r}: each fold trains in {{output_dir}}/fold_i")
    data.setup("fit")
    multi_label = bool(data.multi_label)
    factory = _model_factory(model, multi_label)
    if multi_label and ensemble:
        raise ValueError(
            "`ensemble`=True needs single-label data (EnsembleClassifier averages softmax probabilities), and this "
            "data is multi-label: use ensemble=False"
        )
    out = Path(output_dir)
    pool = _pool(data)
    class_names = list(data.class_names)
    folds = _folds_for(out, pool, class_names, int(k), int(seed), multi_label)
    results = [_run_fold(i, data, pool, folds, factory, dict(trainer_kwargs or {}), out) for i in range(len(folds))]
    files, rows = _write_outputs(out, pool, class_names, results, multi_label)
    names = [m for m in (_MULTI_LABEL_METRICS if multi_label else _METRICS) if all(m in row for row in rows)]
    mean = {m: float(np.mean([row[m] for row in rows])) for m in names}
    std = {m: float(np.std([row[m] for row in rows], ddof=1)) if len(rows) > 1 else 0.0 for m in names}
    result = CrossValidationResult(rows, mean, std, out, files)
    if ensemble:
        members = [ImageClassifier.load(row["checkpoint"]) for row in rows]
        result.ensemble = EnsembleClassifier(members)
        result.ensemble.save(out / "ensemble")
        files["ensemble"] = out / "ensemble"
        if "test" in data.tables:
            test = data.tables["test"]
            test_data = ImageDataModule.derived_from(data, data_config=result.ensemble.data_config)
            logits = _fold_logits(result.ensemble, test_data, "test")  # log of the averaged probabilities
            result.test_metrics = _summary_metrics(logits, np.asarray([int(t) for t in test.targets]))
    _write_json(files["summary"], result.to_dict())
    if verbose:
        _print_table(result)
    return result
