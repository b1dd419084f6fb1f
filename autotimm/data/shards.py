"""Streaming shards: a data source converted once into LitData's optimized format, then streamed while training.

[`write_shards`][autotimm.data.shards.write_shards] (``autotimm shard``) takes a
set-up [`ImageDataModule`][autotimm.ImageDataModule] (a folder, CSV files, a
built-in or Hugging Face dataset, listed and split exactly as training does) and
writes each split with ``litdata.optimize`` into ``OUTPUT/train``,
``OUTPUT/val`` and ``OUTPUT/test``: LitData chunks ("shards") of samples
``{"image": encoded bytes, "label": class index, "id": the file or row}``, plus
``OUTPUT/autotimm_shards.json`` with the class names, the split sizes and
per-class counts. Files are stored as they are (their JPEG/PNG bytes, never
decoded pixels); arrays as PNG.

``ImageDataModule(shards=OUTPUT)`` reads them back through LitData's
``StreamingDataset`` / ``StreamingDataLoader``
([`open_shards`][autotimm.data.shards.open_shards]): from a local folder or an
object-store URL (``s3://``, ``gs://``, ``azure://``), shuffled across shards,
each rank and loader worker a disjoint part, resumable in the middle of an
epoch. ``litdata`` is imported only here, on first use (the ``stream`` extra:
``pip install "autotimm[stream]"``).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from PIL import Image

from autotimm.data.images import array_to_image, convert_image, decode_image, image_mode
from autotimm.data.ranks import write_text_atomically
from autotimm.data.sampling import class_counts

__all__ = [
    "SHARD_INFO_FILE",
    "SHARD_SPLITS",
    "STREAM_INSTALL",
    "ShardDecoder",
    "ShardSummary",
    "ShardTable",
    "check_shard_size",
    "import_litdata",
    "is_remote",
    "is_streaming_dataset",
    "open_shards",
    "read_shard_info",
    "size_text",
    "streaming_loader",
    "write_shards",
]

#: The record ``autotimm shard`` writes next to the split folders: class names, split sizes, class counts.
SHARD_INFO_FILE = "autotimm_shards.json"
#: The split folders of a shard folder, in order.
SHARD_SPLITS = ("train", "val", "test")
#: How to install LitData.
STREAM_INSTALL = 'pip install "autotimm[stream]"'
_FORMAT = 1
_INDEX_FILE = "index.json"  # LitData's index of a split's chunks
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def import_litdata() -> ModuleType:
    """Import ``litdata``, or raise one line naming the extra that installs it.

    Raises:
        ImportError: LitData is not installed.
    """
    try:
        import litdata
    except ImportError as err:
        raise ImportError(f"Streaming shards need LitData, which is not installed: {STREAM_INSTALL}") from err
    return litdata


def is_remote(location: str | Path) -> bool:
    """Whether ``location`` is an object-store URL (``s3://``, ``gs://``, ...) rather than a local folder.

    Example:
        >>> is_remote("s3://bucket/pets"), is_remote("runs/shards"), is_remote("file:///tmp/x")
        (True, False, False)
    """
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _join(location: str, name: str) -> str:
    if is_remote(location):
        return f"{location.rstrip('/')}/{name}"
    return str(Path(location.removeprefix("file://")).expanduser() / name)


def check_shard_size(shard_size: str | int) -> int:
    """Bytes in a shard size given as ``"256MB"``, ``"64kb"``, ``"1.5GB"`` or a number of bytes.

    Raises:
        ValueError: Not a positive size; the message gives the accepted forms.

    Example:
        >>> check_shard_size("256MB"), check_shard_size(4096)
        (256000000, 4096)
    """
    if isinstance(shard_size, int) and not isinstance(shard_size, bool):
        size = shard_size
    else:
        match = _SIZE.match(str(shard_size))
        if match is None:
            raise ValueError(
                f"`shard_size` must be a size such as '256MB', '64KB', '1GB' or a number of bytes, got {shard_size!r}"
            )
        size = int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    if size < 1:
        raise ValueError(f"`shard_size` must be at least 1 byte, got {shard_size!r}")
    return size


def size_text(size: int) -> str:
    """A byte count for people: ``"512 B"``, ``"3.4 KB"``, ``"256.0 MB"``, ``"1.2 GB"`` (powers of 1000).

    Example:
        >>> size_text(512), size_text(3400), size_text(256_000_000)
        ('512 B', '3.4 KB', '256.0 MB')
    """
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ------------------------------------------------------------------------------------------------ writing
def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class _SampleEncoder:
    """``litdata.optimize``'s function: sample index -> ``{"image": bytes, "label": ..., "id": str}`` (picklable)."""

    def __init__(self, table: Any, multi_label: bool) -> None:
        self.table = table
        self.multi_label = multi_label

    def image_bytes(self, index: int) -> bytes:
        table = self.table
        if table.array is not None:  # arrays: lossless PNG of the row
            return _png_bytes(array_to_image(table.array[table.items[index]], 3 if table.array.ndim == 4 else 1))
        if table.root is not None:  # files: their bytes as they are
            return table.path(index).read_bytes()
        dataset, column = getattr(table, "dataset", None), getattr(table, "image_column", None)
        if dataset is not None and column is not None:  # a Hugging Face dataset: the stored encoded bytes
            value = dataset[int(table.items[index])][column]
            if isinstance(value, dict) and value.get("bytes"):
                return bytes(value["bytes"])
            if isinstance(value, dict) and value.get("path"):
                return Path(value["path"]).read_bytes()
        return _png_bytes(table.load(index, 3))

    def __call__(self, index: int) -> dict[str, Any]:
        target = self.table.targets[index]
        label = np.asarray(sorted(target), dtype=np.int64) if self.multi_label else int(target)
        return {"image": self.image_bytes(index), "label": label, "id": str(self.table.items[index])}


@dataclass
class ShardSummary:
    """What [`write_shards`][autotimm.data.shards.write_shards] wrote.

    Args:
        output: The shard folder.
        images: Images per split.
        shards: Shard (chunk) files per split.
        bytes: Bytes of the shard files per split.
        seconds: Time taken.
    """

    output: str
    images: dict[str, int]
    shards: dict[str, int]
    bytes: dict[str, int]
    seconds: float

    def __str__(self) -> str:
        total = sum(self.bytes.values())
        splits = ", ".join(f"{split} {n}" for split, n in self.images.items())
        return (
            f"Wrote {sum(self.images.values())} images ({splits}) in {sum(self.shards.values())} shards, "
            f"{size_text(total)}, to {self.output} in {self.seconds:.1f} s"
        )


def _chunk_stats(split_dir: Path) -> tuple[int, int]:
    index = json.loads((split_dir / _INDEX_FILE).read_text())
    chunks = index.get("chunks", [])
    return len(chunks), sum(int(c.get("chunk_bytes", 0)) for c in chunks)


def write_shards(
    data: Any,
    output: str | Path,
    shard_size: str | int = "256MB",
    workers: int = 1,
    verbose: bool = True,
) -> ShardSummary:
    """Write every split of a data module as LitData shards into ``output/<split>``, with ``autotimm_shards.json``.

    The data module is set up first (listing, checks and the split, exactly as
    for training: give it the same ``val_split``, ``test_split`` and ``seed``);
    its split file goes where its ``output_dir`` says.

    Args:
        data: An [`ImageDataModule`][autotimm.ImageDataModule] of files, arrays or a (not
            streamed) Hugging Face dataset.
        output: A local folder; existing split folders in it are replaced.
        shard_size: Bytes per shard file: ``"256MB"``, ``"64MB"``, or a number of bytes.
        workers: Processes that read and write the samples.
        verbose: Show LitData's progress bars.

    Returns:
        What was written: images, shards and bytes per split, and the time taken.

    Raises:
        ImportError: LitData is not installed.
        ValueError: A bad ``shard_size`` or ``workers``, a remote ``output``, or a streamed source.
    """
    litdata = import_litdata()
    chunk_bytes = check_shard_size(shard_size)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"`workers` must be an integer >= 1, got {workers!r}")
    if is_remote(output):
        raise ValueError(
            f"`output` must be a local folder, got {str(output)!r}; write the shards locally, then copy the folder to "
            "object storage (e.g. `aws s3 sync OUTPUT s3://bucket/prefix`)"
        )
    start = time.perf_counter()
    data.setup()
    tables = data.tables
    if any(not hasattr(table, "targets") or getattr(table, "num_rows", 0) is None for table in tables.values()):
        raise ValueError("A streamed source cannot be written as shards; use streaming=False")
    root = Path(output).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    num_classes, multi_label = data.num_classes, data.multi_label
    images, shards, sizes, splits = {}, {}, {}, {}
    for split, table in tables.items():
        split_dir = root / split
        litdata.optimize(
            fn=_SampleEncoder(table, multi_label),
            inputs=list(range(len(table))),
            output_dir=str(split_dir),
            chunk_bytes=chunk_bytes,
            num_workers=min(workers, max(len(table), 1)),
            mode="overwrite",
            verbose=verbose,
            reorder_files=False,
            start_method="fork" if "fork" in multiprocessing.get_all_start_methods() else None,
        )
        images[split] = len(table)
        shards[split], sizes[split] = _chunk_stats(split_dir)
        counts = class_counts(table.targets, num_classes, multi_label).tolist()
        splits[split] = {"images": len(table), "class_counts": counts}
    record = {
        "format": _FORMAT,
        "class_names": data.class_names,
        "multi_label": multi_label,
        "splits": splits,
        "source": getattr(data, "source", ""),
        "seed": getattr(data, "seed", None),
        "val_split": getattr(data, "val_split", None),
        "test_split": getattr(data, "test_split", None),
    }
    write_text_atomically(root / SHARD_INFO_FILE, json.dumps(record, indent=1))
    return ShardSummary(str(root), images, shards, sizes, time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ reading
def _one_line(error: BaseException, limit: int = 300) -> str:
    """The error's type and the first line of its message (a store's error can hold a whole traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return f"{type(error).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _fetch_remote(url: str, storage_options: dict | None) -> str:
    """Download a small remote file with LitData's downloader (the store's own credentials) and return its text."""
    import_litdata()
    from litdata.streaming.downloader import get_downloader

    base, name = url.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as folder:
        local = str(Path(folder) / name)
        get_downloader(base, folder, [], storage_options or {}).download_file(url, local)
        return Path(local).read_text(encoding="utf-8")


def read_shard_info(location: str | Path, storage_options: dict | None = None) -> dict[str, Any]:
    """Read ``autotimm_shards.json`` of a shard folder or URL, checking that it is one.

    Args:
        location: The folder ``autotimm shard`` wrote, or its object-store URL.
        storage_options: Credentials and settings of the object store, as LitData takes them.

    Returns:
        The record: ``class_names``, ``multi_label`` and ``splits`` (``images`` and ``class_counts`` each).

    Raises:
        FileNotFoundError: A local folder that does not exist.
        ValueError: A folder that is not a shard folder (the message says what it is).
        OSError: The object store's error, in one line (no credentials, no such bucket, no network).
    """
    location = str(location)
    info_path = _join(location, SHARD_INFO_FILE)
    if is_remote(location):
        try:
            text = _fetch_remote(info_path, storage_options)
        except ImportError:
            raise
        except Exception as err:
            raise OSError(f"`shards` {location!r}: cannot read {SHARD_INFO_FILE} there: {_one_line(err)}") from None
    else:
        folder = Path(info_path).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"`shards` {location!r} does not exist or is not a folder")
        if not Path(info_path).is_file():
            if (folder / _INDEX_FILE).is_file():
                raise ValueError(
                    f"`shards` {location!r} is a LitData index of one split, not a shard folder of `autotimm shard` "
                    f"(no {SHARD_INFO_FILE}); pass the folder above it, which holds train/ (val/, test/) and "
                    f"{SHARD_INFO_FILE}"
                )
            found = sorted(p.name for p in folder.iterdir())[:8]
            raise ValueError(
                f"`shards` {location!r} is not a shard folder: it has no {SHARD_INFO_FILE} and no LitData index "
                f"({_INDEX_FILE}); it holds {found}. Write one with `autotimm shard SOURCE {location}`"
            )
        text = Path(info_path).read_text(encoding="utf-8")
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or "class_names" not in record or "train" not in record.get("splits", {}):
            raise ValueError("no class_names or train split")
    except ValueError as err:
        raise ValueError(f"`shards` {location!r}: {SHARD_INFO_FILE} is not a shard record ({err})") from None
    if not is_remote(location):
        for split in record["splits"]:
            if not (Path(_join(location, split)) / _INDEX_FILE).is_file():
                raise ValueError(
                    f"`shards` {location!r}: the {split!r} split has no LitData index ({split}/{_INDEX_FILE}); "
                    "the folder is incomplete: write it again with `autotimm shard`"
                )
    return record


class ShardDecoder:
    """LitData's per-sample transform: ``{"image": bytes, "label": ...}`` -> ``(image tensor, target)``.

    Args:
        transform: A transform from a Pillow image to a tensor; ``None`` keeps the Pillow image.
        in_chans: 1 or 3.
        num_classes: Length of multi-hot targets.
        multi_label: Return float multi-hot targets instead of an int64 class index.
    """

    def __init__(
        self, transform: Callable | None, in_chans: int = 3, num_classes: int = 0, multi_label: bool = False
    ) -> None:
        image_mode(in_chans)
        self.transform = transform
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.multi_label = multi_label

    def target(self, label: Any) -> torch.Tensor:
        """The target of a stored label: an int64 scalar, or a float multi-hot vector."""
        if not self.multi_label:
            return torch.tensor(int(label), dtype=torch.int64)
        target = torch.zeros(self.num_classes)
        target[torch.as_tensor(np.asarray(label, dtype=np.int64))] = 1.0
        return target

    def __call__(self, item: dict[str, Any]) -> tuple[Any, torch.Tensor]:
        """Decode the stored bytes (upright by EXIF), convert channels, transform; the label becomes the target."""
        image = convert_image(decode_image(bytes(item["image"])), self.in_chans)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(item["label"])


def is_streaming_dataset(dataset: Any) -> bool:
    """Whether ``dataset`` is a LitData ``StreamingDataset`` (without importing LitData when it is not loaded)."""
    import sys

    module = sys.modules.get("litdata")
    return module is not None and isinstance(dataset, module.StreamingDataset)


def streaming_loader(dataset: Any, batch_size: int, num_workers: int, **kwargs: Any) -> Any:
    """A LitData ``StreamingDataLoader`` over ``dataset``: stateful (Lightning saves its position in checkpoints).

    Args:
        dataset: A ``StreamingDataset``.
        batch_size: Samples per batch.
        num_workers: Worker processes.
        **kwargs: Further ``DataLoader`` arguments (``drop_last``).
    """
    litdata = import_litdata()
    return litdata.StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=torch.cuda.is_available(), **kwargs
    )


@dataclass
class ShardTable:
    """One split of a shard folder, standing where a [`SampleTable`][autotimm.data.SampleTable] stands.

    Its length, class counts and class names come from ``autotimm_shards.json``;
    ``items`` (the sample ids) and ``targets`` are read from the shards on first
    use (a whole pass over the split: meant for validation and test splits, e.g.
    by [`autotimm.evaluate`][autotimm.evaluate]). Training streams it through
    [`streaming_dataset`][autotimm.data.shards.ShardTable.streaming_dataset].

    Args:
        location: The split's folder or URL (``OUTPUT/train``).
        size: Samples in the split.
        class_counts: Images per class.
        storage_options: The object store's credentials and settings, as LitData takes them.
    """

    location: str
    size: int
    class_counts: list[int]
    storage_options: dict | None = None
    root: None = None
    array: None = None
    _rows: tuple[list[str], list[Any]] | None = field(default=None, repr=False)
    _reader: Any = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.size

    def streaming_dataset(
        self, decoder: Callable | None = None, shuffle: bool = False, seed: int = 42, drop_last: bool | None = None
    ) -> Any:
        """A LitData ``StreamingDataset`` of the split, each sample passed through ``decoder``.

        Args:
            decoder: The per-sample transform (a [`ShardDecoder`][autotimm.data.shards.ShardDecoder]); ``None``
                gives the stored dictionaries.
            shuffle: Shuffle the shards and the samples within them, anew every epoch.
            seed: The shuffle's seed, the same on every rank.
            drop_last: LitData's: ``None`` drops the last samples on several ranks so that all get as many.
        """
        litdata = import_litdata()
        options = {"storage_options": self.storage_options} if self.storage_options else {}
        try:
            return litdata.StreamingDataset(
                self.location, shuffle=shuffle, seed=seed, drop_last=drop_last, transform=decoder, **options
            )
        except Exception as err:
            raise OSError(f"Cannot open the shards at {self.location!r}: {_one_line(err)}") from None

    def _read_rows(self) -> tuple[list[str], list[Any]]:
        if self._rows is None:
            reader = self._dataset()
            ids, labels = [], []
            for index in range(len(reader)):
                item = reader[index]
                ids.append(str(item["id"]))
                label = item["label"]
                labels.append(np.asarray(label).tolist() if isinstance(label, np.ndarray) else int(label))
            self._rows = (ids, labels)
        return self._rows

    def _dataset(self) -> Any:
        if self._reader is None:
            self._reader = self.streaming_dataset()
        return self._reader

    @property
    def items(self) -> list[str]:
        """The sample ids in stored order (file paths relative to the source folder, or row indices)."""
        return self._read_rows()[0]

    @property
    def targets(self) -> list[Any]:
        """The class index (or list of indices for multi-label data) of every sample, in stored order."""
        return self._read_rows()[1]

    def path(self, index: int) -> Path:
        """Raise: shard samples are not files."""
        raise TypeError("This sample table holds samples of LitData shards, not files")

    def load(self, index: int, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Image.Image:
        """Decode sample ``index`` (in stored order) into a Pillow image with ``in_chans`` channels.

        Args:
            index: The sample.
            in_chans: 1 or 3.
            draft_size: Decode a JPEG reduced, to no less than this ``(width, height)``; ``None``: full size.
        """
        data = bytes(self._dataset()[int(index)]["image"])
        return convert_image(decode_image(data, draft_size=draft_size), in_chans)

    def subset(self, indices: Sequence[int]) -> Any:
        """Raise: shards are streamed as written; subsets (cross-validation's folds) need a source in memory."""
        raise ValueError(
            "Shards stream each split as it was written and cannot be subset or merged (cross-validation's folds "
            "and auto_fit's refit need that); use the source folder or CSV they were written from"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}


def open_shards(location: str | Path, storage_options: dict | None = None) -> tuple[dict[str, ShardTable], dict]:
    """The split tables of a shard folder or URL, and its record.

    Args:
        location: The folder ``autotimm shard`` wrote, or its object-store URL.
        storage_options: The object store's credentials and settings, as LitData takes them.

    Returns:
        ``({"train": ..., "val": ..., "test": ...}, record)``, splits as written.

    Raises:
        ImportError: LitData is not installed.
        FileNotFoundError, ValueError, OSError: As [`read_shard_info`][autotimm.data.shards.read_shard_info].
    """
    import_litdata()
    location = str(location).rstrip("/") if is_remote(location) else str(Path(str(location)).expanduser())
    record = read_shard_info(location, storage_options)
    tables = {
        split: ShardTable(
            _join(location, split),
            int(record["splits"][split]["images"]),
            list(record["splits"][split]["class_counts"]),
            storage_options,
        )
        for split in SHARD_SPLITS
        if split in record["splits"]
    }
    return tables, record
