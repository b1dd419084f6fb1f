"""Labelled images for evaluation and calibration: a data module split, a class-folder tree or arrays.

Everything becomes one list of [`ImageSource`][autotimm.prediction.inputs.ImageSource]
(what ``model.predict_logits`` takes) and one array of class indices in the
*model's* class order: the data's class names are matched to the model's by
name, never by position.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autotimm.prediction.inputs import ImageSource, collect_inputs, is_tensor

__all__ = [
    "check_single_label",
    "is_multi_label",
    "map_class_names",
    "resolve_labelled_data",
    "resolve_multi_label_data",
]

_ACCEPTED = (
    "an ImageDataModule, a folder of class folders (<folder>/<class name>/<image>), "
    "or an (images, labels) pair of a (N, H, W[, C]) numpy array or (N, C, H, W) tensor and (N,) class indices"
)


def is_multi_label(model: Any) -> bool:
    """Whether ``model`` is multi-label: ``model.hparams.multi_label`` or ``model.multi_label``."""
    hparams = getattr(model, "hparams", None)
    if hparams is not None and "multi_label" in hparams:
        return bool(hparams["multi_label"])
    return bool(getattr(model, "multi_label", False))


def check_single_label(model: Any, what: str) -> None:
    """Raise for a multi-label model, where only single-label ones are supported (calibration: temperature scaling).

    Raises:
        ValueError: ``model`` is multi-label.
    """
    if is_multi_label(model):
        raise ValueError(
            f"{what} supports single-label models only for now; this model was built with multi_label=True "
            "(per-class sigmoid outputs). `evaluate` reports multi-label metrics (precision, recall, F1, mAP)."
        )


def map_class_names(data_names: Sequence[str], model_names: Sequence[str], what: str) -> np.ndarray:
    """Map the data's class indices to the model's by class name.

    Args:
        data_names: The data's class names, in the data's label order.
        model_names: The model's class names, in its output order.
        what: How the data is named in the error message.

    Returns:
        ``mapping`` with ``mapping[data_index] == model_index``.

    Raises:
        ValueError: The data has class names the model does not know.

    Example:
        >>> map_class_names(["dog", "cat"], ["cat", "dog", "emu"], "data").tolist()
        [1, 0]
    """
    model_index = {str(name): i for i, name in enumerate(model_names)}
    unknown = [str(n) for n in data_names if str(n) not in model_index]
    if unknown:
        raise ValueError(
            f"{what} has classes the model does not know: {unknown}. The model's classes are {list(model_names)}; "
            "class names must match the model's by name (their order may differ)."
        )
    return np.asarray([model_index[str(n)] for n in data_names], dtype=np.int64)


@dataclass(frozen=True)
class _TableRow(ImageSource):
    """A sample of a table that holds neither files nor arrays (a Hugging Face dataset), decoded by the table."""

    table: Any = None
    index: int = 0

    def load(self, in_chans: int = 3, draft_size: tuple[int, int] | None = None) -> Any:
        """Decode the sample through its table (a JPEG reduced to no less than ``draft_size``)."""
        return self.table.load(self.index, in_chans, draft_size=draft_size)


def _table_sources(table: Any) -> list[ImageSource]:
    """Image sources of a ``SampleTable``: files are read when predicted on, array rows become images."""
    if table.array is not None:
        rows = np.ascontiguousarray(table.array[np.asarray(table.items, dtype=np.int64)])
        return collect_inputs(rows[..., None] if rows.ndim == 3 else rows)  # (N, H, W) grayscale -> (N, H, W, 1)
    if table.root is None:  # rows of a dataset store, decoded when predicted on
        return [_TableRow(f"row {table.items[i]}", table=table, index=i) for i in range(len(table))]
    return [ImageSource(str(table.path(i)), table.path(i)) for i in range(len(table))]


def _pick_split(tables: dict[str, Any], split: str, what: str) -> Any:
    if split not in tables:
        raise ValueError(
            f"`split` {split!r} does not exist in {what}; it has the splits {list(tables)}. "
            "Pass one of those as `split`."
        )
    table = tables[split]
    if len(table) == 0:
        raise ValueError(f"The {split!r} split of {what} has no images")
    return table


def _from_table(table: Any, data_names: Sequence[str], model_names: Sequence[str], what: str) -> tuple:
    mapping = map_class_names(data_names, model_names, what)
    targets = np.asarray(table.targets, dtype=np.int64)
    return _table_sources(table), mapping[targets]


def _from_datamodule(data: Any, model_names: Sequence[str], split: str) -> tuple[list[ImageSource], np.ndarray]:
    data.setup()  # runs once; later calls do nothing
    if data.multi_label:
        raise ValueError(
            "`data` is multi-label and the model is single-label: evaluate and calibrate it on single-label data"
        )
    table = _pick_split(data.tables, split, "the ImageDataModule")
    return _from_table(table, data.class_names, model_names, "The ImageDataModule")


def _from_folder(folder: Path, model_names: Sequence[str], split: str) -> tuple[list[ImageSource], np.ndarray]:
    from autotimm.data.sources import read_folder

    if not folder.is_dir():
        raise FileNotFoundError(f"`data` folder {str(folder)!r} does not exist or is not a folder; pass {_ACCEPTED}")
    source = read_folder(folder)
    what = f"Folder {str(folder)!r}"
    # A plain class-folder tree is one pool, used whatever the split; train/val/test trees give the split.
    if (folder / "train").is_dir():
        table = _pick_split(source.splits, split, f"folder {str(folder)!r}")
    else:
        table = source.splits["train"]
    return _from_table(table, source.class_names, model_names, what)


def _from_arrays(images: Any, labels: Any, class_names: Sequence[str]) -> tuple[list[ImageSource], np.ndarray]:
    num_classes = len(class_names)
    if is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.dtype.kind in "USO":  # class names: map them to the model's indices
        index = {name: i for i, name in enumerate(class_names)}
        unknown = sorted({str(v) for v in array.ravel()} - set(index))
        if unknown:
            raise ValueError(
                f"`labels` has class names the model does not know: {unknown[:10]}; "
                f"the model's classes are {list(class_names)}"
            )
        array = np.array([index[str(v)] for v in array.ravel()], dtype=np.int64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or np.all(np.mod(array, 1) == 0)):
        raise ValueError(
            f"`labels` must be (N,) integer class indices (single-label), got shape {array.shape} "
            f"and dtype {array.dtype}"
        )
    array = array.astype(np.int64)
    if len(array) and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"`labels` must be class indices of the model, in [0, {num_classes - 1}], "
            f"got values in [{array.min()}, {array.max()}]"
        )
    if (isinstance(images, np.ndarray) or is_tensor(images)) and images.ndim == 3:
        # A batch of grayscale images: (N, H, W) -> (N, H, W, 1) arrays, (N, 1, H, W) tensors.
        images = images[:, None] if is_tensor(images) else images[..., None]
    sources = collect_inputs(images)
    if len(sources) != len(array):
        raise ValueError(f"`data` has {len(sources)} images but {len(array)} labels; they must be the same length")
    return sources, array


def resolve_labelled_data(
    data: Any, class_names: Sequence[str], split: str = "test"
) -> tuple[list[ImageSource], np.ndarray]:
    """Turn labelled data into image sources and class indices in the model's class order.

    Args:
        data: One of:

            - an [`ImageDataModule`][autotimm.data.ImageDataModule] (set up
              here if needed): the images of ``split``;
            - a folder in class-folder layout, ``<folder>/<class name>/<image>``
              (used whole), or with ``train/``, ``val/``, ``test/`` sub-folders
              (``split`` picks one);
            - an ``(images, labels)`` pair: ``(N, H, W)`` / ``(N, H, W, C)``
              uint8 (or float ``[0, 1]``) numpy images or an ``(N, C, H, W)``
              tensor (or anything ``collect_inputs`` accepts that gives ``N``
              images), and ``(N,)`` integer labels that are already the
              model's class indices.
        class_names: The model's class names, in its output order.
        split: ``"train"``, ``"val"`` or ``"test"``, for data modules and split folders.

    Returns:
        ``(sources, labels)``: one source per image and ``(N,)`` int64 class
        indices into ``class_names``.

    Raises:
        ValueError: A missing split (the message lists the splits), a class
            the model does not know (the message lists the model's classes),
            images and labels of different lengths, labels out of range, or
            multi-label data.
        FileNotFoundError: The folder does not exist.
        TypeError: ``data`` of another type.

    Example:
        >>> import numpy as np
        >>> images, labels = np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 0])
        >>> sources, y = resolve_labelled_data((images, labels), ["cat", "dog"])
        >>> len(sources), y.tolist()
        (2, [1, 0])
    """
    from autotimm.data.datamodule import ImageDataModule

    names = [str(n) for n in class_names]
    if isinstance(data, ImageDataModule):
        return _from_datamodule(data, names, split)
    if isinstance(data, (str, os.PathLike)):
        return _from_folder(Path(data).expanduser(), names, split)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _from_arrays(data[0], data[1], names)
    raise TypeError(f"`data` must be {_ACCEPTED}; got {type(data).__name__}")


def resolve_multi_label_data(
    data: Any, class_names: Sequence[str], split: str = "test"
) -> tuple[list[ImageSource], np.ndarray]:
    """Turn multi-label data into image sources and ``(N, C)`` 0/1 targets in the model's class order.

    Args:
        data: A multi-label [`ImageDataModule`][autotimm.data.ImageDataModule] (a CSV file whose labels are
            sets), whose ``split`` is used, or an ``(images, targets)`` pair with ``(N, C)`` 0/1 targets
            already in the model's class order.
        class_names: The model's class names, in its output order.
        split: The data module's split.

    Returns:
        ``(sources, targets)``: one source per image and ``(N, C)`` int64 multi-hot targets.

    Raises:
        ValueError: Single-label data, a missing split, classes the model does not know, or targets of the
            wrong shape.
        TypeError: ``data`` of another type.

    Example:
        >>> images, targets = np.zeros((2, 8, 8, 3), np.uint8), np.array([[1, 0, 1], [0, 1, 0]])
        >>> sources, y = resolve_multi_label_data((images, targets), ["cat", "dog", "sofa"])
        >>> len(sources), y.sum(axis=1).tolist()
        (2, [2, 1])
    """
    from autotimm.data.datamodule import ImageDataModule

    names = [str(n) for n in class_names]
    if isinstance(data, ImageDataModule):
        data.setup()
        if not data.multi_label:
            raise ValueError(
                "`data` is single-label and the model is multi-label: evaluate it on multi-label data "
                "(a CSV file whose label column lists several labels per image)"
            )
        table = _pick_split(data.tables, split, "the ImageDataModule")
        mapping = map_class_names(data.class_names, names, "The ImageDataModule")
        targets = np.zeros((len(table), len(names)), dtype=np.int64)
        for row, labels in enumerate(table.targets):
            targets[row, mapping[np.asarray(labels, dtype=np.int64)]] = 1
        return _table_sources(table), targets
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, targets = data
        if is_tensor(targets):
            targets = targets.detach().cpu().numpy()
        array = np.asarray(targets)
        if array.ndim != 2 or array.shape[1] != len(names) or not np.isin(array, (0, 1)).all():
            raise ValueError(
                f"`targets` must be (N, {len(names)}) 0/1 multi-hot labels in the model's class order, "
                f"got shape {array.shape}"
            )
        sources = collect_inputs(images)
        if len(sources) != len(array):
            raise ValueError(f"`data` has {len(sources)} images but {len(array)} targets; they must be the same length")
        return sources, array.astype(np.int64)
    raise TypeError(
        "`data` must be a multi-label ImageDataModule or an (images, targets) pair with (N, C) 0/1 targets; "
        f"got {type(data).__name__}"
    )
