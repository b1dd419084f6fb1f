"""Calibration: ECE and its bins against torchmetrics, temperature fitting, calibrate_model and its checkpoint."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.classification import multiclass_calibration_error

from autotimm import BackboneConfig, ImageClassifier, make_synthetic_dataset
from autotimm.evaluation.calibration import (
    TEMPERATURE_RANGE,
    CalibrationResult,
    calibrate_model,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from autotimm.evaluation.plots import reliability_diagram
from autotimm.prediction.predict import softmax

# Tiny tensors: one torch thread is much faster than two contending ones.
pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["ant", "bee", "cat", "dog"]
CONFIG = {
    "input_size": [3, 32, 32],
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "interpolation": "bilinear",
    "crop_pct": 1.0,
    "crop_mode": "center",
}


@contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def synthetic_uint8(seed: int, per_class: int, noise: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Generated (N, 32, 32, 3) uint8 images of 4 classes and their labels."""
    x, y = make_synthetic_dataset(4, per_class, 32, noise=noise, seed=seed).tensors
    pixels = np.clip((x.numpy().transpose(0, 2, 3, 1) + 3) / 6 * 255, 0, 255).round().astype(np.uint8)
    return pixels, y.numpy()


def train_tiny_model(steps: int = 20) -> ImageClassifier:
    """A test_resnet trained briefly on noisy generated images: right often (~85%), but not always."""
    images, labels = synthetic_uint8(seed=0, per_class=32)
    x = torch.from_numpy((images.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5).float()
    y = torch.from_numpy(labels)
    with one_thread():
        torch.manual_seed(0)
        model = ImageClassifier(
            BackboneConfig("test_resnet", pretrained=False), num_classes=4, class_names=NAMES, data_config=CONFIG
        )
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        model.train()
        for _ in range(steps):
            batch = torch.randperm(len(x))[:32]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def overconfident():
    """A trained model whose logits are scaled x10 (head weights and bias), and held-out data."""
    model = train_tiny_model()
    with torch.no_grad():
        model.head.fc.weight.mul_(10)
        model.head.fc.bias.mul_(10)
    return model, synthetic_uint8(seed=1, per_class=24)


# ---------------------------------------------------------------------- ECE and bins
def test_ece_and_bins_match_torchmetrics():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 5, generator=gen), dim=1)
    labels = torch.randint(0, 5, (500,), generator=gen)
    assert probs.max() < 1.0  # torchmetrics and autotimm bin alike below 1
    expected = float(multiclass_calibration_error(probs, labels, num_classes=5, n_bins=15, norm="l1"))
    ece = expected_calibration_error(probs.numpy(), labels.numpy())
    bins = reliability_bins(probs, labels)
    assert ece == pytest.approx(expected, abs=1e-6)
    assert bins.ece == pytest.approx(expected, abs=1e-6)
    assert bins.count.sum() == 500 and len(bins.count) == 15
    np.testing.assert_allclose(bins.edges, np.linspace(0, 1, 16), atol=1e-7)
    # Each bin's statistics are those of the samples whose confidence falls in it.
    conf, pred = probs.max(1)
    inside = (conf >= bins.edges[10]) & (conf < bins.edges[11])
    assert bins.count[10] == inside.sum()
    assert bins.confidence[10] == pytest.approx(conf[inside].mean().item(), abs=1e-6)
    assert bins.accuracy[10] == pytest.approx((pred[inside] == labels[inside]).float().mean().item(), abs=1e-6)


def test_ece_by_hand():
    # Two predictions in the bin [0.5, 1): mean confidence 0.8, one right -> |0.5 - 0.8| = 0.3.
    probs, labels = [[0.9, 0.1], [0.3, 0.7]], [0, 0]
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.3, abs=1e-6)
    bins = reliability_bins(probs, labels, n_bins=2)
    assert bins.count.tolist() == [0, 2]
    assert bins.accuracy[1] == pytest.approx(0.5) and bins.confidence[1] == pytest.approx(0.8)
    assert bins.gap[1] == pytest.approx(0.3)


def test_confidence_of_one_counts_in_the_top_bin():
    probs = np.array([[1.0, 0.0], [1.0, 0.0], [0.95, 0.05], [0.97, 0.03]])
    labels = np.array([0, 1, 0, 0])
    bins = reliability_bins(probs, labels, n_bins=10)
    assert bins.count.tolist() == [0] * 9 + [4]
    # One bin: accuracy 3/4, mean confidence (1 + 1 + .95 + .97) / 4.
    assert bins.ece == pytest.approx(abs(0.75 - 0.98), abs=1e-6)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(bins.ece, abs=1e-6)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.full((3, 2), 0.5), [0, 1], "labels"),
        (np.full((2, 2), 0.5), [0, 2], r"\[0, 1\]"),
        (np.full((2, 2), 2.0), [0, 1], "softmax"),
        (np.full((2,), 0.5), [0, 1], r"\(N, C\)"),
    ],
)
def test_bad_ece_inputs(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(probs, labels)


def test_bad_n_bins():
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins(np.full((2, 2), 0.5), [0, 1], n_bins=0)


# ---------------------------------------------------------------------- temperature
def calibrated_logits(n: int = 4000, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits with labels drawn from their own softmax: calibrated at T = 1 by construction."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n, classes))
    probs = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_fit_temperature_recovers_the_scale():
    logits, labels = calibrated_logits()
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.1)
    t = fit_temperature(10 * logits, labels)
    assert t == pytest.approx(10.0, rel=0.1)
    assert fit_temperature(logits / 4, labels) == pytest.approx(0.25, rel=0.1)
    before = expected_calibration_error(softmax(10 * logits), labels)
    after = expected_calibration_error(softmax(10 * logits, t), labels)
    assert before > 0.2 and after < 0.03
    assert negative_log_likelihood(10 * logits, labels, t) < negative_log_likelihood(10 * logits, labels)


def test_fit_temperature_is_clamped_and_checks_inputs():
    # Every prediction right: NLL keeps falling as T -> 0; the fit sharpens until the loss is flat.
    logits = np.eye(3)[[0, 1, 2, 0]] * 5
    assert TEMPERATURE_RANGE[0] <= fit_temperature(logits, [0, 1, 2, 0]) < 0.5
    # Always wrong: NLL keeps falling as T grows (toward uniform probabilities); T stops at the upper bound.
    assert fit_temperature(np.eye(3)[[0, 1, 2, 0]] * 5, [1, 2, 0, 1]) == TEMPERATURE_RANGE[1]
    with pytest.raises(ValueError, match="finite"):
        fit_temperature([[0.0, np.nan]], [0])
    with pytest.raises(ValueError, match="labels"):
        fit_temperature([[0.0, 1.0]], [0, 1])


def test_reliability_diagram_panels(tmp_path):
    logits, labels = calibrated_logits(1000)
    fig = reliability_diagram(softmax(4 * logits), labels, calibrated_probs=softmax(logits), temperature=4.0)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    ece_before = expected_calibration_error(softmax(4 * logits), labels)
    assert titles[0] == f"Before calibration (T = 1)\nECE = {ece_before:.4f}"
    assert titles[1].startswith("After calibration (T = 4)\nECE = ")
    fig.savefig(tmp_path / "reliability.png")
    assert Image.open(tmp_path / "reliability.png").size[0] > 500
    single = reliability_diagram(softmax(logits), labels)
    assert len(single.axes) == 2  # one reliability panel and its histogram


# ---------------------------------------------------------------------- calibrate_model
def test_calibrate_model_lowers_ece_and_survives_save_and_load(overconfident, tmp_path):
    model, (images, labels) = overconfident
    raw, _ = model.predict_logits(images)
    accuracy = (raw.argmax(1) == labels).mean()
    assert 0.6 < accuracy < 1.0  # right often, but not always: there is something to calibrate

    result = model.calibrate((images, labels))
    assert isinstance(result, CalibrationResult) and result.num_samples == len(labels)
    assert result.temperature > 1.5  # the x10 logits are over-confident: soften them
    assert result.temperature == pytest.approx(fit_temperature(raw, labels), rel=1e-6)
    assert result.ece_after < result.ece_before
    assert result.nll_after < result.nll_before
    assert result.ece_before == pytest.approx(expected_calibration_error(softmax(raw), labels), abs=1e-6)
    assert model.temperature.item() == pytest.approx(result.temperature, rel=1e-6)
    assert "T = " in str(result) and "->" in str(result)

    # predict uses the temperature: probabilities are softmax(logits / T).
    prediction = model.predict(images[:1], top_k=1)[0]
    assert prediction.probability == pytest.approx(softmax(raw[:1], result.temperature).max(), rel=1e-5)

    path = model.save(tmp_path / "calibrated.ckpt")
    loaded = ImageClassifier.load(path)
    assert loaded.temperature.item() == pytest.approx(result.temperature, rel=1e-6)
    assert loaded.predict(images[:1], top_k=1)[0].probability == pytest.approx(prediction.probability, rel=1e-5)


def test_calibrate_model_with_a_stub_sets_a_plain_attribute():
    class Stub:
        class_names = ("a", "b")
        temperature = 1.0

        def predict_logits(self, inputs, batch_size=32, tta=False, skip_bad_images=False, progress=None):
            return np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [0.0, 4.0]]), [None] * 4

    stub = Stub()
    result = calibrate_model(stub, (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 1, 1])))
    assert stub.temperature == result.temperature > 1  # one of four wrong at 98% confidence: soften


def test_calibrate_rejects_multi_label_models():
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=3, multi_label=True)
    with pytest.raises(ValueError, match="single-label"):
        model.calibrate((np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])))


def test_fit_temperature_warns_at_the_end_of_its_range():
    from autotimm.evaluation.calibration import fit_temperature

    logits = np.array([[0.01, 0.0], [0.0, 0.01]])  # all right, by tiny margins: T wants to go to 0
    with pytest.warns(UserWarning, match="end of its range"):
        assert fit_temperature(logits, np.array([0, 1])) == pytest.approx(0.05)
