"""Batched tensor loading of in-memory images: a whole batch decoded, augmented and normalised at once.

Array sources (MNIST, CIFAR, ``images=`` arrays) already hold uint8 pixels.
Sending each image through Pillow and torchvision one at a time costs ~20x
more than the same work done on the whole batch with tensor ops, which is
half of an epoch for a small model on a CPU. No library we use batches the
per-sample transforms of a map-style dataset (timm and torchvision work per
image; DALI and kornia would be new dependencies), so this module does the
two cases it needs itself:

- evaluation (and ``augmentation="none"``): scale to [0, 1] and normalise,
  equal to ``ToTensor`` + ``Normalize`` on the same pixels;
- ``augmentation="crop_flip"``: zero-pad, random crop back to the input size,
  random horizontal flip, then normalise, as ``RandomCrop(padding=p)`` +
  ``RandomHorizontalFlip`` do.

It applies only when the images are already at the input size (no resize)
and the channels need at most a grey-to-RGB copy; everything else keeps the
Pillow path. The DataLoader calls ``__getitems__`` with a batch of indices
(PyTorch's batched-fetch protocol), so samplers, Lightning's distributed
sampler and the default collate all work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from autotimm.data.dataset import ImageDataset
from autotimm.data.images import crop_padding
from autotimm.data.sources import SampleTable

__all__ = ["BATCHED_AUGMENTATIONS", "ArrayBatchDataset", "supports_batched_arrays"]

#: Augmentation presets the batched path reproduces (the evaluation transform always).
BATCHED_AUGMENTATIONS = ("none", "crop_flip")


def supports_batched_arrays(table: SampleTable, data_config: dict[str, Any], in_chans: int) -> bool:
    """Whether the batched path reproduces the Pillow path for ``table``.

    True for array tables whose images are already at the input size and whose
    channels are 1 (grey, fed as 1 or 3 channels) or 3 (fed as 3).
    """
    array = table.array
    if array is None or array.dtype.name != "uint8":
        return False
    channels = 1 if array.ndim == 3 else array.shape[3]
    _, height, width = data_config["input_size"]
    return tuple(array.shape[1:3]) == (height, width) and (channels, in_chans) in {(1, 1), (1, 3), (3, 3)}


class ArrayBatchDataset(ImageDataset):
    """The images of an array table, loaded a batch at a time with tensor ops.

    Use it only where [`supports_batched_arrays`][autotimm.data.array_batches.supports_batched_arrays]
    holds. ``dataset[i]`` gives one ``(image, target)`` pair as `ImageDataset`
    does; a DataLoader fetches whole batches through ``__getitems__``.

    Args:
        table: The split's samples (an array table).
        num_classes: Number of classes (the length of multi-hot targets).
        data_config: The preprocessing (``mean`` and ``std`` are used).
        in_chans: 1 or 3.
        multi_label: Float multi-hot targets instead of class indices.
        augment: Pad, random-crop and flip (``"crop_flip"``); ``False`` only normalises.
    """

    def __init__(
        self,
        table: SampleTable,
        num_classes: int,
        data_config: dict[str, Any],
        in_chans: int = 3,
        multi_label: bool = False,
        augment: bool = False,
    ) -> None:
        super().__init__(table, num_classes, None, in_chans, multi_label)
        self.augment = augment
        _, height, width = data_config["input_size"]
        self.padding = crop_padding(height, width) if augment else 0
        self.mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.rows = torch.as_tensor(table.items, dtype=torch.int64)
        self.pixels = torch.from_numpy(table.array)  # shares the array's memory
        self.labels = None if multi_label else torch.as_tensor(table.targets, dtype=torch.int64)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the images ``(B, C, H, W)`` (float32, normalised) and targets of ``indices``."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        x = self.pixels[self.rows[index]]
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        if self.augment:
            x = self._crop_flip(x)
        x = x.float().div_(255)  # as ToTensor
        if x.shape[1] < self.in_chans:  # grey fed to a 3-channel model, as Pillow's "RGB" conversion
            x = x.expand(-1, self.in_chans, -1, -1)
        x = ((x - self.mean) / self.std).contiguous()  # as Normalize
        if self.labels is not None:
            return x, self.labels[index]
        return x, torch.stack([self.target(int(i)) for i in index])

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        count, channels, height, width = x.shape
        pad = self.padding
        x = F.pad(x, (pad, pad, pad, pad))
        top = torch.randint(0, 2 * pad + 1, (count, 1, 1, 1))
        left = torch.randint(0, 2 * pad + 1, (count, 1, 1, 1))
        rows = top + torch.arange(height).view(1, 1, -1, 1)
        cols = left + torch.arange(width).view(1, 1, 1, -1)
        x = x[torch.arange(count).view(-1, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1), rows, cols]
        flip = torch.rand(count).view(-1, 1, 1, 1) < 0.5
        return torch.where(flip, x.flip(3), x)

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The samples of ``indices`` as a list of pairs (views of one batch), for the default collate."""
        images, targets = self.batch(indices)
        return list(zip(images.unbind(0), targets.unbind(0), strict=True))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = self.batch([index])
        return images[0], targets[0]
