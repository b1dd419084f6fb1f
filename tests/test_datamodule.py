"""ImageDataModule: sources, splits, transforms, imbalance, loaders and errors."""

from __future__ import annotations

import json
import warnings
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from conftest import make_trainer
from data_helpers import write_class_folders, write_csv, write_image
from torch.utils.data import WeightedRandomSampler

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import (
    SPLIT_FILE_NAME,
    ImageDataModule,
    build_eval_transform,
    default_num_workers,
    list_augmentation_presets,
)

SIZE = 16


def arrays(counts=(12, 12, 12), shape=(10, 10), seed=0):
    """Grayscale uint8 images with labels ``0..len(counts)-1``, ``counts[c]`` of class ``c``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    return images, labels


def array_module(tmp_path, counts=(12, 12, 12), **kwargs):
    images, labels = arrays(counts)
    options = dict(output_dir=tmp_path / "out", image_size=SIZE, batch_size=8, num_workers=0, test_split=0.0)
    options.update(kwargs)
    return ImageDataModule(images=images, labels=labels, **options)


# ---------------------------------------------------------------- sources
def test_folder_source_counts_classes_and_channels(tmp_path):
    write_class_folders(tmp_path / "data", {"cat": 10, "dog": 5}, mode="L")
    dm = ImageDataModule(tmp_path / "data", output_dir=tmp_path / "out", image_size=SIZE, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 2 and dm.class_names == ["cat", "dog"] and not dm.multi_label
    # By default 20% validation and 10% test, as `autotimm train`: a held-out test split to evaluate on.
    assert dm.class_counts == {"train": [7, 3], "val": [2, 1], "test": [1, 1]}
    x, y = dm.dataset("train")[0]
    assert x.shape == (3, SIZE, SIZE) and y.dtype == torch.int64  # grayscale files become 3 channels
    assert (tmp_path / "out" / SPLIT_FILE_NAME).is_file()


def test_folder_split_folders_are_used_as_given(tmp_path):
    write_class_folders(tmp_path / "train", {"a": 4, "b": 4})
    write_class_folders(tmp_path / "val", {"a": 2, "b": 1}, seed=1)
    write_class_folders(tmp_path / "test", {"a": 1, "b": 1}, seed=2)
    dm = ImageDataModule(tmp_path, val_split=0.5, test_split=0.25, output_dir=None, image_size=SIZE, num_workers=0)
    dm.setup()
    assert dm.class_counts == {"train": [4, 4], "val": [2, 1], "test": [1, 1]}


def test_csv_source_single_and_multi_label(tmp_path):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", seed=i)
    train = write_csv(tmp_path / "train.csv", [(f"{i}.png", "ab"[i % 2]) for i in range(4)])
    test = write_csv(tmp_path / "test.csv", [("4.png", "a"), ("5.png", "b")])
    common = dict(
        image_dir=tmp_path / "img", val_split=0.0, test_split=0.0, output_dir=None, image_size=SIZE, num_workers=0
    )
    dm = ImageDataModule(train_csv=train, test_csv=test, **common)
    dm.setup()
    assert dm.class_names == ["a", "b"] and dm.class_counts == {"train": [2, 2], "test": [1, 1]}
    multi = write_csv(tmp_path / "multi.csv", [("0.png", "a;b"), ("1.png", "b"), ("2.png", "c;a"), ("3.png", "")])
    dm = ImageDataModule(train_csv=multi, **common)
    dm.setup()
    assert dm.multi_label and dm.class_names == ["a", "b", "c"]
    assert dm.class_counts["train"] == [2, 2, 1]
    _, target = dm.dataset("train")[0]
    assert target.dtype == torch.float32 and target.tolist() == [1.0, 1.0, 0.0]


def test_array_source_counts_and_in_chans(tmp_path):
    dm = array_module(tmp_path, counts=(10, 20), class_names=["no", "yes"], in_chans=1, val_split=0.1)
    dm.setup()
    assert dm.class_names == ["no", "yes"] and dm.class_counts == {"train": [9, 18], "val": [1, 2]}
    assert dm.dataset("val")[0][0].shape == (1, SIZE, SIZE)


def test_builtin_dataset_source(tmp_path, monkeypatch):
    from autotimm.data.builtin import BuiltinSplit

    def fake(name, root=None, download=None):
        images, labels = arrays((6, 6))
        return {
            "train": BuiltinSplit(images, labels, ["x", "y"]),
            "test": BuiltinSplit(images[:4], labels[:4], ["x", "y"]),
        }

    monkeypatch.setattr("autotimm.data.builtin.load_builtin_dataset", fake)
    dm = ImageDataModule(dataset="fake", output_dir=None, image_size=SIZE)
    dm.setup()
    assert dm.class_names == ["x", "y"] and dm.class_counts["test"] == [4, 0]


def test_builtin_digits(tmp_path):
    pytest.importorskip("sklearn")
    dm = ImageDataModule(dataset="digits", output_dir=None, image_size=8, batch_size=64)
    dm.setup()
    assert dm.num_classes == 10 and sum(dm.class_counts["val"]) == round(1797 * 0.2)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (64, 3, 8, 8) and y.max() < 10


def test_builtin_mnist5k_grayscale(tmp_path):
    dm = ImageDataModule(dataset="mnist5k", output_dir=tmp_path, image_size=28, in_chans=1, val_split=0.2)
    dm.setup()
    assert dm.class_names == [str(d) for d in range(10)]
    assert dm.class_counts["train"] == [350] * 10 and dm.class_counts["val"] == [100] * 10
    assert dm.class_counts["test"] == [50] * 10
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (32, 1, 28, 28) and set(y.tolist()) <= set(range(10))
    assert (tmp_path / "splits.json").is_file()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({}, "none"),
        ({"data_dir": "a", "dataset": "digits"}, r"\['data_dir', 'dataset'\]"),
        ({"train_csv": "t.csv", "images": np.zeros((2, 4, 4))}, r"\['train_csv', 'images'\]"),
    ],
)
def test_exactly_one_source(kwargs, named):
    with pytest.raises(ValueError, match=rf"exactly one data source: .*got {named}"):
        ImageDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": np.zeros((2, 4, 4))}, "`images` and `labels` must be given together"),
        ({"data_dir": "d", "val_csv": "v.csv"}, "`val_csv` needs `train_csv`"),
        ({"data_dir": "d", "val_split": 1.0}, r"`val_split` must be a number in \[0, 1\), got 1.0"),
        ({"data_dir": "d", "val_split": 0.6, "test_split": 0.4}, "must be < 1"),
        ({"data_dir": "d", "batch_size": 0}, "`batch_size` must be an int >= 1, got 0"),
        ({"data_dir": "d", "in_chans": 4}, r"`in_chans` must be one of \[1, 3\], got 4"),
        ({"data_dir": "d", "class_weights": "inverse"}, "`class_weights` must be 'balanced' or None, got 'inverse'"),
        ({"data_dir": "d", "image_size": 0}, "`image_size` must be a positive int"),
        ({"data_dir": "d", "augmentation": "strong"}, r"`augmentation` must be one of \['auto', 'none', .*'strong'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ImageDataModule(**kwargs)


# ---------------------------------------------------------------- errors found at setup
def test_setup_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"`data_dir` .*nowhere"):
        ImageDataModule(tmp_path / "nowhere").setup()
    write_class_folders(tmp_path / "one", {"a": 3})
    with pytest.raises(ValueError, match=r"at least 2 classes.*\['a'\]"):
        ImageDataModule(tmp_path / "one", output_dir=None).setup()
    write_class_folders(tmp_path / "two", {"a": 3, "b": 3})
    (tmp_path / "two" / "c").mkdir()
    with pytest.raises(ValueError, match=r"Class folder .*c' of `data_dir` has no images"):
        ImageDataModule(tmp_path / "two", output_dir=None).setup()
    train = write_csv(tmp_path / "t.csv", [("a.png", "x"), ("b.png", "y")])
    with pytest.raises(ValueError, match=r"no column 'label' \(`label_column`\).*\['image', 'class'\]"):
        ImageDataModule(train_csv=write_csv(tmp_path / "c.csv", [("a", "x")], header=("image", "class"))).setup()
    val = write_csv(tmp_path / "v.csv", [("c.png", "z")])
    with pytest.raises(ValueError, match=r"`val_csv` .* not in the training data: \['z'\]"):
        ImageDataModule(train_csv=train, val_csv=val, output_dir=None).setup()
    with pytest.raises(RuntimeError, match="call setup"):
        _ = ImageDataModule(train_csv=train).num_classes


def test_bad_image_raises_naming_it_or_is_skipped_with_one_warning(tmp_path):
    write_class_folders(tmp_path / "d", {"a": 5, "b": 5})
    (tmp_path / "d" / "a" / "0.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "d" / "b" / "3.png").write_bytes((tmp_path / "d" / "b" / "1.png").read_bytes()[:50])
    with pytest.raises(ValueError, match=r"Cannot read image file .*a/0\.png.*1 more bad files.*skip_bad_images"):
        ImageDataModule(tmp_path / "d", output_dir=None, check_images="full").setup()
    with pytest.raises(ValueError, match=r"Cannot read image file .*a/0\.png'.*skip_bad_images"):  # header: 1 file
        ImageDataModule(tmp_path / "d", output_dir=None).setup()
    dm = ImageDataModule(
        tmp_path / "d", output_dir=None, skip_bad_images=True, val_split=0.0, test_split=0.0, check_images="full"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup()
    messages = [str(w.message) for w in caught if "unreadable" in str(w.message)]
    assert len(messages) == 1 and "Skipped 2 unreadable image file(s) of 10" in messages[0]
    assert dm.class_counts == {"train": [4, 4]}


# ---------------------------------------------------------------- splits
def test_splits_are_stratified_disjoint_reproducible_and_reloaded(tmp_path):
    make = lambda **kw: array_module(tmp_path, counts=(30, 9, 4), val_split=0.2, test_split=0.1, **kw)  # noqa: E731
    dm = make()
    dm.setup()
    for split, fraction in (("val", 0.2), ("test", 0.1)):
        for count, expected in zip(dm.class_counts[split], (30, 9, 4), strict=True):
            assert abs(count - expected * fraction) <= 1
    items = {s: dm.dataset(s).table.items for s in dm.splits}
    assert not set(items["train"]) & set(items["val"]) and not set(items["val"]) & set(items["test"])
    assert sum(map(len, items.values())) == 43
    record = json.loads((tmp_path / "out" / SPLIT_FILE_NAME).read_text())
    assert record["splits"] == items and record["seed"] == 42
    again = make()
    again.setup()
    assert {s: again.dataset(s).table.items for s in again.splits} == items
    other_seed = make(seed=1, output_dir=None)
    other_seed.setup()
    assert other_seed.dataset("val").table.items != items["val"]


# ---------------------------------------------------------------- transforms
def test_val_and_test_get_the_eval_transform_never_augmentation(tmp_path):
    dm = array_module(tmp_path, val_split=0.25, test_split=0.25, augmentation="randaugment", output_dir=None)
    dm.setup()
    expected = build_eval_transform(dm.data_config)
    for split in ("val", "test"):
        dataset = dm.dataset(split)
        by_hand = expected(dataset.table.load(0, 3))
        assert torch.equal(dataset[0][0], by_hand) and torch.equal(dataset[0][0], dataset[0][0])
        batch = next(iter(getattr(dm, f"{split}_dataloader")()))[0]
        assert torch.equal(batch[0], by_hand)
    train = dm.dataset("train")
    assert any(not torch.equal(train[0][0], train[0][0]) for _ in range(5))  # augmented: random


def test_configure_for_takes_preprocessing_and_channels_from_the_backbone(tmp_path):
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1)
    dm = array_module(tmp_path, image_size=None).configure_for(backbone)
    assert dm.in_chans == 1
    config = dm.data_config
    assert config == json.loads(json.dumps(config))  # plain, JSON-serialisable
    assert config["input_size"] == [1, 224, 224] and config["crop_pct"] == backbone.pretrained_cfg["crop_pct"]
    assert config["interpolation"] == backbone.pretrained_cfg["interpolation"] and len(config["mean"]) == 1
    sized = array_module(tmp_path, image_size=(24, 20)).configure_for(backbone)
    assert sized.data_config["input_size"] == [1, 24, 20]
    assert ImageDataModule(data_dir="x").data_config["input_size"] == [3, 224, 224]  # timm's defaults


@pytest.mark.parametrize("preset", list_augmentation_presets())
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_preset_makes_tensors_of_the_input_size(tmp_path, preset, in_chans):
    dm = array_module(tmp_path, augmentation=preset, in_chans=in_chans, output_dir=None)
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, in_chans, SIZE, SIZE) and x.dtype == torch.float32


def test_custom_transforms_replace_the_presets(tmp_path):
    def train_tf(image):
        return torch.full((3, 2, 2), 1.0)

    def eval_tf(image):
        return torch.full((3, 2, 2), 2.0)

    dm = array_module(tmp_path, train_transform=train_tf, eval_transform=eval_tf, output_dir=None)
    dm.setup()
    assert dm.dataset("train")[0][0].sum() == 12 and dm.dataset("val")[0][0].sum() == 24
    as_augmentation = array_module(tmp_path, augmentation=train_tf, output_dir=None)
    as_augmentation.setup()
    assert as_augmentation.dataset("train")[0][0].sum() == 12


# ---------------------------------------------------------------- derived data modules
def test_derived_from_shares_the_data_and_changes_only_what_is_given(tmp_path):
    dm = array_module(tmp_path)
    dm.setup()
    config = dm.data_config
    copy = ImageDataModule.derived_from(dm, batch_size=4, augmentation="none")
    assert type(copy) is ImageDataModule and copy.trainer is None and copy.output_dir is None
    assert (copy.batch_size, copy.augmentation, dm.batch_size, dm.augmentation) == (4, "none", 8, "auto")
    assert copy.tables["train"] is dm.tables["train"] and copy.class_names == dm.class_names
    assert copy.data_config == config and dm.output_dir == tmp_path / "out"
    small = ImageDataModule.derived_from(dm, tables={"train": dm.tables["train"].subset([0, 1, 2])})
    assert small.splits == ["train"] and len(small.dataset("train")) == 3 and dm.splits == ["train", "val"]
    gray = ImageDataModule.derived_from(dm, image_size=(12, 10), in_chans=1)
    assert gray.dataset("val")[0][0].shape == (1, 12, 10) and dm.dataset("val")[0][0].shape == (3, SIZE, SIZE)
    assert list(gray.data_config["input_size"]) == [1, 12, 10] and dm.data_config == config
    fixed = ImageDataModule.derived_from(dm, data_config={**config, "mean": (0.0,) * 3, "std": (1.0,) * 3})
    assert fixed.data_config["mean"] == (0.0,) * 3 and dm.data_config["mean"] == config["mean"]

    class Subclass(ImageDataModule):
        pass

    assert isinstance(Subclass.derived_from(dm), Subclass)


def test_derived_from_replaces_a_custom_transform_only_when_asked(tmp_path):
    def train_tf(image):
        return torch.zeros(3, 2, 2)

    custom = array_module(tmp_path, train_transform=train_tf, output_dir=None)
    custom.setup()
    assert custom.custom_train_transform is train_tf and array_module(tmp_path).custom_train_transform is None
    assert ImageDataModule.derived_from(custom).custom_train_transform is train_tf
    assert ImageDataModule.derived_from(custom, augmentation="light").custom_train_transform is None
    assert ImageDataModule.derived_from(custom, augmentation=train_tf).custom_train_transform is train_tf


def test_derived_from_checks_its_arguments(tmp_path):
    with pytest.raises(RuntimeError, match="call setup"):
        ImageDataModule.derived_from(array_module(tmp_path))
    dm = array_module(tmp_path, output_dir=None)
    dm.setup()
    with pytest.raises(ValueError, match=r"`tables` must hold a 'train' split, got \['val'\]"):
        ImageDataModule.derived_from(dm, tables={"val": dm.tables["val"]})
    with pytest.raises(ValueError, match="`batch_size`"):
        ImageDataModule.derived_from(dm, batch_size=0)
    with pytest.raises(ValueError, match="`augmentation`"):
        ImageDataModule.derived_from(dm, augmentation="sparkles")
    with pytest.raises(ValueError, match="`image_size`"):
        ImageDataModule.derived_from(dm, image_size=(0, 8))
    with pytest.raises(ValueError, match="in_chans"):
        ImageDataModule.derived_from(dm, in_chans=2)


def test_tables_and_loader_workers_need_setup(tmp_path):
    dm = array_module(tmp_path, num_workers=None, output_dir=None)
    with pytest.raises(RuntimeError, match="call setup"):
        _ = dm.tables
    with pytest.raises(RuntimeError, match="call setup"):
        _ = dm.loader_workers
    assert array_module(tmp_path, num_workers=3).loader_workers == 3  # given: known before setup
    dm.setup()
    assert dm.loader_workers == 0 == dm.train_dataloader().num_workers  # in-memory arrays
    tables = dm.tables
    assert set(tables) == {"train", "val"} and len(tables["train"]) + len(tables["val"]) == 36
    tables.pop("val")  # a copy: the data module keeps its splits
    assert dm.splits == ["train", "val"]
    write_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    files = ImageDataModule(tmp_path / "d", val_split=0.25, output_dir=None)
    files.setup()
    assert files.loader_workers == default_num_workers()


# ---------------------------------------------------------------- imbalance
def test_balanced_sampling_draws_training_indices_and_evens_out_classes(tmp_path):
    dm = array_module(tmp_path, counts=(80, 10), balanced_sampling=True, batch_size=10, output_dir=None)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, WeightedRandomSampler)
    train = dm.dataset("train")
    drawn = list(loader.sampler)
    assert len(drawn) == len(train) == 72 and max(drawn) < len(train)
    labels = [train.table.targets[i] for i in drawn]
    for _ in range(20):
        labels += [train.table.targets[i] for i in loader.sampler]
    share = Counter(labels)[1] / len(labels)
    assert 0.4 < share < 0.6  # 8 of 72 training images, drawn about half the time
    ys = torch.cat([y for _, y in loader])
    assert set(ys.tolist()) == {0, 1}


def test_class_weights(tmp_path):
    dm = array_module(tmp_path, counts=(30, 10), class_weights="balanced", val_split=0.0, output_dir=None)
    dm.setup()
    assert torch.allclose(dm.class_weights_tensor, torch.tensor([40 / (2 * 30), 40 / (2 * 10)]))
    plain = array_module(tmp_path, val_split=0.0, output_dir=None)
    plain.setup()
    assert plain.class_weights_tensor is None


# ---------------------------------------------------------------- loaders
def test_loader_defaults(tmp_path):
    write_class_folders(tmp_path / "d", {"a": 4, "b": 4})
    files = ImageDataModule(tmp_path / "d", val_split=0.25, output_dir=None)
    files.setup()
    loader = files.val_dataloader()
    assert loader.num_workers == default_num_workers()
    assert loader.persistent_workers == (loader.num_workers > 0)
    assert loader.pin_memory == torch.cuda.is_available()
    in_memory = array_module(tmp_path, num_workers=None, output_dir=None)
    in_memory.setup()
    assert in_memory.train_dataloader().num_workers == 0
    in_memory.batch_size = 5  # what Lightning's batch-size finder does
    assert in_memory.train_dataloader().batch_size == 5 and in_memory.train_dataloader().drop_last


def test_default_workers_follow_the_usable_cores_not_the_machine(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)  # e.g. a scheduler's share
    assert default_num_workers() == 2
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers() == 0


def test_file_loaders_work_in_worker_processes_across_epochs(tmp_path):
    write_class_folders(tmp_path / "d", {"a": 4, "b": 4}, mode="RGBA")
    dm = ImageDataModule(
        tmp_path / "d", val_split=0.25, test_split=0.0, output_dir=None, image_size=SIZE, batch_size=3, num_workers=2
    )
    dm.setup()
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    for _ in range(2):  # persistent workers serve the second epoch
        shapes = [images.shape for images, _ in loader]
        assert shapes == [(3, 3, SIZE, SIZE)] * 2
    assert [targets.tolist() for _, targets in dm.predict_dataloader()] == [[0, 1]]


def test_test_and_predict_loaders(tmp_path):
    dm = array_module(tmp_path, output_dir=None)
    dm.setup()
    with pytest.raises(ValueError, match=r"`split` 'test' does not exist; this data has \['train', 'val'\]"):
        dm.test_dataloader()
    assert len(dm.predict_dataloader().dataset) == len(dm.dataset("val"))


@pytest.mark.filterwarnings("ignore:Total length of `list` across ranks is zero")  # val_split=0: no val loader
def test_fit_and_test_a_classifier(tmp_path, single_thread):
    dm = array_module(tmp_path, test_split=0.2, output_dir=None)
    dm.setup()
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=dm.num_classes)
    dm.configure_for(model.backbone)
    trainer = make_trainer(max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.test(model, datamodule=dm, verbose=False)[0]["test/loss"] > 0
    no_val = array_module(tmp_path, val_split=0.0, output_dir=None)
    make_trainer(max_epochs=1).fit(model, datamodule=no_val)  # no validation split: validation is skipped


def test_symlinked_folders_count_and_exif_photos_train_upright(tmp_path):
    from PIL import Image

    write_class_folders(tmp_path / "d", {"a": 3, "b": 3})
    write_class_folders(tmp_path / "extra", {"more": 2}, seed=5)
    (tmp_path / "d" / "a" / "linked").symlink_to(tmp_path / "extra" / "more", target_is_directory=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20 wide and 12 high, shown 12 wide and 20 high
    Image.new("RGB", (20, 12), "red").save(tmp_path / "d" / "b" / "photo.jpg", exif=exif.tobytes())
    dm = ImageDataModule(
        tmp_path / "d", val_split=0.0, test_split=0.0, output_dir=None, image_size=SIZE, batch_size=4, num_workers=0
    )
    dm.setup()
    assert dm.class_counts["train"] == [5, 4]
    dataset = dm.dataset("train")
    dataset.transform = None
    index = dataset.table.items.index("b/photo.jpg")
    assert dataset[index][0].size == (12, 20)
