"""Command-line options built from typed dataclasses, with one-line errors.

Each subcommand's options are the fields of one dataclass (type hints give the
types, the Google docstring gives the help, field metadata from
`autotimm.cli.fields` gives positionals and number ranges). jsonargparse turns them into an ``ArgumentParser`` with
``--config FILE`` and ``--print_config`` for free; this module adds what the
command line needs on top: ``--batch-size`` style option names, ``--flag`` /
``--no-flag`` booleans, range checks that name the option, and error
messages folded to a single line.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, DefaultHelpFormatter

from autotimm.cli.fields import (
    PRINT_CONFIG,
    TTA_CHOICES,
    UsageError,
    check_numbers,
    normalize_argv,
    number,
    option_name,
    optional_value,
    positional,
)

# The field helpers live in autotimm.cli.fields (no jsonargparse there); they are re-exported here too.
__all__ = [
    "PRINT_CONFIG",
    "TTA_CHOICES",
    "CommandParser",
    "UsageError",
    "add_dataclass_options",
    "check_numbers",
    "check_precision",
    "normalize_argv",
    "number",
    "one_line",
    "option_name",
    "optional_value",
    "parse_devices",
    "positional",
]


class _Formatter(DefaultHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """jsonargparse's help (types and defaults) with descriptions and examples printed as written."""


class CommandParser(ArgumentParser):
    """A jsonargparse ``ArgumentParser`` that raises ``argparse.ArgumentError`` instead of exiting on bad input.

    ``--help``, ``--version`` and ``--print_config`` still exit (``SystemExit(0)``).

    Args:
        *args: Passed to ``jsonargparse.ArgumentParser``.
        **kwargs: Passed to ``jsonargparse.ArgumentParser``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _docstring_help(cls: type) -> dict[str, str]:
    from docstring_parser import parse

    return {p.arg_name: " ".join(p.description.split()) for p in parse(cls.__doc__ or "").params if p.description}


def add_dataclass_options(parser: ArgumentParser, cls: type, config_file: bool = True) -> None:
    """Add one argument per field of the dataclass ``cls`` to ``parser``.

    Fields without a default are required; ``bool`` fields become
    ``--flag``/``--no-flag``; fields with `positional` metadata become
    positional arguments.

    Args:
        parser: The subcommand's parser.
        cls: A dataclass with type hints and a Google docstring describing each field.
        config_file: Add ``--config FILE`` (and jsonargparse's ``--print_config``).
    """
    if config_file:
        parser.add_argument(
            "--config",
            action=ActionConfigFile,
            help="A YAML file of options (as --print_config writes); options after it override it.",
        )
    hints = typing.get_type_hints(cls)
    helps = _docstring_help(cls)
    for spec in dataclasses.fields(cls):
        hint = hints[spec.name]
        meta = spec.metadata
        required = spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING
        default = None if required else (spec.default if spec.default is not dataclasses.MISSING else None)
        text = helps.get(spec.name, "")
        if meta.get("positional"):
            kind = typing.get_args(hint)[0] if meta.get("nargs") in ("+", "*") else hint
            extra = {} if required else {"default": default}
            parser.add_argument(
                spec.name,
                type=kind,
                nargs=meta["nargs"],
                metavar=meta["metavar"] or spec.name.upper(),
                help=text,
                **extra,
            )
        elif hint is bool:
            parser.add_argument(option_name(spec.name), action=ActionYesNo(no_prefix="no-"), default=default, help=text)
        else:
            extra = {"required": True} if required else {"default": default}
            if "const" in meta:
                extra.update(nargs="?", const=meta["const"])
            parser.add_argument(option_name(spec.name), type=hint, help=text, **extra)


_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false", "NoneType": "null"}


def _dest_option(parser: ArgumentParser | None, dest: str) -> str:
    """How the user spells the argument stored in ``dest``: ``--batch-size`` or ``CKPT``."""
    dest = dest.rsplit(".", 1)[-1]
    for action in getattr(parser, "_actions", []) if parser is not None else []:
        if action.dest == dest:
            if action.option_strings:
                return action.option_strings[0]
            return str(action.metavar or dest.upper())
    return option_name(dest)


def one_line(message: str, parser: ArgumentParser | None = None) -> str:
    r"""Fold a jsonargparse/argparse error into one line that names the option the way it is typed.

    Args:
        message: The error's text, possibly over several lines.
        parser: The subcommand's parser, to spell options (``train.batch_size`` -> ``--batch-size``).

    Returns:
        A single line.

    Example:
        >>> one_line('Parser key "lr":\n  Expected a <class \'float\'>. Got value: abc')
        "--lr: expected a number, got 'abc'"
    """
    match = re.match(r'Parser key "([^"]+)":\s*(.*)', message, flags=re.DOTALL)
    if match is None:
        text = " ".join(message.split())
        if text.startswith("the following arguments are required"):  # "...: train.data" -> "...: --data"
            text = re.sub(r"\b[a-z]+\.([a-z_]+)\b", lambda m: _dest_option(parser, m.group(1)), text)
        return text
    option, rest = _dest_option(parser, match.group(1)), match.group(2)
    value = re.search(r"(?:Given|Got) value: (.*?)\s*$", rest, flags=re.DOTALL)
    literal = re.search(r"Literal\[(.*?)\]", rest)
    if value is not None:
        if literal is not None:
            expected = f"one of {literal.group(1)}"
        else:
            wanted = rest.split("Given value type")[0]  # not the type of the value given
            words = [_TYPE_WORDS.get(t, t) for t in dict.fromkeys(re.findall(r"<class '(\w+)'>", wanted))]
            expected = " or ".join(words) or "another value"
        return f"{option}: expected {expected}, got {value.group(1)!r}"
    return f"{option}: {' '.join(rest.split())}"


def check_precision(precision: str) -> None:
    """Check ``--precision`` against Lightning's accepted values (when Lightning still names them where we look).

    Raises:
        UsageError: A value Lightning does not accept, with the accepted ones.
    """
    try:
        from lightning_fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS
    except ImportError:  # Lightning checks it when the trainer is built
        return
    accepted = [*typing.get_args(_PRECISION_INPUT_STR), *typing.get_args(_PRECISION_INPUT_STR_ALIAS)]
    if accepted and precision not in accepted:
        raise UsageError(f"--precision must be one of {', '.join(accepted)}; got {precision!r}")


def parse_devices(value: str) -> Any:
    """Lightning's ``devices`` from ``--devices``: ``"auto"``, an int count, or a list of indices from ``"0,1"``.

    Raises:
        UsageError: Anything else.
    """
    text = value.strip()
    if text == "auto":
        return text
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise UsageError(f"--devices must be auto, a count (1) or a list of indices (0,1), got {value!r}") from None
