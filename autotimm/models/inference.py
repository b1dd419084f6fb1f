"""Inference copies of a model: batch norms folded into their convolutions, channels-last, a chosen precision.

[`ImageClassifier.predict`][autotimm.ImageClassifier.predict] runs such a copy on
the CPU (see the prediction guide): the model the user holds is never changed.

- [`fold_batch_norms`][autotimm.models.inference.fold_batch_norms] folds each
  eval-mode ``BatchNorm2d`` (and timm's ``BatchNormAct2d``) whose input is the
  output of a ``Conv2d`` used by nothing else into that convolution's weight and
  bias. The data flow is read from one traced forward pass, so a convolution
  whose output also feeds a residual sum, or is returned, is left alone.
- [`inference_copy`][autotimm.models.inference.inference_copy] makes an eval-mode
  copy, folds, moves a convolutional network to channels-last, checks the copy's
  logits against the model's, and casts to the requested dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import BatchNormAct2d
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

__all__ = ["InferenceCopy", "fold_batch_norms", "inference_copy"]

#: The largest ``max |copy - model| / max |model|`` of the logits at which an fp32 copy counts as exact.
RELATIVE_TOLERANCE = 1e-4


class _Consumers(TorchFunctionMode):
    """Count, for each watched tensor, the tensor-returning torch calls that take it as an input."""

    def __init__(self) -> None:
        super().__init__()
        self.watched: dict[int, torch.Tensor] = {}  # id -> tensor, kept alive so that ids stay unique
        self.uses: dict[int, int] = {}

    def watch(self, tensor: torch.Tensor) -> None:
        self.watched[id(tensor)] = tensor
        self.uses[id(tensor)] = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        if self.uses and _tensors(result):
            for leaf in _tensors((*args, *(kwargs or {}).values())):
                if self.watched.get(id(leaf)) is leaf:
                    self.uses[id(leaf)] += 1
        return result


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors in a value, a tuple or list of values, or such a sequence one level down (``torch.cat``)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        found = []
        for item in value:
            if isinstance(item, torch.Tensor):
                found.append(item)
            elif isinstance(item, (tuple, list)):
                found += [v for v in item if isinstance(v, torch.Tensor)]
        return found
    return []


def _foldable_norm(module: nn.Module) -> bool:
    kind = type(module)
    return (
        kind in (nn.BatchNorm2d, BatchNormAct2d)
        and not module.training
        and module.running_mean is not None
        and module.running_var is not None
    )


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold ``norm`` into ``conv``'s weight and bias, in float64."""
    dtype = conv.weight.dtype
    mean, var = norm.running_mean.double(), norm.running_var.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(mean)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + norm.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    with torch.no_grad():
        conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
        conv.bias = nn.Parameter(((bias - mean) * scale + beta).to(dtype), requires_grad=False)


def _without_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm: nothing, or timm's dropout and activation."""
    if isinstance(norm, BatchNormAct2d):
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


def fold_batch_norms(
    model: nn.Module, example: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None = None
) -> int:
    """Fold batch norms into the convolutions before them, in place; the model must be in eval mode.

    A norm is folded when it is an eval-mode ``nn.BatchNorm2d`` or timm
    ``BatchNormAct2d`` with running statistics, its input in a forward pass of
    ``example`` is the output of a plain ``nn.Conv2d`` (groups and dilation
    allowed), that output is used by nothing else, and neither module is called
    twice or shared. The norm is then replaced by ``nn.Identity`` (or by its
    dropout and activation). Eval-mode outputs stay the same up to rounding.

    Args:
        model: The module to change, in eval mode.
        example: An input for the traced forward pass (one image is enough).
        forward: Calls the model; default ``model(example)``.

    Returns:
        The number of norms folded.
    """
    return _fold_traced(model, example, forward)[0]


def _fold_traced(
    model: nn.Module, example: torch.Tensor, forward: Callable[[torch.Tensor], Any] | None
) -> tuple[int, Any]:
    """`fold_batch_norms`, also returning the traced forward pass's output (``None`` when nothing could fold)."""
    names: dict[int, list[tuple[nn.Module, str]]] = {}
    for parent in model.modules():
        for name, child in parent._modules.items():
            if child is not None:
                names.setdefault(id(child), []).append((parent, name))
    convs = [m for m in model.modules() if type(m) is nn.Conv2d and len(names.get(id(m), [])) == 1]
    norms = [m for m in model.modules() if _foldable_norm(m) and len(names.get(id(m), [])) == 1]
    if not convs or not norms:
        return 0, None
    calls: dict[int, int] = {}
    outputs: dict[int, torch.Tensor] = {}  # id(conv) -> its output
    inputs: dict[int, torch.Tensor] = {}  # id(norm) -> its input
    mode = _Consumers()

    def conv_hook(module: nn.Module, args: Any, output: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if isinstance(output, torch.Tensor):
            outputs[id(module)] = output
            mode.watch(output)

    def norm_hook(module: nn.Module, args: Any) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if args and isinstance(args[0], torch.Tensor):
            inputs[id(module)] = args[0]

    handles = [m.register_forward_hook(conv_hook) for m in convs]
    handles += [m.register_forward_pre_hook(norm_hook) for m in norms]
    try:
        with torch.no_grad(), mode:
            result = forward(example) if forward is not None else model(example)
    finally:
        for handle in handles:
            handle.remove()
    returned = {id(leaf) for leaf in tree_flatten(result)[0] if isinstance(leaf, torch.Tensor)}
    producer = {id(out): conv for conv in convs if (out := outputs.get(id(conv))) is not None}
    folded = 0
    for norm in norms:
        tensor = inputs.get(id(norm))
        conv = producer.get(id(tensor)) if tensor is not None else None
        if (
            conv is None
            or outputs[id(conv)] is not tensor
            or calls.get(id(conv)) != 1
            or calls.get(id(norm)) != 1
            or mode.uses.get(id(tensor)) != 1  # the norm's own batch_norm call, nothing else
            or id(tensor) in returned
            or conv.out_channels != norm.num_features
        ):
            continue
        _fold(conv, norm)
        parent, name = names[id(norm)][0]
        setattr(parent, name, _without_norm(norm))
        folded += 1
    return folded, result


@dataclass
class InferenceCopy:
    """An inference copy of a model and what was done to it.

    Attributes:
        module: The copy (eval mode, no gradients).
        dtype: The dtype its inputs get.
        channels_last: Whether inputs go in channels-last.
        folded: Batch norms folded into convolutions.
        max_relative_diff: ``max |copy - model| / max |model|`` of the fp32 logits
            on a random input, before any cast; ``None`` when nothing was folded or moved.
    """

    module: nn.Module
    dtype: torch.dtype
    channels_last: bool
    folded: int
    max_relative_diff: float | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch, in float32."""
        x = x.to(self.dtype)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x).float()


def inference_copy(
    model: nn.Module,
    example: torch.Tensor,
    dtype: torch.dtype | None = None,
    optimize: bool = True,
    tolerance: float = RELATIVE_TOLERANCE,
) -> InferenceCopy | None:
    """An eval-mode copy of ``model`` for prediction: folded, channels-last and cast, when that helps.

    With ``optimize``, batch norms are folded into convolutions and a network of
    several 2-d convolutions moves to channels-last; the copy's logits on
    ``example`` are then compared with the model's, and the changes are kept
    only within ``tolerance`` (relative to the largest logit). The copy is then
    cast to ``dtype``. ``model`` itself is not changed.

    Args:
        model: The model (any mode; the copy is in eval mode).
        example: A float32 input on the model's device, e.g. one random image.
        dtype: The copy's dtype; ``None``: the model's.
        optimize: Fold and move to channels-last.
        tolerance: The largest relative difference of the logits accepted.

    Returns:
        The copy, or ``None`` when it would be the model as it is (nothing to
        fold, not convolutional, same dtype, or outside the tolerance).
    """
    own = next(model.parameters()).dtype
    dtype = own if dtype is None else dtype
    optimize = optimize and own == torch.float32
    if not optimize and dtype == own:
        return None
    module = copy.deepcopy(model).eval().requires_grad_(False)
    folded, channels_last, diff = 0, False, None
    if optimize:
        example = example.to(own)
        folded, reference = _fold_traced(module, example, None)  # the traced pass gives the reference logits
        if reference is None:
            with torch.no_grad():
                reference = module(example)
        reference = reference.float()
        channels_last = sum(type(m) is nn.Conv2d for m in module.modules()) > 1
        if channels_last:
            module.to(memory_format=torch.channels_last)
        if folded or channels_last:
            with torch.no_grad():
                got = InferenceCopy(module, own, channels_last, folded, None)(example)
            diff = float((got - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
            if not diff <= tolerance:  # NaN too
                if dtype == own:
                    return None
                module = copy.deepcopy(model).eval().requires_grad_(False)
                folded, channels_last = 0, False
        elif dtype == own:
            return None
    if dtype != own:
        module.to(dtype)
    return InferenceCopy(module, dtype, channels_last, folded, diff)
