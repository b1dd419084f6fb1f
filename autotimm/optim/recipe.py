"""The optimization rules of the default recipe: the learning rate when none is given.

The rules were measured by ``benchmarks/recipes.py`` (see the "Default recipe" table of the training guide):
a resnet18 trained from scratch for a few epochs learns far more at AdamW's ``3e-3`` than at ``1e-3``
(scikit-learn's digits at 16 px, 3 epochs: 0.98 against 0.92 validation accuracy), while fine-tuning
pretrained weights keeps ``1e-3``, which does not wash out what the weights know. The rate does not scale
with the batch size: scaled linearly from 64 to 128 it did worse from scratch and better, though still far
below batch 64, when fine-tuning (3 seeds each), so no batch-size rule was adopted. ``auto_fit``'s AdamW
recipe and its learning-rate ranges start from the same rule (``autotimm.auto.recipes``).
"""

from __future__ import annotations

__all__ = ["FROM_SCRATCH_LR", "PRETRAINED_LR", "default_lr"]

#: The default learning rate of a backbone trained from random weights.
FROM_SCRATCH_LR = 3e-3
#: The default learning rate of a backbone that starts from pretrained weights.
PRETRAINED_LR = 1e-3


def default_lr(pretrained: bool) -> float:
    """The learning rate `ImageClassifier` trains with when ``lr`` is not given.

    Args:
        pretrained: Whether the backbone starts from pretrained weights (hub weights or a ``checkpoint_path``).

    Returns:
        `PRETRAINED_LR` for pretrained weights, else `FROM_SCRATCH_LR`.

    Example:
        >>> default_lr(pretrained=False), default_lr(pretrained=True)
        (0.003, 0.001)
    """
    return PRETRAINED_LR if pretrained else FROM_SCRATCH_LR
