"""``autotimm models``: search timm's backbones, with parameter counts for short lists."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from autotimm.cli.options import number, positional

__all__ = ["CONFIG", "ModelsConfig", "backbone_facts", "run"]

NAME = "models"
HELP = "List timm backbones matching a pattern."
DESCRIPTION = """\
List timm backbones whose name matches PATTERN: a shell-style wildcard
("resnet*", "*vit_tiny*"), or plain text, which matches anywhere in the name.
For up to 20 listed models the table also shows each backbone's parameter
count (without the classifier), feature width and default input size, built on
PyTorch's meta device (no memory, no weights downloaded).

With --profile, each NAME is built with random weights and profiled side by
side: parameters, size (fp32 and an int8 estimate), MACs at --image-size
(counted by PyTorch's FlopCounterMode), and measured CPU latency of one image
and images/s at --batch-size, eager and through ONNX Runtime when it is
installed; --json prints the same as JSON."""
EXAMPLES = """\
examples:
  autotimm models resnet
  autotimm models "convnext*" --limit 10
  autotimm models "resnet50*" --pretrained       # pretrained weight tags, e.g. resnet50.a1_in1k
  autotimm models resnet18 mobilenetv3_small_100 --profile --image-size 224
  autotimm models resnet18 --profile --no-latency --json
  autotimm train --data data/pets --backbone convnext_atto"""

#: Parameter counts are computed when at most this many models are listed.
MAX_DETAILED = 20


@dataclass
class ModelsConfig:
    """Options of ``autotimm models``.

    Args:
        pattern: Wildcards such as "resnet*", or text matched anywhere in the name; default: every model. With
            --profile: the model names to compare.
        pretrained: List only models with pretrained weights, with their tags (resnet50.a1_in1k).
        limit: List at most this many models (>= 1).
        profile: Profile the named models side by side: parameters, size, MACs and measured latency.
        image_size: With --profile: input size in pixels (>= 1); null for each backbone's default.
        batch_size: With --profile: batch of the images/s measurement (>= 1).
        latency: With --profile: measure latency and images/s (--no-latency: counts only, fast).
        json: With --profile: print JSON instead of a table.
    """

    pattern: list[str] = field(default_factory=list, metadata=positional(nargs="*", metavar="PATTERN"))
    pretrained: bool = False
    limit: int = field(default=50, metadata=number(1))
    profile: bool = False
    image_size: int | None = field(default=None, metadata=number(1))
    batch_size: int = field(default=32, metadata=number(1))
    latency: bool = True
    json: bool = False


#: The options dataclass of this subcommand.
CONFIG = ModelsConfig


def backbone_facts(name: str) -> dict[str, Any] | None:
    """Parameters, feature width and input size of a headless backbone, built on the meta device.

    Args:
        name: A timm model name (a pretrained tag is allowed).

    Returns:
        ``{"params", "features", "input_size"}``, or ``None`` when the model cannot be built that way.
    """
    import timm
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # some architectures need real tensors at construction
        return None
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "features": getattr(model, "num_features", None),
        "input_size": (getattr(model, "pretrained_cfg", None) or {}).get("input_size"),
    }


def run(config: ModelsConfig) -> int:
    """Print the matching backbones as a table.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        ValueError: Nothing matches (the message suggests close names).
    """
    import timm
    from rich.table import Table

    from autotimm.cli.common import console

    if config.profile:
        return _profile(config)
    patterns = config.pattern or ["*"]
    names: list[str] = []
    for given in patterns:
        pattern = given if any(c in given for c in "*?[") else f"*{given}*"
        found = timm.list_models(pattern, pretrained=config.pretrained)
        if not found:
            close = difflib.get_close_matches(given, timm.list_models(), n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else "; try a shorter pattern"
            kind = "timm backbone with pretrained weights" if config.pretrained else "timm backbone"
            raise ValueError(f"no {kind} matches {given!r}{hint}")
        names += [name for name in found if name not in names]
    pattern = pattern if len(patterns) == 1 else ", ".join(patterns)
    shown = names[: config.limit]
    detailed = len(shown) <= MAX_DETAILED
    table = Table(title=f"timm backbones matching {pattern!r}", title_justify="left")
    table.add_column("Name", no_wrap=True)
    if detailed:
        table.add_column("Params", justify="right")
        table.add_column("Features", justify="right")
        table.add_column("Input", justify="right")
    for name in shown:
        if not detailed:
            table.add_row(name)
            continue
        facts = backbone_facts(name)
        if facts is None:
            table.add_row(name, "?", "?", "?")
            continue
        size = facts["input_size"]
        table.add_row(
            name,
            f"{facts['params'] / 1e6:.1f}M",
            str(facts["features"] or "?"),
            "x".join(map(str, size[1:])) if size else "?",
        )
    out = console()
    out.print(table)
    if len(names) > len(shown):
        out.print(
            f"Showing {len(shown)} of {len(names)} matches; narrow the pattern or raise --limit.", highlight=False
        )
    if not detailed:
        out.print(
            f"Parameter counts are shown for at most {MAX_DETAILED} models: narrow the pattern "
            f"(e.g. autotimm models '{min(shown, key=len)}*') or pass --limit {MAX_DETAILED}.",
            highlight=False,
        )
    return 0


def _profile(config: ModelsConfig) -> int:
    """Profile the named backbones side by side (table or JSON)."""
    import json

    import timm

    from autotimm.cli.common import console
    from autotimm.models.profile import profile_model, profile_table

    if not config.pattern:
        raise ValueError("--profile needs model names, e.g. autotimm models resnet18 mobilenetv3_small_100 --profile")
    for name in config.pattern:
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise ValueError(f"--profile takes timm model names; {name!r} is not one{hint}")
    profiles = profile_model(
        list(config.pattern), image_size=config.image_size, batch_size=config.batch_size, latency=config.latency
    )
    out = console()
    if config.json:
        print(json.dumps([p.to_dict() for p in profiles], indent=2))  # plain stdout: for pipes
    else:
        out.print(profile_table(profiles))
    return 0
