"""Reading image lists from CSV files: single-label, or multi-label with a delimited label column."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from autotimm.data.sources import SampleTable, SourceData, sorted_class_names, unknown_labels_error

__all__ = ["read_csv_files"]


def _read_rows(path: Path, argument: str, image_column: str, label_column: str) -> list[tuple[str, str]]:
    # The standard library's csv reader is enough here: no pandas dependency for two columns.
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}` {str(path)!r} does not exist or is not a file")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        for column_argument, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in columns:
                raise ValueError(
                    f"`{argument}` {str(path)!r} has no column {column!r} (`{column_argument}`); "
                    f"its columns are {columns}"
                )
        # Windows separators become "/", so a CSV written on Windows works everywhere.
        rows = [
            ((row[image_column] or "").strip().replace("\\", "/"), (row[label_column] or "").strip()) for row in reader
        ]
    if not rows:
        raise ValueError(f"`{argument}` {str(path)!r} has no rows")
    empty = [line for line, (image, _) in enumerate(rows, start=2) if not image]
    if empty:
        raise ValueError(f"`{argument}` {str(path)!r} has an empty {image_column!r} cell on line(s) {empty[:5]}")
    duplicates = [image for image, count in Counter(image for image, _ in rows).items() if count > 1]
    if duplicates:
        raise ValueError(
            f"`{argument}` {str(path)!r} lists {len(duplicates)} image(s) more than once, e.g. {duplicates[:3]}; "
            "each image must appear once (a duplicate could land in two splits)"
        )
    return rows


def _labels(value: str, multi_label: bool, delimiter: str) -> list[str]:
    if not multi_label:
        return [value]
    return [part.strip() for part in value.split(delimiter) if part.strip()]


def read_csv_files(
    train_csv: str | Path,
    val_csv: str | Path | None = None,
    test_csv: str | Path | None = None,
    image_dir: str | Path | None = None,
    image_column: str = "image",
    label_column: str = "label",
    label_delimiter: str = ";",
    multi_label: bool | None = None,
) -> SourceData:
    """Read images and labels listed in CSV files.

    Each CSV has a header row with ``image_column`` (a path relative to
    ``image_dir``, or absolute; Windows backslash separators are read as ``/``)
    and ``label_column`` (a class name). For multi-label data the label cell
    holds several class names joined by ``label_delimiter`` (``"cat;dog"``; an
    empty cell means no label). Classes are the sorted training labels
    (numerically when all are integers).

    Args:
        train_csv: The training CSV.
        val_csv: An optional validation CSV, used as given.
        test_csv: An optional test CSV, used as given.
        image_dir: Folder the image paths are relative to; default: each
            CSV's own folder.
        image_column: Column of image paths.
        label_column: Column of labels.
        label_delimiter: Separator of labels in a multi-label cell.
        multi_label: Force (True) or forbid (False) multi-label; ``None``:
            multi-label when a training label cell contains ``label_delimiter``.

    Returns:
        The splits given and the class names.

    Raises:
        FileNotFoundError: A CSV does not exist.
        ValueError: A missing column, no rows, an empty cell, a duplicated
            image, or a val/test label that training does not have.
    """
    if not isinstance(label_delimiter, str) or not label_delimiter:
        raise ValueError(f"`label_delimiter` must be a non-empty string, got {label_delimiter!r}")
    given = {"train": train_csv, "val": val_csv, "test": test_csv}
    rows = {
        split: _read_rows(Path(path).expanduser(), f"{split}_csv", image_column, label_column)
        for split, path in given.items()
        if path is not None
    }
    if multi_label is None:
        multi_label = any(label_delimiter in label for _, label in rows["train"])
    train_labels = [_labels(label, multi_label, label_delimiter) for _, label in rows["train"]]
    if not multi_label:
        empty = [line for line, labels in enumerate(train_labels, start=2) if not labels[0]]
        if empty:
            raise ValueError(f"`train_csv` has an empty {label_column!r} cell on line(s) {empty[:5]}")
    class_names = sorted_class_names({name for labels in train_labels for name in labels})
    if len(class_names) < 2 and not multi_label:
        raise ValueError(f"`train_csv` must have at least 2 classes in {label_column!r}, got {class_names}")
    mapping = {name: i for i, name in enumerate(class_names)}

    splits: dict[str, SampleTable] = {}
    for split, split_rows in rows.items():
        csv_path = Path(given[split]).expanduser()
        root = Path(image_dir).expanduser() if image_dir is not None else csv_path.parent
        labels = [_labels(label, multi_label, label_delimiter) for _, label in split_rows]
        unknown = {name for names in labels for name in names if name not in mapping}
        if unknown:
            raise unknown_labels_error(f"`{split}_csv` {str(csv_path)!r}", unknown, class_names)
        if multi_label:
            targets: list = [sorted({mapping[n] for n in names}) for names in labels]
        else:
            targets = [mapping[names[0]] for names in labels]
        splits[split] = SampleTable([image for image, _ in split_rows], targets, root=root)
    return SourceData(splits, class_names, multi_label, description=f"csv {Path(train_csv).expanduser()}")
