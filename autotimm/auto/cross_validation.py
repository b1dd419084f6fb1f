"""K-fold cross-validation: stratified folds of the training data, one fresh model per fold, out-of-fold predictions.

The folds are built from the data module's training and validation images
(the test split is never touched), saved to ``cv_folds.json`` with a digest of
the data (reused by a rerun, refused when the data changed), and each fold's
result is written when it finishes, so a killed run resumes at the first
unfinished fold.
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
from autotimm.evaluation.report import classification_metrics
from autotimm.prediction.predict import softmax
from autotimm.training.trainer import AutoTrainer

__all__ = ["CrossValidationResult", "cross_validate", "stratified_folds"]

FOLDS_FILE = "cv_folds.json"
_RESULT_FILE = "fold_result.json"
#: The per-fold metrics summarised (from `classification_metrics`).
_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "top_k_accuracy")


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


def _folds_for(out: Path, table: SampleTable, class_names: Sequence[str], k: int, seed: int) -> list[list[int]]:
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
    folds = stratified_folds([int(t) for t in table.targets], k, seed)
    out.mkdir(parents=True, exist_ok=True)
    record = {"k": k, "seed": seed, "fingerprint": fingerprint, "num_images": len(table), "folds": folds}
    _write_json(path, record)
    return folds


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


def _model_factory(model: Callable[[], ImageClassifier] | dict[str, Any]) -> Callable[[], ImageClassifier]:
    if callable(model):
        return model
    if isinstance(model, dict):
        return lambda: ImageClassifier(**model)
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
    labels = np.asarray([int(pool.targets[i]) for i in val_idx])
    result = {
        "fold": fold,
        "train_images": len(train_idx),
        "val_images": len(val_idx),
        "checkpoint": best or None,
        **_summary_metrics(logits, labels),
        "oof": {"indices": list(val_idx), "probabilities": softmax(logits).round(6).tolist()},
    }
    if not best:  # without checkpointing the fold's model is kept as a file of its own
        result["checkpoint"] = str(model.save(fold_dir / "model.ckpt"))
    _write_json(done, result)  # last: a fold with this file is finished
    return result


def _write_outputs(
    out: Path, pool: SampleTable, class_names: list[str], results: list[dict[str, Any]]
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

    names = [m for m in _METRICS if m in result.mean]
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

    A rerun into the same ``output_dir`` reuses the saved folds and skips the
    folds already finished (resuming after a kill); it is refused when the
    data, ``k`` or ``seed`` changed.

    Args:
        data: An [`ImageDataModule`][autotimm.ImageDataModule] (single-label).
        model: A function returning a fresh [`ImageClassifier`][autotimm.ImageClassifier],
            or the keyword arguments of one (``{"backbone": ..., "lr": ...}``).
        k: Number of folds (>= 2).
        seed: Seed of the folds.
        trainer_kwargs: Arguments of each fold's ``AutoTrainer`` (``max_epochs``, ``seed``, ...).
        output_dir: The cross-validation's folder.
        ensemble: Also average the ``k`` fold models in an
            [`EnsembleClassifier`][autotimm.EnsembleClassifier], saved to
            ``{output_dir}/ensemble`` and evaluated on the test split when ``data`` has one.
        verbose: Print the table of folds.

    Returns:
        The [`CrossValidationResult`][autotimm.auto.cross_validation.CrossValidationResult].

    Raises:
        ValueError: Multi-label data, ``k`` out of range, or an ``output_dir``
            holding folds of other data (or another ``k`` or ``seed``).
        TypeError: ``model`` is neither a function nor a dict.
    """
    require_number("k", k, 2, integer=True)
    require_number("seed", seed, None, integer=True)
    factory = _model_factory(model)
    if trainer_kwargs is not None and not isinstance(trainer_kwargs, dict):
        raise ValueError(f"`trainer_kwargs` must be a dict of AutoTrainer arguments or None, got {trainer_kwargs!r}")
    for reserved in ("output_dir",):
        if reserved in (trainer_kwargs or {}):
            raise ValueError(f"`trainer_kwargs` must not set {reserved!r}: each fold trains in {{output_dir}}/fold_i")
    data.setup("fit")
    if data.multi_label:
        raise ValueError(
            "cross_validate supports single-label data; multi-label folds (iterative stratification) are not "
            "implemented yet"
        )
    out = Path(output_dir)
    pool = _pool(data)
    class_names = list(data.class_names)
    folds = _folds_for(out, pool, class_names, int(k), int(seed))
    results = [_run_fold(i, data, pool, folds, factory, dict(trainer_kwargs or {}), out) for i in range(len(folds))]
    files, rows = _write_outputs(out, pool, class_names, results)
    names = [m for m in _METRICS if all(m in row for row in rows)]
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
