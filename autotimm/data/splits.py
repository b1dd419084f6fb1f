"""Stratified, seeded train/val/test splits, recorded in a JSON split file and reused when it matches."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotimm.data.ranks import is_rank_zero, write_text_atomically
from autotimm.data.sources import SampleTable, SourceData

__all__ = ["SPLIT_FILE_NAME", "resolve_splits", "source_fingerprint", "stratified_split", "write_run_record"]

#: Name of the split file written in ``output_dir``.
SPLIT_FILE_NAME = "splits.json"
_FORMAT = 1


def _allocate(counts: Sequence[int], fraction: float, order: Sequence[int]) -> list[int]:
    """Per-group sizes: each within one of ``count * fraction``, summing to ``round(total * fraction)``.

    Largest-remainder rounding; ties go to groups in ``order`` (a seeded permutation).
    """
    exact = [c * fraction for c in counts]
    sizes = [math.floor(e) for e in exact]
    extra = round(sum(counts) * fraction) - sum(sizes)
    by_remainder = sorted(order, key=lambda g: -(exact[g] - sizes[g]))
    for g in by_remainder[: max(extra, 0)]:
        sizes[g] += 1
    return sizes


def stratified_split(groups: Sequence[int], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Split sample indices so every group (class) keeps its share in every split.

    For each split and group the number of samples is within one of
    ``count * fraction``, and every group keeps at least one sample in
    ``"train"``. The result depends only on ``groups``, ``fractions`` and ``seed``.

    Args:
        groups: The stratification group (class) of each sample.
        fractions: Fraction of all samples per carved split, e.g.
            ``{"test": 0.1, "val": 0.2}``; the rest is ``"train"``.
        seed: Seed of the shuffle.

    Returns:
        Sorted sample indices for ``"train"`` and each split of ``fractions``.

    Example:
        >>> parts = stratified_split([0] * 8 + [1] * 2, {"val": 0.5}, seed=0)
        >>> sorted(len(v) for v in parts.values())
        [5, 5]
    """
    rng = np.random.default_rng(seed)
    keys = sorted(set(groups))
    # Each group's indices in ascending order, found in one stable sort (not one pass over the samples per group).
    values = np.asarray(groups)
    order = np.argsort(values, kind="stable")
    bounds = [*np.searchsorted(values[order], keys, side="left").tolist(), len(order)]
    members = {k: order[bounds[g] : bounds[g + 1]] for g, k in enumerate(keys)}
    remaining = {k: list(rng.permutation(members[k])) for k in keys}
    counts = [len(members[k]) for k in keys]
    result: dict[str, list[int]] = {}
    for split, fraction in fractions.items():
        sizes = _allocate(counts, fraction, rng.permutation(len(keys)).tolist())
        taken: list[int] = []
        for g, k in enumerate(keys):
            size = min(sizes[g], len(remaining[k]) - 1)  # keep one training sample per class
            taken += remaining[k][:size]
            remaining[k] = remaining[k][size:]
        result[split] = sorted(int(i) for i in taken)
    result["train"] = sorted(int(i) for k in keys for i in remaining[k])
    return result


def _stratify_groups(table: SampleTable, num_classes: int, multi_label: bool) -> list[int]:
    if not multi_label:
        return list(table.targets)
    # Multi-label: stratify on each sample's rarest label (no label: a group of its own).
    counts = np.bincount(np.asarray([t for ts in table.targets for t in ts], dtype=np.int64), minlength=num_classes)
    return [min(ts, key=lambda t: (counts[t], t)) if ts else -1 for ts in table.targets]


def _json_list_pieces(values: Sequence[Any], chunk: int = 65536) -> Iterator[bytes]:
    """The UTF-8 text of ``json.dumps(list(values))``, in pieces of ``chunk`` values."""
    yield b"["
    for first in range(0, len(values), chunk):
        part = values[first : first + chunk]
        text = json.dumps(part.tolist() if hasattr(part, "tolist") else list(part))[1:-1]
        yield (", " + text if first else text).encode()
    yield b"]"


def source_fingerprint(source: SourceData) -> str:
    """A digest of the samples, labels and class names of every split a source provides."""
    digest = hashlib.sha256()
    digest.update(json.dumps([source.class_names, source.multi_label]).encode())
    for split in sorted(source.splits):
        table = source.splits[split]
        # The text of json.dumps([split, items, targets]), written in pieces: no list of a million strings.
        digest.update(f"[{json.dumps(split)}, ".encode())
        for piece in _json_list_pieces(table.items):
            digest.update(piece)
        digest.update(b", ")
        for piece in _json_list_pieces(table.targets):
            digest.update(piece)
        digest.update(b"]")
        if table.array is not None:
            digest.update(np.ascontiguousarray(table.array).data)
    return digest.hexdigest()


def _read_split_file(path: Path, fingerprint: str, settings: dict[str, Any]) -> dict[str, list[Any]] | None:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("splits"), dict):
            raise ValueError("not a split record")
    except (OSError, ValueError) as err:
        warnings.warn(f"Ignoring unreadable split file {str(path)!r} ({err}); writing a new one", stacklevel=3)
        return None
    same = record.get("fingerprint") == fingerprint and all(record.get(k) == v for k, v in settings.items())
    if not same:
        warnings.warn(
            f"Split file {str(path)!r} was made for other data or split settings; writing a new split",
            stacklevel=3,
        )
        return None
    return record["splits"]


def resolve_splits(
    source: SourceData,
    val_split: float,
    test_split: float,
    seed: int,
    output_dir: str | Path | None,
) -> dict[str, SampleTable]:
    """Carve the missing validation/test splits from the training pool, reusing a matching split file.

    A ``"val"`` (``"test"``) split the source provides is used as given;
    otherwise ``val_split`` (``test_split``) of the training pool is carved out,
    stratified by class. The sample identifiers of every split are written to
    ``output_dir/splits.json`` together with a fingerprint of the source and the
    settings; a later run with the same data and settings reads the split from
    that file, so evaluation uses exactly the same images.

    In a multi-process run only global rank 0 (see
    [`is_rank_zero`][autotimm.data.ranks.is_rank_zero]) writes the file, to a
    temporary file renamed into place, so another rank reads either the
    previous file or the whole new one. A rank that finds no matching file
    computes the same split rank 0 writes: the split depends only on the data,
    the fractions and the seed.

    Args:
        source: What a source reader found.
        val_split: Fraction of the pool for validation, when the source has no
            validation split.
        test_split: Fraction of the pool for testing, when the source has no
            test split.
        seed: Seed of the split.
        output_dir: Folder of the split file; ``None`` writes none.

    Returns:
        ``"train"`` and, when present or carved, ``"val"`` and ``"test"`` tables.

    Raises:
        ValueError: A fraction leaves a carved split empty.
        OSError: The split file cannot be written.
    """
    pool = source.splits["train"]
    fractions = {}
    if "test" not in source.splits and test_split > 0:
        fractions["test"] = test_split
    if "val" not in source.splits and val_split > 0:
        fractions["val"] = val_split
    fingerprint = source_fingerprint(source)
    settings = {"format": _FORMAT, "seed": seed, "carved": fractions}
    path = None if output_dir is None else Path(output_dir) / SPLIT_FILE_NAME

    recorded = _read_split_file(path, fingerprint, settings) if path is not None and path.is_file() else None
    if recorded is not None:
        position = {item: i for i, item in enumerate(pool.items)}
        indices = {split: [position[item] for item in recorded[split]] for split in ["train", *fractions]}
    else:
        groups = _stratify_groups(pool, len(source.class_names), source.multi_label)
        indices = stratified_split(groups, fractions, seed)
    tables = {split: pool.subset(idx) for split, idx in indices.items()}
    for split, fraction in fractions.items():
        if not len(tables[split]):
            raise ValueError(
                f"`{split}_split`={fraction} leaves the {split} split empty: {len(pool)} training images, and every "
                f"class keeps at least one for training. Use a larger fraction, more images, or {split}_split=0."
            )
    tables.update({split: table for split, table in source.splits.items() if split != "train"})
    tables = {split: tables[split] for split in ("train", "val", "test") if split in tables}

    if path is not None and recorded is None and is_rank_zero():
        record = {
            **settings,
            "source": source.description,
            "fingerprint": fingerprint,
            "class_names": source.class_names,
            "splits": {split: list(table.items) for split, table in tables.items()},
        }
        write_run_record(path, record, "split file")
    return tables


def write_run_record(path: Path, record: dict[str, Any], what: str) -> None:
    """Write a data module's JSON record into the run folder atomically (rank 0 calls it).

    Args:
        path: The file (``splits.json``, ``checked_images.json``).
        record: Its content.
        what: How the file is named in the error.

    Raises:
        OSError: The file cannot be written; the message names it and the way out (``output_dir``).
    """
    try:
        write_text_atomically(path, json.dumps(record, indent=1))
    except OSError as err:
        raise OSError(
            f"Cannot write the {what} {str(path)!r} ({err}); pass a writable `output_dir`, "
            "or output_dir=None to write no split file"
        ) from err
