"""Training losses: focal loss (single- and multi-label) and the loss names `ImageClassifier` accepts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from autotimm.checks import require_number

__all__ = ["LOSSES", "FocalLoss", "check_loss", "focal_loss"]

#: The loss names [`ImageClassifier`][autotimm.ImageClassifier]'s ``loss`` accepts.
LOSSES = ("cross_entropy", "focal")


def check_loss(loss: object, focal_gamma: object) -> None:
    """Validate a loss name and the focal loss's ``gamma``.

    Args:
        loss: One of [`LOSSES`][autotimm.training.losses.LOSSES].
        focal_gamma: The focusing parameter (>= 0).

    Raises:
        ValueError: Naming the argument, the value and what is accepted.
    """
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {', '.join(map(repr, LOSSES))}; got {loss!r}")
    require_number("focal_gamma", focal_gamma, 0, hint="0 is the plain cross-entropy")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    multi_label: bool = False,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""Focal loss (Lin et al., 2017), reduced like torch's cross-entropy so that ``gamma=0`` is exactly that.

    Single-label: ``-sum_c w_c t_c (1 - p_c)^gamma log p_c`` with ``p = softmax(logits)``
    and ``t`` the one-hot (or soft, e.g. mixed) target; with class indices the
    batch mean is weighted by ``w_y`` (as ``nn.CrossEntropyLoss(weight=w)``),
    with soft targets it is the plain mean. Multi-label: per class,
    ``-w_c [t (1 - p)^gamma log p + (1 - t) p^gamma log(1 - p)]`` with
    ``p = sigmoid(logits)``, averaged over every element (as
    ``nn.BCEWithLogitsLoss(weight=w)``).

    torch and timm ship no softmax focal loss, and torchvision's
    ``sigmoid_focal_loss`` takes one scalar ``alpha``, not a weight per class:
    hence this function.

    Args:
        logits: ``(N, C)`` raw scores.
        target: ``(N,)`` class indices, or ``(N, C)`` probabilities / multi-hot targets.
        gamma: The focusing parameter (>= 0); larger values down-weight easy examples.
        weight: Per-class weights ``alpha`` ``(C,)``, or ``None``.
        multi_label: Sigmoid per class instead of a softmax over classes.
        label_smoothing: Single-label only: mix the one-hot target with the uniform one, in ``[0, 1)``.

    Returns:
        The scalar loss.

    Example:
        >>> logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
        >>> bool(torch.isclose(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target)))
        True
    """
    if multi_label:
        target = target.float()
        log_p, log_not_p = F.logsigmoid(logits), F.logsigmoid(-logits)
        p = log_p.exp()
        loss = -(target * (1 - p).pow(gamma) * log_p + (1 - target) * p.pow(gamma) * log_not_p)
        if weight is not None:
            loss = loss * weight.to(loss.dtype)
        return loss.mean()
    log_p = F.log_softmax(logits, dim=1)
    modulated = -(1 - log_p.exp()).pow(gamma) * log_p  # (N, C): each class's focal term
    if weight is not None:
        modulated = modulated * weight.to(modulated.dtype)
    num_classes = logits.shape[1]
    if target.ndim == 1 and label_smoothing == 0:
        per_sample = modulated.gather(1, target[:, None]).squeeze(1)
        if weight is None:
            return per_sample.mean()
        return per_sample.sum() / weight.to(modulated.dtype)[target].sum()
    soft = F.one_hot(target, num_classes).to(logits.dtype) if target.ndim == 1 else target.to(logits.dtype)
    soft = soft * (1 - label_smoothing) + label_smoothing / num_classes
    per_sample = (soft * modulated).sum(1)
    if target.ndim == 1 and weight is not None:  # torch's convention for smoothed class indices
        return per_sample.sum() / weight.to(modulated.dtype)[target].sum()
    return per_sample.mean()


class FocalLoss(nn.Module):
    """The [`focal_loss`][autotimm.training.losses.focal_loss] as a module, like ``nn.CrossEntropyLoss``.

    Args:
        gamma: The focusing parameter (>= 0).
        weight: Per-class weights (``alpha``), e.g. [`ImageClassifier`][autotimm.ImageClassifier]'s ``class_weights``.
        multi_label: Sigmoid per class instead of a softmax over classes.
        label_smoothing: Single-label only, in ``[0, 1)``.

    Raises:
        ValueError: ``gamma`` < 0 or ``label_smoothing`` outside ``[0, 1)``.

    Example:
        >>> criterion = FocalLoss(gamma=2.0)
        >>> round(float(criterion(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))), 4)  # 0.5**2 * log(2)
        0.1733
    """

    def __init__(
        self,
        gamma: float = 2.0,
        weight: torch.Tensor | Sequence[float] | None = None,
        multi_label: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        require_number("gamma", gamma, 0)
        require_number("label_smoothing", label_smoothing, 0, 1)
        self.gamma = float(gamma)
        self.multi_label = multi_label
        self.label_smoothing = float(label_smoothing)
        self.weight: torch.Tensor | None
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` ``(N, C)`` against ``target`` (class indices or ``(N, C)`` targets)."""
        return focal_loss(logits, target, self.gamma, self.weight, self.multi_label, self.label_smoothing)

    def extra_repr(self) -> str:
        """The settings, shown in the module's repr."""
        return f"gamma={self.gamma}, multi_label={self.multi_label}, label_smoothing={self.label_smoothing}"
