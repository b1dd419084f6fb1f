"""Real pretrained weights from torchvision: its classification state dicts, converted to timm's keys.

torchvision and timm implement several architectures identically but name their
tensors differently (``features.1.conv.0.0.weight`` in torchvision's MobileNetV2
is ``blocks.0.0.conv_dw.weight`` in timm's ``mobilenetv2_100``). For each pair in
`TORCHVISION_TO_TIMM` both libraries register the same tensors in the same order,
so the key map is built by pairing the two models' state dicts position by
position (the models are built on the ``meta`` device, without memory or
weights), checking every pair's shape and kind (``weight``, ``running_var``...).
Each pair was verified by loading a converted random torchvision model strictly
into timm's and comparing the logits (``tests/test_torchvision_weights.py``).

torchvision's MobileNetV3 and EfficientNet-B5 to B7 use BatchNorm ``eps=1e-3``
where timm's defaults are ``1e-5``: `torchvision_model_kwargs` gives the
``timm.create_model`` arguments that build the timm model the same way, and
`load_torchvision_weights` sets that ``eps`` on an existing model.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import timm
import torch
from timm.models import adapt_input_conv, clean_state_dict, load_state_dict
from torch import nn

__all__ = [
    "TORCHVISION_TO_TIMM",
    "is_torchvision_state_dict",
    "load_torchvision_weights",
    "torchvision_model_kwargs",
    "torchvision_to_timm",
]


@dataclass(frozen=True)
class _Pair:
    torchvision: str
    timm: str
    bn_eps: float | None = None  # torchvision's BatchNorm eps, where it is not timm's default


_PAIRS = (
    *(_Pair(name, name) for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")),
    *(_Pair(name, name) for name in ("resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d")),
    *(_Pair(name, name) for name in ("wide_resnet50_2", "wide_resnet101_2")),
    _Pair("mobilenet_v2", "mobilenetv2_100"),
    _Pair("mobilenet_v3_large", "mobilenetv3_large_100", bn_eps=1e-3),
    _Pair("mobilenet_v3_small", "mobilenetv3_small_100", bn_eps=1e-3),
    *(_Pair(f"efficientnet_b{i}", f"efficientnet_b{i}") for i in range(5)),
    *(_Pair(f"efficientnet_b{i}", f"efficientnet_b{i}", bn_eps=1e-3) for i in range(5, 8)),
    *(_Pair(f"convnext_{size}", f"convnext_{size}") for size in ("tiny", "small", "base", "large")),
    _Pair("vit_b_16", "vit_base_patch16_224"),
    _Pair("vit_b_32", "vit_base_patch32_224"),
    _Pair("vit_l_16", "vit_large_patch16_224"),
    _Pair("vit_l_32", "vit_large_patch32_224"),
)

#: The supported architectures: torchvision model name -> the timm model name whose keys its state dict converts to.
TORCHVISION_TO_TIMM: Mapping[str, str] = MappingProxyType({pair.torchvision: pair.timm for pair in _PAIRS})

_BY_NAME = {**{pair.torchvision: pair for pair in _PAIRS}, **{pair.timm: pair for pair in _PAIRS}}

# torchvision names a few tensors differently from timm: these pairs are the same kind of tensor.
_SAME_KIND = {
    ("class_token", "cls_token"),
    ("pos_embedding", "pos_embed"),
    ("in_proj_weight", "weight"),
    ("in_proj_bias", "bias"),
    ("layer_scale", "gamma"),
}


def _pair(model_name: str, argument: str = "model_name") -> _Pair:
    """The supported pair for a timm name (a pretrained tag allowed) or a torchvision name."""
    arch = model_name.partition(".")[0] if isinstance(model_name, str) else None
    if arch not in _BY_NAME:
        pairs = ", ".join(f"{pair.torchvision} -> {pair.timm}" for pair in _PAIRS)
        raise ValueError(
            f"`{argument}` {model_name!r} has no torchvision weight conversion. "
            f"Supported (torchvision -> timm): {pairs}."
        )
    return _BY_NAME[arch]


def torchvision_model_kwargs(model_name: str) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that build a timm model the way torchvision builds its twin.

    Empty for most pairs; ``{"bn_eps": 0.001}`` for MobileNetV3 and EfficientNet-B5 to B7,
    whose torchvision models use that BatchNorm epsilon.

    Args:
        model_name: A timm or torchvision name from `TORCHVISION_TO_TIMM`.

    Returns:
        Keyword arguments for ``timm.create_model``.

    Raises:
        ValueError: ``model_name`` is not a supported architecture (the message lists the pairs).

    Example:
        >>> torchvision_model_kwargs("mobilenetv3_large_100")
        {'bn_eps': 0.001}
    """
    pair = _pair(model_name)
    return {} if pair.bn_eps is None else {"bn_eps": pair.bn_eps}


def _same_shape(a: torch.Size, b: torch.Size) -> bool:
    """Equal up to trailing size-1 dimensions: a ``(C, 1, 1)`` layer scale is timm's ``(C,)`` gamma."""

    def strip(shape: torch.Size) -> tuple[int, ...]:
        dims = tuple(shape)
        while dims and dims[-1] == 1:
            dims = dims[:-1]
        return dims

    return strip(a) == strip(b)


@dataclass(frozen=True)
class _KeyMap:
    names: dict[str, str]  # torchvision key -> timm key
    torchvision_shapes: dict[str, torch.Size]
    timm_shapes: dict[str, torch.Size]
    any_shape: frozenset[str]  # torchvision keys whose shape may differ: classifier, first conv, position embedding


@functools.cache
def _key_map(pair: _Pair) -> _KeyMap:
    import torchvision

    with torch.device("meta"):
        source = torchvision.models.get_model(pair.torchvision, weights=None).state_dict()
        # 1000 classes as torchvision's: some timm defaults are headless (vit_large_patch32_224, an in21k one).
        target_model = timm.create_model(pair.timm, pretrained=False, num_classes=1000)
    target = target_model.state_dict()
    tv_keys = list(source)
    if "encoder.pos_embedding" in source:  # torchvision's ViT registers the position embedding after the stem
        tv_keys.remove("encoder.pos_embedding")
        tv_keys.insert(tv_keys.index("class_token") + 1, "encoder.pos_embedding")

    def paired(keys: list[str]) -> list[str]:
        return [key for key in keys if not key.endswith(".num_batches_tracked")]

    tv_params, timm_params = paired(tv_keys), paired(list(target))
    if len(tv_params) != len(timm_params):
        raise RuntimeError(
            f"torchvision's {pair.torchvision} has {len(tv_params)} tensors, timm's {pair.timm} {len(timm_params)}: "
            "this torchvision/timm version pair is not supported by the conversion"
        )
    names: dict[str, str] = {}
    for tv_key, timm_key in zip(tv_params, timm_params, strict=True):
        tv_kind, timm_kind = tv_key.rpartition(".")[2], timm_key.rpartition(".")[2]
        if (tv_kind != timm_kind and (tv_kind, timm_kind) not in _SAME_KIND) or not _same_shape(
            source[tv_key].shape, target[timm_key].shape
        ):
            raise RuntimeError(
                f"torchvision's {pair.torchvision} and timm's {pair.timm} do not line up at {tv_key} "
                f"{tuple(source[tv_key].shape)} / {timm_key} {tuple(target[timm_key].shape)}: this "
                "torchvision/timm version pair is not supported by the conversion"
            )
        names[tv_key] = timm_key
        if tv_kind == "running_mean":  # BatchNorm's counter follows its statistics
            counter = "num_batches_tracked"
            names[f"{tv_key.rpartition('.')[0]}.{counter}"] = f"{timm_key.rpartition('.')[0]}.{counter}"
    if set(names) != set(source) or set(names.values()) != set(target):
        raise RuntimeError(f"torchvision's {pair.torchvision} and timm's {pair.timm} BatchNorm buffers do not line up")

    cfg = target_model.pretrained_cfg
    classifiers = cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    free = {f"{cfg['first_conv']}.weight", "pos_embed"}
    any_shape = frozenset(tv for tv, tm in names.items() if tm.startswith(prefixes) or tm in free)
    return _KeyMap(names, {k: v.shape for k, v in source.items()}, {k: v.shape for k, v in target.items()}, any_shape)


def is_torchvision_state_dict(keys: Iterable[str], model_name: str) -> bool:
    """Whether state dict keys are those of the torchvision twin of a timm model (and not timm's own).

    Used by [`create_backbone`][autotimm.create_backbone] with ``checkpoint_format="auto"``. A ResNet's
    torchvision keys are timm's too: such a file is a timm state dict as it is, so this returns ``False``.

    Args:
        keys: The state dict's keys (a ``module.`` prefix from DDP is ignored).
        model_name: A timm or torchvision model name; an unsupported one gives ``False``.

    Returns:
        ``True`` when the keys are exactly the torchvision model's (``num_batches_tracked`` buffers optional)
        and differ from the timm model's.

    Example:
        >>> import torchvision
        >>> is_torchvision_state_dict(torchvision.models.mobilenet_v2().state_dict(), "mobilenetv2_100")
        True
    """
    arch = model_name.partition(".")[0] if isinstance(model_name, str) else None
    if arch not in _BY_NAME:
        return False
    key_map = _key_map(_BY_NAME[arch])

    def core(names: Iterable[str]) -> set[str]:
        return {name for name in names if not name.endswith(".num_batches_tracked")}

    given = core(key.removeprefix("module.") for key in keys)
    return given == core(key_map.names) and given != core(key_map.timm_shapes)


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def torchvision_to_timm(state_dict: Mapping[str, torch.Tensor], model_name: str) -> dict[str, torch.Tensor]:
    """Rename a torchvision classification state dict to the keys of the matching timm model.

    The result loads strictly into ``timm.create_model(timm_name, num_classes=1000,
    **torchvision_model_kwargs(timm_name))`` (as many classes as the checkpoint's classifier) and gives
    the torchvision model's outputs. The classifier is kept (it may have any number of classes),
    as are the first convolution and ViT's position embedding, whatever their shape (load them with
    `load_torchvision_weights`, which adapts them to the model). Tensors are reshaped where timm stores them
    differently (ConvNeXt's layer scale, MobileNetV3's last linear layer as a 1x1 convolution), not copied.

    Args:
        state_dict: A torchvision model's ``state_dict()`` (a ``module.`` prefix from DDP is removed).
        model_name: The timm name (``"mobilenetv2_100"``, a pretrained tag allowed) or the torchvision
            name (``"mobilenet_v2"``) of a pair in `TORCHVISION_TO_TIMM`.

    Returns:
        The same tensors under timm's keys, in timm's order.

    Raises:
        ValueError: ``model_name`` is not supported (the message lists the pairs), or ``state_dict`` is not
            a state dict of that torchvision architecture (missing, unexpected or misshapen keys).

    Example:
        >>> import torchvision
        >>> state = torchvision_to_timm(torchvision.models.resnet18().state_dict(), "resnet18")
        >>> timm.create_model("resnet18").load_state_dict(state)
        <All keys matched successfully>
    """
    pair = _pair(model_name)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"`state_dict` must be a mapping of names to tensors, got {type(state_dict).__name__}")
    keys = _key_map(pair)
    state = clean_state_dict(dict(state_dict))
    missing = [key for key in keys.names if key not in state and not key.endswith(".num_batches_tracked")]
    unexpected = [key for key in state if key not in keys.names]
    what = f"torchvision {pair.torchvision} state dict (the twin of timm's {pair.timm})"
    if missing or unexpected:
        found = [f"{len(missing)} missing keys ({_examples(missing)})"] if missing else []
        found += [f"{len(unexpected)} unexpected keys ({_examples(unexpected)})"] if unexpected else []
        raise ValueError(f"`state_dict` is not a {what}: {' and '.join(found)}")
    converted: dict[str, torch.Tensor] = {}
    for tv_key, timm_key in keys.names.items():
        if tv_key not in state:
            continue  # num_batches_tracked, absent from old checkpoints; the model keeps its own
        tensor = state[tv_key]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"`state_dict` entry {tv_key!r} must be a tensor, got {type(tensor).__name__}")
        if tv_key in keys.any_shape:
            converted[timm_key] = tensor
            continue
        if tensor.shape != keys.torchvision_shapes[tv_key]:
            raise ValueError(
                f"`state_dict` is not a {what}: {tv_key} has shape {tuple(tensor.shape)}, "
                f"torchvision's {pair.torchvision} has {tuple(keys.torchvision_shapes[tv_key])}"
            )
        converted[timm_key] = tensor.reshape(keys.timm_shapes[timm_key])
    return {key: converted[key] for key in keys.timm_shapes if key in converted}


def _read(checkpoint: str | Path | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    if not isinstance(checkpoint, (str, Path)):
        raise ValueError(
            f"`checkpoint` must be a state dict or the path of a .pth/.bin/.safetensors file, "
            f"got {type(checkpoint).__name__}"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"`checkpoint` {str(path)!r} does not exist or is not a file")
    # use_ema=False: torchvision's reference training scripts save the EMA model beside the plain one.
    return load_state_dict(str(path), use_ema=False, weights_only=True)


def load_torchvision_weights(
    model: nn.Module, checkpoint: str | Path | Mapping[str, torch.Tensor], model_name: str | None = None
) -> nn.Module:
    """Load a torchvision checkpoint into a timm model or an autotimm backbone, strictly.

    The checkpoint is converted with `torchvision_to_timm` and adapted to the model as timm adapts its own
    pretrained weights:

    - the classifier is loaded if it fits the model (a full model with the checkpoint's 1000 classes), and
      dropped otherwise: a headless backbone (``num_classes=0``, what
      [`create_backbone`][autotimm.create_backbone] builds) has none, and a model with another number of
      classes keeps its freshly initialised one;
    - the first convolution is adapted to the model's ``in_chans`` (RGB kernels summed for one channel);
    - ViT position embeddings are resampled to the model's image size;
    - the model's BatchNorm layers get torchvision's ``eps`` (see `torchvision_model_kwargs`).

    Every other tensor must load: a missing, unexpected or misshapen key raises.

    Args:
        model: A timm model of a supported architecture (see `TORCHVISION_TO_TIMM`).
        checkpoint: A torchvision state dict, or the path of one saved with ``torch.save``
            (``.pth``/``.pt``/``.bin``, also nested under ``"state_dict"`` or ``"model"``) or safetensors.
        model_name: The timm or torchvision architecture name; by default the model's own
            (``model.pretrained_cfg["architecture"]``).

    Returns:
        ``model``, with the weights loaded.

    Raises:
        ValueError: An unsupported architecture (the message lists the pairs), or a checkpoint that does not
            fit the model.
        FileNotFoundError: ``checkpoint`` is a path that does not exist.

    Example:
        >>> import torchvision
        >>> model = timm.create_model("resnet18", num_classes=0)
        >>> _ = load_torchvision_weights(model, torchvision.models.resnet18().state_dict())
    """
    if model_name is None:
        model_name = getattr(model, "pretrained_cfg", {}).get("architecture")
        if model_name is None:
            raise ValueError(
                f"`model` ({type(model).__name__}) is not a timm model with a pretrained_cfg; pass `model_name`"
            )
    pair = _pair(model_name)
    state = torchvision_to_timm(_read(checkpoint), pair.timm)

    model_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if model_filter is not None:  # e.g. ViT: resample the position embedding to the model's image size
        state = model_filter(state, model)
    own = model.state_dict()
    first_conv = f"{model.pretrained_cfg['first_conv']}.weight"
    if first_conv in state and first_conv in own and state[first_conv].shape[1] != own[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(own[first_conv].shape[1], state[first_conv])
    classifiers = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in ((classifiers,) if isinstance(classifiers, str) else classifiers))
    head = [key for key in state if key.startswith(prefixes)]
    keep_head = all(key in own and own[key].shape == state[key].shape for key in head)
    if not keep_head:
        state = {key: value for key, value in state.items() if key not in head}
    if pair.bn_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = pair.bn_eps

    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"torchvision {pair.torchvision} weights do not fit the model: {err}") from err
    missing = [
        key
        for key in result.missing_keys
        if (keep_head or not key.startswith(prefixes)) and not key.endswith(".num_batches_tracked")
    ]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"torchvision {pair.torchvision} weights do not fit the model: missing keys {missing}, "
            f"unexpected keys {result.unexpected_keys}"
        )
    return model
