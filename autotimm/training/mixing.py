"""Batch mixing for training: mixup and cutmix."""

from __future__ import annotations

import torch
from timm.data.mixup import cutmix_bbox_and_lam, mixup_target

__all__ = ["mix_batch"]


def mix_batch(
    x: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    switch_prob: float = 0.5,
    multi_label: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with itself in reverse order, as timm's ``Mixup`` does in "batch" mode.

    timm's ``Mixup`` class is not used because it asserts an even batch size,
    and the last batch of an epoch is often odd; its maths (``mixup_target``,
    ``cutmix_bbox_and_lam``) is. With both alphas set, each batch uses cutmix
    with probability ``switch_prob`` and mixup otherwise.

    Args:
        x: Images ``(N, C, H, W)``.
        target: Class indices ``(N,)``, or multi-hot ``(N, num_classes)`` when
            ``multi_label``.
        num_classes: Number of classes.
        mixup_alpha: Beta(alpha, alpha) parameter of mixup; 0 disables it.
        cutmix_alpha: Beta(alpha, alpha) parameter of cutmix; 0 disables it.
        switch_prob: Probability of cutmix when both are enabled.
        multi_label: Whether ``target`` is multi-hot.

    Returns:
        The mixed images and soft targets ``(N, num_classes)``, weighted by the
        mixing proportion (for cutmix, the pasted area).

    Example:
        >>> images, soft = mix_batch(torch.zeros(3, 3, 8, 8), torch.tensor([0, 1, 2]), 3, mixup_alpha=0.2)
        >>> soft.shape, bool(torch.allclose(soft.sum(1), torch.ones(3)))
        (torch.Size([3, 3]), True)
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mix_batch needs mixup_alpha > 0 or cutmix_alpha > 0")
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or float(torch.rand(())) < switch_prob)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    if use_cutmix:
        (y0, y1, x0, x1), lam = cutmix_bbox_and_lam(x.shape, lam)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x.flip(0)[:, :, y0:y1, x0:x1]
    else:
        x = x * lam + x.flip(0) * (1.0 - lam)
    dense = target.float() if multi_label else target
    return x, mixup_target(dense, num_classes, lam=lam, multi_label=multi_label)
