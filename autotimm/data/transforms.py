"""Preprocessing from the backbone's pretrained config, and training augmentation presets built with timm."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import timm.data
from torch import nn
from torchvision import transforms as T

from autotimm.checks import is_int
from autotimm.data.images import crop_padding

__all__ = [
    "AUGMENTATION_PRESETS",
    "SMALL_IMAGE_SIZE",
    "backbone_in_chans",
    "build_eval_transform",
    "build_train_transform",
    "check_augmentation",
    "check_image_size",
    "list_augmentation_presets",
    "make_data_config",
    "resolve_augmentation",
]

#: Images at most this many pixels on their longer side count as small: ``"auto"`` augments them with ``"none"``,
#: and ``auto_fit`` picks small-image candidates for them.
SMALL_IMAGE_SIZE = 64

#: Training augmentation presets, and the timm ``auto_augment`` policy of each.
AUGMENTATION_PRESETS: dict[str, str | None] = {
    "auto": None,
    "none": None,
    "light": None,
    "crop_flip": None,
    "randaugment": "rand-m9-mstd0.5-inc1",
    "autoaugment": "original",
    "trivialaugment": None,
    "augmix": "augmix-m5-w4-d2",
}


def list_augmentation_presets() -> list[str]:
    """Return the names accepted by ``augmentation=``.

    Example:
        >>> list_augmentation_presets()
        ['auto', 'none', 'light', 'crop_flip', 'randaugment', 'autoaugment', 'trivialaugment', 'augmix']
    """
    return list(AUGMENTATION_PRESETS)


def check_augmentation(augmentation: str) -> None:
    """Check a preset name.

    Raises:
        ValueError: Unknown preset; the message lists the presets.
    """
    if augmentation not in AUGMENTATION_PRESETS:
        raise ValueError(
            f"`augmentation` must be one of {list_augmentation_presets()} or a custom transform "
            f"(a callable from a Pillow image to a tensor), got {augmentation!r}"
        )


def resolve_augmentation(augmentation: str, data_config: dict[str, Any]) -> str:
    """The preset that ``augmentation`` stands for at the input size of ``data_config``.

    Every preset is itself except ``"auto"``, the default of
    [`ImageDataModule`][autotimm.ImageDataModule]: ``"none"`` for small images
    (at most `SMALL_IMAGE_SIZE` = 64 px on the longer side), ``"light"`` (random
    resized crop and flip) for larger ones. Measured by ``benchmarks/recipes.py``
    (3 seeds, resnet18 from scratch, 3 epochs of scikit-learn's digits at 32 px):
    a random resized crop down to 8% of the area leaves 0.47-0.56 validation
    accuracy, the pad-and-crop ``"crop_flip"`` 0.88 and no augmentation 0.96. At
    short budgets a small image has too few pixels to lose; over long runs an
    explicit ``"crop_flip"`` is the better choice for small images.

    Args:
        augmentation: A name from `list_augmentation_presets`.
        data_config: From [`make_data_config`][autotimm.data.make_data_config].

    Returns:
        A preset name other than ``"auto"``.

    Raises:
        ValueError: Unknown preset.

    Example:
        >>> small, large = make_data_config(image_size=32), make_data_config(image_size=224)
        >>> resolve_augmentation("auto", small), resolve_augmentation("auto", large)
        ('none', 'light')
    """
    check_augmentation(augmentation)
    if augmentation != "auto":
        return augmentation
    return "none" if max(data_config["input_size"][1:]) <= SMALL_IMAGE_SIZE else "light"


def _per_channel(values: Sequence[float], in_chans: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:  # an RGB-pretrained model fed grayscale: the average statistic
        return [sum(values) / len(values)]
    raise ValueError(f"Cannot adapt {len(values)}-channel normalisation statistics to in_chans={in_chans}")


def check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``image_size`` as ``(height, width)``.

    Raises:
        ValueError: Not a positive int or a pair of them.
    """
    size = (image_size, image_size) if is_int(image_size) else tuple(image_size)
    if len(size) != 2 or not all(is_int(s) and s > 0 for s in size):
        raise ValueError(f"`image_size` must be a positive int or an (height, width) pair, got {image_size!r}")
    return int(size[0]), int(size[1])


def make_data_config(
    backbone: nn.Module | None = None, in_chans: int = 3, image_size: int | Sequence[int] | None = None
) -> dict[str, Any]:
    """Resolve the preprocessing of a backbone with timm, as plain JSON-serialisable data.

    Input size, mean, std, interpolation and crop fraction come from the
    model's ``pretrained_cfg`` through ``timm.data.resolve_data_config``, or
    timm's defaults (224 px, ImageNet statistics) without a backbone. Mean and
    std are adapted to ``in_chans`` (averaged for one channel).

    Args:
        backbone: A timm model, or ``None`` for timm's defaults.
        in_chans: Channels of the input images.
        image_size: Overrides the model's input size: an int or ``(height, width)``.

    Returns:
        ``{"input_size": [C, H, W], "mean": [...], "std": [...],
        "interpolation": str, "crop_pct": float, "crop_mode": str}``.

    Example:
        >>> config = make_data_config(in_chans=1, image_size=64)
        >>> config["input_size"] == [1, 64, 64], config["interpolation"]
        (True, 'bicubic')
    """
    if backbone is not None:
        config = timm.data.resolve_data_config({}, model=backbone)
    else:
        config = timm.data.resolve_data_config({"in_chans": in_chans})
    height, width = config["input_size"][-2:] if image_size is None else check_image_size(image_size)
    return {
        "input_size": [in_chans, int(height), int(width)],
        "mean": _per_channel(config["mean"], in_chans),
        "std": _per_channel(config["std"], in_chans),
        "interpolation": str(config["interpolation"]),
        "crop_pct": float(config["crop_pct"]),
        "crop_mode": str(config.get("crop_mode", "center")),
    }


def backbone_in_chans(backbone: nn.Module) -> int | None:
    """Return the input channels of a timm model, read from its first convolution (``None`` if it has none)."""
    first = (getattr(backbone, "pretrained_cfg", None) or {}).get("first_conv")
    names = [first] if isinstance(first, str) else list(first or [])
    for name in names:
        try:
            return int(backbone.get_submodule(name).in_channels)
        except (AttributeError, TypeError):
            continue
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else int(conv.in_channels)


def _timm_args(data_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_size": tuple(data_config["input_size"]),
        "mean": tuple(data_config["mean"]),
        "std": tuple(data_config["std"]),
        "interpolation": data_config["interpolation"],
    }


def build_eval_transform(data_config: dict[str, Any]) -> Callable:
    """Return timm's evaluation transform: resize, center crop (``crop_pct``), to tensor, normalise.

    Args:
        data_config: From [`make_data_config`][autotimm.data.make_data_config].

    Returns:
        A transform from a Pillow image to a ``(C, H, W)`` float tensor.
    """
    return timm.data.create_transform(
        **_timm_args(data_config),
        is_training=False,
        crop_pct=data_config["crop_pct"],
        crop_mode=data_config.get("crop_mode"),
    )


def build_train_transform(augmentation: str, data_config: dict[str, Any]) -> Callable:
    """Return the training transform of a preset.

    - ``"auto"``: ``"none"`` for images of at most 64 px on their longer side,
      else ``"light"`` (see `resolve_augmentation`).
    - ``"none"``: the evaluation transform, no randomness.
    - ``"light"``: random resized crop and horizontal flip.
    - ``"crop_flip"``: the evaluation resize, then zero padding (1/14 of the
      shorter side, at least 2 px), a random crop back to the input size and a
      horizontal flip: the classic recipe of small images (MNIST, CIFAR), whose
      objects a random *resized* crop would zoom out of the frame.
    - ``"randaugment"``, ``"autoaugment"``, ``"augmix"``: the crop and flip plus
      timm's policy (``rand-m9-mstd0.5-inc1``, ``original``, ``augmix-m5-w4-d2``).
    - ``"trivialaugment"``: the crop and flip plus torchvision's ``TrivialAugmentWide``.

    The others use timm's ``create_transform`` with the random resized crop
    defaults (scale 0.08-1, ratio 3/4-4/3) and no colour jitter.

    Args:
        augmentation: A name from [`list_augmentation_presets`][autotimm.data.list_augmentation_presets].
        data_config: From [`make_data_config`][autotimm.data.make_data_config].

    Returns:
        A transform from a Pillow image to a ``(C, H, W)`` float tensor.

    Raises:
        ValueError: Unknown preset.
    """
    augmentation = resolve_augmentation(augmentation, data_config)
    if augmentation == "none":
        return build_eval_transform(data_config)
    if augmentation == "crop_flip":
        # timm has no pad-and-crop recipe: torchvision's crop and flip go before the eval transform's to-tensor stage.
        stages = list(build_eval_transform(data_config).transforms)
        at = next(i for i, t in enumerate(stages) if type(t).__name__ in ("ToTensor", "MaybeToTensor", "PILToTensor"))
        size = tuple(data_config["input_size"][1:])
        crop_flip = [T.RandomCrop(size, padding=crop_padding(*size)), T.RandomHorizontalFlip()]
        return T.Compose([*stages[:at], *crop_flip, *stages[at:]])
    args = dict(**_timm_args(data_config), is_training=True, color_jitter=None)
    if augmentation == "trivialaugment":
        # timm has no TrivialAugment; torchvision's goes between timm's crop/flip and its tensor/normalise stages.
        crop_flip, _, to_tensor = timm.data.create_transform(**args, separate=True)
        return T.Compose([*crop_flip.transforms, T.TrivialAugmentWide(), *to_tensor.transforms])
    return timm.data.create_transform(**args, auto_augment=AUGMENTATION_PRESETS[augmentation])
