"""Probability calibration: expected calibration error, reliability bins and temperature scaling.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural
Networks") divides a trained model's logits by one number ``T`` fitted on
held-out data so that the softmax probabilities match how often the model is
right. It never changes which class is predicted, only how sure the model says
it is. [`calibrate_model`][autotimm.evaluation.calibration.calibrate_model] fits ``T`` and
stores it in the model's ``temperature`` buffer, which checkpoints carry.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from autotimm.checks import require_number
from autotimm.evaluation.labelled_data import check_single_label, resolve_labelled_data
from autotimm.prediction.predict import softmax

__all__ = [
    "TEMPERATURE_RANGE",
    "CalibrationResult",
    "ReliabilityBins",
    "calibrate_model",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "reliability_bins",
    "set_temperature",
]

#: The range a fitted temperature is clamped to.
TEMPERATURE_RANGE: tuple[float, float] = (0.05, 20.0)
# The largest float32 below 1: confidences of exactly 1 are moved here so that they land in the top bin.
_BELOW_ONE = float(np.nextafter(np.float32(1.0), np.float32(0.0)))


# ---------------------------------------------------------------------- inputs
def _as_scores_and_labels(scores: Any, labels: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``(N, C)`` ``probs`` (float32, in [0, 1]) or ``logits`` (float64) and ``(N,)`` labels; return tensors."""
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32 if name == "probs" else np.float64))
    y = torch.as_tensor(np.asarray(labels)).long()
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] < 2:
        raise ValueError(f"`{name}` must be (N, C) with N >= 1 and C >= 2 classes, got shape {tuple(s.shape)}")
    if y.ndim != 1 or len(y) != len(s):
        raise ValueError(f"`labels` must be (N,) = ({len(s)},) class indices, got shape {tuple(y.shape)}")
    if int(y.min()) < 0 or int(y.max()) >= s.shape[1]:
        raise ValueError(
            f"`labels` must be class indices in [0, {s.shape[1] - 1}], got [{int(y.min())}, {int(y.max())}]"
        )
    if not torch.isfinite(s).all():
        raise ValueError(f"`{name}` must be finite; got NaN or infinite values")
    if name == "probs" and (float(s.min()) < 0 or float(s.max()) > 1):
        raise ValueError("`probs` must be probabilities in [0, 1] (apply softmax to logits first)")
    return s, y


# ---------------------------------------------------------------------- ECE and bins
def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (ECE) of the top-1 prediction, with torchmetrics.

    The confidences (the largest probability of each sample) are put in
    ``n_bins`` equal-width bins over ``[0, 1]``; ECE is the sample-weighted mean
    of ``|accuracy - mean confidence|`` over the bins. Computed by
    ``torchmetrics.functional.classification.multiclass_calibration_error``
    with ``norm="l1"``; confidences of exactly 1 (float32 saturation) count in
    the top bin, ``[1 - 1/n_bins, 1]``, where torchmetrics alone would give
    them a bin of their own.

    Args:
        probs: ``(N, C)`` class probabilities (numpy array or tensor).
        labels: ``(N,)`` true class indices.
        n_bins: Number of bins.

    Returns:
        The ECE, in ``[0, 1]``.

    Raises:
        ValueError: Bad shapes, labels out of range, values that are not probabilities.

    Example:
        >>> # One bin [0.5, 1): confidences 0.9 (right) and 0.7 (wrong) -> |0.5 - 0.8|
        >>> round(expected_calibration_error([[0.9, 0.1], [0.3, 0.7]], [0, 0], n_bins=2), 4)
        0.3
    """
    require_number("n_bins", n_bins, 1, integer=True)
    p, y = _as_scores_and_labels(probs, labels, "probs")
    ece = multiclass_calibration_error(p.clamp(max=_BELOW_ONE), y, num_classes=p.shape[1], n_bins=n_bins, norm="l1")
    return float(ece)


@dataclass
class ReliabilityBins:
    """Per-bin statistics of top-1 confidence, as drawn in a reliability diagram.

    Bin ``k`` holds confidences in ``[edges[k], edges[k + 1])``, the last bin also 1.0.

    Args:
        edges: ``n_bins + 1`` bin edges from 0 to 1.
        confidence: Mean confidence in each bin (0 for empty bins).
        accuracy: Fraction of correct predictions in each bin (0 for empty bins).
        count: Number of samples in each bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error from the bins: ``sum(count * |accuracy - confidence|) / N``."""
        total = self.count.sum()
        return float((self.count * np.abs(self.accuracy - self.confidence)).sum() / total) if total else 0.0

    @property
    def gap(self) -> np.ndarray:
        """``confidence - accuracy`` per bin: > 0 where the model is over-confident."""
        return self.confidence - self.accuracy


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Bin the top-1 confidences exactly as ECE does, for the reliability diagram.

    See [`expected_calibration_error`][autotimm.evaluation.calibration.expected_calibration_error].

    Args:
        probs: ``(N, C)`` class probabilities.
        labels: ``(N,)`` true class indices.
        n_bins: Number of equal-width bins over ``[0, 1]``.

    Returns:
        Per-bin mean confidence, accuracy and count; ``bins.ece`` equals the ECE.

    Raises:
        ValueError: Bad shapes, labels out of range, values that are not probabilities.
    """
    require_number("n_bins", n_bins, 1, integer=True)
    p, y = _as_scores_and_labels(probs, labels, "probs")
    confidence, predicted = p.clamp(max=_BELOW_ONE).max(dim=1)
    correct = predicted.eq(y).float()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)  # torchmetrics' edges and bucketing
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    safe = count.clamp(min=1)
    return ReliabilityBins(
        edges=edges.double().numpy(),
        confidence=(conf_sum / safe).double().numpy(),
        accuracy=(acc_sum / safe).double().numpy(),
        count=count.long().numpy(),
    )


# ---------------------------------------------------------------------- temperature scaling
def negative_log_likelihood(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against ``labels``.

    Args:
        logits: ``(N, C)`` raw logits.
        labels: ``(N,)`` true class indices.
        temperature: The temperature (> 0).

    Returns:
        The mean negative log-likelihood in nats.
    """
    z, y = _as_scores_and_labels(logits, labels, "logits")
    return float(F.cross_entropy(z / float(temperature), y))


def fit_temperature(logits: Any, labels: Any, max_iter: int = 100) -> float:
    """Fit the temperature ``T`` that minimises the NLL of ``softmax(logits / T)``.

    Optimises ``log T`` (so ``T`` stays positive) with L-BFGS in float64,
    starting at ``T = 1``, and clamps the result to
    [`TEMPERATURE_RANGE`][autotimm.evaluation.calibration.TEMPERATURE_RANGE]. Data that
    the model gets all right pushes ``T`` toward 0 (more confident is always
    better there), hence the clamp; a non-finite result gives 1.

    Args:
        logits: ``(N, C)`` raw logits (before any temperature).
        labels: ``(N,)`` true class indices.
        max_iter: L-BFGS iterations.

    Returns:
        The temperature, a float in ``TEMPERATURE_RANGE``. ``T > 1`` softens
        over-confident probabilities, ``T < 1`` sharpens under-confident ones.

    Raises:
        ValueError: Bad shapes, labels out of range, non-finite logits.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 3, 500)
        >>> logits = 10 * (np.eye(3)[labels] + rng.normal(0, 1, (500, 3)))  # right ~70%, but very sure
        >>> fit_temperature(logits, labels) > 3
        True
    """
    z, y = _as_scores_and_labels(logits, labels, "logits")
    low, high = TEMPERATURE_RANGE
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Clamped inside too, so the line search never visits absurd temperatures.
        loss = F.cross_entropy(z / log_t.clamp(np.log(low) - 1, np.log(high) + 1).exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    value = float(log_t.detach().exp())
    if not np.isfinite(value):
        return 1.0
    if not low < value < high:
        warnings.warn(
            f"The fitted temperature reached the end of its range [{low}, {high}] (got {value:.3g}): the "
            f"calibration set is too small or too easy (e.g. every image predicted right) to calibrate on; "
            "calibrate on more held-out images",
            UserWarning,
            stacklevel=3,
        )
    return float(min(max(value, low), high))


@dataclass
class CalibrationResult:
    """What [`calibrate_model`][autotimm.evaluation.calibration.calibrate_model] fitted and how much it helped.

    Args:
        temperature: The fitted temperature, now in ``model.temperature``.
        ece_before: ECE with temperature 1.
        ece_after: ECE with the fitted temperature.
        nll_before: Mean negative log-likelihood with temperature 1.
        nll_after: Mean negative log-likelihood with the fitted temperature.
        num_samples: Number of images it was fitted on.
        n_bins: Number of ECE bins.
    """

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    num_samples: int
    n_bins: int = 15

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"Temperature scaling on {self.num_samples} images: T = {self.temperature:.4f}\n"
            f"  ECE ({self.n_bins} bins): {self.ece_before:.4f} -> {self.ece_after:.4f}\n"
            f"  NLL:          {self.nll_before:.4f} -> {self.nll_after:.4f}"
        )


def set_temperature(model: Any, temperature: float) -> None:
    """Store ``temperature`` in ``model.temperature``: in place for a tensor buffer, else as an attribute.

    Raises:
        TypeError: ``model.temperature`` is read-only (an ONNX predictor's).
    """
    current = getattr(model, "temperature", None)
    if isinstance(current, torch.Tensor):
        with torch.no_grad():
            current.fill_(float(temperature))
    else:
        try:
            model.temperature = float(temperature)
        except AttributeError as err:  # a read-only property, e.g. an exported ONNX graph's
            raise TypeError(
                f"{type(model).__name__} has a read-only `temperature`; calibrate the ImageClassifier, "
                "then export it again"
            ) from err


def calibrate_model(
    model: Any,
    data: Any,
    split: str = "val",
    batch_size: int = 32,
    n_bins: int = 15,
    progress: bool | None = None,
) -> CalibrationResult:
    """Fit temperature scaling on labelled held-out data and store ``T`` in ``model.temperature``.

    Gets the raw logits with ``model.predict_logits``, fits ``T`` with
    [`fit_temperature`][autotimm.evaluation.calibration.fit_temperature], writes it into
    the ``temperature`` buffer (so ``model.predict`` and the checkpoint that
    ``model.save`` writes use it) and reports ECE and NLL before and after.
    Use data the model was not trained on: the validation split by default.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier] (or any object
            with ``predict_logits``, ``class_names`` and ``temperature``).
        data: Labelled images, as
            [`resolve_labelled_data`][autotimm.evaluation.labelled_data.resolve_labelled_data]
            accepts: an ``ImageDataModule``, a class-folder path or ``(images, labels)``.
        split: The data module split (or sub-folder) to use.
        batch_size: Images per forward pass.
        n_bins: Number of ECE bins.
        progress: Show a progress bar (``None``: for more than a few batches).

    Returns:
        The fitted temperature and ECE/NLL before and after.

    Raises:
        ValueError: Unusable data (see ``resolve_labelled_data``), a multi-label
            model, or ``batch_size``/``n_bins`` < 1.
    """
    require_number("n_bins", n_bins, 1, integer=True)
    require_number("batch_size", batch_size, 1, integer=True)
    check_single_label(model, "calibrate")
    sources, labels = resolve_labelled_data(data, model.class_names, split=split)
    logits, _ = model.predict_logits(sources, batch_size=batch_size, progress=progress)
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) != len(labels):
        raise ValueError(f"`predict_logits` returned {len(logits)} rows for {len(labels)} labelled images")
    temperature = fit_temperature(logits, labels)
    set_temperature(model, temperature)
    return CalibrationResult(
        temperature=temperature,
        ece_before=expected_calibration_error(softmax(logits), labels, n_bins),
        ece_after=expected_calibration_error(softmax(logits, temperature), labels, n_bins),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
        num_samples=len(labels),
        n_bins=n_bins,
    )
