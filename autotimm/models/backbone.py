"""timm backbones: configuration, creation (hub or local weights) and discovery."""

from __future__ import annotations

import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
from timm.models import get_arch_pretrained_cfgs, load_pretrained
from torch import nn

from autotimm.checks import require_number

__all__ = [
    "CHECKPOINT_FORMATS",
    "BackboneConfig",
    "PretrainedWeightsUnavailableError",
    "as_backbone_config",
    "check_model_name",
    "create_backbone",
    "list_backbones",
]


#: Accepted ``BackboneConfig.checkpoint_format`` values: how a local state dict's keys are named.
CHECKPOINT_FORMATS = ("auto", "timm", "torchvision")


class PretrainedWeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but could not be fetched or found."""


@dataclass
class BackboneConfig:
    """How to build a headless timm backbone.

    Every field is passed on to `timm.create_model`.

    Args:
        model_name: A timm model name, optionally with a pretrained tag
            (``"resnet50"``, ``"resnet50.a1_in1k"``); see `list_backbones`.
        pretrained: Download ImageNet weights through timm (needs the Hugging
            Face hub or a filled cache).
        checkpoint_path: A local ``.pth``/``.bin``/``.safetensors`` state dict
            to load instead of hub weights. A classifier in the file is dropped.
        checkpoint_format: How ``checkpoint_path``'s keys are named: ``"timm"`` (timm's own),
            ``"torchvision"`` (a torchvision classification model's, converted with
            [`load_torchvision_weights`][autotimm.load_torchvision_weights]; see
            [`TORCHVISION_TO_TIMM`][autotimm.models.TORCHVISION_TO_TIMM] for the architectures), or
            ``"auto"``: torchvision when the file's keys are exactly the torchvision twin's, else timm.
        drop_rate: Dropout rate on the pooled features.
        drop_path_rate: Stochastic depth rate, for models that support it.
        in_chans: Input channels; pretrained first-layer weights are adapted.
        extra_kwargs: Any further keyword arguments for ``timm.create_model``
            (for example ``{"global_pool": "max"}``).
    """

    model_name: str
    pretrained: bool = True
    checkpoint_path: str | Path | None = None
    checkpoint_format: Literal["auto", "timm", "torchvision"] = "auto"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    in_chans: int = 3
    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ValueError(f"BackboneConfig `model_name` must be a timm model name, got {self.model_name!r}")
        for name in ("drop_rate", "drop_path_rate"):
            require_number(name, getattr(self, name), 0, 1, hint="a BackboneConfig field")
        require_number("in_chans", self.in_chans, 1, integer=True, hint="a BackboneConfig field")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(
                f"BackboneConfig `checkpoint_format` must be one of {', '.join(CHECKPOINT_FORMATS)}, "
                f"got {self.checkpoint_format!r}"
            )
        fields = {
            "num_classes",
            "pretrained",
            "checkpoint_path",
            "checkpoint_format",
            "drop_rate",
            "drop_path_rate",
            "in_chans",
        }
        if not isinstance(self.extra_kwargs, dict):
            raise ValueError(f"BackboneConfig `extra_kwargs` must be a dict, got {self.extra_kwargs!r}")
        reserved = fields & set(self.extra_kwargs)
        if reserved:
            raise ValueError(f"BackboneConfig `extra_kwargs` must not set {sorted(reserved)}; use the fields")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for hyper-parameters and checkpoints."""
        data = asdict(self)
        data["checkpoint_path"] = None if self.checkpoint_path is None else str(self.checkpoint_path)
        return data


def as_backbone_config(backbone: str | BackboneConfig | dict[str, Any]) -> BackboneConfig:
    """Turn a model name, a config, or a config's dict form into a [`BackboneConfig`][autotimm.BackboneConfig].

    Raises:
        ValueError: For any other type.
    """
    if isinstance(backbone, BackboneConfig):
        return backbone
    if isinstance(backbone, str):
        return BackboneConfig(backbone)
    if isinstance(backbone, dict):
        return BackboneConfig(**backbone)
    raise ValueError(f"`backbone` must be a model name or a BackboneConfig, got {type(backbone).__name__}")


def list_backbones(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Search timm's catalogue of backbones.

    Args:
        pattern: A shell-style wildcard, e.g. ``"*resnet*"``.
        pretrained: List only models with pretrained weights, with their tags
            (``"resnet50.a1_in1k"``).

    Returns:
        Sorted model names.
    """
    return timm.list_models(pattern, pretrained=pretrained)


def check_model_name(name: str) -> None:
    """Raise unless ``name`` is a timm architecture, with a known pretrained tag if it has one.

    ``hf-hub:`` and ``local-dir:`` names are accepted as they are (timm resolves them).

    Args:
        name: A timm model name, e.g. ``"resnet18"`` or ``"resnet50.a1_in1k"``.

    Raises:
        ValueError: An unknown architecture (with the closest timm names) or pretrained tag (with the known ones).

    Example:
        >>> check_model_name("resnet18")
    """
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return
    arch, _, tag = name.partition(".")
    if timm.is_model(arch):  # timm.is_model ignores the tag, so check it here
        tags = get_arch_pretrained_cfgs(arch)
        if not tag or name in tags:
            return
        raise ValueError(f"Unknown pretrained tag {tag!r} for backbone {arch!r}. Known: {', '.join(tags) or 'none'}.")
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f" Closest timm names: {', '.join(close)}." if close else ""
    raise ValueError(f"Unknown backbone {name!r}.{hint} Use autotimm.list_backbones('*pattern*') to search.")


def _without_classifier(model: nn.Module) -> Any:
    """A timm ``filter_fn`` that applies the model's own checkpoint filter, then drops the classifier."""
    model_filter = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    classifiers = model.pretrained_cfg.get("classifier") or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else classifiers

    def filter_fn(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
        if model_filter is not None:
            state_dict = model_filter(state_dict, model)
        prefixes = tuple(f"{name}." for name in classifiers)
        return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}

    return filter_fn


def _checkpoint_keys(path: Path) -> list[str] | None:
    """The state dict keys of a checkpoint file, read without its tensors; ``None`` if it cannot be read so."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        try:  # mmap: the tensors stay on disk, only the names are read
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file in torch's legacy (pre-1.6, non-zip) format cannot be mapped
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a broken file: the timm loader reports it
        return None
    if isinstance(data, dict):
        for key in ("state_dict", "model"):  # nested as timm's load_state_dict reads them
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    return [str(key) for key in data] if isinstance(data, dict) else None


def _load_torchvision_checkpoint(model: nn.Module, path: Path, model_name: str) -> None:
    from autotimm.models.torchvision_weights import load_torchvision_weights

    try:
        load_torchvision_weights(model, path, model_name)
    except ValueError as err:
        raise ValueError(
            f"BackboneConfig `checkpoint_path` {str(path)!r} (checkpoint_format='torchvision') does not fit "
            f"backbone {model_name!r}: {err}"
        ) from err


def _load_checkpoint(model: nn.Module, path: Path, model_name: str, in_chans: int, checkpoint_format: str) -> None:
    """Load a local state dict into a headless backbone, strictly.

    timm's ``pretrained_cfg_overlay(file=...)`` loads files too, but for a
    headless model it silently turns strict loading off, so a mismatched file
    would load nothing. This keeps timm's loader (formats, nested keys, input
    conv adaptation, model filters) and fails loudly on any mismatch. A
    torchvision state dict is converted first (``checkpoint_format``).
    """
    if not path.is_file():
        raise FileNotFoundError(f"BackboneConfig `checkpoint_path` {str(path)!r} does not exist or is not a file")
    if checkpoint_format == "auto":
        from autotimm.models.torchvision_weights import is_torchvision_state_dict

        keys = _checkpoint_keys(path)
        checkpoint_format = "torchvision" if keys and is_torchvision_state_dict(keys, model_name) else "timm"
    if checkpoint_format == "torchvision":
        _load_torchvision_checkpoint(model, path, model_name)
        return
    # custom_load=False: some default cfgs (e.g. ViT augreg) route files to a JAX .npz loader.
    cfg = {**model.pretrained_cfg, "file": str(path), "source": "", "num_classes": 0, "custom_load": False}
    try:
        load_pretrained(model, cfg, num_classes=0, in_chans=in_chans, filter_fn=_without_classifier(model), strict=True)
    except RuntimeError as err:
        text = " ".join(str(err).split())  # torch lists every key: keep the start, on one line
        raise ValueError(
            f"BackboneConfig `checkpoint_path` {str(path)!r} does not fit backbone {model_name!r}: "
            f"{text[:600]}{' ...' if len(text) > 600 else ''}"
        ) from err


def _is_network_error(err: BaseException) -> bool:
    while err is not None:
        module = type(err).__module__.split(".")[0]
        if isinstance(err, (OSError, ConnectionError, TimeoutError)) or module in {
            "huggingface_hub",
            "httpx",
            "requests",
        }:
            return True
        err = err.__cause__ or err.__context__
    return False


def create_backbone(backbone: str | BackboneConfig) -> nn.Module:
    """Create a headless timm backbone (``num_classes=0``).

    The returned model maps images to pooled features; its width is
    ``model.num_features``.

    Args:
        backbone: A timm model name or a `BackboneConfig`. A bare name
            means ``BackboneConfig(name)``, i.e. with pretrained weights.

    Returns:
        The timm model, with ``num_features`` and ``pretrained_cfg``.

    Raises:
        ValueError: Unknown model name (with the closest names), or a
            checkpoint that does not fit.
        FileNotFoundError: ``checkpoint_path`` does not exist.
        PretrainedWeightsUnavailableError: ``pretrained=True`` and the weights
            cannot be downloaded (offline) or found in the cache.

    Example:
        >>> model = create_backbone(BackboneConfig("resnet18", pretrained=False))
        >>> model.num_features
        512
    """
    cfg = as_backbone_config(backbone)
    check_model_name(cfg.model_name)
    use_hub = cfg.pretrained and cfg.checkpoint_path is None
    kwargs: dict[str, Any] = dict(num_classes=0, in_chans=cfg.in_chans, **cfg.extra_kwargs)
    # Passed only when set: not every architecture takes them.
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        model = timm.create_model(cfg.model_name, pretrained=use_hub, **kwargs)
    except Exception as err:
        if use_hub and _is_network_error(err):
            raise PretrainedWeightsUnavailableError(
                f"Could not get pretrained weights for backbone {cfg.model_name!r}: the Hugging Face hub is "
                f"unreachable and the weights are not in the local cache ({type(err).__name__}: {err}). "
                "To proceed offline, either use random initialisation with "
                f"BackboneConfig({cfg.model_name!r}, pretrained=False); or load a local state dict with "
                f"BackboneConfig({cfg.model_name!r}, checkpoint_path='weights.safetensors'); or fill the "
                "Hugging Face cache (HF_HOME) on a machine with internet and set HF_HUB_OFFLINE=1."
            ) from err
        if isinstance(err, TypeError):
            raise ValueError(f"timm model {cfg.model_name!r} rejected the backbone arguments: {err}") from err
        raise
    if cfg.checkpoint_path is not None:
        _load_checkpoint(model, Path(cfg.checkpoint_path), cfg.model_name, cfg.in_chans, cfg.checkpoint_format)
    return model
