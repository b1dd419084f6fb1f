"""Generated, learnably separable images for demos, tests and benchmarks."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

__all__ = ["make_synthetic_dataset"]


def make_synthetic_dataset(
    num_classes: int = 4,
    samples_per_class: int = 32,
    image_size: int = 32,
    channels: int = 3,
    noise: float = 0.5,
    seed: int = 0,
    pattern_seed: int = 0,
) -> TensorDataset:
    """Make images whose class is a fixed random colour-and-stripe pattern plus noise.

    Each class has its own smooth template (a colour per channel and a stripe
    orientation); samples are that template plus Gaussian noise, so the classes
    are separable but not trivially identical.

    Args:
        num_classes: Number of classes (>= 2).
        samples_per_class: Images per class (>= 1).
        image_size: Height and width in pixels (>= 4).
        channels: Image channels.
        noise: Standard deviation of the per-pixel noise.
        seed: Seed of the noise and order; use different seeds for train and
            validation sets of the same task.
        pattern_seed: Seed of the class templates, i.e. of the task itself.

    Returns:
        A ``TensorDataset`` of float images ``(N, channels, size, size)`` and
        int64 labels ``(N,)``, shuffled.

    Raises:
        ValueError: For sizes out of range.

    Example:
        >>> images, labels = make_synthetic_dataset(num_classes=3, samples_per_class=2, image_size=8).tensors
        >>> images.shape, labels.tolist().count(0)
        (torch.Size([6, 3, 8, 8]), 2)
    """
    for name, value, low in (
        ("num_classes", num_classes, 2),
        ("samples_per_class", samples_per_class, 1),
        ("image_size", image_size, 4),
        ("channels", channels, 1),
    ):
        if value < low:
            raise ValueError(f"`{name}` must be >= {low}, got {value!r}")
    gen = torch.Generator().manual_seed(pattern_seed)
    coords = torch.linspace(-1.0, 1.0, image_size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    templates = []
    for _ in range(num_classes):
        angle = torch.rand((), generator=gen) * torch.pi
        freq = 2.0 + 3.0 * torch.rand((), generator=gen)
        stripes = torch.sin(freq * torch.pi * (xx * torch.cos(angle) + yy * torch.sin(angle)))
        colour = torch.randn(channels, 1, 1, generator=gen)
        templates.append(colour + stripes)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    images = torch.stack(templates)[labels]
    images = images + noise * torch.randn(images.shape, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    return TensorDataset(images[order].float(), labels[order])
