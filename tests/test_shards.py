"""Streaming shards: ``autotimm shard`` / ``write_shards`` and ``ImageDataModule(shards=...)`` through LitData."""

from __future__ import annotations

import json
import sys

import pytest
import pytorch_lightning as pl
import torch
from data_helpers import write_class_folders

import autotimm
from autotimm import BackboneConfig, ImageClassifier, ImageDataModule
from autotimm.cli import main
from autotimm.data import shards
from autotimm.data.shards import SHARD_INFO_FILE, ShardTable, check_shard_size, import_litdata, write_shards

litdata = pytest.importorskip("litdata")
pytestmark = pytest.mark.usefixtures("single_thread")
COUNTS = {"a": 12, "b": 12, "c": 12}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A class folder and its shards (several per split), written with the default split settings and seed 0."""
    root = tmp_path_factory.mktemp("shards")
    write_class_folders(root / "data", COUNTS)
    source = ImageDataModule(root / "data", seed=0, output_dir=root / "shards", num_workers=0)
    summary = write_shards(source, root / "shards", shard_size="2KB", verbose=False)
    return root, source, summary


def _data(root, **kwargs) -> ImageDataModule:
    return ImageDataModule(shards=root / "shards", image_size=16, batch_size=4, num_workers=0, seed=0, **kwargs)


def test_written_splits_match_training_and_hold_encoded_files(written):
    root, source, summary = written
    assert summary.images == {split: len(table) for split, table in source.tables.items()}
    assert summary.shards["train"] > 1 and all(size > 0 for size in summary.bytes.values())
    record = json.loads((root / "shards" / SHARD_INFO_FILE).read_text())
    assert record["class_names"] == ["a", "b", "c"]
    data = _data(root)
    data.setup()
    assert data.class_names == source.class_names and data.splits == source.splits
    assert data.class_counts == source.class_counts
    # The same split as training on the folder with the same settings (the split training would make).
    training = ImageDataModule(root / "data", seed=0, output_dir=None)
    training.setup()
    for split in data.splits:
        assert data.tables[split].items == [str(item) for item in training.tables[split].items]
        assert data.tables[split].targets == list(training.tables[split].targets)
    # Stored as the files' own bytes, not decoded pixels.
    stored = litdata.StreamingDataset(str(root / "shards" / "val"))[0]
    assert bytes(stored["image"]) == (root / "data" / stored["id"]).read_bytes()


def test_training_loader_gives_every_sample_once_per_epoch_shuffled(written):
    root, source, _ = written
    data = _data(root, augmentation="none")
    data.setup()
    loader = data.train_dataloader()
    assert isinstance(loader, litdata.StreamingDataLoader)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    dataset = data.tables["train"].streaming_dataset(shuffle=True, seed=0)
    epoch = [item["id"] for item in dataset]
    assert sorted(epoch) == sorted(map(str, source.tables["train"].items))
    assert epoch != [str(item) for item in source.tables["train"].items]  # shuffled across shards


def test_evaluate_and_predict_on_the_validation_split(written, tmp_path):
    root, source, _ = written
    data = _data(root)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, class_names=["a", "b", "c"])
    report = autotimm.evaluate(model, data, tmp_path / "eval", split="val", verbose=False, progress=False)
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert report.num_images == len(source.tables["val"])
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(model, datamodule=data)
    assert sum(len(b) for b in batches) == len(source.tables["test"])


def test_a_run_resumed_mid_epoch_continues_where_it_stopped(written, tmp_path, monkeypatch):
    root, source, _ = written
    seen: list[str] = []
    decode = shards.ShardDecoder.__call__

    def recording(self, item):
        if self.transform is not None and getattr(self, "record", True):
            seen.append(str(item["id"]))
        return decode(self, item)

    monkeypatch.setattr(shards.ShardDecoder, "__call__", recording)
    checkpoint = tmp_path / "mid.ckpt"

    class Killed(Exception):
        pass

    class StopAfterThree(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 2:
                trainer.save_checkpoint(checkpoint)
                raise Killed  # in the middle of the epoch

    def fit(callbacks=(), ckpt_path=None):
        model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3)
        trainer = pl.Trainer(
            accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=list(callbacks),
        )  # fmt: skip
        trainer.fit(model, datamodule=_data(root), ckpt_path=ckpt_path)

    with pytest.raises(Killed):
        fit([StopAfterThree()])
    first, seen[:] = list(seen), []
    assert len(first) == 12
    state = torch.load(checkpoint, weights_only=False)["ImageDataModule"]["streaming_loader"]
    assert state["num_samples_yielded"] == 12
    fit(ckpt_path=checkpoint)
    train = len(source.tables["train"])
    assert not set(first) & set(seen)  # nothing twice
    assert len(first) + len(seen) == train - train % 4  # the rest of the epoch, less the last partial batch


def test_a_folder_that_is_not_a_shard_folder_says_so(written, tmp_path):
    root, _, _ = written
    with pytest.raises(ValueError, match=r"is not a shard folder.*no autotimm_shards.json and no LitData index"):
        ImageDataModule(shards=root / "data").setup()
    with pytest.raises(ValueError, match=r"is a LitData index of one split.*pass the folder above it"):
        ImageDataModule(shards=root / "shards" / "train").setup()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageDataModule(shards=tmp_path / "missing").setup()


def test_shards_with_another_source_is_refused_naming_both(written):
    root, _, _ = written
    with pytest.raises(ValueError, match=r"`shards` and `data_dir` were both given.*shards=.*data_dir="):
        ImageDataModule(shards=root / "shards", data_dir=root / "data")
    with pytest.raises(ValueError, match="balanced_sampling"):
        ImageDataModule(shards=root / "shards", balanced_sampling=True)
    with pytest.raises(ValueError, match="`storage_options` needs `shards`"):
        ImageDataModule(root / "data", storage_options={"key": "x"})


def test_an_object_store_url_without_credentials_fails_in_one_line(monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance metadata to wait for: fails at once
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    with pytest.raises(OSError) as caught:
        ImageDataModule(shards="s3://autotimm-test-no-such-bucket/pets").setup()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 500
    assert message.startswith("`shards` 's3://autotimm-test-no-such-bucket/pets': cannot read autotimm_shards.json")


def test_missing_litdata_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "litdata", None)
    with pytest.raises(ImportError, match=r'pip install "autotimm\[stream\]"'):
        import_litdata()


def test_shard_sizes():
    assert check_shard_size("64MB") == 64_000_000 and check_shard_size("1.5 gb") == 1_500_000_000
    for bad in ("lots", "-1MB", 0, "12 parsecs"):
        with pytest.raises(ValueError, match="`shard_size` must be"):
            check_shard_size(bad)


def test_shard_table_cannot_be_subset(written):
    root, _, _ = written
    data = _data(root)
    data.setup()
    assert isinstance(data.tables["train"], ShardTable)
    with pytest.raises(ValueError, match="cannot be subset"):
        data.tables["train"].subset([0, 1])


def test_cli_shard(written, tmp_path, capsys):
    root, _, _ = written
    output = tmp_path / "cli"
    args = ["shard", str(root / "data"), str(output), "--shard-size", "4KB", "--seed", "0", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Wrote 36 images" in out and "shards" in out and "train:" in out
    written_files = [SHARD_INFO_FILE, "checked_images.json", "splits.json", "test", "train", "val"]
    assert sorted(p.name for p in output.iterdir()) == written_files
    assert main(["shard", str(root / "data"), str(output), "--shard-size", "big"]) == 2
    assert "--shard-size must be a size" in capsys.readouterr().err


# ------------------------------------------------------------------ auto_fit and the command line on shards
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_auto_fit_searches_on_shards(written, tmp_path):
    optuna = pytest.importorskip("optuna")
    del optuna
    from autotimm.auto import auto_fit

    root, source, _ = written
    data = _data(root)
    options = dict(backbones=["test_resnet"], image_size=16, n_trials=2, seed=0, verbose=False, tta=False)
    result = auto_fit(data, 40, output_dir=tmp_path / "auto", **options)
    complete = [row for row in result.trials if row["state"] == "complete"]
    assert complete and result.model.class_names == ["a", "b", "c"]
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert summary["train_images"] == len(source.tables["train"])  # the whole split: shards are not subset
    assert summary["val_images"] == len(source.tables["val"])
    model = ImageClassifier.load(result.checkpoint)
    assert model.data_config["input_size"] == [3, 16, 16]
    with pytest.raises(ValueError, match=r"refit=True.*shards cannot merge"):
        auto_fit(_data(root), 20, output_dir=tmp_path / "refit", refit=True, **options)


def _cli(args: list[str]) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.filterwarnings("ignore:Your `IterableDataset` has `__len__` defined")
def test_cli_train_and_evaluate_on_a_shard_folder(written, tmp_path):
    from autotimm.data.sources import data_source

    root, source, _ = written
    assert data_source(str(root / "shards")) == {"shards": root / "shards"}  # found by its autotimm_shards.json
    assert data_source("s3://bucket/pets") == {"shards": "s3://bucket/pets"}
    assert data_source(str(root / "data")) == {"data_dir": root / "data"}
    run = tmp_path / "run"
    args = ["train", "--data", str(root / "shards"), "--backbone", "test_resnet", "--epochs", "1"]
    args += ["--batch-size", "4", "--image-size", "16", "--num-workers", "0", "--accelerator", "cpu"]
    code, out, err = _cli([*args, "--output-dir", str(run)])
    assert code == 0, err
    best = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("Best checkpoint:"))
    assert ImageClassifier.load(best).class_names == ["a", "b", "c"]
    code, out, err = _cli(
        ["evaluate", best, str(root / "shards"), "--split", "val", "--output-dir", str(tmp_path / "e")]
    )
    assert code == 0, err
    assert f"Evaluated {len(source.tables['val'])} images of the 'val' split" in out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_auto_searches_on_a_shard_folder(written, tmp_path):
    pytest.importorskip("optuna")
    root, source, _ = written
    out = tmp_path / "auto"
    args = ["auto", "--data", str(root / "shards"), "--time-limit", "30s", "--n-trials", "1"]
    args += ["--backbones", "test_resnet", "--image-size", "16", "--seed", "0", "--no-tta", "--output-dir", str(out)]
    code, stdout, err = _cli(args)
    assert code == 0, err
    assert "auto_fit trials" in stdout and (out / "best.ckpt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_images"] == len(source.tables["train"]) and summary["n_trials"] == 1
    assert ImageClassifier.load(out / "best.ckpt").class_names == ["a", "b", "c"]
