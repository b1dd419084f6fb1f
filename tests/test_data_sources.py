"""Source readers, image decoding, stratified splits and the split file."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import numpy as np
import pytest
from data_helpers import write_class_folders, write_csv, write_image
from PIL import Image

from autotimm.data import (
    IMAGE_EXTENSIONS,
    SPLIT_FILE_NAME,
    check_images,
    load_image,
    read_arrays,
    read_builtin,
    read_csv_files,
    read_folder,
    resolve_splits,
    stratified_split,
)
from autotimm.data.builtin import BuiltinSplit


# ---------------------------------------------------------------- folders
def test_folder_pool_reads_classes_in_sorted_order(tmp_path):
    write_class_folders(tmp_path, {"dog": 3, "cat": 2, "bird": 4})
    (tmp_path / "notes.txt").write_text("not an image")
    source = read_folder(tmp_path)
    assert source.class_names == ["bird", "cat", "dog"]
    assert list(source.splits) == ["train"]
    train = source.splits["train"]
    assert Counter(train.targets) == {0: 4, 1: 2, 2: 3}
    assert all(train.path(i).is_file() for i in range(len(train)))
    assert train.items[0] == "bird/0.png"  # identifiers are paths relative to the root


def test_folder_with_split_folders_uses_them_as_given(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 3, "b": 3})
    write_class_folders(tmp_path / "val", {"a": 1, "b": 2}, seed=1)
    write_class_folders(tmp_path / "test", {"b": 1}, seed=2)
    source = read_folder(tmp_path)
    assert source.class_names == ["a", "b"]
    assert {s: len(t) for s, t in source.splits.items()} == {"train": 6, "val": 3, "test": 1}
    assert source.splits["test"].targets == [1]  # "b" keeps the training index, never renumbered
    assert source.splits["val"].items[0] == "val/a/0.png"


def test_folder_val_class_unknown_to_training_is_an_error(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 2, "b": 2})
    write_class_folders(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(ValueError, match=r"not in the training data: \['zebra'\].*\['a', 'b'\]"):
        read_folder(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`data_dir` .*missing.* does not exist"):
        read_folder(tmp_path / "missing")
    write_class_folders(tmp_path / "one", {"a": 2})
    (tmp_path / "one" / "empty").mkdir()
    with pytest.raises(ValueError, match=r"Class folder .*empty.* has no images; supported types: .*\.png"):
        read_folder(tmp_path / "one")
    (tmp_path / "texts" / "a").mkdir(parents=True)
    (tmp_path / "texts" / "a" / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"texts' has no images in its 1 class folder.*types: .bmp, .jpeg, .jpg"):
        read_folder(tmp_path / "texts")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match=r"no class folders and no images.*\.webp"):
        read_folder(tmp_path / "nothing")
    write_image(tmp_path / "loose" / "x.png")
    with pytest.raises(ValueError, match=r"holds 1 images but no class folders"):
        read_folder(tmp_path / "loose")


def test_folder_skips_hidden_folders_inside_class_folders(tmp_path):
    write_class_folders(tmp_path, {"a": 2, "b": 2})
    write_image(tmp_path / "a" / ".ipynb_checkpoints" / "0-checkpoint.png")  # a notebook's copy
    write_image(tmp_path / "a" / "nested" / "deep.PNG")  # nested folders and upper-case suffixes count
    items = read_folder(tmp_path).splits["train"].items
    assert items == ["a/0.png", "a/1.png", "a/nested/deep.PNG", "b/0.png", "b/1.png"]


def test_numeric_class_folders_sort_numerically_like_csv_labels(tmp_path):
    write_class_folders(tmp_path, {"10": 1, "2": 1, "1": 1})
    source = read_folder(tmp_path)
    assert source.class_names == ["1", "2", "10"]
    assert source.splits["train"].items == ["1/0.png", "2/0.png", "10/0.png"]
    assert source.splits["train"].targets == [0, 1, 2]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "RGB"])
@pytest.mark.parametrize(("in_chans", "expected"), [(1, "L"), (3, "RGB")])
def test_images_are_converted_to_the_backbone_channels(tmp_path, mode, in_chans, expected):
    write_class_folders(tmp_path, {"a": 1, "b": 1}, mode=mode)
    table = read_folder(tmp_path).splits["train"]
    image = table.load(0, in_chans)
    assert image.mode == expected
    assert np.asarray(image).shape == ((12, 12) if in_chans == 1 else (12, 12, 3))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_high_bit_depth_images_are_scaled_to_8_bits_not_clipped(tmp_path, mode):
    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    pixels = (ramp if mode == "F" else ramp * 65535).astype(dtype)
    path = tmp_path / ("x.png" if mode == "I;16" else "x.tif")
    Image.fromarray(pixels).save(path)
    for in_chans in (1, 3):
        decoded = np.asarray(load_image(path, in_chans), dtype=np.float64)
        assert decoded.min() == 0 and decoded.max() == 255
        assert abs(decoded.mean() - 127.5) < 2  # a 16-bit ramp stays a ramp, not a white image


def test_check_images_names_the_bad_file_or_skips_with_one_warning(tmp_path):
    good = [write_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    paths = [good[0], truncated, good[1], garbage, good[2]]
    with pytest.raises(ValueError, match=r"Cannot read image file .*truncated\.png.*\(1 more bad files\).*skip_bad"):
        check_images(paths, skip_bad_images=False)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        check_images([tmp_path / "missing.png"], skip_bad_images=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = check_images(paths, skip_bad_images=True)
    assert kept == [0, 2, 4]
    assert len(caught) == 1 and "Skipped 2 unreadable image file(s) of 5" in str(caught[0].message)


def test_supported_extensions_come_from_torchvision():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp"} <= set(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- CSV
def test_csv_single_label(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    rows = [("0.png", "10"), ("1.png", "2"), ("2.png", "2"), ("3.png", "10")]
    train = write_csv(tmp_path / "train.csv", rows)
    val = write_csv(tmp_path / "val.csv", [("3.png", "2")])
    source = read_csv_files(train, val_csv=val, image_dir=tmp_path / "img")
    assert source.class_names == ["2", "10"]  # integer labels sort numerically
    assert not source.multi_label
    assert source.splits["train"].targets == [1, 0, 0, 1]
    assert source.splits["val"].targets == [0]
    assert source.splits["train"].path(0) == tmp_path / "img" / "0.png"


def test_csv_multi_label_gives_label_sets(tmp_path):
    rows = [("a.png", "cat;dog"), ("b.png", "dog"), ("c.png", ""), ("d.png", "bird; cat")]
    source = read_csv_files(
        write_csv(tmp_path / "t.csv", rows, header=("file", "tags")), image_column="file", label_column="tags"
    )
    assert source.multi_label
    assert source.class_names == ["bird", "cat", "dog"]
    assert source.splits["train"].targets == [[1, 2], [2], [], [0, 1]]
    assert source.splits["train"].root == tmp_path  # default: paths relative to the CSV's folder


def test_csv_errors(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("a.png", "x"), ("b.png", "y")])
    with pytest.raises(
        ValueError, match=r"has no column 'path' \(`image_column`\); its columns are \['image', 'label'\]"
    ):
        read_csv_files(train, image_column="path")
    with pytest.raises(ValueError, match=r"no column 'class' \(`label_column`\)"):
        read_csv_files(train, label_column="class")
    with pytest.raises(FileNotFoundError, match=r"`val_csv` .*nope\.csv"):
        read_csv_files(train, val_csv=tmp_path / "nope.csv")
    val = write_csv(tmp_path / "val.csv", [("c.png", "x"), ("d.png", "w")])
    with pytest.raises(ValueError, match=r"`val_csv` .* not in the training data: \['w'\]"):
        read_csv_files(train, val_csv=val)
    dup = write_csv(tmp_path / "dup.csv", [("a.png", "x"), ("a.png", "y")])
    with pytest.raises(ValueError, match=r"lists 1 image\(s\) more than once"):
        read_csv_files(dup)


def test_csv_windows_paths_and_unusual_labels(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    write_image(tmp_path / "img" / "b.png")
    train = write_csv(tmp_path / "train.csv", [("img\\a.png", "\u00b2"), ("img\\b.png", "2")])
    source = read_csv_files(train)  # "²" is a digit to str.isdigit but no integer: sorted as text
    assert source.splits["train"].items == ["img/a.png", "img/b.png"]
    assert source.splits["train"].path(0).is_file()
    assert source.class_names == ["2", "\u00b2"]


# ---------------------------------------------------------------- arrays and built-in
@pytest.mark.parametrize(
    ("shape", "dtype", "scale"), [((6, 5, 5), np.uint8, 255), ((6, 5, 5, 3), np.float32, 1.0), ((6, 5, 5, 1), float, 1)]
)
def test_arrays_become_uint8_images_with_the_right_channels(shape, dtype, scale):
    rng = np.random.default_rng(0)
    images = (rng.random(shape) * scale).astype(dtype)
    source = read_arrays(images, [0, 1, 2, 0, 1, 2], class_names=["x", "y", "z"])
    table = source.splits["train"]
    assert table.array.dtype == np.uint8 and table.items == list(range(6))
    assert source.class_names == ["x", "y", "z"]
    assert table.load(0, 3).mode == "RGB" and table.load(0, 1).mode == "L"
    grey = np.asarray(table.load(1, 3))
    if len(shape) == 3:  # grayscale repeated to three channels
        assert (grey[..., 0] == grey[..., 2]).all() and (grey[..., 0] == images[1]).all()


def test_array_errors():
    with pytest.raises(ValueError, match=r"`images` must be .* got shape \(2, 3, 4, 5, 6\)"):
        read_arrays(np.zeros((2, 3, 4, 5, 6)), [0, 1])
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        read_arrays(np.zeros((2, 4, 4)), [0, 1, 1])
    with pytest.raises(ValueError, match=r"`class_names` has 1 names, but the labels go up to 1"):
        read_arrays(np.zeros((2, 4, 4)), [0, 1], class_names=["a"])
    with pytest.raises(ValueError, match="class indices >= 0"):
        read_arrays(np.zeros((2, 4, 4)), [0, -1])


def test_array_labels_of_shape_n_by_1_are_class_indices():
    source = read_arrays(np.zeros((4, 4, 4), np.uint8), np.array([[0], [1], [1], [0]]))  # as Keras gives them
    assert not source.multi_label
    assert source.class_names == ["0", "1"]
    assert source.splits["train"].targets == [0, 1, 1, 0]


def test_builtin_source_delegates_to_load_builtin_dataset(monkeypatch):
    calls = []

    def fake(name, root=None, download=None):
        calls.append((name, root))
        split = BuiltinSplit(np.zeros((4, 6, 6), np.uint8), np.array([0, 1, 0, 1]), ["no", "yes"])
        return {"train": split, "test": split}

    monkeypatch.setattr("autotimm.data.builtin.load_builtin_dataset", fake)
    source = read_builtin("fake", root="somewhere")
    assert calls == [("fake", "somewhere")]
    assert source.class_names == ["no", "yes"] and set(source.splits) == {"train", "test"}


def test_builtin_digits_loads_for_real():
    pytest.importorskip("sklearn")
    source = read_builtin("digits")
    assert source.class_names == [str(i) for i in range(10)]
    assert len(source.splits["train"]) == 1797


# ---------------------------------------------------------------- splits
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_stratified_split_is_within_one_per_class_disjoint_and_reproducible(seed):
    counts = {0: 37, 1: 11, 2: 5, 3: 2, 4: 1}
    groups = [g for g, n in counts.items() for _ in range(n)]
    fractions = {"test": 0.1, "val": 0.2}
    parts = stratified_split(groups, fractions, seed)
    assert parts == stratified_split(groups, fractions, seed)
    assert sorted(i for p in parts.values() for i in p) == list(range(len(groups)))  # disjoint and complete
    for split, fraction in fractions.items():
        per_class = Counter(groups[i] for i in parts[split])
        for g, n in counts.items():
            assert abs(per_class[g] - n * fraction) <= 1, (split, g)
        assert len(parts[split]) == round(len(groups) * fraction)
    assert set(Counter(groups[i] for i in parts["train"])) == set(counts)  # every class keeps a training image
    assert stratified_split(groups, fractions, seed + 100) != parts


def test_split_file_is_written_and_reused(tmp_path):
    source = read_arrays(np.zeros((20, 4, 4), np.uint8), [0] * 10 + [1] * 10)
    tables = resolve_splits(source, 0.2, 0.1, seed=3, output_dir=tmp_path)
    record = json.loads((tmp_path / SPLIT_FILE_NAME).read_text())
    assert record["splits"]["val"] == tables["val"].items and len(tables["val"]) == 4
    assert record["splits"]["test"] == tables["test"].items and len(tables["test"]) == 2
    # A later run reads the file: edit it and the edit is used.
    record["splits"]["val"], record["splits"]["train"] = (
        record["splits"]["train"][:4],
        (record["splits"]["train"][4:] + record["splits"]["val"]),
    )
    (tmp_path / SPLIT_FILE_NAME).write_text(json.dumps(record))
    again = resolve_splits(source, 0.2, 0.1, seed=3, output_dir=tmp_path)
    assert again["val"].items == record["splits"]["val"]
    # Other data (or settings) make a new split, with a warning.
    other = read_arrays(np.ones((20, 4, 4), np.uint8), [0] * 10 + [1] * 10)
    with pytest.warns(UserWarning, match="made for other data or split settings"):
        fresh = resolve_splits(other, 0.2, 0.1, seed=3, output_dir=tmp_path)
    assert fresh["val"].items == tables["val"].items


def test_malformed_or_unwritable_split_file(tmp_path):
    source = read_arrays(np.zeros((10, 4, 4), np.uint8), [0] * 5 + [1] * 5)
    (tmp_path / SPLIT_FILE_NAME).write_text("[1, 2]")  # valid JSON, but no split record
    with pytest.warns(UserWarning, match="Ignoring unreadable split file"):
        tables = resolve_splits(source, 0.2, 0.0, seed=0, output_dir=tmp_path)
    assert len(tables["val"]) == 2
    assert json.loads((tmp_path / SPLIT_FILE_NAME).read_text())["splits"]["val"] == tables["val"].items
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(OSError, match=r"Cannot write the split file .*file.*output_dir=None"):
        resolve_splits(source, 0.2, 0.0, seed=0, output_dir=not_a_folder)


def test_carved_split_that_would_be_empty_is_an_error():
    source = read_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 2])
    with pytest.raises(ValueError, match=r"`val_split`=0.2 leaves the val split empty"):
        resolve_splits(source, 0.2, 0.0, seed=0, output_dir=None)
