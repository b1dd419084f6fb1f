"""DataLoader defaults that are right on CPU and GPU machines."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from autotimm.data.images import usable_cores

__all__ = ["default_num_workers", "make_loader"]


def default_num_workers() -> int:
    """Loader worker processes by default: one usable core left for the main process, at most 4."""
    return min(4, max(usable_cores() - 1, 0))


def make_loader(
    dataset: Dataset, batch_size: int, num_workers: int, loader_class: type[DataLoader] = DataLoader, **kwargs: Any
) -> DataLoader:
    """Build a DataLoader with persistent workers (when there are any) and pinned memory (with CUDA).

    Args:
        dataset: The dataset.
        batch_size: Samples per batch.
        num_workers: Worker processes; 0 loads in the main process.
        loader_class: ``DataLoader`` or a subclass, e.g.
            [`ResumableDataLoader`][autotimm.data.resumable.ResumableDataLoader].
        **kwargs: Further ``DataLoader`` arguments (``shuffle``, ``sampler``, ``drop_last``).

    Returns:
        The loader.
    """
    return loader_class(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # no worker restart every epoch
        pin_memory=torch.cuda.is_available(),  # faster host-to-GPU copies; pointless without CUDA
        **kwargs,
    )
