"""Command-line options as dataclass fields: their metadata, range checks and option names, without jsonargparse.

The subcommands declare their options with these (``field(metadata=number(1))``);
`autotimm.cli.options` builds the jsonargparse parser from them. Nothing here
imports jsonargparse, rich or torch, so that `plain_parser` can run
``autotimm predict MODEL.onnx`` in an install with only onnxruntime, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

__all__ = [
    "PRINT_CONFIG",
    "REPEATABLE_OPTIONS",
    "TTA_CHOICES",
    "UsageError",
    "check_numbers",
    "is_optional",
    "normalize_argv",
    "number",
    "option_name",
    "optional_value",
    "plain_parser",
    "positional",
]

#: jsonargparse's own option, kept with its underscore (``--print-config`` is accepted too).
PRINT_CONFIG = "--print_config"
#: Accepted ``--tta`` values (``--tta`` alone means ``flip``).
TTA_CHOICES = Literal["none", "flip", "crops", "flip_crops"]


class UsageError(ValueError):
    """A bad command-line value; the message names the option and what it accepts."""


def positional(nargs: str | None = None, metavar: str | None = None) -> dict[str, Any]:
    """Field metadata for a positional argument.

    Args:
        nargs: argparse's ``nargs`` (``"+"``, ``"?"``); ``None`` for exactly one value.
        metavar: The name shown in the help; default: the field name in capitals.

    Returns:
        The metadata dict for ``dataclasses.field(metadata=...)``.
    """
    return {"positional": True, "nargs": nargs, "metavar": metavar}


def optional_value(const: Any) -> dict[str, Any]:
    """Field metadata for an option whose value may be left out: ``--tta`` means ``--tta flip``.

    Args:
        const: The value of the bare option.

    Returns:
        The metadata dict for ``dataclasses.field(metadata=...)``.
    """
    return {"const": const}


def number(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_closed: bool = False
) -> dict[str, Any]:
    """Field metadata for a number option checked to lie in ``[low, high)`` (or ``(low, high)``, ``[low, high]``).

    Args:
        low: Smallest accepted value, included unless ``low_open``; ``None`` for no bound.
        high: Upper bound, excluded unless ``high_closed``; ``None`` for none.
        low_open: Exclude ``low`` itself.
        high_closed: Include ``high`` itself.

    Returns:
        The metadata dict for ``dataclasses.field(metadata=...)``.
    """
    return {"low": low, "high": high, "low_open": low_open, "high_closed": high_closed}


def option_name(name: str) -> str:
    """The command-line option of a field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def is_optional(hint: Any) -> bool:
    """Whether a type hint is ``X | None``."""
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _describe(meta: dict[str, Any], integer: bool) -> str:
    low, high = meta.get("low"), meta.get("high")
    kind = "an integer" if integer else "a number"
    closing = "]" if meta.get("high_closed") else ")"
    if low is not None and high is not None:
        return f"{kind} in {'(' if meta.get('low_open') else '['}{low:g}, {high:g}{closing}"
    if low is not None:
        return f"{kind} {'>' if meta.get('low_open') else '>='} {low:g}"
    return f"{kind} {'<=' if meta.get('high_closed') else '<'} {high:g}"


def check_numbers(config: Any) -> None:
    """Check every field with `number` metadata of a dataclass instance (``None`` values pass).

    Args:
        config: A subcommand's options.

    Raises:
        UsageError: A value out of range; the message names the option, e.g.
            ``--epochs must be an integer >= 1, got -1``.
    """
    hints = typing.get_type_hints(type(config))
    for spec in dataclasses.fields(config):
        meta = spec.metadata
        value = getattr(config, spec.name)
        if value is None or ("low" not in meta and "high" not in meta):
            continue
        hint = hints[spec.name]
        integer = hint is int or (is_optional(hint) and int in typing.get_args(hint))
        low, high = meta.get("low"), meta.get("high")
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and low is not None:
            ok = value > low if meta.get("low_open") else value >= low
        if ok and high is not None:
            ok = value <= high if meta.get("high_closed") else value < high
        if not ok:
            raise UsageError(f"{option_name(spec.name)} must be {_describe(meta, integer)}, got {value!r}")


#: List options that may be repeated, ``--logger mlflow --logger csv``: each is passed to jsonargparse as
#: ``--logger+`` (append; after ``--config``, to the file's list).
REPEATABLE_OPTIONS = frozenset({"--logger", "--tags", "--examples"})


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept ``--batch_size`` for ``--batch-size`` (config keys use underscores) and ``--print-config``.

    The options in `REPEATABLE_OPTIONS` become jsonargparse's appending ``--name+``.
    Tokens after a bare ``--`` are left alone.

    Example:
        >>> normalize_argv(["--batch_size", "8", "--logger", "mlflow", "--logger=csv"])
        ['--batch-size', '8', '--logger+', 'mlflow', '--logger+=csv']
    """
    out: list[str] = []
    rest = False
    for token in argv:
        if not rest and token == "--":
            rest = True
        elif not rest and token.startswith("--") and len(token) > 2:
            name, sep, value = token.partition("=")
            name = PRINT_CONFIG if name in (PRINT_CONFIG, "--print-config") else name.replace("_", "-")
            name = name + "+" if name in REPEATABLE_OPTIONS else name
            token = name + sep + value
        out.append(token)
    return out


def plain_parser(cls: type, prog: str, description: str = "", epilog: str = "") -> argparse.ArgumentParser:
    """A standard-library ``argparse`` parser for the fields of the dataclass ``cls``.

    What `autotimm.cli.options.add_dataclass_options` builds with jsonargparse, minus ``--config`` and
    ``--print_config``, for installs without jsonargparse: positionals from `positional` metadata,
    ``--flag``/``--no-flag`` booleans, ``Literal`` choices, ``X | None`` options that accept ``null``.
    Option help is not shown (it comes from the docstring, which jsonargparse reads).

    Args:
        cls: A subcommand's options dataclass.
        prog: The program name shown in usage and errors (``"autotimm predict"``).
        description: The help's description.
        epilog: The help's epilog (the examples).

    Returns:
        The parser; ``vars(parser.parse_args(argv))`` gives ``cls``'s keyword arguments.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    hints = typing.get_type_hints(cls)
    for spec in dataclasses.fields(cls):
        hint, meta = hints[spec.name], spec.metadata
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        default = None if required else spec.default
        optional = is_optional(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
        kind = args[0] if len(args) == 1 else str
        if typing.get_origin(kind) is list:
            kind = typing.get_args(kind)[0]
        extra: dict[str, Any] = {}
        if typing.get_origin(kind) is Literal:
            extra["choices"] = [*typing.get_args(kind), *([None] if optional else [])]
            kind = str
        if optional:
            kind = _nullable(kind)
        if meta.get("positional"):
            parser.add_argument(spec.name, type=kind, nargs=meta["nargs"], metavar=meta["metavar"] or spec.name.upper())
        elif hint is bool:
            parser.add_argument(option_name(spec.name), action=argparse.BooleanOptionalAction, default=default)
        else:
            if "const" in meta:
                extra.update(nargs="?", const=meta["const"])
            parser.add_argument(option_name(spec.name), type=kind, default=default, required=required, **extra)
    return parser


def _nullable(kind: Any) -> Any:
    """An argparse ``type`` that reads ``null`` (or ``none``) as ``None`` and anything else with ``kind``."""

    def convert(text: str) -> Any:
        return None if text.lower() in ("null", "none") else kind(text)

    convert.__name__ = getattr(kind, "__name__", "value")  # argparse names the type in its errors
    return convert
