"""The ``autotimm`` command line, one module per subcommand (`COMMANDS`: ``train``, ``evaluate``, ``explain``...).

Built on jsonargparse rather than Lightning's ``LightningCLI``: LightningCLI
fits one model class plus one data class with nested ``--model.*``,
``--data.*`` and ``--trainer.*`` options and Lightning's own
``fit``/``validate``/``test`` subcommands, whereas this command line wants flat
options (``--backbone``, ``--epochs``), subcommands that are not Lightning
loops (``predict`` on files, ``export``, ``models``, ``serve``) and
``num_classes`` read from the data before the model exists. jsonargparse,
which LightningCLI itself is built on, still gives ``--config run.yaml``,
command-line overrides and ``--print_config`` for free.

Each subcommand is a module here with its options as a typed dataclass (see
``autotimm.cli.options``) and a ``run(config)`` function; torch, timm and
Lightning are imported inside ``run``, so ``autotimm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from autotimm.cli.fields import UsageError, check_numbers, normalize_argv, plain_parser

if TYPE_CHECKING:  # a module import: this package's public names are its own (no lazy exports)
    import autotimm.cli.options

__all__ = ["COMMANDS", "FULL_INSTALL", "build_parser", "main"]

#: The subcommands, in the order ``autotimm --help`` lists them; each is the module ``autotimm.cli.<name>``.
COMMANDS = (
    "train",
    "auto",
    "cv",
    "evaluate",
    "predict",
    "shard",
    "explain",
    "export",
    "push",
    "models",
    "plot",
    "serve",
    "demo",
)

_DESCRIPTION = """\
Train, evaluate and ship image classifiers on any timm backbone.

Run `autotimm COMMAND --help` for a command's options and examples. Every
command accepts --config FILE (YAML) and --print_config; add --verbose to any
command to see full tracebacks of errors."""
_EPILOG = """\
examples:
  autotimm models resnet
  autotimm train --data data/pets --backbone resnet18 --epochs 10 --output-dir runs/pets
  autotimm auto --data data/pets --time-limit 30m --output-dir runs/pets-auto
  autotimm evaluate runs/pets/checkpoints/last.ckpt data/pets
  autotimm predict runs/pets/checkpoints/last.ckpt photos/ --top-k 3
  autotimm explain runs/pets/checkpoints/last.ckpt photos/cat.jpg --output explanations
  autotimm export runs/pets/checkpoints/last.ckpt --output pets.onnx
  autotimm serve pets.onnx --port 8000
  autotimm demo runs/pets
  autotimm export runs/pets/checkpoints/last.ckpt --format hf --output pets-hf && autotimm push pets-hf me/pets"""

# Errors whose message says it all; any other exception also shows its type.
_USER_ERRORS = (ValueError, TypeError, OSError, ImportError)
#: The install command that brings every subcommand's dependencies.
FULL_INSTALL = "pip install autotimm"
# What a torch-free install (onnxruntime, numpy, Pillow and autotimm --no-deps) lacks.
_FULL_ONLY = {"torch", "torchvision", "timm", "pytorch_lightning", "lightning", "jsonargparse", "rich", "torchmetrics"}


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"autotimm.cli.{name}")


def build_parser() -> tuple[autotimm.cli.options.CommandParser, dict[str, autotimm.cli.options.CommandParser]]:
    """Build the ``autotimm`` parser.

    Returns:
        The top-level parser and each subcommand's parser by name.
    """
    from autotimm._version import __version__
    from autotimm.cli.options import CommandParser, add_dataclass_options

    parser = CommandParser(prog="autotimm", description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"autotimm {__version__}")
    parser.add_argument(
        "--verbose", action="store_true", help="Show the full traceback of an error (also accepted after COMMAND)."
    )
    subcommands = parser.add_subcommands(dest="command", required=True, metavar="COMMAND")
    parsers: dict[str, autotimm.cli.options.CommandParser] = {}
    for name in COMMANDS:
        module = _module(name)
        sub = CommandParser(description=module.DESCRIPTION, epilog=module.EXAMPLES)
        add_dataclass_options(sub, module.CONFIG)
        subcommands.add_subcommand(name, sub, help=module.HELP)
        parsers[name] = sub
    return parser, parsers


def _fail(prefix: str, message: str, code: int, error: BaseException | None = None, verbose: bool = False) -> int:
    if verbose and error is not None:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    text = " ".join(message.split()) or "failed"
    print(f"{prefix}: error: {text}", file=sys.stderr)
    return code


def _error_message(error: BaseException) -> str:
    missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
    if missing and missing.split(".")[0] in _FULL_ONLY:
        return (
            f"this needs {missing.split('.')[0]}, which is not installed: install everything with `{FULL_INSTALL}` "
            "(without it, only `autotimm predict MODEL.onnx IMAGES` runs, with onnxruntime, numpy and Pillow)"
        )
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    ours = type(error).__module__.startswith("autotimm.")  # e.g. ExportParityError, PretrainedWeightsUnavailableError
    if (isinstance(error, _USER_ERRORS) or ours) and text:
        return text
    return f"{type(error).__name__}: {text} (run with --verbose for the traceback)"


def _given_options(parser: autotimm.cli.options.CommandParser, args: list[str], command: str) -> set[str]:
    """The options of ``command`` given explicitly, on the command line or in a ``--config`` file."""
    given = parser.parse_args(args, defaults=False)[command].as_dict()
    return set(given) - {"config", "__path__"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``autotimm`` command line.

    Args:
        argv: The arguments, without the program name; ``None`` reads ``sys.argv``.

    Returns:
        The exit status: 0 on success, 1 when the command failed (a missing
        file, an unknown backbone, bad data, ...), 2 for a bad command line
        (unknown option, bad number or choice), 130 when interrupted. Errors
        are one line on stderr, with the traceback only under ``--verbose``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    verbose = "--verbose" in head
    args = normalize_argv([a for a in head if a != "--verbose"] + args[len(head) :])
    command = next((a for a in args if a in COMMANDS), None)
    prefix = f"autotimm {command}" if command else "autotimm"
    if importlib.util.find_spec("jsonargparse") is None:  # a torch-free install: predict with ONNX files only
        return _main_without_jsonargparse(args, command, verbose)
    from autotimm.cli.options import one_line

    parser, parsers = build_parser()
    try:
        namespace = parser.parse_args(args)
    except SystemExit as stop:  # --help, --version, --print_config
        return stop.code if isinstance(stop.code, int) else 0
    except argparse.ArgumentError as err:
        if not args:
            return _fail(prefix, f"choose a command: {', '.join(COMMANDS)} (see autotimm --help)", 2)
        return _fail(prefix, one_line(str(err), parsers.get(command or "")), 2, err, verbose)
    command = namespace.command
    prefix = f"autotimm {command}"
    values = namespace[command].as_dict()
    values.pop("config", None)
    values.pop("__path__", None)
    return _run_command(prefix, _module(command), values, verbose, lambda: _given_options(parser, args, command))


def _run_command(
    prefix: str, module: ModuleType, values: dict[str, Any], verbose: bool, given: Callable[[], set[str]]
) -> int:
    """Build the subcommand's options from ``values``, run it, and turn what it raises into an exit status."""
    try:
        config = module.CONFIG(**values)
        check_numbers(config)
        resolve = getattr(module, "resolve_config", None)
        if resolve is not None:  # e.g. `train --resume`: a run's saved options fill in those not given
            config = resolve(config, given())
            check_numbers(config)
        return int(module.run(config) or 0)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as stop:  # Lightning exits 1 after a graceful shutdown on Ctrl+C
        return stop.code if isinstance(stop.code, int) else 1
    except UsageError as err:
        return _fail(prefix, str(err), 2, err, verbose)
    except Exception as err:
        return _fail(prefix, _error_message(err), 1, err, verbose)


def _main_without_jsonargparse(args: list[str], command: str | None, verbose: bool) -> int:
    """``autotimm predict`` with the standard library's argparse, where jsonargparse (the full install) is missing.

    That is the torch-free install of the export guide: onnxruntime, numpy, Pillow and ``autotimm --no-deps``,
    enough for the ONNX predictor. Every other command fails with one line naming the install command.
    """
    from autotimm._version import __version__

    if command is None and "--version" in args:
        print(f"autotimm {__version__}")
        return 0
    if command != "predict":
        return _fail(
            f"autotimm {command}" if command else "autotimm",
            f"{'this command' if command else 'the command line'} needs the full install (jsonargparse, torch, "
            f"Lightning): `{FULL_INSTALL}`. This install runs only `autotimm predict MODEL.onnx IMAGES...` "
            "(with onnxruntime, numpy and Pillow)",
            1 if command else 2,
        )
    module = _module(command)
    parser = plain_parser(module.CONFIG, "autotimm predict", module.DESCRIPTION, module.EXAMPLES)

    def error(message: str) -> Any:
        raise UsageError(message)

    parser.error = error  # type: ignore[method-assign]  # one line on stderr, as the full command line gives
    position = args.index(command)
    try:
        namespace = parser.parse_args(args[:position] + args[position + 1 :])
    except SystemExit as stop:  # --help
        return stop.code if isinstance(stop.code, int) else 0
    except UsageError as err:
        return _fail("autotimm predict", str(err), 2, err, verbose)
    return _run_command("autotimm predict", module, vars(namespace), verbose, set)
