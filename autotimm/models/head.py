"""The classification head placed on top of a headless backbone."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ClassificationHead"]


class ClassificationHead(nn.Module):
    """Dropout (only when ``dropout > 0``) followed by a linear layer.

    Args:
        in_features: Width of the backbone's pooled features.
        num_classes: Number of output logits.
        dropout: Dropout probability before the linear layer, in ``[0, 1)``.

    Raises:
        ValueError: For a non-positive size or a dropout outside ``[0, 1)``.

    Example:
        >>> head = ClassificationHead(512, 10, dropout=0.2)
        >>> head(torch.zeros(4, 512)).shape
        torch.Size([4, 10])
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"`in_features` must be >= 1, got {in_features!r}")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be >= 1, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map pooled features ``(N, in_features)`` to logits ``(N, num_classes)``."""
        return self.fc(self.dropout(features))
