"""Optimizer registry and factory.

Every optimizer name accepted by [`ImageClassifier`][autotimm.ImageClassifier] is registered
here, once. Torch optimizers are built from their classes; the timm optimizers
are built by timm's own factory, `timm.optim.create_optimizer_v2`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from timm.optim import create_optimizer_v2
from torch import nn

from autotimm.optim.param_groups import parameter_groups
from autotimm.registry import Registry, import_from_path

__all__ = [
    "OptimizerSpec",
    "check_optimizer_spec",
    "create_optimizer",
    "get_optimizer",
    "list_optimizers",
    "register_optimizer",
]

#: An optimizer name from `list_optimizers`, or
#: ``{"class": "dotted.path.Optimizer", "params": {...}}``.
OptimizerSpec = str | dict[str, Any]

_OPTIMIZERS = Registry("optimizer", argument="optimizer")

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Register an optimizer factory under ``name``.

    The factory is called as ``factory(param_groups, lr=lr, **kwargs)`` and
    returns a `torch.optim.Optimizer`. Each parameter group already
    carries its ``weight_decay``.

    Example:
        ```python
        @register_optimizer("nesterov_sgd")
        def nesterov_sgd(params, lr, **kwargs):
            return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, **kwargs)

        model = ImageClassifier("resnet18", num_classes=10, optimizer="nesterov_sgd")
        ```
    """
    return _OPTIMIZERS.register(name)


def list_optimizers() -> list[str]:
    """Return every optimizer name that ``optimizer=`` accepts."""
    return _OPTIMIZERS.names()


def get_optimizer(name: str) -> OptimizerFactory:
    """Return the factory registered under ``name``.

    Raises:
        ValueError: For an unknown name; the message lists the accepted names.
    """
    return _OPTIMIZERS.get(name)


def check_optimizer_spec(optimizer: Any) -> None:
    """Check an ``optimizer`` argument early: a registered name or a dict.

    Raises:
        ValueError: For an unknown name (listing the accepted ones) or another type.
    """
    if isinstance(optimizer, str):
        get_optimizer(optimizer)
    elif not isinstance(optimizer, dict):
        raise ValueError(
            f"`optimizer` must be a name from list_optimizers() or a {{'class': ..., 'params': ...}} dict, "
            f"got {optimizer!r}"
        )


# Torch optimizers whose fused kernels (one kernel for all parameters, CPU and CUDA) are used by default.
_FUSED = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def _can_fuse(params: Iterable[Any]) -> bool:
    """Whether torch's fused optimizer kernels can update these parameters.

    They can when every parameter is a plain floating-point ``nn.Parameter`` on
    one device type that has the kernels (CPU, CUDA and a few others); wrapped
    parameters (FSDP's flat parameters, DTensors) keep the default ``foreach``
    path.

    Args:
        params: Parameters, or parameter groups (dicts with ``"params"``).
    """
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    devices = {t.device.type for t in tensors}
    return (
        bool(tensors)
        and len(devices) == 1
        and devices <= set(_get_fused_kernels_supported_devices())
        and all(type(t) is nn.Parameter and t.is_floating_point() for t in tensors)
    )


def _torch_factory(cls: type[torch.optim.Optimizer], **defaults: Any) -> OptimizerFactory:
    def factory(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
        kwargs = {**defaults, **kwargs}
        if cls in _FUSED and not {"fused", "foreach", "differentiable"} & set(kwargs):
            # Measured on CPU: resnet18's AdamW step takes 10 ms fused against 41-48 ms with foreach
            # (benchmarks/overhead.py); on CUDA fused is the fastest path too. Same update, one kernel.
            params = list(params)
            kwargs["fused"] = _can_fuse(params) or None
        return cls(params, lr=lr, **kwargs)

    factory.__doc__ = f"Build `{cls.__module__}.{cls.__name__}`."
    return factory


def _timm_factory(opt_name: str) -> OptimizerFactory:
    def factory(params: Iterable[Any], lr: float, **kwargs: Any) -> torch.optim.Optimizer:
        # Groups carry their own weight decay, so timm's own grouping is off.
        return create_optimizer_v2(list(params), opt=opt_name, lr=lr, filter_bias_and_bn=False, **kwargs)

    factory.__doc__ = f"Build timm's {opt_name!r} optimizer through timm.optim.create_optimizer_v2."
    return factory


# SGD without momentum is rarely what anyone wants; 0.9 matches timm and fastai.
for _name, _cls, _defaults in (
    ("adamw", torch.optim.AdamW, {}),
    ("adam", torch.optim.Adam, {}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
    ("rmsprop", torch.optim.RMSprop, {}),
    ("adagrad", torch.optim.Adagrad, {}),
):
    register_optimizer(_name)(_torch_factory(_cls, **_defaults))

for _name in ("adamp", "sgdp", "adabelief", "radam", "lamb", "lars", "madgrad", "novograd"):
    register_optimizer(_name)(_timm_factory(_name))


def create_optimizer(
    model: nn.Module,
    optimizer: OptimizerSpec = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    optimizer_kwargs: dict[str, Any] | None = None,
    no_weight_decay: Collection[str] = (),
    layer_decay: float | None = None,
    include_frozen: bool = False,
    ndims: Mapping[str, int] | None = None,
) -> torch.optim.Optimizer:
    """Build an optimizer over the trainable parameters of ``model``.

    Parameters with ``requires_grad=False`` are left out unless
    ``include_frozen``. Weight decay applies to weight matrices and kernels
    only: biases, normalisation parameters (every 1-d tensor) and the names in
    ``no_weight_decay`` get none. The groups come from
    [`parameter_groups`][autotimm.classifier.finetuning.parameter_groups].
    ``"adamw"``, ``"adam"`` and ``"sgd"`` (and those classes in the dict form)
    use torch's fused kernel when every parameter is a plain floating-point
    tensor on a device that has it (CPU, CUDA), unless ``optimizer_kwargs``
    name ``fused``, ``foreach`` or ``differentiable``.

    Args:
        model: The module whose trainable parameters are optimized.
        optimizer: A name from `list_optimizers`, or
            ``{"class": "torch.optim.AdamW", "params": {...}}`` for any
            optimizer class by dotted path.
        lr: Learning rate.
        weight_decay: Weight decay for the decayed group.
        optimizer_kwargs: Extra constructor arguments; they override ``params``
            of the dict form. A ``weight_decay`` among either replaces the
            ``weight_decay`` argument.
        no_weight_decay: Parameter names (``fnmatch`` patterns) never decayed,
            e.g. a ViT's position embedding.
        layer_decay: Layer-wise learning-rate decay over ``model.backbone``'s
            layers (the head keeps ``lr``), or ``None``.
        include_frozen: Also optimize parameters that are frozen now
            (progressive unfreezing: they take steps once they get gradients).
        ndims: The parameters' dimensions before any wrapping (FSDP flattens them).

    Returns:
        The optimizer.

    Raises:
        ValueError: For an unknown name, a malformed dict, or arguments the
            optimizer does not accept.
    """
    kwargs = dict(optimizer_kwargs or {})
    if isinstance(optimizer, dict):
        unknown = set(optimizer) - {"class", "params"}
        if "class" not in optimizer or unknown:
            raise ValueError(
                f"`optimizer` dict must have the keys 'class' and optionally 'params', got {sorted(optimizer)}"
            )
        cls = import_from_path(optimizer["class"], argument="optimizer")
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f"`optimizer` class {optimizer['class']!r} is not a torch.optim.Optimizer subclass")
        factory: OptimizerFactory = _torch_factory(cls)
        kwargs = {**optimizer.get("params", {}), **kwargs}
        label = optimizer["class"]
    elif isinstance(optimizer, str):
        factory = get_optimizer(optimizer)
        label = optimizer
    else:
        raise ValueError(f"`optimizer` must be a name or a dict, got {type(optimizer).__name__}: {optimizer!r}")
    # Each group carries its own weight decay, which overrides the constructor's.
    kwargs.setdefault("lr", lr)
    groups = parameter_groups(
        model,
        kwargs["lr"],
        kwargs.pop("weight_decay", weight_decay),
        no_weight_decay,
        layer_decay=layer_decay,
        include_frozen=include_frozen,
        ndims=ndims,
    )
    try:
        return factory(groups, **kwargs)
    except TypeError as err:
        raise ValueError(f"optimizer {label!r} rejected its arguments {sorted(kwargs)}: {err}") from err
