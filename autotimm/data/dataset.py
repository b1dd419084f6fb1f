"""A torch ``Dataset`` over one split's sample table: decode, convert channels, transform."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Dataset

from autotimm.data.images import image_mode
from autotimm.data.sources import SampleTable

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Images of one split, as ``(image, target)`` pairs.

    Images are decoded with Pillow (files upright by their EXIF orientation, by
    ``autotimm.data.images.decode_image``) or taken from the array, converted to
    ``in_chans`` channels (``"L"`` or ``"RGB"``) and passed through ``transform``.

    Args:
        table: The split's samples.
        num_classes: Number of classes (the length of multi-hot targets).
        transform: A transform from a Pillow image to a tensor; ``None`` returns
            the Pillow image.
        in_chans: 1 or 3.
        multi_label: Return float multi-hot targets ``(num_classes,)`` instead
            of an int64 class index.
    """

    def __init__(
        self,
        table: SampleTable,
        num_classes: int,
        transform: Callable | None = None,
        in_chans: int = 3,
        multi_label: bool = False,
    ) -> None:
        image_mode(in_chans)  # validates in_chans
        self.table = table
        self.num_classes = num_classes
        self.transform = transform
        self.in_chans = in_chans
        self.multi_label = multi_label

    def __len__(self) -> int:
        return len(self.table)

    def target(self, index: int) -> torch.Tensor:
        """Return the target of sample ``index``: an int64 scalar, or a float multi-hot vector."""
        labels = self.table.targets[index]
        if not self.multi_label:
            return torch.tensor(labels, dtype=torch.int64)
        target = torch.zeros(self.num_classes)
        target[list(labels)] = 1.0
        return target

    def __getitem__(self, index: int) -> tuple[object, torch.Tensor]:
        image = self.table.load(index, self.in_chans)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.target(index)
