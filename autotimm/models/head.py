"""The classification head placed on top of a headless backbone."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """Dropout (only when ``dropout > 0``) followed by a linear layer; or, with ``hidden_features``, fastai's head.

    With ``hidden_features`` the head is fastai's ``create_head`` after the pooling:
    ``BatchNorm1d -> Dropout(dropout / 2) -> Linear(in, hidden) -> ReLU -> BatchNorm1d -> Dropout(dropout)
    -> Linear(hidden, num_classes)``. Its BatchNorm rescales the pooled features of a randomly
    initialised backbone, which a short training run from scratch benefits from (see the default
    recipe in the training guide). The last linear layer is ``fc`` in both forms.

    Args:
        in_features: Width of the backbone's pooled features.
        num_classes: Number of output logits.
        dropout: Dropout probability before the last linear layer, in ``[0, 1)``.
        hidden_features: Width of the hidden layer of the BatchNorm head, or ``None`` for one linear layer.

    Raises:
        ValueError: For a non-positive size or a dropout outside ``[0, 1)``.

    Example:
        >>> head = ClassificationHead(512, 10, dropout=0.2)
        >>> head(torch.zeros(4, 512)).shape
        torch.Size([4, 10])
        >>> ClassificationHead(512, 10, hidden_features=256).fc.in_features
        256
    """

    def __init__(
        self, in_features: int, num_classes: int, dropout: float = 0.0, hidden_features: int | None = None
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"`in_features` must be >= 1, got {in_features!r}")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        if hidden_features is not None and (not isinstance(hidden_features, int) or hidden_features < 1):
            raise ValueError(f"`hidden_features` must be an int >= 1 or None, got {hidden_features!r}")
        self.hidden: nn.Module = nn.Identity()
        if hidden_features is not None:
            self.hidden = nn.Sequential(
                nn.BatchNorm1d(in_features),
                nn.Dropout(dropout / 2) if dropout > 0 else nn.Identity(),
                nn.Linear(in_features, hidden_features, bias=False),
                nn.ReLU(inplace=True),
                nn.BatchNorm1d(hidden_features),
            )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden_features or in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map pooled features ``(N, in_features)`` to logits ``(N, num_classes)``."""
        return self.fc(self.dropout(self.hidden(features)))
