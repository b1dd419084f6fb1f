"""A torch ``Dataset`` over one split's sample table: decode, convert channels, transform."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from autotimm.data.bad_images import BadImageTracker, TooManyBadImagesError
from autotimm.data.decoding import decode_random_resized_crop, random_crop_decoder
from autotimm.data.images import READ_ERRORS, image_mode, read_problem
from autotimm.data.sources import SampleTable

__all__ = ["ImageDataset"]


class ImageDataset(Dataset):
    """Images of one split, as ``(image, target)`` pairs.

    Images are decoded with Pillow (files upright by their EXIF orientation, by
    ``autotimm.data.images.decode_image``) or taken from the array, converted to
    ``in_chans`` channels (``"L"`` or ``"RGB"``) and passed through ``transform``.

    With ``bad_images``, a file that fails to decode is marked there and replaced by
    the next readable sample of the split (index + 1, + 2, ..., wrapping around), so
    that one bad JPEG never stops an epoch; a marked sample is not read again.

    Args:
        table: The split's samples.
        num_classes: Number of classes (the length of multi-hot targets).
        transform: A transform from a Pillow image to a tensor; ``None`` returns
            the Pillow image.
        in_chans: 1 or 3.
        multi_label: Return float multi-hot targets ``(num_classes,)`` instead
            of an int64 class index.
        draft_size: Decode JPEG files reduced to no less than this ``(width, height)``
            (see [`eval_draft_size`][autotimm.data.decoding.eval_draft_size]); ``None``: full size.
        crop_draft: When ``transform`` starts with a random resized crop, draw the crop
            from the file's header and decode a JPEG at the largest reduction that keeps
            the crop at the output size (see
            [`decode_random_resized_crop`][autotimm.data.decoding.decode_random_resized_crop]).
        bad_images: Where files that fail to decode are marked; ``None``: such a file raises.
    """

    def __init__(
        self,
        table: SampleTable,
        num_classes: int,
        transform: Callable | None = None,
        in_chans: int = 3,
        multi_label: bool = False,
        draft_size: tuple[int, int] | None = None,
        crop_draft: bool = False,
        bad_images: BadImageTracker | None = None,
    ) -> None:
        image_mode(in_chans)  # validates in_chans
        self.table = table
        self.num_classes = num_classes
        self.transform = transform
        self.in_chans = in_chans
        self.multi_label = multi_label
        files = table.array is None and table.root is not None
        self.draft_size = draft_size if files else None
        self.crop_decoder = random_crop_decoder(transform) if crop_draft and files else None
        self.bad_images = bad_images

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

    def _decode(self, index: int) -> Image.Image:
        """Decode sample ``index`` (through the random resized crop, with ``crop_draft``)."""
        if self.crop_decoder is not None:
            return decode_random_resized_crop(self.table.path(index), self.crop_decoder.crop, self.in_chans)
        return self.table.load(index, self.in_chans, draft_size=self.draft_size)

    def _transform(self, image: Image.Image) -> object:
        if self.crop_decoder is not None:
            return self.crop_decoder.rest(image)
        return image if self.transform is None else self.transform(image)

    def __getitem__(self, index: int) -> tuple[object, torch.Tensor]:
        if self.bad_images is None:
            return self._transform(self._decode(index)), self.target(index)
        size = len(self)
        for step in range(size):
            candidate = (index + step) % size
            if self.bad_images.is_bad(candidate):
                continue
            try:
                image = self._decode(candidate)
            except READ_ERRORS as err:
                self.bad_images.mark(candidate, read_problem(err))  # raises past max_bad_fraction
                continue
            return self._transform(image), self.target(candidate)
        raise TooManyBadImagesError(f"None of the {size} {self.bad_images.split} images can be decoded")
