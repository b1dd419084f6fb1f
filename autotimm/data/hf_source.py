"""Hugging Face ``datasets`` as an image classification source: in memory, on disk, Parquet, the Hub, or streamed.

[`open_hf_dataset`][autotimm.data.hf_source.open_hf_dataset] turns what
``ImageDataModule(hf_dataset=...)`` was given (a ``datasets.Dataset`` or
``DatasetDict``, a folder written by ``save_to_disk``, Parquet files, or a Hub
name) into ``datasets`` objects by split;
[`read_hf_dataset`][autotimm.data.hf_source.read_hf_dataset] reads them into a
[`SourceData`][autotimm.data.SourceData] whose tables decode rows on demand
(nothing is decoded at set-up, only the label column is read), and
[`read_hf_stream`][autotimm.data.hf_source.read_hf_stream] does the same for
``streaming=True``: an ``IterableDataset`` per split, read as it is iterated,
shuffled with a buffer and split across ranks and loader workers by
[`HFStreamDataset`][autotimm.data.hf_source.HFStreamDataset].

The image and label columns default to the dataset's ``Image`` and
``ClassLabel`` features, and the class names to the ``ClassLabel``'s names.
``datasets`` is imported only here, on first use (the ``hf`` extra:
``pip install "autotimm[hf]"``).
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from autotimm.data.images import convert_image, decode_image, image_mode
from autotimm.data.sources import SampleTable, SourceData, sorted_class_names, unknown_labels_error

__all__ = [
    "DEFAULT_SHUFFLE_BUFFER",
    "HFSampleTable",
    "HFStreamDataset",
    "HFStreamTable",
    "HubDatasetUnavailableError",
    "hf_description",
    "import_datasets",
    "open_hf_dataset",
    "read_hf_dataset",
    "read_hf_stream",
]

#: Examples held by the shuffle buffer of a streamed training split (``shuffle_buffer``'s default).
DEFAULT_SHUFFLE_BUFFER = 1000

#: Split names of a ``DatasetDict`` taken as validation and test splits (the first present one is used).
_SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
_IMAGE_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category")
_SAVED_MARKERS = ("dataset_dict.json", "state.json", "dataset_info.json")
_INSTALL_HINT = 'pip install "autotimm[hf]"'


class HubDatasetUnavailableError(RuntimeError):
    """A Hugging Face Hub dataset was asked for, but the Hub cannot be reached and the dataset is not cached."""


def import_datasets() -> Any:
    """Import Hugging Face ``datasets``, or raise a one-line error naming the ``hf`` extra.

    Returns:
        The ``datasets`` module.

    Raises:
        ImportError: ``datasets`` is not installed.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f"`hf_dataset` needs the Hugging Face `datasets` package, which is not installed: {_INSTALL_HINT}"
        ) from err
    return datasets


# ---------------------------------------------------------------------------------------------- opening
def _is_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _is_network_error(err: BaseException | None) -> bool:
    while err is not None:
        module = type(err).__module__.split(".")[0]
        if isinstance(err, (ConnectionError, TimeoutError)) or module in {"huggingface_hub", "httpx", "requests"}:
            return True
        if "offline" in str(err).lower() or "couldn't reach" in str(err).lower():
            return True
        err = err.__cause__ or err.__context__
    return False


def _load_hub(datasets: Any, name: str, split: str | None, streaming: bool) -> Any:
    try:
        return datasets.load_dataset(name, split=split, streaming=streaming)
    except Exception as err:
        offline = _is_offline()
        if not (offline or _is_network_error(err)):
            raise
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub is unreachable"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise HubDatasetUnavailableError(
            f"Could not get Hugging Face dataset {name!r}: {why} and it is not in the local cache "
            f"({type(err).__name__}: {first_line}). To proceed offline, pass a local copy as `hf_dataset`: a "
            "`datasets.Dataset`/`DatasetDict`, a folder written by `save_to_disk`, or Parquet files; or fill the "
            "cache (HF_HOME) on a machine with internet and set HF_HUB_OFFLINE=1."
        ) from err


def _parquet_files(value: str) -> list[str] | None:
    """The Parquet files a path or glob names; ``None`` when it names none (and is no glob)."""
    path = Path(value).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))
        return files or None
    if glob.has_magic(value):
        files = sorted(glob.glob(os.path.expanduser(value), recursive=True))
        if not files:
            raise FileNotFoundError(f"`hf_dataset` {value!r}: the pattern matches no files")
        return files
    return None


def _looks_like_path(value: str) -> bool:
    return (
        value.startswith((".", "/", "~"))
        or value.endswith(".parquet")
        or os.sep in value.strip("/").replace("/", "", 1)
    )


def open_hf_dataset(hf_dataset: Any, split: str | None = None, streaming: bool = False) -> dict[str, Any]:
    """Open a Hugging Face dataset given in any accepted form, as ``datasets`` objects by split.

    Args:
        hf_dataset: A ``datasets.Dataset``, ``DatasetDict``, ``IterableDataset`` or
            ``IterableDatasetDict``; a folder written by ``save_to_disk``; a Parquet file, a
            folder of Parquet files, a glob pattern, a list of files or a ``{split: files}``
            dict; or a Hub name (``"user/name"``).
        split: Use only this split (a ``DatasetDict`` key, or for a Hub name anything
            ``load_dataset`` accepts, e.g. ``"train[:10%]"``) as the training pool; ``None``:
            the ``train`` split, with ``validation`` and ``test`` as given.
        streaming: Open Parquet files and Hub names as ``IterableDataset`` splits, read while
            iterated (no full download); datasets in memory or on disk are returned as they
            are (`read_hf_stream` turns them into ``IterableDataset`` splits).

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``, with ``"val"`` and ``"test"`` only
        when the dataset has them (and ``split`` is not given).

    Raises:
        ImportError: ``datasets`` is not installed.
        FileNotFoundError: A local path or pattern that does not exist or holds no data.
        HubDatasetUnavailableError: A Hub name while offline, and not cached.
        ValueError: ``split`` is not one of the dataset's splits, or no training split.
        TypeError: ``hf_dataset`` of another type.
    """
    datasets = import_datasets()
    kinds = (datasets.Dataset, datasets.DatasetDict, datasets.IterableDataset, datasets.IterableDatasetDict)
    if not isinstance(hf_dataset, kinds) and isinstance(hf_dataset, (str, os.PathLike, list, tuple, dict)):
        loaded = _load_named(datasets, hf_dataset, split, streaming)
    else:
        loaded = hf_dataset
    if not isinstance(loaded, kinds):
        raise TypeError(
            "`hf_dataset` must be a datasets.Dataset, DatasetDict, IterableDataset or IterableDatasetDict, a folder "
            f"written by save_to_disk, Parquet file(s) or a Hub name; got {type(hf_dataset).__name__}"
        )
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        available = list(loaded)
        if split is not None and split in loaded:
            splits = {"train": loaded[split]}
        elif split is not None:
            raise ValueError(f"`split` {split!r} is not a split of `hf_dataset`; it has {available}")
        else:
            splits = {}
            for ours, names in _SPLIT_NAMES.items():
                found = next((n for n in names if n in loaded), None)
                if found is not None:
                    splits[ours] = loaded[found]
            if "train" not in splits:
                if len(available) != 1:
                    raise ValueError(
                        f"`hf_dataset` has no 'train' split; it has {available}. Pass split=<name> to train on one"
                    )
                splits = {"train": loaded[available[0]]}
    else:
        splits = {"train": loaded}
    return splits


def _load_named(datasets: Any, value: Any, split: str | None, streaming: bool) -> Any:
    if isinstance(value, (list, tuple, dict)):  # Parquet files
        return datasets.load_dataset("parquet", data_files=value, split=None, streaming=streaming)
    text = os.fspath(value)
    path = Path(text).expanduser()
    if path.is_dir() and any((path / marker).is_file() for marker in _SAVED_MARKERS):
        return datasets.load_from_disk(str(path))
    files = _parquet_files(text)
    if files is not None:
        not_parquet = [f for f in files if not f.endswith(".parquet")]
        if not_parquet:
            raise ValueError(
                f"`hf_dataset` {text!r} names files that are not Parquet ({not_parquet[:3]}); pass .parquet files, "
                "a folder written by save_to_disk, a datasets object or a Hub name"
            )
        return datasets.load_dataset("parquet", data_files=files, streaming=streaming)
    if path.exists():
        raise FileNotFoundError(
            f"`hf_dataset` {text!r} is neither a folder written by save_to_disk (no {' / '.join(_SAVED_MARKERS)}) "
            "nor Parquet files"
        )
    if _looks_like_path(text):
        raise FileNotFoundError(f"`hf_dataset` {text!r} does not exist")
    return _load_hub(datasets, text, split, streaming)


def _as_iterable(datasets: Any, ds: Any) -> tuple[Any, int | None]:
    """An ``IterableDataset`` of ``ds`` and its number of rows when known."""
    if isinstance(ds, datasets.IterableDataset):
        return ds, _split_size(ds)
    # Enough shards for every rank's loader workers to read whole shards of their own.
    return ds.to_iterable_dataset(num_shards=max(1, min(len(ds), 64))), len(ds)


# ---------------------------------------------------------------------------------------------- columns and labels
def _find_columns(features: Any, columns: list[str], image_column: str, label_column: str) -> tuple[str, str]:
    datasets = import_datasets()
    image = image_column if image_column in columns else None
    if image is None:
        typed = [c for c in columns if isinstance(features.get(c), datasets.Image)] if features else []
        named = [c for c in _IMAGE_NAMES if c in columns]
        image = (typed or named or [None])[0]
    if image is None:
        raise ValueError(
            f"`hf_dataset` has no image column: no column {image_column!r} and no column of the Image feature type. "
            f"Its columns are {columns}; pass image_column=<one of them>"
        )
    label = label_column if label_column in columns else None
    if label is None:
        typed = [c for c in columns if isinstance(features.get(c), datasets.ClassLabel)] if features else []
        named = [c for c in _LABEL_NAMES if c in columns and c != image]
        label = (typed or named or [None])[0]
    if label is None:
        raise ValueError(
            f"`hf_dataset` has no label column: no column {label_column!r} and no ClassLabel column. "
            f"Its columns are {[c for c in columns if c != image]}; pass label_column=<one of them>"
        )
    if label == image:
        raise ValueError(f"`image_column` and `label_column` are the same column {label!r}")
    return image, label


def _class_label(features: Any, column: str) -> Any:
    datasets = import_datasets()
    feature = features.get(column) if features else None
    if isinstance(feature, (datasets.Sequence, list)) or getattr(feature, "feature", None) is not None:
        raise ValueError(
            f"`hf_dataset` label column {column!r} holds several labels per image ({feature}); multi-label Hugging "
            "Face datasets are not supported yet: write a CSV with a label list per image instead"
        )
    return feature if isinstance(feature, datasets.ClassLabel) else None


def _is_integer_feature(features: Any, column: str) -> bool:
    feature = features.get(column) if features else None
    dtype = getattr(feature, "dtype", "")
    return isinstance(dtype, str) and (dtype.startswith("int") or dtype.startswith("uint"))


def _check_given_names(class_names: Sequence[str] | None, names: list[str], column: str) -> None:
    if class_names is not None and [str(c) for c in class_names] != names:
        raise ValueError(
            f"`class_names` {list(class_names)} differ from the names of ClassLabel column {column!r}, {names}; "
            "leave class_names out to use the dataset's"
        )


def _image_only(ds: Any, column: str) -> Any:
    """The dataset with only its image column, left undecoded (bytes and path) for `decode_hf_image`."""
    datasets = import_datasets()
    ds = ds.select_columns([column])
    if isinstance((ds.features or {}).get(column), datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


def _decode(value: Any, in_chans: int, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """One stored image (Image feature bytes/path, raw bytes, a path, a Pillow image or an array) to a Pillow image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        return convert_image(value, in_chans)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return convert_image(decode_image(bytes(value), draft_size=draft_size), in_chans)
    if isinstance(value, (str, os.PathLike)):
        return convert_image(decode_image(value, draft_size=draft_size), in_chans)
    if value is None:
        raise ValueError("the row's image is empty (no bytes and no path)")
    array = np.asarray(value)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return convert_image(Image.fromarray(array), in_chans)


# ---------------------------------------------------------------------------------------------- map-style tables
@dataclass
class HFSampleTable(SampleTable):
    """The samples of one split of a (map-style) Hugging Face dataset: row indices, decoded when loaded.

    Args:
        items: Row indices into ``dataset``.
        targets: One class index per sample.
        dataset: The ``datasets.Dataset`` holding the images (only the image column, undecoded).
        image_column: The image column.
    """

    dataset: Any = field(default=None, repr=False)
    image_column: str = "image"

    def path(self, index: int) -> Path:
        """Raise: Hugging Face rows are not files."""
        raise TypeError("This sample table holds rows of a Hugging Face dataset, not files")

    def load(self, index: int, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode the image of sample ``index`` (upright by its EXIF orientation) with ``in_chans`` channels.

        Args:
            index: The sample.
            in_chans: 1 or 3.
            draft_size: Decode a JPEG reduced, to no less than this ``(width, height)``; ``None``: full size.
        """
        return _decode(self.dataset[int(self.items[index])][self.image_column], in_chans, draft_size)

    def subset(self, indices: Sequence[int]) -> HFSampleTable:
        """Return a table with only the samples at ``indices``, in that order."""
        return HFSampleTable(
            [self.items[i] for i in indices],
            [self.targets[i] for i in indices],
            dataset=self.dataset,
            image_column=self.image_column,
        )


def _labels_to_targets(values: list[Any], mapping: dict[str, int] | None, argument: str, names: list[str]) -> list[int]:
    if mapping is not None:
        unknown = sorted({str(v) for v in values} - set(mapping))
        if unknown:
            raise unknown_labels_error(argument, unknown, names)
        return [mapping[str(v)] for v in values]
    return [int(v) for v in values]


def read_hf_dataset(
    splits: dict[str, Any],
    image_column: str = "image",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    description: str = "Hugging Face dataset",
) -> SourceData:
    """Read map-style Hugging Face splits into sample tables: the label column now, images when loaded.

    Labels of a ``ClassLabel`` column are its class indices, and its names are the
    class names. Integer labels are used as they are, named by ``class_names`` or
    ``"0"``, ``"1"``, ...; other labels (strings, floats) are mapped through their
    sorted unique values in the training split, with a warning. A validation or
    test split whose labels are all ``-1`` (unlabelled, as the Hub's test splits
    often are) is left out with a warning.

    Args:
        splits: ``datasets.Dataset`` objects by split, as `open_hf_dataset` gives them.
        image_column: The image column; when the dataset has no such column, its first
            ``Image`` column (or one named like an image column).
        label_column: The label column; when missing, the first ``ClassLabel`` column.
        class_names: Names of integer labels, in label order.
        description: The source, for messages and the split file.

    Returns:
        The splits (``"train"`` and any of ``"val"``, ``"test"``) and the class names.

    Raises:
        ValueError: No image or label column (the message lists the columns), negative
            training labels, or validation/test labels that training does not have.
    """
    train = splits["train"]
    columns = list(train.column_names)
    image, label = _find_columns(train.features, columns, image_column, label_column)
    feature = _class_label(train.features, label)
    mapping: dict[str, int] | None = None
    if feature is not None:
        names = [str(n) for n in feature.names]
        _check_given_names(class_names, names, label)
    elif _is_integer_feature(train.features, label):
        names = []  # from the largest label below
    else:
        values = train[label]
        names = sorted_class_names({str(v) for v in values})
        mapping = {name: i for i, name in enumerate(names)}
        warnings.warn(
            f"`hf_dataset` label column {label!r} is not integer or ClassLabel "
            f"({(train.features or {}).get(label)}); its {len(names)} values are mapped to class indices in sorted "
            f"order: {names[:10]}{' ...' if len(names) > 10 else ''}",
            stacklevel=2,
        )
    tables: dict[str, SampleTable] = {}
    for split, ds in splits.items():
        missing = [c for c in (image, label) if c not in ds.column_names]
        if missing:
            raise ValueError(f"`hf_dataset` {split} split has no column {missing}; its columns are {ds.column_names}")
        values = ds[label]
        if split != "train" and values and all(v == -1 for v in values):
            warnings.warn(f"`hf_dataset` {split} split has no labels (all -1); it is left out", stacklevel=2)
            continue
        split_feature = _class_label(ds.features, label)
        if feature is not None and split_feature is not None and split != "train":
            own = [str(n) for n in split_feature.names]
            if own != names:  # the same classes in another order, or unknown classes
                unknown = [n for n in own if n not in names]
                if unknown:
                    raise unknown_labels_error(f"`hf_dataset` {split} split", unknown, names)
                values = [names.index(own[v]) for v in values]
        targets = _labels_to_targets(values, mapping, f"`hf_dataset` {split} split", names)
        if targets and min(targets) < 0:
            raise ValueError(
                f"`hf_dataset` {split} split has negative labels ({min(targets)}; -1 marks unlabelled rows); "
                "labels must be class indices >= 0"
            )
        tables[split] = HFSampleTable(list(range(len(ds))), targets, dataset=_image_only(ds, image), image_column=image)
    if feature is None and mapping is None:
        seen = max(max(t.targets, default=-1) for t in tables.values()) + 1
        names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(seen)]
        if len(names) < seen:
            raise ValueError(f"`class_names` has {len(names)} names, but the labels go up to {seen - 1}")
    return SourceData(tables, names, description=f"{description} (image column {image!r}, label column {label!r})")


# ---------------------------------------------------------------------------------------------- streaming
@dataclass
class HFStreamTable(SampleTable):
    """One split of a streamed Hugging Face dataset: no rows in memory, read while iterated.

    Its [`dataset`][autotimm.data.hf_source.HFStreamTable.dataset] gives the torch
    dataset; it has a length only when the dataset's info records the split's size.

    Args:
        stream: The ``datasets.IterableDataset`` of the split.
        image_column: The image column.
        label_column: The label column.
        mapping: Label value (as a string) to class index, for labels that are not class indices.
        num_rows: The split's size when known.
    """

    stream: Any = field(default=None, repr=False)
    image_column: str = "image"
    label_column: str = "label"
    mapping: dict[str, int] | None = None
    num_rows: int | None = None

    def __len__(self) -> int:
        if self.num_rows is None:
            raise TypeError("A streamed Hugging Face split has no known length (its dataset info does not record it)")
        return self.num_rows

    def path(self, index: int) -> Path:
        """Raise: a streamed split has no random access."""
        raise TypeError(
            "A streamed Hugging Face split (streaming=True) is read in order, not by index; use streaming=False "
            "to evaluate on it or to predict on its images"
        )

    def load(self, index: int, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Raise: a streamed split has no random access."""
        return self.path(index)  # type: ignore[return-value]

    def subset(self, indices: Sequence[int]) -> SampleTable:
        """Raise: a streamed split has no random access."""
        return self.path(0)  # type: ignore[return-value]

    def dataset(
        self,
        transform: Callable | None,
        in_chans: int = 3,
        shuffle: bool = False,
        seed: int = 0,
        buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
        rank: int = 0,
        world_size: int = 1,
        equal_shares: bool = False,
    ) -> HFStreamDataset:
        """The torch ``IterableDataset`` over this split (see `HFStreamDataset` for the arguments)."""
        return HFStreamDataset(
            self.stream,
            self.image_column,
            self.label_column,
            self.mapping,
            transform,
            in_chans,
            shuffle,
            seed,
            buffer_size,
            rank,
            world_size,
            self.num_rows,
            equal_shares,
        )


def _split_size(ds: Any) -> int | None:
    info = getattr(ds, "info", None)
    split = getattr(ds, "split", None)
    sizes = getattr(info, "splits", None) or {}
    try:
        return int(sizes[str(split)].num_examples) or None if split is not None and str(split) in sizes else None
    except (KeyError, TypeError, AttributeError):
        return None


def read_hf_stream(
    splits: dict[str, Any],
    image_column: str = "image",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    description: str = "streamed Hugging Face dataset",
) -> SourceData:
    """Describe streamed Hugging Face splits without reading them: columns and class names from the features.

    The class names must be known without a pass over the data: from a
    ``ClassLabel`` label column, or from ``class_names`` (integer labels are indices
    into it, other labels are matched to it by name).

    Args:
        splits: ``datasets.IterableDataset`` objects by split (a ``datasets.Dataset`` is read as one).
        image_column: The image column, as in `read_hf_dataset`.
        label_column: The label column, as in `read_hf_dataset`.
        class_names: The class names, for a label column that is not a ``ClassLabel``.
        description: The source, for messages.

    Returns:
        One [`HFStreamTable`][autotimm.data.hf_source.HFStreamTable] per split, and the class names.

    Raises:
        ValueError: No image or label column, or class names that cannot be known.
    """
    datasets = import_datasets()
    streams = {split: _as_iterable(datasets, ds) for split, ds in splits.items()}
    train = streams["train"][0]
    features = train.features
    columns = list(features) if features else list(train.column_names or [])
    if not columns:
        raise ValueError(
            "the streamed `hf_dataset` does not declare its columns (no features); pass it with features, "
            "or use streaming=False"
        )
    image, label = _find_columns(features, columns, image_column, label_column)
    feature = _class_label(features, label)
    mapping: dict[str, int] | None = None
    if feature is not None:
        names = [str(n) for n in feature.names]
        _check_given_names(class_names, names, label)
    elif class_names is None:
        raise ValueError(
            f"The streamed `hf_dataset` label column {label!r} is not a ClassLabel ({features.get(label)}), so its "
            "classes are unknown until the whole dataset is read; pass class_names=[...] in label order, or "
            "streaming=False"
        )
    else:
        names = [str(c) for c in class_names]
        if not _is_integer_feature(features, label):
            mapping = {name: i for i, name in enumerate(names)}
    tables: dict[str, SampleTable] = {}
    for split, (ds, rows) in streams.items():
        stream = ds.select_columns([image, label])
        if isinstance((stream.features or {}).get(image), datasets.Image):
            stream = stream.cast_column(image, datasets.Image(decode=False))
        tables[split] = HFStreamTable(
            [], [], stream=stream, image_column=image, label_column=label, mapping=mapping, num_rows=rows
        )
    return SourceData(tables, names, description=f"{description} (image column {image!r}, label column {label!r})")


def _worker_position() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class HFStreamDataset(IterableDataset):
    """``(image, target)`` pairs of a streamed Hugging Face split, each sample once per epoch across ranks and workers.

    Shuffling (training) uses ``datasets``' buffer shuffle, ``shuffle(seed, buffer_size)``:
    the shard order is shuffled and examples are drawn at random from a buffer of
    ``buffer_size``; every epoch reshuffles (``set_epoch``; an epoch is counted
    each time the dataset is iterated, so persistent loader workers follow along).
    The data is split across the ``world_size`` ranks with
    ``datasets.distributed.split_dataset_by_node`` (whole shards when their number
    divides evenly, else every ``world_size``-th example), and then across loader
    workers: by whole shards when each worker gets at least one, else every
    worker keeps every ``num_workers``-th example of its rank's part (``datasets``
    alone would leave the extra workers idle). No sample is read twice in an epoch.

    With ``equal_shares`` (the training split on several ranks), every rank yields
    exactly ``num_rows // world_size`` samples per epoch, and loader worker ``w`` the
    same number on every rank, so that all ranks run the same number of batches
    (DDP waits at every step for all ranks: a rank with one batch more would hang
    the run at the epoch's end). A rank whose part is larger stops early (the
    rest of its part is not read that epoch); a part that is smaller, which
    happens when shards of unequal size are assigned whole, starts over to fill
    up (a few samples seen twice, as PyTorch's ``DistributedSampler`` pads). This
    needs the split's size: without ``num_rows`` nothing is capped, and ranks
    may run different numbers of batches; train such a stream with an integer
    ``limit_train_batches`` no larger than any rank's share, or with ``max_steps``.

    Args:
        stream: The split's ``datasets.IterableDataset`` (image left undecoded).
        image_column: The image column.
        label_column: The label column.
        mapping: Label value (as a string) to class index; ``None``: labels are class indices.
        transform: From a Pillow image to a tensor; ``None`` yields the Pillow image.
        in_chans: 1 or 3.
        shuffle: Shuffle with a buffer, differently every epoch.
        seed: Seed of the shuffle (the same on every rank).
        buffer_size: Examples held by the shuffle buffer.
        rank: This process's global rank.
        world_size: The number of ranks.
        num_rows: The split's size when known: the dataset then has a length, this rank's
            share (which Lightning needs to count the steps of a learning-rate schedule).
        equal_shares: Give every rank the same number of samples (see above); used when
            ``world_size`` > 1 and ``num_rows`` is known.
    """

    def __init__(
        self,
        stream: Any,
        image_column: str,
        label_column: str,
        mapping: dict[str, int] | None,
        transform: Callable | None,
        in_chans: int = 3,
        shuffle: bool = False,
        seed: int = 0,
        buffer_size: int = DEFAULT_SHUFFLE_BUFFER,
        rank: int = 0,
        world_size: int = 1,
        num_rows: int | None = None,
        equal_shares: bool = False,
    ) -> None:
        image_mode(in_chans)
        if not 0 <= rank < world_size:
            raise ValueError(f"`rank` must be in [0, world_size={world_size}), got {rank}")
        self.stream = stream
        self.image_column = image_column
        self.label_column = label_column
        self.mapping = mapping
        self.transform = transform
        self.in_chans = in_chans
        self.shuffle = shuffle
        self.seed = seed
        self.buffer_size = buffer_size
        self.rank = rank
        self.world_size = world_size
        self.num_rows = num_rows
        self.equal_shares = equal_shares
        self.epoch = 0
        self._epoch_set = False

    def __len__(self) -> int:
        if self.num_rows is None:
            raise TypeError(
                "This streamed Hugging Face split has no known length (its dataset info does not record it); "
                "train with max_steps"
            )
        if self._capped():
            return self.num_rows // self.world_size
        return -(-self.num_rows // self.world_size)

    def _capped(self) -> bool:
        return self.equal_shares and self.world_size > 1 and self.num_rows is not None

    def worker_quota(self) -> int | None:
        """The samples this loader worker yields per epoch with equal shares; ``None``: as many as its part has.

        A rank's ``num_rows // world_size`` samples are dealt out over its workers,
        the first workers one more each; the same on every rank.
        """
        if not self._capped():
            return None
        share = self.num_rows // self.world_size  # type: ignore[operator]
        worker, workers = _worker_position()
        return share // workers + (1 if worker < share % workers else 0)

    def _equal_examples(self, quota: int) -> Iterator[dict[str, Any]]:
        """``quota`` examples of this rank and worker: its part cut short, or started over until there are enough."""
        count = 0
        while count < quota:
            before = count
            for example in self.examples():
                yield example
                count += 1
                if count == quota:
                    return
            if count == before:
                raise RuntimeError(
                    f"rank {self.rank} of {self.world_size} got no sample of the streamed Hugging Face split "
                    f"({self.num_rows} rows, {self.stream.n_shards} shards) to fill its equal share of {quota}"
                )

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle order of ``epoch`` for the next pass."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def examples(self) -> Iterator[dict[str, Any]]:
        """The raw rows of this rank and loader worker for the current epoch, without decoding them."""
        from datasets.distributed import split_dataset_by_node

        ds = self.stream
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.buffer_size)
            ds.set_epoch(self.epoch)
        worker, workers = _worker_position()
        shards = ds.n_shards // self.world_size if ds.n_shards % self.world_size == 0 else 0
        if workers == 1 or shards >= workers:
            # datasets gives each worker whole shards of this rank's part by itself.
            if self.world_size > 1:
                ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
            yield from ds
            return
        # Fewer shards than workers: every (rank, worker) keeps its own share of examples. `iter` reads without
        # datasets' own per-worker sharding, which would leave workers without a shard idle and lose their share.
        ds = split_dataset_by_node(ds, rank=self.rank * workers + worker, world_size=self.world_size * workers)
        for batch in ds.iter(batch_size=64):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys), strict=True):
                yield dict(zip(keys, values, strict=True))

    def target(self, value: Any) -> torch.Tensor:
        """The class index of a label value, as an int64 scalar."""
        if self.mapping is None:
            return torch.tensor(int(value), dtype=torch.int64)
        try:
            return torch.tensor(self.mapping[str(value)], dtype=torch.int64)
        except KeyError:
            raise ValueError(
                f"label {value!r} of the streamed `hf_dataset` is not among `class_names` {list(self.mapping)}"
            ) from None

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor]]:
        quota = self.worker_quota()
        for example in self.examples() if quota is None else self._equal_examples(quota):
            image = _decode(example[self.image_column], self.in_chans)
            if self.transform is not None:
                image = self.transform(image)
            yield image, self.target(example[self.label_column])
        if not self._epoch_set:  # the next pass is the next epoch, in this process (or persistent worker)
            self.epoch += 1
        self._epoch_set = False


def hf_description(hf_dataset: Any) -> str:
    """A short description of what was given as ``hf_dataset``, for messages and the split file."""
    if isinstance(hf_dataset, (str, os.PathLike)):
        return f"Hugging Face dataset {os.fspath(hf_dataset)!r}"
    fingerprint = getattr(hf_dataset, "_fingerprint", None)  # a Dataset's content digest
    return f"Hugging Face {type(hf_dataset).__name__}" + (f" {fingerprint}" if fingerprint else "")
