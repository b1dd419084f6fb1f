"""Training recipes of the search: the optimizer, schedule and speed settings every run of one search shares.

A [`SearchSpace`][autotimm.auto.presets.SearchSpace] names its recipe; the
hyper-parameters a trial draws (learning rate, weight decay, ...) come on top.

The AdamW recipe starts from the default recipe's rules (the "Default recipe" table of the training
guide): its learning rates are [`default_lr`][autotimm.optim.default_lr]'s, ``3e-3`` from scratch and
``1e-3`` for pretrained weights, the same an ``ImageClassifier`` trains with when ``lr`` is not given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autotimm.optim.recipe import default_lr

__all__ = ["ADAMW_COSINE", "SGD_ONECYCLE", "Recipe"]


@dataclass(frozen=True)
class Recipe:
    """How every run of a search trains, besides the hyper-parameters it draws.

    Args:
        optimizer: A name from ``list_optimizers()``.
        optimizer_kwargs: Its extra arguments.
        scheduler: A name from ``list_schedulers()``.
        scheduler_kwargs: Its extra arguments.
        lr: Learning rate of the default configuration (the first trial, or the only run) of a backbone
            trained from scratch; by default the rule's, ``default_lr(pretrained=False)``.
        pretrained_lr: The same for pretrained weights (``auto_fit(pretrained=True)``); ``None``: ``lr``.
            By default the rule's, ``default_lr(pretrained=True)``.
        weight_decay: Weight decay of the default configuration.
        channels_last: Train in channels-last memory format (faster convolutions).
        cpu_bf16: Train under bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), unless
            ``trainer_kwargs`` name a ``precision``.
        lr_batch_size: The batch size ``lr`` is meant for: larger batches scale it linearly (the linear
            scaling rule of Goyal et al., 2017); ``None``: the same rate at every batch size.
    """

    optimizer: str = "adamw"
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    scheduler: str = "cosine"
    scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    lr: float = default_lr(pretrained=False)
    pretrained_lr: float | None = default_lr(pretrained=True)
    weight_decay: float = 1e-4
    channels_last: bool = True
    cpu_bf16: bool = False
    lr_batch_size: int | None = None

    def base_lr(self, pretrained: bool, batch_size: int | None = None) -> float:
        """The learning rate of the default configuration, by the weights the backbone starts from.

        Args:
            pretrained: Whether the backbone starts from pretrained weights.
            batch_size: The runs' batch size: above ``lr_batch_size`` the rate grows with it.

        Returns:
            ``pretrained_lr`` (or ``lr`` when it is ``None``) for pretrained weights, else ``lr``;
            times ``batch_size / lr_batch_size`` when that is above 1.

        Example:
            >>> ADAMW_COSINE.base_lr(pretrained=False), ADAMW_COSINE.base_lr(pretrained=True)
            (0.003, 0.001)
            >>> SGD_ONECYCLE.base_lr(pretrained=True), SGD_ONECYCLE.base_lr(False, batch_size=512)
            (0.2, 0.4)
        """
        lr = self.pretrained_lr if pretrained and self.pretrained_lr is not None else self.lr
        if self.lr_batch_size is not None and batch_size is not None and batch_size > self.lr_batch_size:
            lr *= batch_size / self.lr_batch_size
        return lr

    def model_kwargs(self) -> dict[str, Any]:
        """The `ImageClassifier` arguments of the recipe (the drawn ``lr`` and ``weight_decay`` excluded)."""
        return {
            "optimizer": self.optimizer,
            "optimizer_kwargs": dict(self.optimizer_kwargs),
            "scheduler": self.scheduler,
            "scheduler_kwargs": dict(self.scheduler_kwargs),
            "channels_last": self.channels_last,
        }


#: AdamW with a cosine schedule: the recipe of fine-tuning and of larger images, at the default rules'
#: learning rates (``default_lr``).
ADAMW_COSINE = Recipe()
#: From-scratch small images on a CPU: SGD with Nesterov momentum under a one-cycle schedule, channels-last, bf16.
#: On Fashion-MNIST it took a 0.4 M-parameter ResNet to 93.4% test accuracy in 30 epochs (9 CPU-minutes).
SGD_ONECYCLE = Recipe(
    optimizer="sgd",
    optimizer_kwargs={"nesterov": True},
    scheduler="onecycle",
    scheduler_kwargs={"pct_start": 0.25, "final_div_factor": 1e3},
    lr=0.2,
    pretrained_lr=None,
    weight_decay=5e-4,
    channels_last=True,
    cpu_bf16=True,
    lr_batch_size=256,
)
