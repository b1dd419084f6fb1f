"""Symlinked files and folders are followed in training and prediction folders; symlink loops end with a warning."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import write_image

from autotimm.data import read_folder
from autotimm.data.images import list_image_files
from autotimm.prediction.inputs import collect_inputs, image_files

pytestmark = pytest.mark.skipif(os.name == "nt", reason="symlinks need extra rights on Windows")


def _linked_class_folder(tmp_path: Path) -> Path:
    """``data/cat`` with 2 own images, a symlinked folder of 2 and a symlinked file; ``data/dog`` with 2 images."""
    data = tmp_path / "data"
    for i in range(2):
        write_image(data / "cat" / f"{i}.png", seed=i)
        write_image(data / "dog" / f"{i}.png", seed=10 + i)
    for i in range(2):
        write_image(tmp_path / "elsewhere" / "more" / f"m{i}.png", seed=20 + i)
    write_image(tmp_path / "elsewhere" / "single.jpg", seed=30)
    (data / "cat" / "linked").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    (data / "cat" / "single.jpg").symlink_to(tmp_path / "elsewhere" / "single.jpg")
    return data


def test_training_folders_follow_symlinked_folders_and_files(tmp_path):
    data = _linked_class_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no loop here: no warning
        source = read_folder(data)
    train = source.splits["train"]
    assert source.class_names == ["cat", "dog"]
    assert Counter(train.targets) == {0: 5, 1: 2}
    assert {"cat/linked/m0.png", "cat/linked/m1.png", "cat/single.jpg"} <= set(train.items)
    assert all(train.path(i).is_file() for i in range(len(train)))  # paths through the links, relative to the root


def test_symlinked_class_folder_is_a_class(tmp_path):
    data = _linked_class_folder(tmp_path)
    (data / "fox").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    source = read_folder(data)
    assert source.class_names == ["cat", "dog", "fox"]
    assert Counter(source.splits["train"].targets) == {0: 5, 1: 2, 2: 2}


def test_prediction_folders_follow_symlinks(tmp_path):
    data = _linked_class_folder(tmp_path)
    sources = collect_inputs(data)
    assert len(sources) == 7
    assert [s.path for s in sources] == image_files(data) == list_image_files(data)
    assert str(data / "cat" / "linked" / "m1.png") in [s.source for s in sources]


def test_predict_on_a_folder_returns_one_result_per_image(tmp_path):
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    from autotimm import BackboneConfig, ImageClassifier
    from autotimm.data import make_data_config

    data = _linked_class_folder(tmp_path)
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=2, class_names=["cat", "dog"])
    model.apply_data_info(["cat", "dog"], make_data_config(model.backbone, 3, 32))
    predictions = model.eval().predict(data)
    assert len(predictions) == 7
    assert [p.source for p in predictions] == [str(p) for p in list_image_files(data)]
    assert np.isfinite([p.probabilities for p in predictions]).all()


def test_a_symlink_loop_ends_with_one_warning_that_names_it(tmp_path):
    data = _linked_class_folder(tmp_path)
    loop = data / "cat" / "linked_parent"
    loop.symlink_to(data / "cat", target_is_directory=True)  # a link to its own parent
    deeper = tmp_path / "elsewhere" / "more" / "back"
    deeper.symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a loop reached through another link
    with pytest.warns(UserWarning, match=r"Skipped 2 symlinked folder\(s\).*symlink loop.*linked_parent") as caught:
        source = read_folder(data)
    assert len([w for w in caught if "symlink" in str(w.message)]) == 1
    assert Counter(source.splits["train"].targets) == {0: 5, 1: 2}
    with pytest.warns(UserWarning, match="linked_parent") as caught:
        assert len(collect_inputs(data)) == 7
    assert len([w for w in caught if "symlink" in str(w.message)]) == 1


def test_a_link_to_an_enclosing_folder_is_a_loop(tmp_path):
    # cat/up -> data: without the guard, cat would take in dog's images as cats.
    data = _linked_class_folder(tmp_path)
    (data / "cat" / "up").symlink_to(data, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 symlinked folder"):
        source = read_folder(data)
    assert Counter(source.splits["train"].targets) == {0: 5, 1: 2}


def test_two_links_to_one_folder_list_it_twice(tmp_path):
    # Not a loop: each link shows the folder's images, as a file browser does.
    data = _linked_class_folder(tmp_path)
    (data / "cat" / "again").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list_image_files(data / "cat")) == 7


def test_hidden_names_are_skipped_and_a_dangling_link_is_reported_on_read(tmp_path):
    data = _linked_class_folder(tmp_path)
    write_image(data / "cat" / ".hidden.png")
    write_image(data / "cat" / ".cache" / "x.png")
    (data / "cat" / ".linked").symlink_to(tmp_path / "elsewhere" / "more", target_is_directory=True)
    assert len(list_image_files(data / "cat")) == 5
    (data / "cat" / "gone.png").symlink_to(tmp_path / "missing.png")
    assert data / "cat" / "gone.png" in list_image_files(data / "cat")  # listed, so that reading it says it is missing
    from autotimm.data.sources import drop_bad_images

    with pytest.raises(FileNotFoundError, match=r"gone\.png.*file not found"):
        drop_bad_images(read_folder(data))


def test_listing_is_sorted_by_path(tmp_path):
    for name in ("b.png", "a/z.png", "a.png", "A/y.png"):
        write_image(tmp_path / name)
    assert [p.relative_to(tmp_path).as_posix() for p in list_image_files(tmp_path)] == sorted(
        ["b.png", "a/z.png", "a.png", "A/y.png"], key=lambda s: s.split("/")
    )
