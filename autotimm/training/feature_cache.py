"""Cached-feature linear probe: compute a frozen backbone's features once, then train the head on them.

With ``ImageClassifier(freeze_backbone=True, cache_features=True)``,
[`AutoTrainer.fit`][autotimm.AutoTrainer.fit] replaces the data by a
`FeatureDataModule`: every training and validation image goes through the
backbone once, with the evaluation transform, and each epoch after that is a
pass of the small head over in-memory tensors. The checkpoints are still the
whole model, so prediction, evaluation and export see images as usual.

Lightning has nothing like this (its data hooks cannot swap a data module for
another built from the model), so it lives here.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from rich.progress import track
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["FeatureDataModule", "FeatureDataset", "compute_features"]

CPU_CACHE_BATCH = 128  # images per batch of the cache pass on the CPU, at least
EVAL_BATCH = 1024  # cached features per validation batch, at least


@torch.inference_mode()
def compute_features(
    backbone: torch.nn.Module,
    loader: Iterable[Any],
    description: str = "Computing features",
    channels_last: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` in eval mode over ``loader`` and keep the pooled features and targets.

    Args:
        backbone: A headless timm backbone (``backbone(x)`` gives ``(N, num_features)``).
        loader: Batches of ``(images, targets)``.
        description: Label of the progress bar.
        channels_last: Run in channels-last memory format: the images, and the
            backbone's weights for the pass (their format is restored after it).
        progress: Draw a rich progress bar.
        device: Where to run the backbone (it is moved there); default: where it is.

    Returns:
        ``(features, targets)`` on the CPU, float32 features.
    """
    was_training = backbone.training
    backbone.eval()
    if device is not None:
        backbone.to(device)
    device = next(backbone.parameters()).device
    restore = channels_last and _contiguous_weights(backbone)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    features, targets = [], []
    batches = track(loader, description=description, transient=True) if progress else loader
    try:
        for images, target in batches:
            images = images.to(device)
            if channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            features.append(backbone(images).float().cpu())
            targets.append(target)
    finally:
        backbone.train(was_training)
        if restore:
            backbone.to(memory_format=torch.contiguous_format)
    if not features:
        raise ValueError("cannot cache features: the data loader gave no batches")
    return torch.cat(features), torch.cat(targets)


def _contiguous_weights(module: torch.nn.Module) -> bool:
    """Whether the module's 4-D weights (convolutions) are in the default, contiguous memory format."""
    return all(p.is_contiguous() for p in module.parameters() if p.ndim == 4)


class FeatureDataset(TensorDataset):
    """Cached ``(features, targets)`` that a DataLoader reads a whole batch at a time.

    ``TensorDataset`` indexes every sample on its own and the collate stacks
    them again; with features that costs more than the head's step.
    ``__getitems__`` (PyTorch's batched-fetch protocol) gathers a batch with
    one indexing per tensor.
    """

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, ...]]:
        """The samples of ``indices`` as views of one gathered batch, for the default collate."""
        index = torch.as_tensor(indices)
        return list(zip(*(t[index].unbind(0) for t in self.tensors), strict=True))


class FeatureDataModule(pl.LightningDataModule):
    """A data module's training and validation splits as cached backbone features.

    Training and validation batches are ``(features, targets)``; test and
    prediction batches come from the wrapped data module unchanged (images).

    Args:
        model: The model whose ``backbone`` computes the features (an
            [`ImageClassifier`][autotimm.ImageClassifier] with a frozen backbone).
        datamodule: A data module with ``eval_dataloader(split)`` (e.g.
            [`ImageDataModule`][autotimm.ImageDataModule]); both splits are read
            with the evaluation transform.
        train_dataloader: Instead of ``datamodule``: the training loader, read as it is.
        val_dataloader: The validation loader, with ``train_dataloader``.
        batch_size: Training batch size on the features; default: the data module's, or the loader's.
        cache_batch_size: Images per batch while computing the features from a
            data module (loaders are read as they are); default: ``batch_size``,
            and at least 128 when the backbone runs on the CPU, where larger
            batches run faster per image (the pass keeps no activations for a
            backward pass, so it needs far less memory than training).
        channels_last: Compute the features in channels-last memory format;
            default: on the CPU (oneDNN's convolutions are faster in it), and
            wherever the model has ``channels_last=True``.
        progress: Draw progress bars while computing.

    Raises:
        ValueError: Neither or both of ``datamodule`` and ``train_dataloader``,
            or a batch size that is not a positive integer, or a ``channels_last``
            that is not a bool.

    Validation batches hold up to 1024 features: their metrics and loss do not
    depend on the batch size, and fewer steps cost less.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        datamodule: pl.LightningDataModule | None = None,
        train_dataloader: Any = None,
        val_dataloader: Any = None,
        batch_size: int | None = None,
        cache_batch_size: int | None = None,
        channels_last: bool | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if (datamodule is None) == (train_dataloader is None):
            raise ValueError("FeatureDataModule needs either `datamodule` or `train_dataloader`, not both or neither")
        from autotimm.checks import require_number  # here: autotimm.checks imports this module

        for name, value in (("batch_size", batch_size), ("cache_batch_size", cache_batch_size)):
            if value is not None:
                require_number(name, value, 1, integer=True)
        if channels_last not in (None, True, False):
            raise ValueError(f"`channels_last` must be True, False or None (the default), got {channels_last!r}")
        self.model = model
        self.source = datamodule
        self._loaders = {"train": train_dataloader, "val": val_dataloader}
        self.batch_size = batch_size or getattr(datamodule or train_dataloader, "batch_size", None) or 32
        self.cache_batch_size = cache_batch_size
        self.channels_last = channels_last
        self.progress = progress
        self.features: dict[str, FeatureDataset] = {}
        self.seconds = 0.0

    def _split_loader(self, split: str, cpu: bool) -> Any:
        if self.source is None:
            return self._loaders[split]
        if split == "val" and "val" not in getattr(self.source, "splits", ["val"]):
            return None
        if "batch_size" not in inspect.signature(self.source.eval_dataloader).parameters:
            return self.source.eval_dataloader(split)
        batch_size = self.cache_batch_size or (max(self.batch_size, CPU_CACHE_BATCH) if cpu else self.batch_size)
        return self.source.eval_dataloader(split, batch_size=batch_size)

    def setup(self, stage: str | None = None) -> None:
        """Compute the features of the training and validation splits (once)."""
        if self.features:
            return
        if self.source is not None:
            self.source.setup(stage)
        start = time.perf_counter()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        cpu = torch.device(device or next(self.model.backbone.parameters()).device).type == "cpu"
        channels_last = self.channels_last
        if channels_last is None:
            channels_last = cpu or bool(getattr(self.model, "hparams", {}).get("channels_last", False))
        for split in ("train", "val"):
            loader = self._split_loader(split, cpu)
            if loader is None or (isinstance(loader, (list, tuple)) and not loader):
                continue
            tensors = compute_features(
                self.model.backbone, loader, f"Caching {split} features", channels_last, self.progress, device
            )
            self.features[split] = FeatureDataset(*tensors)
        self.seconds = time.perf_counter() - start
        sizes = ", ".join(f"{len(ds)} {split}" for split, ds in self.features.items())
        rank_zero_info(f"Cached backbone features of {sizes} images in {self.seconds:.1f}s")

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of cached training features (the last partial batch dropped, as for images)."""
        dataset = self.features["train"]
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=len(dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Batches of cached validation features; an empty list without a validation split."""
        if "val" not in self.features:
            return []
        return DataLoader(self.features["val"], batch_size=max(self.batch_size, EVAL_BATCH))

    def test_dataloader(self) -> Any:
        """The wrapped data module's test images."""
        if self.source is None:
            raise ValueError("FeatureDataModule built from loaders has no test data; pass the test loader to test()")
        return self.source.test_dataloader()

    def predict_dataloader(self) -> Any:
        """The wrapped data module's prediction images."""
        if self.source is None:
            raise ValueError("FeatureDataModule built from loaders has no prediction data")
        return self.source.predict_dataloader()
