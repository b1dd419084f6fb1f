"""Class imbalance: class counts, balanced loss weights and per-sample weights for a weighted sampler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["balanced_class_weights", "class_counts", "sample_weights"]


def class_counts(targets: Sequence[Any], num_classes: int, multi_label: bool = False) -> np.ndarray:
    """Count samples per class; for multi-label targets, the samples having each label.

    Args:
        targets: A class index per sample, or a list of class indices per sample.
        num_classes: Number of classes.
        multi_label: Whether ``targets`` holds label lists.

    Returns:
        ``(num_classes,)`` int64 counts.

    Example:
        >>> class_counts([0, 2, 2], 3).tolist()
        [1, 0, 2]
    """
    flat = [t for ts in targets for t in ts] if multi_label else list(targets)
    return np.bincount(np.asarray(flat, dtype=np.int64), minlength=num_classes)


def balanced_class_weights(counts: Sequence[int], num_samples: int) -> torch.Tensor:
    """Per-class loss weights ``N / (C * count_c)``, as in scikit-learn's ``class_weight="balanced"``.

    A class without samples gets weight 0.

    Args:
        counts: Samples per class.
        num_samples: ``N``, the number of samples.

    Returns:
        ``(C,)`` float32 weights.

    Example:
        >>> balanced_class_weights([3, 1], 4).tolist()
        [0.6666666865348816, 2.0]
    """
    counts_t = torch.as_tensor(np.asarray(counts), dtype=torch.float32)
    weights = num_samples / (len(counts_t) * counts_t.clamp(min=1))
    return torch.where(counts_t > 0, weights, torch.zeros_like(weights))


def sample_weights(targets: Sequence[Any], num_classes: int, multi_label: bool = False) -> torch.Tensor:
    """Per-sample weights ``1 / count`` of the sample's class, so every class is drawn equally often.

    Multi-label samples take their rarest label's weight; samples without a
    label count as a class of their own.

    Args:
        targets: A class index per sample, or a list of class indices per sample.
        num_classes: Number of classes.
        multi_label: Whether ``targets`` holds label lists.

    Returns:
        ``(N,)`` float64 weights, for ``torch.utils.data.WeightedRandomSampler``.

    Example:
        >>> sample_weights([0, 0, 1], 2).tolist()
        [0.5, 0.5, 1.0]
    """
    counts = class_counts(targets, num_classes, multi_label)
    if not multi_label:
        return torch.as_tensor(1.0 / counts[np.asarray(targets, dtype=np.int64)], dtype=torch.float64)
    unlabelled = max(sum(1 for ts in targets if not ts), 1)
    weights = [max(1.0 / counts[t] for t in ts) if ts else 1.0 / unlabelled for ts in targets]
    return torch.as_tensor(weights, dtype=torch.float64)
