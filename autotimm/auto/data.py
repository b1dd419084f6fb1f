"""The data side of the search: resolve ``data``, derive per-trial data modules, subsets and train+val.

Every trial trains on a copy of the user's data module that differs only in
what the trial changes (augmentation, batch size, a subset of the images);
the copies share the decoded sample tables, so nothing is read twice. All
copies keep one preprocessing (input size, crop, normalisation) whatever the
backbone, so that every trial's model takes the same inputs.

Sharded data (``ImageDataModule(shards=...)``) streams each split as it was
written: trials then train on the whole training split and validate on the
whole validation split (no subsets), and the final training cannot add the
validation images (no ``refit``). A (map-style) Hugging Face dataset is
subset and merged like a folder.
"""

from __future__ import annotations

import io
import os
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from autotimm.auto.presets import SMALL_IMAGE_MAX
from autotimm.data.datamodule import ImageDataModule
from autotimm.data.hf_source import HFSampleTable, HFStreamTable
from autotimm.data.shards import ShardTable
from autotimm.data.sources import SampleTable
from autotimm.data.splits import stratified_split
from autotimm.data.transforms import make_data_config

__all__ = [
    "TrialDataModule",
    "merge_tables",
    "native_image_shape",
    "preprocessing_overlay",
    "resolve_data",
    "subset_table",
    "supports_subsets",
]


def resolve_data(data: Any, output_dir: Path, seed: int, dataset_root: str | None = None) -> ImageDataModule:
    """Turn ``data`` into a set-up ``ImageDataModule`` with a validation split.

    Args:
        data: An ``ImageDataModule`` (of files, arrays, shards or a map-style Hugging Face dataset), a class
            folder, a CSV file, a shard folder or URL, a Hugging Face dataset folder or Parquet files, or a
            built-in dataset name (as ``autotimm train --data`` takes them).
        output_dir: Where a data module built here writes its split file.
        seed: Seed of the split of a data module built here.
        dataset_root: Cache of built-in datasets.

    Raises:
        TypeError: ``data`` of another type.
        FileNotFoundError: A path that does not exist and is no built-in dataset name.
        ValueError: Data without a validation split, multi-label data, or a streamed Hugging Face dataset.
    """
    if isinstance(data, (str, os.PathLike)):
        from autotimm.data.sources import data_source

        source = data_source(os.fspath(data), "`data`")
        data = ImageDataModule(**source, dataset_root=dataset_root, seed=seed, output_dir=output_dir)
    if not isinstance(data, ImageDataModule):
        raise TypeError(
            "`data` must be an ImageDataModule, a class folder, a CSV file, a shard folder or URL, a Hugging Face "
            "dataset folder or Parquet files, or a built-in dataset name; "
            f"got {type(data).__name__}"
        )
    data.setup("fit")
    if isinstance(data.tables["train"], HFStreamTable):
        raise ValueError(
            "auto_fit cannot search on a streamed Hugging Face dataset (streaming=True): trials need the "
            "validation split by index and the search subsets of the training split; pass it with "
            "streaming=False, or convert it with `autotimm shard` and pass shards=..."
        )
    if "val" not in data.splits:
        raise ValueError(
            "`data` has no validation split, which the search ranks trials on: give the ImageDataModule "
            "val_split > 0 (e.g. 0.2) or a val/ folder"
        )
    if data.multi_label:
        raise ValueError("auto_fit supports single-label data only; `data` is multi-label")
    return data


def native_image_shape(table: SampleTable, samples: int = 16) -> tuple[int, int]:
    """``(longer side in pixels, channels)`` of a split's images: the median over a few, 1 for grayscale.

    Args:
        table: The split.
        samples: Files to look at (only their headers are read).
    """
    if table.array is not None:
        shape = table.array.shape
        channels = 1 if len(shape) == 3 or shape[-1] == 1 else 3
        return int(max(shape[1], shape[2])), channels
    picks = np.linspace(0, len(table) - 1, num=min(samples, len(table))).astype(int)
    sides, gray = [], 0
    reader = table.streaming_dataset() if isinstance(table, ShardTable) else None  # opened once
    for index in picks:
        with _open_stored(table, int(index), reader) as image:
            sides.append(max(image.size))
            gray += image.mode in ("1", "L", "LA", "I", "I;16", "F")
    return int(statistics.median(sides)), 1 if gray == len(picks) else 3


def _open_stored(table: Any, index: int, reader: Any = None) -> Image.Image:
    """Sample ``index`` opened lazily by Pillow as stored (its mode and size read from the header).

    Args:
        table: The split.
        index: The sample.
        reader: For shards, the split's ``StreamingDataset`` (read by index).
    """
    if isinstance(table, ShardTable):
        return Image.open(io.BytesIO(bytes(reader[index]["image"])))
    if isinstance(table, HFSampleTable):
        value = table.dataset[int(table.items[index])][table.image_column]
        if isinstance(value, dict) and value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if isinstance(value, dict) and value.get("path"):
            return Image.open(value["path"])
        return table.load(index)  # pixels stored as arrays
    return Image.open(table.path(index))


def supports_subsets(table: Any) -> bool:
    """Whether a split can be subset and merged: not one of shards, which stream each split as written."""
    return not isinstance(table, (ShardTable, HFStreamTable))


def subset_table(table: SampleTable, count: int, seed: int) -> SampleTable:
    """A stratified random subset of about ``count`` samples (the whole table if it is no larger, or of shards)."""
    if count >= len(table) or not supports_subsets(table):
        return table
    parts = stratified_split(list(table.targets), {"subset": count / len(table)}, seed)
    return table.subset(parts["subset"])


def merge_tables(first: SampleTable, second: SampleTable) -> SampleTable:
    """One table with the samples of both (e.g. train and val, for the final training).

    Raises:
        ValueError: One table holds files and the other arrays, or either is of shards.
    """
    if not (supports_subsets(first) and supports_subsets(second)):
        raise ValueError(
            "cannot merge splits of shards: they stream each split as written (`autotimm shard` wrote train "
            "and val apart); train without refit, or write the shards with val_split=0 and a val/ folder merged in"
        )
    if isinstance(first, HFSampleTable) or isinstance(second, HFSampleTable):
        return _merge_hf_tables(first, second)
    if (first.array is None) != (second.array is None):
        raise ValueError("cannot merge a split of files with a split of arrays")
    targets = list(first.targets) + list(second.targets)
    if first.array is not None:
        if first.array is second.array:
            return SampleTable(list(first.items) + list(second.items), targets, array=first.array)
        rows = [first.array[np.asarray(first.items, dtype=np.int64)], second.array[np.asarray(second.items)]]
        return SampleTable(list(range(len(targets))), targets, array=np.concatenate(rows))
    if first.root == second.root:
        return SampleTable(list(first.items) + list(second.items), targets, root=first.root)
    paths = [str(first.path(i)) for i in range(len(first))] + [str(second.path(i)) for i in range(len(second))]
    return SampleTable(paths, targets, root=Path("/"))  # absolute paths: root / path is the path


def _merge_hf_tables(first: SampleTable, second: SampleTable) -> HFSampleTable:
    """Merge two splits of Hugging Face datasets: the same dataset, or the two concatenated (no copy of images)."""
    if not (isinstance(first, HFSampleTable) and isinstance(second, HFSampleTable)):
        raise ValueError("cannot merge a split of a Hugging Face dataset with a split of files or arrays")
    targets = list(first.targets) + list(second.targets)
    if first.dataset is second.dataset and first.image_column == second.image_column:
        return HFSampleTable(list(first.items) + list(second.items), targets, dataset=first.dataset,
                             image_column=first.image_column)  # fmt: skip
    from datasets import concatenate_datasets

    one = first.dataset.select_columns([first.image_column])
    two = second.dataset.select_columns([second.image_column])
    if second.image_column != first.image_column:
        two = two.rename_column(second.image_column, first.image_column)
    offset = len(one)
    items = list(first.items) + [offset + int(i) for i in second.items]
    return HFSampleTable(items, targets, dataset=concatenate_datasets([one, two]), image_column=first.image_column)


class TrialDataModule(ImageDataModule):
    """A copy of an ``ImageDataModule`` for one trial, with one preprocessing for every backbone.

    Build it with [`derive`][autotimm.auto.data.TrialDataModule.derive].
    `configure_for` takes the input channels from the backbone as usual, but
    the input size, crop, interpolation (and, for models trained from scratch,
    mean and std) come from ``overlay``.
    """

    overlay: dict[str, Any]

    @classmethod
    def derive(
        cls,
        base: ImageDataModule,
        overlay: dict[str, Any],
        *,
        augmentation: str | None = None,
        batch_size: int | None = None,
        tables: dict[str, SampleTable] | None = None,
    ) -> TrialDataModule:
        """Copy a set-up data module, changing what a trial changes.

        Args:
            base: The set-up data module.
            overlay: ``data_config`` keys fixed for every backbone (``input_size`` sets the channels and image size).
            augmentation: A preset name; ``None`` keeps the base's augmentation or custom transform.
            batch_size: ``None`` keeps the base's.
            tables: Replacement splits (subsets, or train+val); ``None`` keeps the base's.

        Returns:
            The trial's data module.
        """
        in_chans = int(overlay["input_size"][0])
        image_size = (int(overlay["input_size"][1]), int(overlay["input_size"][2]))
        new = cls.derived_from(
            base,
            tables=tables,
            augmentation=augmentation,
            batch_size=batch_size,
            image_size=image_size,
            in_chans=in_chans,
            data_config={**make_data_config(None, in_chans, image_size), **overlay},
        )
        new.overlay = dict(overlay)
        return new

    def configure_for(self, backbone: Any) -> TrialDataModule:
        """Take the channels (and, unless fixed, mean and std) from ``backbone``; the rest from the overlay."""
        super().configure_for(backbone)
        self._data_config = {**self.data_config, **self.overlay}
        self._data_config["input_size"] = [self.in_chans, *self.overlay["input_size"][1:]]
        return self


def preprocessing_overlay(in_chans: int, image_size: tuple[int, int], pretrained: bool) -> dict[str, Any]:
    """The ``data_config`` keys every trial shares.

    Small images are used whole (``crop_pct`` 1); larger ones get timm's
    default center crop. Models trained from scratch all use timm's default
    mean and std; pretrained ones keep their own.
    """
    config = make_data_config(None, in_chans, image_size)
    keys = ["input_size", "interpolation", "crop_pct", "crop_mode"] + ([] if pretrained else ["mean", "std"])
    overlay = {key: config[key] for key in keys}
    if max(image_size) <= SMALL_IMAGE_MAX:
        overlay["crop_pct"] = 1.0
    return overlay
