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
PyTorch's meta device (no memory, no weights downloaded)."""
EXAMPLES = """\
examples:
  autotimm models resnet
  autotimm models "convnext*" --limit 10
  autotimm models "resnet50*" --pretrained       # pretrained weight tags, e.g. resnet50.a1_in1k
  autotimm train --data data/pets --backbone convnext_atto"""

#: Parameter counts are computed when at most this many models are listed.
MAX_DETAILED = 20


@dataclass
class ModelsConfig:
    """Options of ``autotimm models``.

    Args:
        pattern: A wildcard such as "resnet*", or text matched anywhere in the name; default: every model.
        pretrained: List only models with pretrained weights, with their tags (resnet50.a1_in1k).
        limit: List at most this many models (>= 1).
    """

    pattern: str = field(default="*", metadata=positional(nargs="?"))
    pretrained: bool = False
    limit: int = field(default=50, metadata=number(1))


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

    pattern = config.pattern if any(c in config.pattern for c in "*?[") else f"*{config.pattern}*"
    names = timm.list_models(pattern, pretrained=config.pretrained)
    if not names:
        close = difflib.get_close_matches(config.pattern, timm.list_models(), n=5, cutoff=0.5)
        hint = f"; close names: {', '.join(close)}" if close else "; try a shorter pattern"
        kind = "timm backbone with pretrained weights" if config.pretrained else "timm backbone"
        raise ValueError(f"no {kind} matches {config.pattern!r}{hint}")
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
