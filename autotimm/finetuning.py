"""Transfer-learning recipes: layer-wise learning-rate decay and progressive unfreezing.

Both follow timm's own grouping of a backbone's parameters, ``model.group_matcher()``:

- *layers* (``coarse=False``) are what `layer_decay` scales, as in timm's
  ``param_groups_layer_decay`` (BEiT): for a ResNet the stem and every residual
  block, for a ViT the embeddings and every transformer block;
- *stages* (``coarse=True``) are what `unfreeze_schedule` unfreezes: for a
  ResNet the stem and ``layer1`` … ``layer4``, for a ViT the embeddings and
  every block. `backbone_stages` lists them for any backbone.

We build the parameter groups ourselves rather than call timm's
``param_groups_layer_decay``: it leaves out frozen parameters, and progressive
unfreezing needs every parameter in the optimizer from the start (see
`UnfreezeSchedule`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from fnmatch import fnmatch
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from autotimm.ema import EMA, check_ema_decay
from autotimm.feature_cache import FeatureDataModule

__all__ = [
    "FineTuningMixin",
    "UnfreezeSchedule",
    "backbone_layers",
    "backbone_stages",
    "check_finetuning_arguments",
    "freeze_norm_statistics",
    "parameter_groups",
]


def backbone_layers(backbone: nn.Module, coarse: bool = False) -> list[list[str]]:
    """Parameter names of a timm backbone, grouped bottom (stem) to top.

    Args:
        backbone: A timm model (headless or not).
        coarse: ``False`` for timm's fine groups (blocks, used by layer decay),
            ``True`` for its coarse groups (stages, used by unfreezing).

    Returns:
        One list of parameter names per group, input side first. A model
        without ``group_matcher`` is one group.
    """
    names = [name for name, _ in backbone.named_parameters()]
    if not hasattr(backbone, "group_matcher"):
        return [names] if names else []
    layer_of = group_parameters(backbone, backbone.group_matcher(coarse=coarse), reverse=True)
    top = max(layer_of.values(), default=0)
    groups: list[list[str]] = [[] for _ in range(top + 1)]
    for name in names:
        groups[layer_of.get(name, top)].append(name)  # unmatched names join the top group, as in timm
    return [group for group in groups if group]


def backbone_stages(backbone: nn.Module) -> list[str]:
    """Short names of the stages `unfreeze_schedule` counts, bottom to top.

    Each name is the common prefix of the stage's parameters, e.g.
    ``["conv1+bn1", "layer1", "layer2", "layer3", "layer4"]`` for a ResNet.

    Example:
        >>> import timm
        >>> backbone_stages(timm.create_model("resnet18", num_classes=0))
        ['conv1+bn1', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    labels = []
    for group in backbone_layers(backbone, coarse=True):
        common = []
        for pieces in zip(*(name.split(".")[:-1] for name in group), strict=False):
            if len(set(pieces)) > 1:
                break
            common.append(pieces[0])
        if common:
            labels.append(".".join(common))
        else:
            heads = list(dict.fromkeys(name.split(".")[0] for name in group))
            labels.append("+".join(heads[:4]) + ("+…" if len(heads) > 4 else ""))
    return labels


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    no_weight_decay: Collection[str] = (),
    layer_decay: float | None = None,
    include_frozen: bool = False,
    backbone_prefix: str = "backbone.",
    ndims: Mapping[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with per-layer learning rates and weight decay.

    Weight decay applies to weight matrices and kernels only: biases,
    normalisation parameters (1-d tensors) and ``no_weight_decay`` names get
    none. With ``layer_decay`` the parameters outside the backbone (the head)
    learn at ``lr``, the backbone's top layer at ``lr * layer_decay``, the
    next at ``lr * layer_decay**2``, …, its stem at ``lr * layer_decay**L``
    for a backbone of ``L`` layers (see `backbone_layers`).

    Args:
        model: A model whose backbone is the submodule named by ``backbone_prefix``.
        lr: The base learning rate.
        weight_decay: Weight decay of the decayed groups.
        no_weight_decay: Parameter names (``fnmatch`` patterns) never decayed.
        layer_decay: Layer-wise decay factor in ``(0, 1]``, or ``None`` for one rate.
        include_frozen: Also include parameters with ``requires_grad=False``
            (they take no step while they get no gradient).
        backbone_prefix: Prefix of the backbone's parameter names in ``model``.
        ndims: Each parameter's number of dimensions before wrapping, by name:
            FSDP flattens parameters to 1-d, which would exempt every weight
            from decay.

    Returns:
        Groups with ``params``, ``lr``, ``weight_decay`` and ``layer`` (``-1`` for
        the head), highest learning rate first.
    """
    layer_of: dict[str, int] = {}
    num_layers = 0
    if layer_decay is not None:
        layers = backbone_layers(model.get_submodule(backbone_prefix.rstrip(".")) if backbone_prefix else model)
        num_layers = len(layers)
        layer_of = {backbone_prefix + name: i for i, group in enumerate(layers) for name in group}
    groups: dict[tuple[int, float], dict[str, Any]] = {}
    for wrapped_name, param in model.named_parameters():
        if not (param.requires_grad or include_frozen):
            continue
        name = _unwrapped(wrapped_name)
        layer = layer_of.get(name, -1)
        scale = 1.0 if layer < 0 or layer_decay is None else layer_decay ** (num_layers - layer)
        ndim = (ndims or {}).get(name, param.ndim)
        decay = not (ndim <= 1 or any(fnmatch(name, pattern) for pattern in no_weight_decay))
        this_decay = weight_decay if decay else 0.0
        group = groups.setdefault(
            (layer, this_decay), {"params": [], "lr": lr * scale, "weight_decay": this_decay, "layer": layer}
        )
        group["params"].append(param)
    ordered = sorted(groups.values(), key=lambda g: (-g["lr"], g["weight_decay"] == 0))
    if not ordered:
        raise ValueError("the model has no trainable parameters to optimize (is everything frozen?)")
    return ordered


def _unwrapped(name: str) -> str:
    """A parameter name without the prefixes FSDP and activation checkpointing insert."""
    for wrapper in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def freeze_norm_statistics(module: nn.Module) -> None:
    """Put every normalisation layer whose parameters are all frozen in eval mode, the others in ``module``'s mode.

    So BatchNorm running statistics stay fixed while its stage is frozen, and
    update again once it is unfrozen.
    """
    for norm in module.modules():
        if isinstance(norm, _NormBase):
            norm.train(module.training and any(p.requires_grad for p in norm.parameters(recurse=False)))


class UnfreezeSchedule:
    """When to make each backbone stage trainable: head first, then stages from the top.

    A schedule maps an epoch to the number of backbone stages (counted from
    the top, see `backbone_stages`) trainable from that epoch on, or ``"all"``.
    Before the first epoch listed only the head trains. ``{0: 0, 3: 1, 6:
    "all"}`` trains the head alone for 3 epochs, adds the last stage for 3
    more, then trains everything.

    Every parameter is in the optimizer from the start; a frozen one gets no
    gradient and so takes no step and no weight decay. The optimizer's groups
    and the scheduler's state (OneCycle's per-group rates included) are thus
    the same before and after each unfreeze step: there is nothing to rebuild.
    Frozen stages keep their BatchNorm statistics.

    Args:
        schedule: ``{epoch: stages}`` or a list of ``(epoch, stages)`` pairs;
            epochs are ints >= 0, stages ints >= 0 or ``"all"``, and never
            decreasing.

    Raises:
        ValueError: For a malformed schedule; the message names the bad entry.

    Example:
        >>> UnfreezeSchedule({0: 0, 2: 1, 4: "all"}).stages_at(3)
        1
    """

    def __init__(self, schedule: Mapping[Any, Any] | list[Any] | tuple[Any, ...]) -> None:
        self.steps = _parse_schedule(schedule)

    def stages_at(self, epoch: int) -> int | str:
        """Stages trainable in ``epoch`` (0-based): an int, or ``"all"``."""
        current: int | str = 0
        for start, stages in self.steps:
            if epoch >= start:
                current = stages
        return current

    def to_dict(self) -> dict[int, int | str]:
        """The schedule as plain data (for hyper-parameters)."""
        return dict(self.steps)

    def apply(self, model: nn.Module, epoch: int, backbone_attr: str = "backbone", norms: bool = True) -> list[str]:
        """Set ``requires_grad`` of the backbone's stages for ``epoch`` and the modes of their norms.

        Args:
            model: The model; its backbone is ``getattr(model, backbone_attr)``.
            epoch: The epoch about to start.
            backbone_attr: Attribute name of the backbone.
            norms: Also put the norms of frozen stages in eval mode (see `freeze_norm_statistics`).

        Returns:
            The names of the parameters of ``model`` that are trainable now.
        """
        backbone = getattr(model, backbone_attr)
        stages = backbone_layers(backbone, coarse=True)
        wanted = self.stages_at(epoch)
        count = len(stages) if wanted == "all" else min(int(wanted), len(stages))
        trainable = {name for group in stages[len(stages) - count :] for name in group}
        for name, param in backbone.named_parameters():
            param.requires_grad_(name in trainable)
        if norms:
            freeze_norm_statistics(backbone)
        return [name for name, p in model.named_parameters() if p.requires_grad]

    def __iter__(self) -> Iterator[tuple[int, int | str]]:
        return iter(self.steps)

    def __repr__(self) -> str:
        return f"UnfreezeSchedule({self.to_dict()!r})"


def _parse_schedule(schedule: Any) -> list[tuple[int, int | str]]:
    accepted = "{epoch: stages} or [(epoch, stages), ...] with int epochs >= 0 and int stages >= 0 or 'all'"
    if isinstance(schedule, UnfreezeSchedule):
        return list(schedule.steps)
    if isinstance(schedule, Mapping):
        pairs = list(schedule.items())
    elif isinstance(schedule, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in schedule):
        pairs = [tuple(p) for p in schedule]
    else:
        raise ValueError(f"`unfreeze_schedule` must be {accepted}, got {schedule!r}")
    if not pairs:
        raise ValueError(f"`unfreeze_schedule` is empty; it must be {accepted}")
    steps: list[tuple[int, int | str]] = []
    for epoch, stages in pairs:
        if isinstance(epoch, str) and epoch.isdigit():  # YAML/JSON keys arrive as strings
            epoch = int(epoch)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`unfreeze_schedule` epoch {epoch!r} must be an int >= 0; the schedule is {accepted}")
        if stages != "all" and (isinstance(stages, bool) or not isinstance(stages, int) or stages < 0):
            raise ValueError(
                f"`unfreeze_schedule` stages {stages!r} at epoch {epoch} must be an int >= 0 or 'all'; "
                f"the schedule is {accepted}"
            )
        steps.append((epoch, stages))
    steps.sort(key=lambda step: step[0])
    epochs = [epoch for epoch, _ in steps]
    if len(set(epochs)) != len(epochs):
        raise ValueError(f"`unfreeze_schedule` lists an epoch twice: {schedule!r}")
    levels = [float("inf") if stages == "all" else stages for _, stages in steps]
    if levels != sorted(levels):
        raise ValueError(f"`unfreeze_schedule` must never freeze again (stages must not decrease), got {schedule!r}")
    return steps


def check_finetuning_arguments(
    freeze_backbone: bool,
    layer_decay: Any,
    unfreeze_schedule: Any,
    ema_decay: Any,
    cache_features: Any,
    channels_last: Any,
    mixup_alpha: float,
    cutmix_alpha: float,
) -> UnfreezeSchedule | None:
    """Validate [`ImageClassifier`][autotimm.ImageClassifier]'s fine-tuning arguments together.

    Returns:
        The parsed unfreeze schedule, or ``None``.

    Raises:
        ValueError: Naming the argument, the value and what is accepted, or the
            two arguments that do not go together.
    """
    if layer_decay is not None and (
        isinstance(layer_decay, bool) or not isinstance(layer_decay, (int, float)) or not 0 < layer_decay <= 1
    ):
        raise ValueError(f"`layer_decay` must be a number in (0, 1] (e.g. 0.75) or None, got {layer_decay!r}")
    if ema_decay is not None:
        check_ema_decay(ema_decay)
    for name, value in (("cache_features", cache_features), ("channels_last", channels_last)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False, got {value!r}")
    if cache_features and not freeze_backbone:
        raise ValueError("`cache_features=True` needs `freeze_backbone=True`: features can be cached only if fixed")
    if cache_features and (mixup_alpha > 0 or cutmix_alpha > 0):
        raise ValueError(
            "`cache_features=True` trains on fixed features of un-augmented images, so it cannot mix images: "
            f"set mixup_alpha=0 and cutmix_alpha=0 (got {mixup_alpha}, {cutmix_alpha})"
        )
    if unfreeze_schedule is None:
        return None
    if freeze_backbone:
        raise ValueError("`unfreeze_schedule` unfreezes the backbone, so it does not go with `freeze_backbone=True`")
    return UnfreezeSchedule(unfreeze_schedule)


class FineTuningMixin:
    """The Lightning hooks behind `ImageClassifier`'s fine-tuning options.

    ``freeze_backbone`` and ``unfreeze_schedule`` (trainable stages, frozen
    BatchNorm statistics) and ``ema_decay`` (the [`EMA`][autotimm.EMA]
    callback). Expects ``self.backbone``, ``self.hparams`` and ``self._unfreeze``.
    """

    backbone: nn.Module
    hparams: Any
    _unfreeze: UnfreezeSchedule | None

    def on_train_start(self) -> None:
        """Put a frozen backbone in eval mode, so BatchNorm statistics stay fixed through fit."""
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        if self.hparams.get("cache_features") and not isinstance(self.trainer.datamodule, FeatureDataModule):
            rank_zero_warn(
                "cache_features=True: this run trains on images, not cached features; cached features need "
                "autotimm.AutoTrainer.fit with a data module or data loaders"
            )

    def train(self, mode: bool = True) -> FineTuningMixin:
        """Set training mode; frozen backbone parts always keep their BatchNorm statistics (eval mode)."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        elif mode and self._unfreeze is not None:
            freeze_norm_statistics(self.backbone)
        return self

    def configure_callbacks(self) -> list[pl.Callback]:
        """The callbacks the model's options need: [`EMA`][autotimm.EMA] with ``ema_decay``."""
        return [] if self.hparams.ema_decay is None else [EMA(self.hparams.ema_decay)]

    def setup(self, stage: str) -> None:
        """Refuse progressive unfreezing across processes: DDP fixes the trainable set when it wraps the model."""
        if self._unfreeze is not None and stage == "fit" and self.trainer.world_size > 1:
            raise ValueError(
                "`unfreeze_schedule` works in one process only: DDP never syncs gradients of parameters that "
                "were frozen when it wrapped the model. Train on one device, or use layer_decay instead."
            )

    def on_train_epoch_start(self) -> None:
        """Apply the unfreeze schedule for this epoch (trainable stages, frozen BatchNorm statistics)."""
        if self._unfreeze is None:
            return
        before = sum(p.requires_grad for p in self.parameters())
        trainable = self._unfreeze.apply(self, self.current_epoch)
        if len(trainable) != before:
            stages = self._unfreeze.stages_at(self.current_epoch)
            rank_zero_info(f"Epoch {self.current_epoch}: unfroze backbone stages: {stages} ({len(trainable)} tensors)")
