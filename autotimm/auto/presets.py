"""Presets of the time-budgeted search: candidate backbones, search spaces, budget rules, and the time limit.

A preset names two candidate lists (for small and for larger images), the
hyper-parameter search space, and the numbers of the budget rule that
[`plan_search`][autotimm.auto.presets.plan_search] applies. Everything here is
plain data and pure functions; the measuring is in ``autotimm.auto.timing``.
"""

from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from autotimm.auto.recipes import ADAMW_COSINE, SGD_ONECYCLE, Recipe
from autotimm.data.transforms import SMALL_IMAGE_SIZE
from autotimm.optim.recipe import default_lr

__all__ = [
    "PRESETS",
    "SMALL_IMAGE_MAX",
    "Preset",
    "SearchPlan",
    "SearchSpace",
    "choose_batch_size",
    "choose_image_size",
    "get_preset",
    "list_presets",
    "parse_time_limit",
    "plan_search",
    "rule_lr_range",
]

#: Images at most this many pixels on their longer side count as small: small-image candidates, no border crop.
#: The same bound as the default augmentation's (``ImageDataModule(augmentation="auto")``).
SMALL_IMAGE_MAX = SMALL_IMAGE_SIZE


def rule_lr_range(below: float, above: float) -> tuple[float, float]:
    """An AdamW learning-rate range around the default recipe's rule (`default_lr`).

    The range runs from ``below`` times under the pretrained weights' rule to ``above`` times over the
    from-scratch rule, so the learning rate an ``ImageClassifier`` trains with by default (and the first
    trial's, ``Recipe.base_lr``) lies inside it, whichever weights
    the search starts from, and the search explores around it.

    Args:
        below: Factor under ``default_lr(pretrained=True)`` of the lower bound, at least 1.
        above: Factor over ``default_lr(pretrained=False)`` of the upper bound, at least 1.

    Returns:
        ``(default_lr(pretrained=True) / below, default_lr(pretrained=False) * above)``.

    Raises:
        ValueError: A factor under 1.

    Example:
        >>> rule_lr_range(2, 3)
        (0.0005, 0.009)
    """
    if not (below >= 1 and above >= 1):
        raise ValueError(f"`below` and `above` must be >= 1, got {below!r} and {above!r}")
    return default_lr(pretrained=True) / below, round(default_lr(pretrained=False) * above, 12)


@dataclass(frozen=True)
class SearchSpace:
    """The hyper-parameters a trial draws, and the recipe they are drawn for.

    Args:
        lr: Learning-rate range, drawn log-uniformly (for AdamW: around the default rule, `rule_lr_range`).
        weight_decay: Weight-decay range, drawn log-uniformly.
        label_smoothing: Largest label smoothing; drawn from 0 to it in steps of 0.05.
        mixup_alpha: Largest mixup alpha; drawn from 0 to it in steps of 0.1 (0 is off).
        small_image_augmentations: Augmentation presets tried for small images (the first is the default's).
        augmentations: Augmentation presets tried for larger images.
        recipe: Optimizer, schedule and speed settings shared by every run.
    """

    lr: tuple[float, float]
    weight_decay: tuple[float, float]
    label_smoothing: float
    mixup_alpha: float
    small_image_augmentations: tuple[str, ...]
    augmentations: tuple[str, ...]
    recipe: Recipe = ADAMW_COSINE

    def augmentation_choices(self, image_size: int) -> tuple[str, ...]:
        """The augmentation presets tried at ``image_size`` pixels."""
        return self.small_image_augmentations if image_size <= SMALL_IMAGE_MAX else self.augmentations


@dataclass(frozen=True)
class Preset:
    """A named search recipe.

    Args:
        name: ``"fast"``, ``"balanced"`` or ``"best"``.
        description: One line for tables and help.
        small_image_backbones: Candidates for images up to ``SMALL_IMAGE_MAX`` pixels, in order of preference.
        backbones: Candidates for larger images.
        space: The hyper-parameter search space.
        max_image_size: Larger images are resized to this.
        target_trials: The search time is cut into this many equal trial slices.
        min_epochs: A candidate is kept only if this many epochs fit into one slice.
        max_epochs: Most epochs of one trial.
        max_final_epochs: Most epochs of the final training.
        search_fraction: Share of the budget for the search when a final training follows.
        max_search_images: Trials train on at most this many images (a stratified subset).
        max_val_images: Trials are validated on at most this many images.
        tpe_startup_trials: Random trials before TPE models the results.
        small_image_space: The search space of small images trained from scratch
            (``None``: ``space``).
    """

    name: str
    description: str
    small_image_backbones: tuple[str, ...]
    backbones: tuple[str, ...]
    space: SearchSpace
    max_image_size: int
    target_trials: int
    min_epochs: int
    max_epochs: int
    max_final_epochs: int
    search_fraction: float
    max_search_images: int
    max_val_images: int
    tpe_startup_trials: int
    small_image_space: SearchSpace | None = None

    def space_for(self, image_size: int, pretrained: bool = False) -> SearchSpace:
        """The search space at ``image_size`` pixels: ``small_image_space`` for small images trained from scratch."""
        if self.small_image_space is not None and image_size <= SMALL_IMAGE_MAX and not pretrained:
            return self.small_image_space
        return self.space

    def candidates(self, image_size: int) -> tuple[str, ...]:
        """The candidate backbones at ``image_size`` pixels."""
        return self.small_image_backbones if image_size <= SMALL_IMAGE_MAX else self.backbones

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for the summary."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "fast": Preset(
        name="fast",
        description="a few small CNNs, short trials, most of the budget for the final training",
        small_image_backbones=("test_resnet", "resnet10t", "resnet18"),
        backbones=("resnet10t", "mobilenetv3_small_100", "lcnet_075", "resnet18"),
        space=SearchSpace(
            lr=rule_lr_range(2, 3),
            weight_decay=(1e-5, 5e-2),
            label_smoothing=0.15,
            mixup_alpha=0.2,
            small_image_augmentations=("none", "light"),
            augmentations=("light", "trivialaugment"),
        ),
        max_image_size=128,
        target_trials=6,
        min_epochs=2,
        max_epochs=15,
        max_final_epochs=50,
        search_fraction=0.2,
        max_search_images=6_000,
        max_val_images=2_000,
        tpe_startup_trials=3,
        small_image_space=SearchSpace(
            lr=(0.05, 0.4),
            weight_decay=(1e-4, 2e-3),
            label_smoothing=0.15,
            mixup_alpha=0.2,
            small_image_augmentations=("crop_flip", "none"),
            augmentations=("crop_flip", "none"),
            recipe=SGD_ONECYCLE,
        ),
    ),
    "balanced": Preset(
        name="balanced",
        description="small and mid-size CNNs, more trials, a wider space",
        small_image_backbones=("resnet10t", "resnet18", "resnet14t", "resnet26", "regnetx_004", "efficientnet_b0"),
        backbones=("resnet18", "mobilenetv3_large_100", "efficientnet_b0", "regnetx_004", "resnet26d", "convnext_atto"),
        space=SearchSpace(
            lr=rule_lr_range(3, 3),
            weight_decay=(1e-5, 1e-1),
            label_smoothing=0.2,
            mixup_alpha=0.4,
            small_image_augmentations=("none", "light", "trivialaugment"),
            augmentations=("light", "trivialaugment", "randaugment"),
        ),
        max_image_size=160,
        target_trials=10,
        min_epochs=3,
        max_epochs=40,
        max_final_epochs=60,
        search_fraction=0.4,
        max_search_images=20_000,
        max_val_images=5_000,
        tpe_startup_trials=4,
    ),
    "best": Preset(
        name="best",
        description="larger CNNs and a small ViT, many trials, the widest space",
        small_image_backbones=(
            "resnet18",
            "resnet26",
            "resnet34",
            "resnet14t",
            "regnety_008",
            "efficientnet_b0",
            "convnext_atto",
        ),
        backbones=(
            "resnet50",
            "efficientnet_b2",
            "convnext_nano",
            "regnety_016",
            "resnet26d",
            "mobilenetv3_large_100",
            "vit_small_patch16_224",
        ),
        space=SearchSpace(
            lr=rule_lr_range(10, 3),
            weight_decay=(1e-6, 1e-1),
            label_smoothing=0.2,
            mixup_alpha=0.8,
            small_image_augmentations=("none", "light", "trivialaugment", "randaugment"),
            augmentations=("light", "trivialaugment", "randaugment", "autoaugment"),
        ),
        max_image_size=224,
        target_trials=20,
        min_epochs=4,
        max_epochs=100,
        max_final_epochs=150,
        search_fraction=0.5,
        max_search_images=50_000,
        max_val_images=10_000,
        tpe_startup_trials=6,
    ),
}


def list_presets() -> list[str]:
    """Return the preset names ``auto_fit`` accepts.

    Example:
        >>> list_presets()
        ['fast', 'balanced', 'best']
    """
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """Return the preset called ``name``.

    Raises:
        ValueError: Unknown name; the message lists the presets.
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"`preset` must be one of {list_presets()}, got {name!r}")
    return PRESETS[name]


_DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?:in)?)?(?:(?P<s>\d+(?:\.\d+)?)s)?$", re.IGNORECASE
)


def parse_time_limit(value: Any, argument: str = "time_limit") -> float:
    """Return a time limit in seconds.

    Args:
        value: Seconds (a positive number or a numeric string), a
            ``datetime.timedelta``, or a duration such as ``"90s"``, ``"10m"``,
            ``"1h"``, ``"1h30m"`` or ``"2m30s"``.
        argument: How the value is named in the error message.

    Raises:
        ValueError: Anything else, or a limit that is not positive.

    Example:
        >>> parse_time_limit("1h30m"), parse_time_limit("90s"), parse_time_limit(45)
        (5400.0, 90.0, 45.0)
    """
    accepted = "a positive number of seconds or a duration such as '90s', '10m', '1h' or '1h30m'"
    seconds: float | None = None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            match = _DURATION.match(text)
            if match and any(match.groupdict().values()):
                parts = {k: float(v or 0) for k, v in match.groupdict().items()}
                seconds = parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"`{argument}` must be {accepted}; got {value!r}")
    return seconds


def choose_image_size(native: int, preset: Preset) -> int:
    """The input size of every trial for images whose longer side is ``native`` pixels.

    Tiny images (under 24 px, such as 8x8 digits) are enlarged to 32 px;
    small ones keep their size (28x28 Fashion-MNIST stays 28); larger ones
    are shrunk to the preset's ``max_image_size``.

    Example:
        >>> choose_image_size(8, PRESETS["fast"]), choose_image_size(28, PRESETS["fast"])
        (32, 28)
        >>> choose_image_size(500, PRESETS["fast"])
        128
    """
    if native < 24:
        return 32
    return min(int(native), preset.max_image_size)


def choose_batch_size(num_train: int, image_size: int) -> int:
    """The batch size of every trial: about 1/40 of the training images, a power of two.

    At least 16; at most 512 up to 32 px, 256 up to 64 px, 128 up to 128 px
    and 64 above. (On 2 CPU cores a 0.4 M-parameter ResNet trains on 28-px
    images at 7,700 images/s in batches of 512, against 5,800 in batches of 256:
    two threads share small tensors poorly.)

    Example:
        >>> choose_batch_size(1437, 32), choose_batch_size(48000, 28), choose_batch_size(48000, 224)
        (32, 512, 64)
    """
    cap = 512 if image_size <= 32 else 256 if image_size <= SMALL_IMAGE_MAX else 128 if image_size <= 128 else 64
    target = max(num_train / 40, 1)
    size = 2 ** round(math.log2(target))
    return int(min(max(size, 16), cap))


@dataclass
class SearchPlan:
    """What the budget rule decided.

    Args:
        kept: The candidates trials choose from, fastest first (empty when the search is skipped).
        dropped: Candidate -> why it was left out.
        slice_seconds: Time of one trial.
        skipped: Why there is no search (empty when there is one).
    """

    kept: list[str]
    dropped: dict[str, str]
    slice_seconds: float
    skipped: str = ""


def plan_search(
    epoch_seconds: dict[str, float],
    search_seconds: float,
    preset: Preset,
    n_trials: int | None = None,
    trial_overhead: float = 0.0,
    can_skip: bool = False,
) -> SearchPlan:
    """Apply the budget rule to the measured candidates.

    1. The search time is cut into ``min(preset.target_trials, n_trials)`` equal slices.
    2. A candidate is kept when ``preset.min_epochs`` of its epochs, plus a
       run's set-up, fit into one slice.
    3. If none fits, only the fastest is kept, and its slice grows to
       ``min_epochs`` epochs (fewer, longer trials), at most the whole search.
    4. With ``can_skip`` (a final training on all the data follows), the
       search is skipped instead when two such trials of the fastest candidate
       do not fit: the final training then gets the whole budget.

    Args:
        epoch_seconds: Estimated seconds of one epoch of each working candidate.
        search_seconds: Time for the whole search.
        preset: The preset.
        n_trials: The user's cap on trials.
        trial_overhead: Seconds a run costs beyond its epochs (set-up, checkpoints).
        can_skip: Allow skipping the search (rule 4).

    Raises:
        ValueError: No candidate to choose from.

    Example:
        >>> plan = plan_search({"small": 2.0, "big": 20.0}, search_seconds=60.0, preset=PRESETS["fast"])
        >>> plan.kept, plan.slice_seconds
        (['small'], 10.0)
    """
    if not epoch_seconds:
        raise ValueError("no candidate backbone could be built and run; see the candidates' notes")
    slices = min(preset.target_trials, n_trials or preset.target_trials)
    slice_seconds = search_seconds / max(slices, 1)
    order = sorted(epoch_seconds, key=epoch_seconds.get)
    needed = {name: preset.min_epochs * epoch_seconds[name] + trial_overhead for name in order}
    kept = [name for name in order if needed[name] <= slice_seconds]
    dropped = {
        name: f"{preset.min_epochs} epochs take ~{needed[name]:.0f}s, a trial has ~{slice_seconds:.0f}s"
        for name in order
        if name not in kept
    }
    if not kept:
        fastest = order[0]
        if can_skip and 2 * needed[fastest] > search_seconds:
            reason = f"two trials of the fastest candidate, {fastest}, need ~{2 * needed[fastest]:.0f}s"
            return SearchPlan([], dropped, 0.0, f"{reason}, the search has ~{search_seconds:.0f}s")
        kept = [fastest]
        dropped.pop(fastest)
        slice_seconds = min(needed[fastest], search_seconds)
    return SearchPlan(kept, dropped, slice_seconds)
