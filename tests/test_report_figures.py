"""The evaluation report's sample grid and per-class bars: stratified choice, colours, worst-k with many classes."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_hex
from PIL import Image
from test_evaluation import IMAGES, LABELS, StubModel

from autotimm.evaluation.plots import image_grid_figure, per_class_bar_figure, sample_indices
from autotimm.evaluation.report import evaluate

pytestmark = pytest.mark.usefixtures("single_thread")


def test_sample_indices_are_stratified_and_capped():
    labels = np.repeat(np.arange(5), [10, 10, 3, 1, 20])
    chosen = sample_indices(labels, max_images=20, per_class=4, seed=1)
    counts = np.bincount(labels[chosen], minlength=5)
    assert counts.tolist() == [4, 4, 3, 1, 4]  # a few of each class, all of a small class
    assert len(set(chosen)) == len(chosen)
    many = np.repeat(np.arange(100), 3)
    picked = sample_indices(many, max_images=24)
    assert len(picked) == 24 and len(set(many[picked])) == 24  # one image each of 24 classes
    assert sample_indices(many, max_images=24) == picked  # seeded


def test_evaluate_writes_samples_and_per_class_bars(tmp_path):
    report = evaluate(StubModel(), (IMAGES, LABELS), tmp_path, verbose=False)
    for kind in ("samples", "per_class_recall"):
        with Image.open(report.files[kind]) as image:
            assert image.size[0] > 300 and image.size[1] > 150


def test_multi_label_evaluate_writes_per_class_f1_bars(tmp_path):
    from autotimm import BackboneConfig, ImageClassifier

    names = ["a label with a rather long name", "cat", "dog"]
    model = ImageClassifier(
        BackboneConfig("test_resnet", pretrained=False), num_classes=3, class_names=names, multi_label=True
    )
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    report = evaluate(model, (IMAGES, targets), tmp_path, verbose=False, threshold=0.5)
    path = report.files["per_class_f1"]
    assert path == tmp_path / "per_class_f1.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()  # decodes: a readable PNG
        assert image.size[0] > 300 and image.size[1] > 100


def test_sample_grid_titles_are_green_when_right_and_red_when_wrong():
    images = [np.zeros((8, 8, 3), np.uint8)] * 2
    fig = image_grid_figure(images, ["right", "wrong"], colors=["#1a7f37", "#cf222e"])
    assert [to_hex(ax.title.get_color()) for ax in fig.axes] == ["#1a7f37", "#cf222e"]


def test_per_class_bars_sorted_worst_first_and_capped_for_100_classes():
    names = [f"class_{i:03d}" for i in range(100)]
    rng = np.random.default_rng(0)
    recall = rng.uniform(size=100)
    support = rng.integers(5, 50, size=100)
    fig = per_class_bar_figure(names, recall, support, max_classes=40)
    ax = fig.axes[0]
    ticks = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()], strict=True), reverse=True)
    assert len(ticks) == 40
    worst = [names[i] for i in np.argsort(recall)[:40]]
    assert [label for _, label in ticks] == worst  # read top-down: the worst class on top
    assert "the 40 worst of 100 classes" in ax.get_title()
    texts = [t.get_text() for t in ax.texts]
    assert f"(n={support[np.argmin(recall)]})" in texts[0]
