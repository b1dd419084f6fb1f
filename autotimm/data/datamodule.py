"""``ImageDataModule``: one data source in, train/val/test/predict loaders out, as a LightningDataModule."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from autotimm.checks import require_number
from autotimm.data.array_batches import BATCHED_AUGMENTATIONS, ArrayBatchDataset, supports_batched_arrays
from autotimm.data.bad_images import BadImageMonitor, BadImageTracker
from autotimm.data.checked import check_source_once
from autotimm.data.csv_source import read_csv_files
from autotimm.data.dataset import ImageDataset
from autotimm.data.decoding import eval_draft_size
from autotimm.data.hf_source import (
    DEFAULT_SHUFFLE_BUFFER,
    HFStreamDataset,
    HFStreamTable,
    hf_description,
    open_hf_dataset,
    read_hf_dataset,
    read_hf_stream,
)
from autotimm.data.images import check_images_mode, image_mode
from autotimm.data.loaders import default_num_workers, make_loader
from autotimm.data.resumable import ResumableDataLoader, ResumableSampler
from autotimm.data.sampling import balanced_class_weights, class_counts, sample_weights
from autotimm.data.shards import ShardDecoder, ShardTable, is_streaming_dataset, open_shards, streaming_loader
from autotimm.data.sources import (
    SampleTable,
    SourceData,
    read_arrays,
    read_builtin,
    read_folder,
)
from autotimm.data.splits import resolve_splits
from autotimm.data.transforms import (
    backbone_in_chans,
    build_eval_transform,
    build_train_transform,
    check_augmentation,
    check_image_size,
    list_augmentation_presets,
    make_data_config,
    resolve_augmentation,
)

__all__ = ["DEFAULT_OUTPUT_DIR", "ImageDataModule"]

#: Folder of the split file when ``output_dir`` is not given and no `AutoTrainer` run names one.
DEFAULT_OUTPUT_DIR = Path("autotimm_output")

_CSV_ARGUMENTS = ("train_csv", "val_csv", "test_csv", "image_dir", "image_column", "label_column", "label_delimiter")
_SOURCE_ARGUMENTS = {
    "data_dir",
    *_CSV_ARGUMENTS,
    "multi_label",
    "images",
    "labels",
    "class_names",
    "dataset",
    "dataset_root",
    "hf_dataset",
    "split",
    "streaming",
    "shards",
}
_DataModuleT = TypeVar("_DataModuleT", bound="ImageDataModule")


def _check_augmentation_argument(augmentation: Any) -> None:
    if isinstance(augmentation, str):
        check_augmentation(augmentation)
    elif not callable(augmentation):
        raise ValueError(
            f"`augmentation` must be one of {list_augmentation_presets()} or a transform, got {augmentation!r}"
        )


def _check_hf_arguments(
    hf_dataset: Any, split: Any, streaming: Any, shuffle_buffer: Any, balanced_sampling: bool, class_weights: Any
) -> None:
    """Refuse the Hugging Face options without ``hf_dataset``, and what a streamed split cannot do."""
    for name, value, default in (("split", split, None), ("streaming", streaming, False)):
        if value != default and hf_dataset is None:
            raise ValueError(f"`{name}` needs `hf_dataset`, got {name}={value!r} without it")
    if not isinstance(streaming, bool):
        raise ValueError(f"`streaming` must be True or False, got {streaming!r}")
    if split is not None and (not isinstance(split, str) or not split):
        raise ValueError(f"`split` must be a split name such as 'train', got {split!r}")
    require_number("shuffle_buffer", shuffle_buffer, 1, integer=True)
    if streaming and (balanced_sampling or class_weights is not None):
        raise ValueError(
            "`balanced_sampling` and `class_weights` need the class counts, which a streamed `hf_dataset` does not "
            "know before reading it all; use streaming=False for them"
        )


def _check_shard_arguments(shards: Any, storage_options: Any, arguments: dict[str, Any]) -> None:
    """Refuse ``shards`` together with another source, and what streamed shards cannot do."""
    if storage_options is not None and shards is None:
        raise ValueError("`storage_options` needs `shards`, got storage_options without it")
    if shards is None:
        return
    if not isinstance(shards, (str, Path)) or not str(shards):
        raise ValueError(f"`shards` must be a folder or an object-store URL ('s3://bucket/prefix'), got {shards!r}")
    sources = ("data_dir", "train_csv", "images", "dataset", "hf_dataset")
    others = [name for name in sources if arguments[name] is not None]
    if others:
        given = ", ".join(f"{name}={arguments[name]!r}" for name in others)
        raise ValueError(
            f"`shards` and `{'`, `'.join(others)}` were both given (shards={str(shards)!r}, {given}): pass one source. "
            "A shard folder already holds the data and its split; write it from a source with `autotimm shard`"
        )
    if arguments["balanced_sampling"]:
        raise ValueError(
            "`balanced_sampling` cannot draw from streamed `shards` (LitData reads each shard in turn); use "
            "class_weights='balanced' instead"
        )


def _custom_transform(train_transform: Callable | None, augmentation: str | Callable) -> Callable | None:
    """The custom training transform: ``train_transform``, or ``augmentation`` when it is a transform."""
    if train_transform is not None:
        return train_transform
    return None if isinstance(augmentation, str) else augmentation


class ImageDataModule(pl.LightningDataModule):
    """Image classification data from a folder, CSV files, arrays or a built-in dataset.

    Pass exactly one source: ``data_dir``, ``train_csv``, ``images`` with
    ``labels``, ``dataset``, or ``hf_dataset``. Missing validation/test splits are carved from
    the training data (stratified, seeded) and recorded in
    ``output_dir/splits.json``, which later runs reuse; by default 20% for
    validation and 10% for a held-out test split, as ``autotimm train`` does.
    Without an ``output_dir``, `AutoTrainer.fit` puts the split file into its
    run folder (see [`use_run_dir`][autotimm.ImageDataModule.use_run_dir]). Files are checked when
    the data is set up. Validation, test and prediction images always get the
    evaluation transform.

    Args:
        data_dir: An ImageFolder-layout folder: ``<class>/<image>``, or
            ``train/``, ``val/``, ``test/`` folders of class folders.
        train_csv: A CSV of training images and labels.
        val_csv: A CSV of validation images (with ``train_csv``).
        test_csv: A CSV of test images (with ``train_csv``).
        image_dir: Folder the CSV image paths are relative to; default: the CSV's folder.
        image_column: CSV column of image paths.
        label_column: CSV column of labels.
        label_delimiter: Separator of labels in a multi-label CSV cell (``"cat;dog"``).
        multi_label: Force multi-label CSV data on or off; ``None`` detects it.
        images: ``(N, H, W)`` or ``(N, H, W, C)`` uint8 or float images.
        labels: ``(N,)`` or ``(N, 1)`` integer labels (or ``(N, C)`` multi-hot) for ``images``.
        class_names: Class names in label order for ``images``.
        dataset: A built-in dataset name (see ``list_builtin_datasets()``).
        dataset_root: Where the built-in dataset is cached.
        hf_dataset: A Hugging Face dataset: a ``datasets.Dataset`` / ``DatasetDict``, a folder
            written by ``save_to_disk``, Parquet file(s) (a path, folder or glob) or a Hub name
            (needs the ``hf`` extra). Its ``Image`` and ``ClassLabel`` columns are used unless
            ``image_column`` / ``label_column`` name others; class names come from the
            ``ClassLabel`` (or ``class_names`` for integer labels). A ``DatasetDict``'s
            ``train``, ``validation`` and ``test`` splits are used as given. See
            [`open_hf_dataset`][autotimm.data.hf_source.open_hf_dataset].
        split: With ``hf_dataset``: the one split to use as the training pool (e.g. ``"train"``,
            or ``"train[:10%]"`` for a Hub name); validation/test are then carved from it.
        streaming: With ``hf_dataset``: read it as an ``IterableDataset`` while training (no
            full download, no split carving), shuffled with a buffer and split across
            ranks and loader workers (see [`HFStreamDataset`][autotimm.data.hf_source.HFStreamDataset]).
        shuffle_buffer: Examples in the shuffle buffer of a streamed training split.
        val_split: Fraction of the training data held out for validation when
            the source has no validation split, in ``[0, 1)``.
        test_split: Fraction held out for testing when the source has no test
            split, in ``[0, 1)``; 0 carves none.
        seed: Seed of the split (and of the balanced sampler).
        output_dir: Folder of the split file; ``None`` writes none. Not given:
            the run folder of the `AutoTrainer` that fits on this data, else
            [`DEFAULT_OUTPUT_DIR`][autotimm.data.datamodule.DEFAULT_OUTPUT_DIR].
        image_size: Overrides the backbone's input size (int or ``(H, W)``).
        augmentation: A preset from ``list_augmentation_presets()`` or a transform.
            ``"auto"``: none for images of at most 64 px, else ``"light"``
            (see [`resolve_augmentation`][autotimm.data.resolve_augmentation]).
        train_transform: A custom training transform (Pillow image to tensor),
            used instead of the preset.
        eval_transform: A custom evaluation transform, used instead of timm's.
        in_chans: Channels fed to the backbone, 1 or 3; set by `configure_for`.
        batch_size: Batch size of every loader.
        num_workers: Loader worker processes; default `default_num_workers()`
            for files and 0 for in-memory arrays.
        balanced_sampling: Draw training samples with probability inversely
            proportional to their class frequency.
        class_weights: ``"balanced"`` to compute `class_weights_tensor`, or ``None``.
        skip_bad_images: Skip unreadable image files with one warning instead of raising.
        check_images: How image files are checked at set-up: ``"header"`` opens each file and
            reads its header only (format and size; fast, tens of thousands of files per
            second), ``"full"`` decodes every file (finds truncated files too; slow on large
            folders), ``"none"`` trusts the files. A file that fails to decode later is
            skipped while training (see ``max_bad_fraction``).
        max_bad_fraction: Files that fail to decode while training or evaluating are
            replaced by the next readable sample of their split, counted
            (``train/bad_images``) and listed in ``bad_images.txt`` in the run folder; when
            more than this share of a split is bad, the run stops
            ([`TooManyBadImagesError`][autotimm.data.bad_images.TooManyBadImagesError]).
            In ``[0, 1]``.
        shards: A shard folder written by ``autotimm shard`` (or
            [`write_shards`][autotimm.data.shards.write_shards]), or its object-store URL
            (``s3://bucket/prefix``, ``gs://``, ``azure://``): trained through LitData's
            ``StreamingDataset`` (the ``stream`` extra), shuffled across shards, a disjoint
            part per rank and loader worker, resumable mid-epoch. Its splits and class names
            are the ones written; nothing is carved or checked. See
            [`open_shards`][autotimm.data.shards.open_shards].
        storage_options: With ``shards`` in object storage: credentials and settings of the
            store, as LitData takes them (default: the store's usual environment variables
            and configuration files).
        draft_decode: Decode JPEG files reduced (libjpeg's DCT scaling) where the transform
            needs fewer pixels than the file has: evaluation images to twice the resize
            target, training crops to their output size (see `autotimm.data.decoding`).
            Only with autotimm's own transforms; ``False`` decodes every file in full.

    Raises:
        ValueError: No source or several, or an argument out of range; the
            message names the argument, the value and what is accepted.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        train_csv: str | Path | None = None,
        val_csv: str | Path | None = None,
        test_csv: str | Path | None = None,
        image_dir: str | Path | None = None,
        image_column: str = "image",
        label_column: str = "label",
        label_delimiter: str = ";",
        multi_label: bool | None = None,
        images: Any = None,
        labels: Any = None,
        class_names: Sequence[str] | None = None,
        dataset: str | None = None,
        dataset_root: str | Path | None = None,
        hf_dataset: Any = None,
        split: str | None = None,
        streaming: bool = False,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        val_split: float = 0.2,
        test_split: float = 0.1,
        seed: int = 42,
        output_dir: str | Path | None = DEFAULT_OUTPUT_DIR,
        image_size: int | tuple[int, int] | None = None,
        augmentation: str | Callable = "auto",
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        in_chans: int = 3,
        batch_size: int = 32,
        num_workers: int | None = None,
        balanced_sampling: bool = False,
        class_weights: str | None = None,
        skip_bad_images: bool = False,
        check_images: str = "header",
        max_bad_fraction: float = 0.01,
        draft_decode: bool = True,
        shards: str | Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        _check_shard_arguments(shards, storage_options, locals())
        given = {
            "data_dir": data_dir is not None,
            "train_csv": train_csv is not None,
            "images": images is not None or labels is not None,
            "dataset": dataset is not None,
            "hf_dataset": hf_dataset is not None,
            "shards": shards is not None,
        }
        chosen = [name for name, present in given.items() if present]
        if len(chosen) != 1:
            raise ValueError(
                "ImageDataModule needs exactly one data source: `data_dir`, `train_csv`, `images` with `labels`, "
                f"`dataset` or `hf_dataset`; got {chosen or 'none'}"
            )
        if (images is None) != (labels is None):
            raise ValueError("`images` and `labels` must be given together")
        for name, value in (("val_csv", val_csv), ("test_csv", test_csv), ("image_dir", image_dir)):
            if value is not None and train_csv is None:
                raise ValueError(f"`{name}` needs `train_csv`, got {name}={str(value)!r} without it")
        _check_hf_arguments(hf_dataset, split, streaming, shuffle_buffer, balanced_sampling, class_weights)
        require_number("val_split", val_split, 0, 1)
        require_number("test_split", test_split, 0, 1)
        if val_split + test_split >= 1:
            raise ValueError(f"`val_split` + `test_split` must be < 1, got {val_split} + {test_split}")
        require_number("seed", seed, 0, integer=True)
        require_number("batch_size", batch_size, 1, integer=True)
        if num_workers is not None:
            require_number("num_workers", num_workers, 0, integer=True)
        image_mode(in_chans)
        if image_size is not None:
            check_image_size(image_size)
        _check_augmentation_argument(augmentation)
        if class_weights not in (None, "balanced"):
            raise ValueError(f"`class_weights` must be 'balanced' or None, got {class_weights!r}")
        check_images_mode(check_images)
        require_number("max_bad_fraction", max_bad_fraction, 0, 1, high_closed=True)
        if not isinstance(draft_decode, bool):
            raise ValueError(f"`draft_decode` must be True or False, got {draft_decode!r}")

        self.source = chosen[0]
        self._source_args = {name: value for name, value in locals().items() if name in _SOURCE_ARGUMENTS}
        self.val_split = val_split
        self.test_split = test_split
        self.seed = seed
        # The default object itself (not an equal path) means "not chosen": a run folder may replace it.
        self._output_dir_chosen = output_dir is not DEFAULT_OUTPUT_DIR
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.image_size = image_size
        self.augmentation = augmentation
        self._train_transform = _custom_transform(train_transform, augmentation)
        self._eval_transform = eval_transform
        self.in_chans = in_chans
        self.batch_size = batch_size  # public: Lightning's batch-size finder scales it
        self.num_workers = num_workers
        self.balanced_sampling = balanced_sampling
        self.class_weights = class_weights
        self.skip_bad_images = skip_bad_images
        self.check_images = check_images
        self.max_bad_fraction = max_bad_fraction
        self.draft_decode = draft_decode
        self._bad_images: dict[str, BadImageTracker] = {}
        self.shuffle_buffer = shuffle_buffer
        self._data_config: dict[str, Any] | None = None
        self._tables: dict[str, SampleTable] | None = None
        self._class_names: list[str] = []
        self._multi_label = False
        self.storage_options = storage_options
        self._streaming_loader: Any = None  # the training StreamingDataLoader, whose position checkpoints keep
        self._streaming_state: dict[str, Any] | None = None  # a position to resume from, until the loader exists

    # ------------------------------------------------------------------ configuration
    def configure_for(self, backbone: nn.Module) -> ImageDataModule:
        """Take preprocessing (size, mean, std, interpolation, crop) and input channels from a timm backbone.

        Args:
            backbone: The timm model the data is for.

        Returns:
            This data module.
        """
        in_chans = backbone_in_chans(backbone) or self.in_chans
        image_mode(in_chans)
        self.in_chans = in_chans
        self._data_config = make_data_config(backbone, in_chans, self.image_size)
        return self

    def use_run_dir(self, run_dir: str | Path) -> bool:
        """Write the split file into a training run's folder, unless ``output_dir`` was given.

        `AutoTrainer.fit` calls this before setting the data up, so the split
        file lies with the checkpoints and logs of the run it was made for. A
        data module already set up keeps the split file it wrote.

        Args:
            run_dir: The run's folder.

        Returns:
            Whether the split file now goes to ``run_dir``.
        """
        if self._output_dir_chosen or self._tables is not None:
            return False
        self.output_dir = Path(run_dir)
        return True

    @classmethod
    def derived_from(
        cls: type[_DataModuleT],
        base: ImageDataModule,
        *,
        tables: dict[str, SampleTable] | None = None,
        augmentation: str | Callable | None = None,
        batch_size: int | None = None,
        image_size: int | tuple[int, int] | None = None,
        in_chans: int | None = None,
        data_config: dict[str, Any] | None = None,
    ) -> _DataModuleT:
        """A data module of this class with the data of the set-up ``base``, changed only where an argument is given.

        The copy shares ``base``'s decoded sample tables (nothing is read
        again), has no trainer and never writes a split file. ``base`` is left
        as it is.

        Args:
            base: A set-up data module.
            tables: Replacement splits, e.g. subsets or train+val; must hold ``"train"``.
            augmentation: A preset name or a transform, replacing the base's
                augmentation and custom training transform.
            batch_size: Images per batch.
            image_size: Input size (int or ``(H, W)``).
            in_chans: Channels fed to the backbone, 1 or 3.
            data_config: The preprocessing until the next `configure_for`, as
                `data_config` gives it; ``None`` keeps the base's, or timm's
                defaults when ``image_size`` or ``in_chans`` changes.

        Returns:
            The new data module.

        Raises:
            RuntimeError: ``base`` is not set up.
            ValueError: An argument out of range, or ``tables`` without ``"train"``.
        """
        base._require_setup()
        if tables is not None and "train" not in tables:
            raise ValueError(f"`tables` must hold a 'train' split, got {list(tables)}")
        if augmentation is not None:
            _check_augmentation_argument(augmentation)
        if batch_size is not None:
            require_number("batch_size", batch_size, 1, integer=True)
        if image_size is not None:
            check_image_size(image_size)
        if in_chans is not None:
            image_mode(in_chans)
        new = cls.__new__(cls)
        new.__dict__.update(base.__dict__)  # the same source, settings and decoded tables
        new.trainer = None
        new.output_dir = None  # the base wrote the split file; copies never rewrite it
        new._bad_images = {}  # its own marks: its tables may differ
        new._output_dir_chosen = True
        if tables is not None:
            new._tables = dict(tables)
        if augmentation is not None:
            new.augmentation, new._train_transform = augmentation, _custom_transform(None, augmentation)
        if batch_size is not None:
            new.batch_size = batch_size
        if image_size is not None or in_chans is not None:
            new.image_size = base.image_size if image_size is None else image_size
            new.in_chans = base.in_chans if in_chans is None else in_chans
            new._data_config = None
        if data_config is not None:
            new._data_config = dict(data_config)
        return new

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing as plain data: ``input_size``, ``mean``, ``std``, ``interpolation``, ``crop_pct``.

        From the backbone given to `configure_for`, or timm's defaults. Images held as arrays that are no
        larger than the input size get ``crop_pct=1.0`` (no centre crop), once the data is set up.
        """
        config = (
            make_data_config(None, self.in_chans, self.image_size)
            if self._data_config is None
            else dict(self._data_config)
        )
        # Small in-memory images (MNIST, CIFAR) are not centre-cropped: a 0.875 crop cuts the edges off 28-px
        # digits (Fashion-MNIST test accuracy 89.9% with it, 93.4% without).
        array = self._tables["train"].array if self._tables is not None else None
        if (
            array is not None
            and array.shape[1] <= config["input_size"][1]
            and array.shape[2] <= config["input_size"][2]
        ):
            config["crop_pct"] = 1.0
        return config

    @property
    def train_transform(self) -> Callable:
        """The training transform: the custom one, or the augmentation preset for `data_config`."""
        if self._train_transform is not None:
            return self._train_transform
        return build_train_transform(self.augmentation, self.data_config)

    @property
    def custom_train_transform(self) -> Callable | None:
        """The training transform given as ``train_transform`` or ``augmentation``; ``None`` with a preset."""
        return self._train_transform

    @property
    def eval_transform(self) -> Callable:
        """The validation/test/prediction transform: the custom one, or timm's evaluation transform."""
        if self._eval_transform is not None:
            return self._eval_transform
        return build_eval_transform(self.data_config)

    # ------------------------------------------------------------------ setup
    def _read_source(self) -> SourceData:
        args = self._source_args
        if self.source == "data_dir":
            return read_folder(args["data_dir"])
        if self.source == "train_csv":
            return read_csv_files(**{k: args[k] for k in _CSV_ARGUMENTS}, multi_label=args["multi_label"])
        if self.source == "images":
            return read_arrays(args["images"], args["labels"], args["class_names"])
        if self.source == "hf_dataset":
            splits = open_hf_dataset(args["hf_dataset"], args["split"], args["streaming"])
            read = read_hf_stream if args["streaming"] else read_hf_dataset
            columns = {k: args[k] for k in ("image_column", "label_column", "class_names")}
            return read(splits, **columns, description=hf_description(args["hf_dataset"]))
        return read_builtin(args["dataset"], args["dataset_root"])

    def setup(self, stage: str | None = None) -> None:
        """Read the source, check the files, and split (once; later calls do nothing).

        Args:
            stage: Lightning's stage; every stage sets up all splits.

        Raises:
            FileNotFoundError: A missing folder, CSV or image file.
            ValueError: Empty or unreadable data, unknown labels in val/test,
                fewer than two classes, or a fraction leaving a split empty.
        """
        if self._tables is not None:
            return
        if self.source == "shards":  # written split by split by `autotimm shard`: nothing to list, check or carve
            self._tables, record = open_shards(self._source_args["shards"], self.storage_options)
            self._class_names = [str(name) for name in record["class_names"]]
            self._multi_label = bool(record.get("multi_label", False))
            return
        # Checked on rank 0 only, the result shared through `output_dir` (see autotimm.data.checked).
        source = check_source_once(self._read_source(), self.skip_bad_images, self.check_images, self.output_dir)
        if len(source.class_names) < 2 and not source.multi_label:
            raise ValueError(f"A classifier needs at least 2 classes; {source.description} has {source.class_names}")
        if isinstance(source.splits["train"], HFStreamTable):  # streamed: the splits as given, nothing carved
            self._tables = dict(source.splits)
        else:
            self._tables = resolve_splits(source, self.val_split, self.test_split, self.seed, self.output_dir)
        self._class_names = list(source.class_names)
        self._multi_label = source.multi_label

    def _require_setup(self) -> dict[str, SampleTable]:
        if self._tables is None:
            raise RuntimeError("ImageDataModule is not set up yet: call setup() first")
        return self._tables

    # ------------------------------------------------------------------ what setup found
    @property
    def num_classes(self) -> int:
        """Number of classes (after `setup`)."""
        self._require_setup()
        return len(self._class_names)

    @property
    def class_names(self) -> list[str]:
        """Class names in label order, fixed by the training data (after `setup`)."""
        self._require_setup()
        return list(self._class_names)

    @property
    def multi_label(self) -> bool:
        """Whether targets are multi-hot label sets (after `setup`)."""
        self._require_setup()
        return self._multi_label

    @property
    def splits(self) -> list[str]:
        """The splits there are, among ``"train"``, ``"val"``, ``"test"`` (after `setup`)."""
        return list(self._require_setup())

    @property
    def tables(self) -> dict[str, SampleTable]:
        """The sample table of each split, by split name (after `setup`).

        Raises:
            RuntimeError: The data module is not set up yet.
        """
        return dict(self._require_setup())

    @property
    def class_counts(self) -> dict[str, list[int]]:
        """Images per class in each split (for multi-label: images having the label), after `setup`."""
        tables = self._require_setup()
        return {s: self._split_counts(t).tolist() for s, t in tables.items()}

    def _split_counts(self, table: SampleTable) -> np.ndarray:
        if isinstance(table, ShardTable):  # counted when the shards were written
            return np.asarray(table.class_counts, dtype=np.int64)
        return class_counts(table.targets, self.num_classes, self._multi_label)

    @property
    def class_weights_tensor(self) -> torch.Tensor | None:
        """Per-class loss weights ``N / (C * count_c)`` of the training split with ``class_weights="balanced"``.

        ``None`` otherwise; a class without training images gets weight 0.
        """
        if self.class_weights is None:
            return None
        train = self._require_setup()["train"]
        return balanced_class_weights(self._split_counts(train), len(train))

    # ------------------------------------------------------------------ datasets and loaders
    def dataset(self, split: str, augment: bool | None = None) -> ImageDataset:
        """The dataset of a split: training augmentation for ``"train"``, evaluation transform otherwise.

        In-memory images at the input size load a batch at a time with tensor ops
        ([`ArrayBatchDataset`][autotimm.data.array_batches.ArrayBatchDataset]) under
        the evaluation transform and the ``"none"`` and ``"crop_flip"`` presets.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            augment: Use the training transform (``True``) or the evaluation
                transform (``False``); ``None`` decides by the split.

        Raises:
            ValueError: The split does not exist.
        """
        tables = self._require_setup()
        if split not in tables:
            raise ValueError(
                f"`split` {split!r} does not exist; this data has {list(tables)}. Validation and test splits come "
                "from val/ and test/ folders, val_csv/test_csv, or val_split/test_split > 0."
            )
        augment = split == "train" if augment is None else augment
        custom = self._train_transform if augment else self._eval_transform
        config = self.data_config
        preset = resolve_augmentation(self.augmentation, config) if augment and custom is None else "none"
        if (
            custom is None
            and preset in BATCHED_AUGMENTATIONS
            and supports_batched_arrays(tables[split], config, self.in_chans)
        ):
            return ArrayBatchDataset(
                tables[split], self.num_classes, config, self.in_chans, self._multi_label, preset == "crop_flip"
            )
        transform = self.train_transform if augment else self.eval_transform
        if isinstance(tables[split], ShardTable):  # a LitData StreamingDataset, shuffled for training
            decoder = ShardDecoder(transform, self.in_chans, self.num_classes, self._multi_label)
            return tables[split].streaming_dataset(decoder, shuffle=split == "train" and augment, seed=self.seed)
        if isinstance(tables[split], HFStreamTable):
            rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
            # Training: every rank the same number of batches, or DDP hangs at the epoch's end.
            equal = split == "train" and augment
            return tables[split].dataset(
                transform, self.in_chans, augment, self.seed, self.shuffle_buffer, rank, world_size, equal
            )
        draft = self.draft_decode and custom is None
        return ImageDataset(
            tables[split],
            len(self._class_names),
            transform,
            self.in_chans,
            self._multi_label,
            draft_size=eval_draft_size(config) if draft and preset in ("none", "crop_flip") else None,
            crop_draft=draft and augment,
            bad_images=self._bad_image_tracker(split, tables[split]),
        )

    # ------------------------------------------------------------------ files that fail to decode
    def _bad_image_tracker(self, split: str, table: SampleTable) -> BadImageTracker | None:
        """The tracker of a file table's bad images, made once per split and table (in the main process)."""
        if table.array is not None or table.root is None:
            return None
        tracker = self._bad_images.get(split)
        if tracker is None or tracker.size != len(table) or tracker.paths.__self__ is not table:
            tracker = BadImageTracker(split, table.path, len(table), self.max_bad_fraction)
            self._bad_images[split] = tracker
        self._attach_bad_image_monitor()
        return tracker

    @property
    def bad_image_trackers(self) -> dict[str, BadImageTracker]:
        """The [`BadImageTracker`][autotimm.data.bad_images.BadImageTracker] of each split whose loader was made."""
        return dict(self._bad_images)

    def _attach_bad_image_monitor(self) -> None:
        """Add a [`BadImageMonitor`][autotimm.data.bad_images.BadImageMonitor] to the trainer, once."""
        trainer = getattr(self, "trainer", None)
        if trainer is None or any(isinstance(c, BadImageMonitor) and c.datamodule is self for c in trainer.callbacks):
            return
        trainer.callbacks.append(BadImageMonitor(self))

    @property
    def loader_workers(self) -> int:
        """Worker processes of every loader: `num_workers`, or by default 0 for arrays and `default_num_workers()`.

        Raises:
            RuntimeError: ``num_workers`` is ``None`` and the data module is not set up yet.
        """
        if self.num_workers is not None:
            return self.num_workers
        return 0 if self._require_setup()["train"].array is not None else default_num_workers()

    def _loader(self, dataset: ImageDataset, batch_size: int | None = None, **kwargs: Any) -> DataLoader:
        if is_streaming_dataset(dataset):  # shards: LitData's stateful loader
            return streaming_loader(dataset, batch_size or self.batch_size, self.loader_workers, **kwargs)
        return make_loader(dataset, batch_size or self.batch_size, self.loader_workers, **kwargs)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; with ``balanced_sampling`` drawn by a `WeightedRandomSampler`.

        The last incomplete batch is dropped when there is more than one batch
        (a batch of one breaks BatchNorm).
        """
        dataset = self.dataset("train")
        if is_streaming_dataset(dataset):  # shards: shuffled by LitData, its position saved in checkpoints
            loader = self._loader(dataset, drop_last=len(dataset) > self.batch_size)
            if self._streaming_state is not None:
                loader.load_state_dict(self._streaming_state)
                self._streaming_state = None
            self._streaming_loader = loader
            return loader
        if isinstance(dataset, HFStreamDataset):  # shuffled by the dataset itself, with a buffer
            rows = self._require_setup()["train"].num_rows
            return self._loader(dataset, drop_last=rows is None or rows > self.batch_size)
        drop_last = len(dataset) > self.batch_size
        if not self.balanced_sampling:  # an order that a run resumed inside an epoch can continue
            sampler = ResumableSampler(dataset, batch_size=self.batch_size)
            return self._loader(dataset, sampler=sampler, drop_last=drop_last, loader_class=ResumableDataLoader)
        # Weights of the training split only: the sampler's indices are indices into the training dataset.
        sampler = WeightedRandomSampler(
            sample_weights(self._require_setup()["train"].targets, self.num_classes, self._multi_label),
            num_samples=len(dataset),
            replacement=True,
            generator=torch.Generator().manual_seed(self.seed),
        )
        return self._loader(dataset, sampler=sampler, drop_last=drop_last)

    def eval_dataloader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """Batches of any split with the evaluation transform, in a fixed order (e.g. to compute features).

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            batch_size: Images per batch; default: the data module's ``batch_size``.

        Raises:
            ValueError: The split does not exist, or ``batch_size`` is not a positive integer.
        """
        if batch_size is not None:
            require_number("batch_size", batch_size, 1, integer=True)
        return self._loader(self.dataset(split, augment=False), batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Validation batches in a fixed order; an empty list when there is no validation split."""
        if "val" not in self._require_setup():
            return []
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        """Test batches in a fixed order.

        Raises:
            ValueError: There is no test split.
        """
        return self._loader(self.dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """Batches of the test split, or of the validation split without one, in a fixed order."""
        tables = self._require_setup()
        return self._loader(self.dataset("test" if "test" in tables else "val"))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """With ``shards``: the training ``StreamingDataLoader``'s position, saved in checkpoints by Lightning.

        So a run resumed from a checkpoint written in the middle of an epoch
        continues that epoch with the samples it had not seen yet. Other sources
        have nothing here (their loader is stateful itself).
        """
        if self._streaming_loader is not None:
            return {"streaming_loader": self._streaming_loader.state_dict()}
        if self._streaming_state is not None:  # restored, not trained yet: keep it for the next checkpoint
            return {"streaming_loader": self._streaming_state}
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take back a position saved by `state_dict`: the next training loader starts there."""
        state = state_dict.get("streaming_loader") if isinstance(state_dict, dict) else None
        if state is None:
            return
        if self._streaming_loader is not None:
            self._streaming_loader.load_state_dict(state)
        else:
            self._streaming_state = state
