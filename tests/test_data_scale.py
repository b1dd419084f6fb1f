"""Large folders: header checks at set-up, bad files skipped while training, compact tables, JPEG draft decoding."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from timm.data.transforms import RandomResizedCropAndInterpolation

from autotimm.classifier.module import ImageClassifier
from autotimm.data.bad_images import BAD_IMAGES_FILE_NAME, TooManyBadImagesError
from autotimm.data.compact import LabelArray, StringArray
from autotimm.data.datamodule import ImageDataModule
from autotimm.data.decoding import decode_random_resized_crop, eval_draft_size
from autotimm.data.images import check_images, list_image_files, list_image_names
from autotimm.data.sources import SampleTable, read_folder
from autotimm.models.backbone import BackboneConfig
from autotimm.prediction.preprocess import Preprocessor
from autotimm.training.trainer import AutoTrainer
from tests.conftest import make_trainer
from tests.data_helpers import write_class_folders


def _smooth(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour field: large shapes a draft decode keeps."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)


def _jpeg_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (48, 36)) -> Path:
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _smooth(*size, seed=c * 100 + i).save(root / name / f"{i:02d}.jpg", quality=90)
    return root


def _truncate(path: Path) -> None:
    """Cut a JPEG in the middle of its compressed scan: the header stays readable, the pixels do not."""
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")
    path.write_bytes(data[: scan + (len(data) - scan) // 2])


# ------------------------------------------------------------------ compact tables
def test_string_and_label_arrays_behave_as_read_only_lists():
    names = ["cat/1.jpg", "dög/2.jpg", "x/\udcff.jpg", ""]  # non-UTF-8 names round-trip (surrogateescape)
    strings = StringArray(names)
    assert list(strings) == names and strings == names and names == strings and len(strings) == 4
    assert strings[-1] == "" and strings[1] == "dög/2.jpg" and strings[1:3] == names[1:3]
    assert strings.take([3, 0, 0]) == ["", "cat/1.jpg", "cat/1.jpg"]
    assert strings + ["y"] == [*names, "y"]  # noqa: RUF005  (list concatenation, as with a list)
    assert strings[np.array([2])] == [names[2]] and strings.index("dög/2.jpg") == 1
    with pytest.raises(IndexError):
        _ = strings[4]
    labels = LabelArray([2, 0, 1])
    assert labels == [2, 0, 1] and labels[0] == 2 and type(labels[0]) is int and labels[[2, 1]] == [1, 0]
    assert np.asarray(labels).dtype == np.int64 and json.dumps(labels.tolist()) == "[2, 0, 1]"
    with pytest.raises(ValueError, match="one-dimensional integer"):
        LabelArray([[0, 1]])


def test_a_folder_table_is_compact_and_small_per_sample(tmp_path):
    write_class_folders(tmp_path / "d", {"a": 3, "b": 2})
    table = read_folder(tmp_path / "d").splits["train"]
    assert isinstance(table.items, StringArray) and isinstance(table.targets, LabelArray)
    assert table.items == ["a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png"] and table.targets == [0, 0, 0, 1, 1]
    assert table.subset([4, 0]).items == ["b/1.png", "a/0.png"] and table.subset([4, 0]).targets == [1, 0]
    multi = SampleTable(["x.png", "y.png"], [[0, 1], []], root=tmp_path)
    assert multi.targets == [[0, 1], []] and multi.subset([1]).targets == [[]]
    # 100k names of 27 characters: 27 bytes + 8 (offset) + 8 (label) each, against ~150 for lists of str and int.
    names = [f"class_{i % 1000:04d}/{i:012d}.jpg" for i in range(100_000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    compact = SampleTable(names, [i % 1000 for i in range(100_000)], root=tmp_path)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert compact.nbytes == 100_000 * (len(names[0]) + 16) + 8  # one more offset
    assert held < 100_000 * (len(names[0]) + 24)


def test_list_image_names_match_list_image_files(tmp_path):
    for name in ("b/x.jpg", "a/z.png", "a-b/y.png", "a/sub/q.jpg", "a/.hidden.jpg", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = list_image_names(tmp_path)
    assert [tmp_path / n for n in names] == list_image_files(tmp_path) == sorted(tmp_path / n for n in names)
    assert names == ["a/sub/q.jpg", "a/z.png", "a-b/y.png", "b/x.jpg"]


# ------------------------------------------------------------------ checks at set-up
def test_check_images_header_full_and_none(tmp_path):
    root = _jpeg_folder(tmp_path / "d", per_class=4)
    _truncate(root / "a" / "01.jpg")
    (root / "b" / "02.jpg").write_bytes(b"not an image")
    paths = list_image_files(root)
    assert check_images(paths, skip_bad_images=True, mode="none") == list(range(8))
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        assert check_images(paths, skip_bad_images=True, mode="header") == [0, 1, 2, 3, 4, 5, 7]  # truncated passes
    with pytest.warns(UserWarning, match="Skipped 2 unreadable"):
        assert check_images(paths, skip_bad_images=True, mode="full") == [0, 2, 3, 4, 5, 7]
    with pytest.raises(ValueError, match=r"`check_images` must be one of \['header', 'full', 'none'\], got 'fast'"):
        ImageDataModule(root, check_images="fast")
    with pytest.raises(ValueError, match=r"`max_bad_fraction` must be .*\[0, 1\].*got 2"):
        ImageDataModule(root, max_bad_fraction=2)
    dm = ImageDataModule(root, check_images="none", output_dir=None, val_split=0.0, test_split=0.0)
    dm.setup()
    assert len(dm.tables["train"]) == 8


def test_bad_files_are_found_at_their_places_across_tasks_and_chunks(tmp_path, monkeypatch):
    import autotimm.data.images as images

    monkeypatch.setattr(images, "_CHECK_CHUNK", 64)  # several chunks, each of several thread tasks
    monkeypatch.setattr(images, "_CHECK_TASK", 5)
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    missing = {0, 4, 5, 63, 64, 130, 199}
    paths = [tmp_path / f"missing-{i}.png" if i in missing else good for i in range(200)]
    bad = images.find_bad_images(paths, mode="header")
    assert [i for i, _ in bad] == sorted(missing) and all(problem == "file not found" for _, problem in bad)


# ------------------------------------------------------------------ bad files while training
def test_files_corrupted_after_setup_are_skipped_replaced_counted_and_listed(tmp_path, single_thread):
    root = _jpeg_folder(tmp_path / "d", per_class=10)
    dm = ImageDataModule(
        root, output_dir=None, val_split=0.2, test_split=0.0, image_size=32, batch_size=4, num_workers=0,
        max_bad_fraction=0.2,
    )  # fmt: skip
    dm.setup()
    train = dm.tables["train"]
    bad = [train.path(1), train.path(5)]
    for path in bad:
        _truncate(path)
    dataset = dm.dataset("train")
    with pytest.warns(UserWarning, match="Skipping unreadable train image"):
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    assert targets[1] == train.targets[2] and targets[5] == train.targets[6]  # the next index stands in
    assert dm.bad_image_trackers["train"].indices() == [1, 5]

    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2)
    dm.configure_for(model.backbone)
    run = tmp_path / "run"
    trainer = AutoTrainer(
        output_dir=run, max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)  # the files already marked are not read (nor warned about) again
    assert trainer.callback_metrics["train/bad_images"] == 2
    lines = (run / BAD_IMAGES_FILE_NAME).read_text().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["train", str(p)] for p in bad]
    assert "OSError" in lines[0]


def test_too_many_bad_files_stop_the_run_naming_count_share_and_option(tmp_path, single_thread):
    root = _jpeg_folder(tmp_path / "d", per_class=10)
    dm = ImageDataModule(root, output_dir=None, val_split=0.0, test_split=0.0, image_size=32, num_workers=0)
    dm.setup()
    _truncate(dm.tables["train"].path(3))
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=2)
    dm.configure_for(model.backbone)
    with (
        pytest.warns(UserWarning),
        pytest.raises(TooManyBadImagesError, match=r"1 of 20 train images \(5\.00%\).*max_bad_fraction=0\.01"),
    ):
        make_trainer(max_epochs=1).fit(model, datamodule=dm)


def test_bad_files_are_found_by_loader_workers(tmp_path):
    root = _jpeg_folder(tmp_path / "d", per_class=8)
    dm = ImageDataModule(
        root, output_dir=None, val_split=0.0, test_split=0.0, image_size=32, batch_size=4, num_workers=2,
        max_bad_fraction=0.5,
    )  # fmt: skip
    dm.setup()
    _truncate(dm.tables["train"].path(0))
    batches = list(dm.eval_dataloader("train"))
    assert sum(len(b[1]) for b in batches) == 16
    assert dm.bad_image_trackers["train"].indices() == [0]  # marked in a worker, seen here


# ------------------------------------------------------------------ JPEG draft decoding
def _record_drafts(monkeypatch) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):
        result = original(self, mode, size)
        sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
    return sizes


def test_large_jpegs_decode_reduced_for_evaluation_and_training_crops(tmp_path, monkeypatch):
    root = _jpeg_folder(tmp_path / "d", per_class=2, size=(1600, 1200))
    dm = ImageDataModule(root, output_dir=None, val_split=0.0, test_split=0.0, image_size=96, num_workers=0)
    dm.setup()
    sizes = _record_drafts(monkeypatch)
    evaluation = dm.dataset("train", augment=False)
    assert evaluation.draft_size == eval_draft_size(dm.data_config) == Preprocessor(dm.data_config).draft_size
    assert evaluation[0][0].shape == (3, 96, 96) and sizes == [(400, 300)]  # 1/4: still >= 2 x 109 px a side
    training = dm.dataset("train")
    assert training.crop_decoder is not None and training[0][0].shape == (3, 96, 96)
    # A crop of the whole image (scale 1, ratio 4:3) keeps 96 px a side at 1/8 (200x150).
    crop = RandomResizedCropAndInterpolation(96, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    sizes.clear()
    assert decode_random_resized_crop(dm.tables["train"].path(0), crop).size == (96, 96) and sizes == [(200, 150)]
    small = RandomResizedCropAndInterpolation(96, scale=(0.01, 0.01), ratio=(1.0, 1.0))  # a 139 px crop: full size
    sizes.clear()
    assert decode_random_resized_crop(dm.tables["train"].path(0), small).size == (96, 96) and sizes == [(1600, 1200)]
    off = ImageDataModule(root, output_dir=None, val_split=0.0, test_split=0.0, image_size=96, draft_decode=False)
    off.setup()
    assert off.dataset("train", augment=False).draft_size is None and off.dataset("train").crop_decoder is None


def test_draft_and_full_decoding_agree_on_top1_for_large_jpegs(tmp_path, monkeypatch, single_thread):
    from autotimm.prediction.predict import compute_logits

    root = _jpeg_folder(tmp_path / "d", per_class=6, size=(1600, 1200))
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=5).eval()

    def logits(draft: bool) -> np.ndarray:
        dm = ImageDataModule(
            root, output_dir=None, val_split=0.0, test_split=0.0, num_workers=0, batch_size=12, draft_decode=draft
        )
        dm.setup()
        dm.configure_for(model.backbone)
        with torch.no_grad():
            return torch.cat([model(x) for x, _ in dm.eval_dataloader("train")]).numpy()

    drafted, full = logits(True), logits(False)
    assert (drafted.argmax(1) == full.argmax(1)).all()

    from autotimm.prediction.inputs import collect_inputs

    sources = collect_inputs(str(root))
    config = ImageDataModule(root, output_dir=None).configure_for(model.backbone).data_config
    preprocessor = Preprocessor(config)
    forward = lambda batch: model(torch.from_numpy(batch)).detach().numpy()  # noqa: E731
    with torch.no_grad():
        predicted, _ = compute_logits(forward, sources, preprocessor, batch_size=12)
        monkeypatch.setattr(Preprocessor, "draft_size", property(lambda self: None))
        unreduced, _ = compute_logits(forward, sources, preprocessor, batch_size=12)
    assert (predicted.argmax(1) == unreduced.argmax(1)).all()
