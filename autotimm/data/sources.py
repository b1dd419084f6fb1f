"""Readers that turn each kind of data source into one common sample table per split.

Every reader returns a [`SourceData`][autotimm.data.SourceData]: a
[`SampleTable`][autotimm.data.SampleTable] for ``"train"`` and, where the
source provides them, ``"val"`` and ``"test"``, plus the class names. The label
mapping is fixed by the training data; labels that appear only in a validation
or test split are an error, never renumbered.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotimm.data.compact import LabelArray, StringArray
from autotimm.data.images import (
    IMAGE_EXTENSIONS,
    array_to_image,
    check_images,
    check_images_mode,
    list_image_names,
    load_image,
)

__all__ = [
    "HF_PREFIX",
    "SampleTable",
    "SourceData",
    "data_source",
    "drop_bad_images",
    "has_files",
    "keep_files",
    "read_arrays",
    "read_builtin",
    "read_folder",
    "sorted_class_names",
    "source_paths",
    "unknown_labels_error",
]

_VAL_FOLDERS = ("val", "valid", "validation")


@dataclass
class SampleTable:
    """The samples of one split.

    A file table (one with a ``root``) is stored compactly, whatever it is given: its
    paths as one [`StringArray`][autotimm.data.compact.StringArray] (UTF-8 bytes plus an
    8-byte offset per path) and single-label targets as one
    [`LabelArray`][autotimm.data.compact.LabelArray] (8 bytes per label), so that a
    million-image folder costs tens of megabytes, not a million Python objects, and
    loader workers share the table instead of copying it. Both behave as read-only
    lists (and compare equal to lists).

    Args:
        items: Sample identifiers: image paths relative to ``root`` (POSIX
            strings), or row indices into ``array``.
        targets: One class index per sample, or a list of class indices per
            sample for multi-label data.
        root: Folder the paths are relative to (file sources).
        array: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 images (array sources).
    """

    items: Sequence[Any]
    targets: Sequence[Any]
    root: Path | None = None
    array: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.root is None or self.array is not None:
            return
        if not isinstance(self.items, StringArray):
            self.items = StringArray(self.items)
        if not isinstance(self.targets, LabelArray):
            self.targets = _compact_targets(self.targets)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def nbytes(self) -> int | None:
        """Bytes held by a compact file table's paths and labels (``None`` for other tables)."""
        if not isinstance(self.items, StringArray):
            return None
        labels = self.targets.nbytes if isinstance(self.targets, LabelArray) else 0
        return self.items.nbytes + labels

    def path(self, index: int) -> Path:
        """Return the file of sample ``index`` (file sources only)."""
        if self.root is None:
            raise TypeError("This sample table holds arrays, not files")
        return self.root / self.items[index]

    def load(self, index: int, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode sample ``index`` into a Pillow image with ``in_chans`` channels.

        Args:
            index: The sample.
            in_chans: 1 or 3.
            draft_size: Decode a JPEG file reduced, to no less than this ``(width, height)``
                (see [`decode_image`][autotimm.data.decode_image]); ``None``: full size.
        """
        if self.array is not None:
            return array_to_image(self.array[self.items[index]], in_chans)
        return load_image(self.path(index), in_chans, draft_size=draft_size)

    def subset(self, indices: Sequence[int]) -> SampleTable:
        """Return a table with only the samples at ``indices``, in that order."""
        if isinstance(self.items, StringArray):
            positions = np.asarray(indices, dtype=np.int64)
            targets = self.targets
            taken = targets[positions] if isinstance(targets, LabelArray) else [targets[i] for i in positions]
            return SampleTable(self.items.take(positions), taken, self.root, self.array)
        return SampleTable([self.items[i] for i in indices], [self.targets[i] for i in indices], self.root, self.array)


def _compact_targets(targets: Sequence[Any]) -> Sequence[Any]:
    """Single-label targets as a `LabelArray`; multi-label targets (lists of indices) as they are."""
    if len(targets) == 0:
        return LabelArray()
    if isinstance(targets[0], (int, np.integer)) and not isinstance(targets[0], bool):
        try:
            return LabelArray(targets)
        except (TypeError, ValueError):  # mixed content: kept as given
            return targets
    return targets


@dataclass
class SourceData:
    """What a source reader found.

    Args:
        splits: ``"train"`` always; ``"val"`` and ``"test"`` when the source
            provides them.
        class_names: Class names in label order, fixed by the training data.
        multi_label: Whether each sample has a set of labels.
        description: The source, for messages and the split file.
    """

    splits: dict[str, SampleTable]
    class_names: list[str]
    multi_label: bool = False
    description: str = ""


def unknown_labels_error(argument: str, unknown: Sequence[Any], class_names: Sequence[str]) -> ValueError:
    """Build the error for labels of a validation/test split that training never saw."""
    return ValueError(
        f"{argument} has labels that are not in the training data: {sorted(map(str, unknown))}. "
        f"The label mapping is fixed by the training data, whose classes are {list(class_names)}; "
        "add training images of these classes or remove the samples."
    )


def sorted_class_names(names: Iterable[str]) -> list[str]:
    """Sort class names: numerically when all are integers (``"2"`` before ``"10"``), else alphabetically.

    Example:
        >>> sorted_class_names(["10", "2", "1"]), sorted_class_names(["dog", "cat"])
        (['1', '2', '10'], ['cat', 'dog'])
    """
    names = list(names)
    try:
        numbers = [int(n) for n in names]
    except ValueError:
        return sorted(names)
    return [n for _, n in sorted(zip(numbers, names, strict=True))]


# ---------------------------------------------------------------------- folders
def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folders(folder: Path, argument: str) -> list[Path]:
    subdirs = {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if subdirs:
        return [subdirs[name] for name in sorted_class_names(subdirs)]
    loose = [p for p in folder.iterdir() if _is_image(p)]
    if loose:
        raise ValueError(
            f"{argument} {str(folder)!r} holds {len(loose)} images but no class folders; expected the ImageFolder "
            f"layout {folder}/<class name>/<image> (or train/, val/, test/ folders of class folders)"
        )
    raise ValueError(
        f"{argument} {str(folder)!r} has no class folders and no images; expected the ImageFolder layout "
        f"{folder}/<class name>/<image> with images of types {', '.join(IMAGE_EXTENSIONS)}"
    )


def _read_class_folders(
    folder: Path, root: Path, argument: str, class_names: list[str] | None = None
) -> tuple[SampleTable, list[str]]:
    """Read ``folder/<class>/**/<image>``; ``class_names`` fixes the mapping (for val/test folders)."""
    subdirs = _class_folders(folder, argument)
    names = [d.name for d in subdirs]
    if class_names is not None:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise unknown_labels_error(f"{argument} {str(folder)!r}", unknown, class_names)
    mapping = {name: i for i, name in enumerate(class_names if class_names is not None else names)}
    items: list[str] = []
    targets: list[int] = []
    found = {subdir: list_image_names(subdir) for subdir in subdirs}
    if not any(found.values()):
        raise ValueError(
            f"{argument} {str(folder)!r} has no images in its {len(subdirs)} class folder(s); supported types: "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )
    for subdir, files in found.items():
        if not files:
            raise ValueError(
                f"Class folder {str(subdir)!r} of {argument} has no images; supported types: "
                f"{', '.join(IMAGE_EXTENSIONS)}. Add images or remove the folder."
            )
        prefix = subdir.relative_to(root).as_posix() + "/"
        items += [prefix + name for name in files]
        targets += [mapping[subdir.name]] * len(files)
    return SampleTable(items, targets, root=root), names


def read_folder(data_dir: str | Path) -> SourceData:
    """Read images in the ImageFolder layout.

    Either ``data_dir/<class>/<image>`` (one pool, split later), or
    ``data_dir/train/<class>/<image>`` with optional ``val/`` (also ``valid/``,
    ``validation/``) and ``test/`` folders, used as given. Class folders are
    searched recursively by ``autotimm.data.images.list_image_files``: symlinked
    files and folders are followed (a symlink loop is skipped with a warning),
    hidden files and folders skipped; class indices follow the sorted training
    folder names (numerically when all are integers). Images are decoded upright
    by their EXIF orientation.

    Args:
        data_dir: The root folder.

    Returns:
        The splits found and the class names.

    Raises:
        FileNotFoundError: ``data_dir`` does not exist.
        ValueError: No class folders, an empty class folder, or a val/test
            class folder that training does not have.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} does not exist or is not a folder")
    if not (root / "train").is_dir():
        table, names = _read_class_folders(root, root, "`data_dir`")
        return SourceData({"train": table}, names, description=f"folder {root}")
    train, names = _read_class_folders(root / "train", root, "`data_dir` train folder")
    splits = {"train": train}
    val_dirs = [root / n for n in _VAL_FOLDERS if (root / n).is_dir()]
    if len(val_dirs) > 1:
        raise ValueError(f"`data_dir` {str(root)!r} has several validation folders {[d.name for d in val_dirs]}")
    for split, folder in (("val", val_dirs[0] if val_dirs else None), ("test", root / "test")):
        if folder is not None and folder.is_dir():
            splits[split] = _read_class_folders(folder, root, f"`data_dir` {split} folder", names)[0]
    return SourceData(splits, names, description=f"folder {root}")


# ----------------------------------------------------------------------- arrays
def _as_uint8_images(images: Any, argument: str) -> np.ndarray:
    array = np.asarray(images)
    shape_ok = array.ndim == 3 or (array.ndim == 4 and array.shape[-1] in (1, 3, 4))
    if not shape_ok or len(array) == 0:
        raise ValueError(
            f"`{argument}` must be a non-empty (N, H, W) or (N, H, W, C) array with C in (1, 3, 4) "
            f"(channels last), got shape {array.shape}"
        )
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        # Floats in [0, 1] are scaled to [0, 255]; anything else is taken as 0-255 values.
        scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.rint(np.nan_to_num(array) * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"`{argument}` integer pixels must be in [0, 255], got [{array.min()}, {array.max()}]")
        return array.astype(np.uint8)
    raise ValueError(f"`{argument}` must be a uint8 or float array, got dtype {array.dtype}")


def _as_targets(labels: Any, num_images: int, argument: str) -> tuple[list[Any], int, bool]:
    """Integer labels (N,) or multi-hot (N, C) -> (targets, number of classes seen, multi_label)."""
    array = np.asarray(labels)
    if len(array) != num_images:
        raise ValueError(f"`{argument}` has {len(array)} labels for {num_images} images")
    if array.ndim == 2 and array.shape[1] == 1:  # (N, 1) class indices, as Keras gives them
        array = array[:, 0]
    if array.ndim == 2:  # multi-hot
        if not np.isin(array, (0, 1)).all():
            raise ValueError(f"`{argument}` as a 2-D array must be multi-hot (0/1 values), got other values")
        return [np.flatnonzero(row).tolist() for row in array], array.shape[1], True
    numeric = np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
    if array.ndim != 1 or not numeric or not np.all(np.mod(array, 1) == 0):
        raise ValueError(f"`{argument}` must be (N,) integer class indices or (N, C) multi-hot, got {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise ValueError(f"`{argument}` must be class indices >= 0, got {int(array.min())}")
    return array.tolist(), int(array.max()) + 1, False


def _array_class_names(class_names: Sequence[str] | None, seen: int, argument: str) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(seen)]
    names = [str(c) for c in class_names]
    if len(names) < seen:
        raise ValueError(f"`{argument}` has {len(names)} names, but the labels go up to {seen - 1}")
    return names


def read_arrays(images: Any, labels: Any, class_names: Sequence[str] | None = None) -> SourceData:
    """Read in-memory images and labels.

    Args:
        images: ``(N, H, W)`` or ``(N, H, W, C)`` images, channels last: uint8,
            or floats (in ``[0, 1]``, scaled to 0-255, or already 0-255).
        labels: ``(N,)`` (or ``(N, 1)``) integer class indices, used as they
            are, or ``(N, C)`` multi-hot targets.
        class_names: Names in label order; default ``"0"``, ``"1"``, ...

    Returns:
        One ``"train"`` pool; rows are identified by their index.

    Raises:
        ValueError: Wrong shapes, dtypes, negative labels or too few names.
    """
    array = _as_uint8_images(images, "images")
    targets, seen, multi_label = _as_targets(labels, len(array), "labels")
    names = _array_class_names(class_names, seen, "class_names")
    table = SampleTable(list(range(len(array))), targets, array=array)
    return SourceData({"train": table}, names, multi_label, description=f"arrays {array.shape}")


def read_builtin(name: str, root: str | Path | None = None) -> SourceData:
    """Read a built-in dataset through ``autotimm.data.builtin.load_builtin_dataset``.

    Args:
        name: A name from ``list_builtin_datasets()``.
        root: Where the dataset is cached.

    Returns:
        Its ``"train"`` split and, when it has one, its ``"test"`` split.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    # Imported here: the built-in datasets are optional and only needed for `dataset=`.
    from autotimm.data.builtin import load_builtin_dataset

    loaded = load_builtin_dataset(name, root=root)
    train = loaded["train"]
    names = [str(c) for c in train.class_names]
    splits = {}
    for split, data in loaded.items():
        array = _as_uint8_images(data.images, f"dataset {name!r} {split} images")
        targets, seen, _ = _as_targets(data.labels, len(array), f"dataset {name!r} {split} labels")
        if seen > len(names):
            unknown = sorted({t for t in targets if t >= len(names)})
            raise unknown_labels_error(f"dataset {name!r} {split} split", unknown, names)
        splits[split] = SampleTable(list(range(len(array))), targets, array=array)
    return SourceData(splits, names, description=f"built-in dataset {name!r}")


class _TablePaths(Sequence[str]):
    """The file paths of several file tables, one after the other, built as strings when asked for."""

    def __init__(self, tables: Sequence[SampleTable]) -> None:
        self._tables = [(os.fspath(t.root), t.items) for t in tables]
        self._ends = np.cumsum([len(t) for t in tables]).tolist()

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            raise TypeError("_TablePaths takes integer indices")
        table = bisect.bisect_right(self._ends, index)
        root, items = self._tables[table]
        return os.path.join(root, items[index - (self._ends[table - 1] if table else 0)])


def drop_bad_images(source: SourceData, skip_bad_images: bool = False, mode: str = "full") -> SourceData:
    """Check that every image file of ``source`` can be read; leave out the unreadable ones when asked.

    Args:
        source: What a reader found (array sources are returned unchanged: nothing to decode).
        skip_bad_images: Skip unreadable files with one warning instead of raising.
        mode: How each file is checked: ``"full"`` decodes it, ``"header"`` reads its header
            only, ``"none"`` checks nothing (see [`check_images`][autotimm.data.check_images]).

    Raises:
        FileNotFoundError: A missing file (without ``skip_bad_images``).
        ValueError: An unreadable file (without ``skip_bad_images``), no readable training
            image, or an unknown ``mode``.
    """
    check_images_mode(mode, "check_images")
    if not has_files(source) or mode == "none":
        return source
    paths = source_paths(source)
    return keep_files(source, check_images(paths, skip_bad_images, mode=mode))


def has_files(source: SourceData) -> bool:
    """Whether ``source`` holds image files (a folder or CSV), the ones set-up checks."""
    return source.splits["train"].root is not None


def source_paths(source: SourceData) -> Sequence[str]:
    """The image files of every split of a file source, one split after the other (made as strings when read)."""
    return _TablePaths(list(source.splits.values()))


def keep_files(source: SourceData, good: Sequence[int]) -> SourceData:
    """``source`` with only the files at ``good`` (indices into `source_paths`), each split keeping its own.

    Raises:
        ValueError: No training file is left.
    """
    tables = source.splits
    total = sum(len(t) for t in tables.values())
    if len(good) == total:  # nothing to drop: the tables are kept as they are
        return source
    kept = np.zeros(total, dtype=bool)
    kept[np.asarray(good, dtype=np.int64)] = True
    splits, start = {}, 0
    for split, table in tables.items():
        splits[split] = table.subset(np.flatnonzero(kept[start : start + len(table)]))
        start += len(table)
    if not len(splits["train"]):
        raise ValueError(f"No readable training images in {source.description}")
    return SourceData(splits, source.class_names, source.multi_label, source.description)


#: The files in a folder that ``datasets``' ``save_to_disk`` writes (one of them is enough).
_SAVED_DATASET_FILES = ("dataset_dict.json", "state.json", "dataset_info.json")
#: The prefix of a Hugging Face Hub dataset name given as DATA (``hf:user/name``).
HF_PREFIX = "hf:"


def _is_parquet_folder(path: Path) -> bool:
    """Whether a folder holds Parquet files at its top or in ``data/`` (a Hub repository's layout)."""
    return any(path.glob("*.parquet")) or any(path.glob("data/*.parquet"))


def data_source(data: str, option: str = "--data") -> dict[str, Any]:
    """The ``ImageDataModule`` source argument for DATA, as the command line takes it.

    Recognised, in this order:

    - ``hf:NAME``: a Hugging Face dataset on the Hub (``hf:user/name``; needs network or the cache);
    - an object-store URL (``s3://``, ``gs://``, ``azure://``, ...): shards written by ``autotimm shard``;
    - a folder holding ``autotimm_shards.json``: shards written by ``autotimm shard``;
    - a folder written by ``datasets``' ``save_to_disk`` (``dataset_dict.json``, ``state.json`` or
      ``dataset_info.json`` in it), a ``.parquet`` file, a glob of Parquet files, or a folder with
      ``.parquet`` files at its top or in ``data/``: a Hugging Face dataset;
    - any other folder: a class folder; a ``.csv`` file: a CSV file; else a built-in dataset name.

    Args:
        data: What was given.
        option: How the argument is named in messages.

    Returns:
        ``{"data_dir": path}``, ``{"train_csv": path}``, ``{"shards": location}``,
        ``{"hf_dataset": location}`` or ``{"dataset": name}``.

    Raises:
        FileNotFoundError: Not an existing folder or file, nor a URL, a ``hf:`` name or a built-in name (the
            message lists what is accepted).
        ValueError: A file that is not a ``.csv`` or ``.parquet``, or ``hf:`` without a name.
    """
    from autotimm.data.shards import SHARD_INFO_FILE, is_remote

    if data.startswith(HF_PREFIX):
        name = data[len(HF_PREFIX) :].strip()
        if not name:
            raise ValueError(f"{option} {data!r}: give the Hub dataset's name after 'hf:', e.g. 'hf:user/name'")
        return {"hf_dataset": name}
    if is_remote(data):
        return {"shards": data}
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / SHARD_INFO_FILE).is_file():
            return {"shards": path}
        if any((path / name).is_file() for name in _SAVED_DATASET_FILES) or _is_parquet_folder(path):
            return {"hf_dataset": str(path)}
        return {"data_dir": path}
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return {"hf_dataset": str(path)}
        if path.suffix.lower() != ".csv":
            raise ValueError(
                f"{option} {data!r} is a file but not a .csv or .parquet; pass a class folder, a CSV file, a shard "
                "folder, a Hugging Face dataset folder or Parquet files, or a dataset name"
            )
        return {"train_csv": path}
    if any(char in data for char in "*?[") and data.endswith(".parquet"):
        return {"hf_dataset": data}
    from autotimm.data.builtin import list_builtin_datasets

    names = list_builtin_datasets()
    if data in names:
        return {"dataset": data}
    raise FileNotFoundError(
        f"{option} {data!r} is not an existing folder or file, an object-store URL of shards, nor a built-in "
        f"dataset ({', '.join(names)}); a Hugging Face Hub dataset is given as 'hf:user/name'"
    )
