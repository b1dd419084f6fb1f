"""Hugging Face datasets as a source: every form trains, streaming splits without duplicates, clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.data.hf_source import HFStreamDataset, HubDatasetUnavailableError, open_hf_dataset, read_hf_stream
from autotimm.evaluation.report import evaluate

datasets = pytest.importorskip("datasets")

CLASSES = ["red", "green", "blue"]
PER_CLASS = 12
SIZE = 16


def make_dataset(per_class: int = PER_CLASS, string_labels: bool = False) -> datasets.Dataset:
    """3 classes of solid-colour 16-px images; pixel (0, 0) holds a unique sample number."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(len(CLASSES)):
        for _ in range(per_class):
            pixels = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            pixels[..., c] += 180
            pixels[0, 0] = [len(images) % 256, len(images) // 256, 7]
            images.append(Image.fromarray(pixels))
            labels.append(CLASSES[c] if string_labels else c)
    label = datasets.Value("string") if string_labels else datasets.ClassLabel(names=CLASSES)
    features = datasets.Features({"picture": datasets.Image(), "kind": label})
    return datasets.Dataset.from_dict({"picture": images, "kind": labels}, features=features)


def sample_number(image) -> int:
    """The unique number a `make_dataset` image carries in pixel (0, 0)."""
    pixels = np.asarray(image)
    return int(pixels[0, 0, 0]) + 256 * int(pixels[0, 0, 1])


@pytest.fixture(scope="module")
def data():
    return make_dataset()


@pytest.fixture(scope="module")
def forms(data, tmp_path_factory):
    """The dataset as a Dataset, a DatasetDict, a save_to_disk folder and Parquet files."""
    root = tmp_path_factory.mktemp("hf")
    parts = data.train_test_split(test_size=9, stratify_by_column="kind", seed=0)
    splits = datasets.DatasetDict(train=parts["train"], validation=parts["test"])
    splits.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    data.to_parquet(str(root / "parquet" / "train-0.parquet"))
    return {
        "dataset": data,
        "dataset_dict": splits,
        "save_to_disk": str(root / "saved"),
        "parquet": str(root / "parquet" / "*.parquet"),
    }


def module(hf_dataset, **kwargs) -> ImageDataModule:
    options = dict(image_size=SIZE, batch_size=8, num_workers=0, output_dir=None, augmentation="none")
    return ImageDataModule(hf_dataset=hf_dataset, **{**options, **kwargs})


@pytest.mark.parametrize("form", ["dataset", "dataset_dict", "save_to_disk", "parquet"])
def test_every_form_trains_with_the_classlabel_names(form, forms, tmp_path, single_thread):
    dm = module(forms[form])
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=1e-2)
    trainer = AutoTrainer(
        max_epochs=1,
        output_dir=tmp_path / "run",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert dm.class_names == CLASSES and model.class_names == CLASSES
    if form == "dataset_dict" or form == "save_to_disk":  # the DatasetDict's splits, as given
        assert dm.splits == ["train", "val", "test"] and len(dm.tables["val"]) == 9  # test carved: test_split
    else:  # one pool: autotimm's own stratified split
        assert dm.splits == ["train", "val", "test"] and sorted(dm.class_counts["val"]) == [2, 2, 3]
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"])) and 0 < float(metrics["train/loss"]) < 5
    assert 0 <= float(metrics["val/accuracy"]) <= 1


def test_learns_and_evaluate_and_predict_use_the_val_split(data, tmp_path, single_thread):
    torch.manual_seed(0)
    dm = module(data, batch_size=6)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=1e-2)
    trainer = AutoTrainer(
        max_epochs=4,
        output_dir=tmp_path / "run",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    report = evaluate(model, dm, tmp_path / "eval", split="val", verbose=False)
    assert report.accuracy >= 0.5  # solid colours: far above chance (1/3)
    assert report.num_images == len(dm.tables["val"]) and report.split == "val"
    batches = trainer.predict(model, dataloaders=dm.eval_dataloader("val"))
    assert sum(len(b) for b in batches) == len(dm.tables["val"])


def test_integer_labels_use_class_names_and_string_labels_are_mapped_with_a_warning():
    plain = make_dataset().cast_column("kind", datasets.Value("int64"))
    dm = module(plain, label_column="kind", class_names=["r", "g", "b"])
    dm.setup()
    assert dm.class_names == ["r", "g", "b"]
    strings = make_dataset(string_labels=True)
    dm = module(strings, label_column="kind")
    with pytest.warns(
        UserWarning, match=r"label column 'kind' is not integer or ClassLabel.*\['blue', 'green', 'red'\]"
    ):
        dm.setup()
    assert dm.class_names == ["blue", "green", "red"]
    _, target = dm.dataset("train", augment=False)[0]
    table = dm.tables["train"]
    assert dm.class_names[int(target)] == CLASSES[table.items[0] // PER_CLASS]


def test_missing_columns_name_the_columns_there_are(data):
    no_image = datasets.Dataset.from_dict({"filename": ["a"] * 4, "kind": [0, 1, 0, 1]})
    with pytest.raises(ValueError, match=r"no image column.*columns are \['filename', 'kind'\]"):
        module(no_image).setup()
    no_label = data.remove_columns("kind").add_column("weight", [1.0] * len(data))
    with pytest.raises(ValueError, match=r"no label column.*columns are \['weight'\]; pass label_column"):
        module(no_label).setup()
    with pytest.raises(ValueError, match=r"no image column: no column 'photo'"):
        module(no_image, image_column="photo").setup()


def test_mixing_sources_and_hf_options_without_hf_dataset_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match=r"exactly one data source.*\['data_dir', 'hf_dataset'\]"):
        ImageDataModule(tmp_path, hf_dataset=data)
    with pytest.raises(ValueError, match=r"\['train_csv', 'hf_dataset'\]"):
        ImageDataModule(train_csv=tmp_path / "a.csv", hf_dataset=data)
    with pytest.raises(ValueError, match=r"\['dataset', 'hf_dataset'\]"):
        ImageDataModule(dataset="digits", hf_dataset=data)
    with pytest.raises(ValueError, match=r"`streaming` needs `hf_dataset`, got streaming=True"):
        ImageDataModule(tmp_path, streaming=True)
    with pytest.raises(ValueError, match=r"`split` needs `hf_dataset`"):
        ImageDataModule(tmp_path, split="train")
    with pytest.raises(ValueError, match="balanced_sampling"):
        ImageDataModule(hf_dataset=data, streaming=True, balanced_sampling=True)


def test_a_hub_name_offline_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubDatasetUnavailableError) as caught:
        module("someone/no-such-dataset-autotimm").setup()
    message = str(caught.value)
    assert "\n" not in message
    assert "'someone/no-such-dataset-autotimm'" in message and "HF_HUB_OFFLINE is set" in message


def test_missing_paths_and_unknown_splits_are_clear(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_hf_dataset(str(tmp_path / "nothing.parquet"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        open_hf_dataset(str(tmp_path / "*.parquet"))
    with pytest.raises(ValueError, match=r"`split` 'dev' is not a split of `hf_dataset`; it has \['train'\]"):
        open_hf_dataset(datasets.DatasetDict(train=data), split="dev")


# ---------------------------------------------------------------------------------------------- streaming
def stream_numbers(dataset: HFStreamDataset, workers: int = 0) -> list[int]:
    if workers == 0:
        return [sample_number(image) for image, _ in dataset]
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [sample_number(image) for image, _ in loader]


@pytest.mark.parametrize("shards", [1, 3, 4])
def test_streaming_ranks_and_workers_see_disjoint_samples_covering_the_data(data, shards):
    table = read_hf_stream({"train": data.to_iterable_dataset(num_shards=shards)}).splits["train"]
    everything = set(range(len(data)))
    seen = {}
    for rank in (0, 1):
        dataset = table.dataset(None, shuffle=True, seed=3, buffer_size=8, rank=rank, world_size=2)
        seen[rank] = stream_numbers(dataset)
        assert len(seen[rank]) == len(set(seen[rank]))
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == everything
    # Two loader workers per rank: still each sample once (also with fewer shards than workers).
    with_workers = []
    for rank in (0, 1):
        dataset = table.dataset(None, shuffle=False, rank=rank, world_size=2)
        with_workers += stream_numbers(dataset, workers=2)
    assert sorted(with_workers) == sorted(everything)


def test_streaming_reshuffles_every_epoch_and_loads_through_the_data_module(data):
    splits = datasets.DatasetDict(train=data, validation=data.select(range(0, len(data), 4)))
    dm = module(splits, streaming=True, shuffle_buffer=16, seed=1)
    dm.setup()
    assert dm.class_names == CLASSES and dm.splits == ["train", "val"]
    train = dm.dataset("train")
    first = [int(t) for _, t in train]
    second = [int(t) for _, t in train]
    assert first != second and sorted(first) == sorted(second) == sorted(data["kind"])
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, SIZE, SIZE) and targets.dtype == torch.int64
    assert sum(len(t) for _, t in dm.val_dataloader()) == 9


def test_streaming_needs_class_names_without_a_classlabel(data, tmp_path):
    strings = make_dataset(string_labels=True)
    with pytest.raises(ValueError, match=r"not a ClassLabel.*pass class_names=\[...\]"):
        module(strings, label_column="kind", streaming=True).setup()
    dm = module(strings, label_column="kind", streaming=True, class_names=CLASSES)
    dm.setup()
    targets = [int(t) for _, t in dm.dataset("train", augment=False)]
    assert targets == [i // PER_CLASS for i in range(len(data))]


@pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined")  # workers are split
def test_streaming_trains(data, tmp_path, single_thread):
    dm = module(datasets.DatasetDict(train=data, validation=data.select(range(0, len(data), 4))), streaming=True)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, lr=1e-2)
    trainer = AutoTrainer(
        max_epochs=1,
        output_dir=tmp_path / "run",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm)
    assert model.class_names == CLASSES
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))


# ---------------------------------------------------------------------------------------------- auto_fit
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_auto_fit_on_a_dataset_dict_refits_on_train_and_validation(forms, tmp_path, single_thread):
    pytest.importorskip("optuna")
    from autotimm.auto import auto_fit
    from autotimm.auto.data import merge_tables

    dm = module(forms["dataset_dict"])
    dm.setup()
    merged = merge_tables(dm.tables["train"], dm.tables["val"])  # two Dataset objects: concatenated
    assert len(merged) == len(dm.tables["train"]) + len(dm.tables["val"])
    last = dm.tables["val"].load(len(dm.tables["val"]) - 1)
    assert sample_number(merged.load(len(merged) - 1)) == sample_number(last)
    options = dict(backbones=["test_resnet"], image_size=SIZE, n_trials=1, seed=0, verbose=False, tta=False)
    result = auto_fit(module(forms["dataset_dict"]), 40, output_dir=tmp_path / "auto", refit=True, **options)
    assert result.model.class_names == CLASSES
    with pytest.raises(ValueError, match=r"streamed Hugging Face dataset.*streaming=False"):
        auto_fit(module(forms["dataset_dict"], streaming=True), 20, output_dir=tmp_path / "stream", **options)


def _unequal_stream(data, sizes: list[int]):
    """``data`` as an IterableDataset of ``len(sizes)`` shards holding ``sizes`` rows each, in order."""
    bounds = np.cumsum([0, *sizes]).tolist()

    def rows(parts):
        for first, last in parts:
            for index in range(first, last):
                yield data[index]

    parts = [(bounds[i], bounds[i + 1]) for i in range(len(sizes))]  # one shard each
    return datasets.IterableDataset.from_generator(rows, gen_kwargs={"parts": parts}, features=data.features)


def test_streaming_ranks_get_equal_shares_of_unequal_shards(data):
    stream = _unequal_stream(data, [27, 9])
    assert stream.n_shards == 2
    table = read_hf_stream({"train": stream}).splits["train"]
    table.num_rows = len(data)  # a generator records no size; a Hub dataset's info does

    def share(rank, equal, workers=0, batch_size=None):
        dataset = table.dataset(None, shuffle=False, rank=rank, world_size=2, equal_shares=equal)
        if batch_size is None:
            return stream_numbers(dataset, workers)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True, collate_fn=list)
        return [len(batch) for batch in loader]

    # Whole shards per rank: 27 and 9 samples, which would hang DDP at the end of the epoch.
    assert [len(share(rank, equal=False)) for rank in (0, 1)] == [27, 9]
    first, second = share(0, equal=True), share(1, equal=True)
    assert len(first) == len(second) == len(data) // 2 == len(table.dataset(None, world_size=2, equal_shares=True))
    assert len(set(first)) == 18 and set(second) == set(range(27, 36))  # the short part starts over
    # With loader workers and batches: the same number of batches on both ranks.
    assert share(0, equal=True, workers=2, batch_size=4) == share(1, equal=True, workers=2, batch_size=4)
    assert sum(share(1, equal=True, workers=2, batch_size=1)) == 18


def test_cli_train_and_evaluate_on_a_save_to_disk_folder(forms, tmp_path):
    import contextlib
    import io

    from autotimm.cli import main
    from autotimm.data.sources import data_source

    assert data_source(forms["save_to_disk"]) == {"hf_dataset": forms["save_to_disk"]}
    parquet = str(Path(forms["parquet"]).parent)
    assert data_source(parquet) == {"hf_dataset": parquet} and data_source(forms["parquet"])["hf_dataset"]
    assert data_source("hf:user/pets") == {"hf_dataset": "user/pets"}
    with pytest.raises(ValueError, match=r"after 'hf:'"):
        data_source("hf:")

    def cli(args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
        return code, out.getvalue(), err.getvalue()

    run = tmp_path / "run"
    args = ["train", "--data", forms["save_to_disk"], "--backbone", "test_resnet", "--epochs", "1"]
    args += ["--batch-size", "8", "--image-size", str(SIZE), "--num-workers", "0", "--accelerator", "cpu"]
    code, out, err = cli([*args, "--output-dir", str(run)])
    assert code == 0, err
    best = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Best checkpoint:"))
    assert ImageClassifier.load(best).class_names == CLASSES
    code, out, err = cli(
        ["evaluate", best, forms["save_to_disk"], "--split", "val", "--output-dir", str(tmp_path / "e")]
    )
    assert code == 0, err
    assert "Evaluated 9 images of the 'val' split" in out


def test_cli_shard_writes_a_hugging_face_dataset_as_shards_that_train(forms, tmp_path, capsys, single_thread):
    pytest.importorskip("litdata")
    from autotimm.cli import main

    output = tmp_path / "shards"
    assert main(["shard", forms["save_to_disk"], str(output), "--shard-size", "4KB", "--seed", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Wrote 36 images" in out
    data = ImageDataModule(shards=output, image_size=SIZE, batch_size=8, num_workers=0, seed=0)
    data.setup("fit")
    assert data.class_names == CLASSES
    # The DatasetDict's 9 validation rows stay the validation split; the test split comes from its 27 training rows.
    assert [len(data.tables[split]) for split in ("train", "val", "test")] == [24, 9, 3]
    val = data.tables["val"]
    seen = [sample_number(val.load(i)) for i in range(len(val))]
    expected = [sample_number(row["picture"]) for row in forms["dataset_dict"]["validation"]]
    assert sorted(seen) == sorted(expected)  # the validation rows, not a new split of the training ones
