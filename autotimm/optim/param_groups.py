"""Optimizer parameter groups: weight decay on the right parameters, and layer-wise learning-rate decay.

As timm's ``optim/_param_groups.py``, grouped by the backbone's layers
(`autotimm.models.stages.backbone_layers`). We build the groups ourselves
rather than call timm's ``param_groups_layer_decay``: it leaves out frozen
parameters, and progressive unfreezing needs every parameter in the optimizer
from the start (see `autotimm.training.unfreezing.UnfreezeSchedule`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from fnmatch import fnmatch
from typing import Any

from torch import nn

from autotimm.models.stages import backbone_layers

__all__ = ["parameter_groups"]


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
