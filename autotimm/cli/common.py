"""Helpers shared by the subcommands: data sources, model files, output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "CKPT_KINDS",
    "builtin_names",
    "console",
    "labelled_datamodule",
    "load_predictor",
    "model_path",
    "require_file",
    "write_config",
]

#: What ``evaluate``, ``predict`` and ``serve`` load as CKPT, in words, for messages.
CKPT_KINDS = "a .ckpt checkpoint or an .onnx export, or a folder written by EnsembleClassifier.save"


def console(stderr: bool = False) -> Any:
    """A rich console on the current ``sys.stdout`` (or ``sys.stderr``); long lines (file paths) are not wrapped."""
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def builtin_names() -> list[str]:
    """The built-in dataset names (cheap: no torch)."""
    from autotimm.data.builtin import list_builtin_datasets

    return list_builtin_datasets()


def require_file(value: str, option: str, kinds: str = "") -> Path:
    """Return ``value`` as a path, or raise if no such file exists.

    Args:
        value: The path given.
        option: How the argument is named in the message (``CKPT``, ``--data``).
        kinds: What files are accepted, for the message.

    Raises:
        FileNotFoundError: No such file (or it is a folder).
    """
    path = Path(value).expanduser()
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{option} {value!r} {what}{'; pass ' + kinds if kinds else ''}")
    return path


def labelled_datamodule(
    data: str, split: str, val_split: float, test_split: float, seed: int, dataset_root: str | None
) -> tuple[Any, str]:
    """Set up an ``ImageDataModule`` on DATA for evaluation and return it with the split to use.

    With the same ``val_split``, ``test_split`` and ``seed`` as in training,
    the carved validation and test splits are the same images. ``split="all"``
    uses every image of a class folder or CSV (a separate held-out set).

    Raises:
        ValueError: ``split="all"`` on data that brings its own splits.
    """
    from autotimm.data.datamodule import ImageDataModule
    from autotimm.data.sources import data_source

    whole = split == "all"
    datamodule = ImageDataModule(
        **data_source(data, "DATA"),
        dataset_root=dataset_root,
        val_split=0.0 if whole else val_split,
        test_split=0.0 if whole else test_split,
        seed=seed,
        output_dir=None,
        num_workers=0,
    )
    datamodule.setup()
    if whole:
        if datamodule.splits != ["train"]:
            raise ValueError(
                f"--split all: DATA {data!r} has its own splits {datamodule.splits}; pass --split with one of them"
            )
        split = "train"
    return datamodule, split


def model_path(value: str) -> Path:
    """Return CKPT as a path, checked (without loading) by [`model_kind`][autotimm.classifier.loading.model_kind].

    Args:
        value: The path given: a ``.ckpt`` or ``.onnx`` file, or an ensemble folder.

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: A file of another kind, or a folder that is not an ensemble.
    """
    from autotimm.classifier.loading import model_kind

    path = Path(value).expanduser()
    try:
        model_kind(path, "CKPT")
    except FileNotFoundError:
        raise FileNotFoundError(f"CKPT {value!r} does not exist; pass {CKPT_KINDS}") from None
    except ValueError:
        what = "a folder that is not an ensemble" if path.is_dir() else f"a {path.suffix.lower() or 'bare'} file"
        raise ValueError(f"CKPT {value!r} must be {CKPT_KINDS}, got {what}") from None
    return path


def load_predictor(path: str, device: str = "auto") -> Any:
    """Load CKPT with [`load_model`][autotimm.classifier.loading.load_model], its errors in the CLI's words.

    Args:
        path: The model: a ``.ckpt`` or ``.onnx`` file, or an ensemble folder.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...; for checkpoints and ensembles.

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: Another kind of file or folder, or not an autotimm model.
    """
    from autotimm.classifier.loading import load_model

    return load_model(model_path(path), device)


def write_config(config: Any, folder: Path) -> Path:
    """Write a subcommand's options dataclass to ``folder/config.yaml``; ``--config`` repeats the run from it.

    ``data`` (when it exists on disk), ``output_dir``, ``dataset_root`` and ``checkpoint_path`` are
    made absolute, so that the file repeats the run from any working directory. The file is written to a
    temporary file and renamed into place, and in a multi-process run (torchrun, SLURM) by global rank 0
    only ([`is_rank_zero`][autotimm.data.ranks.is_rank_zero]): another rank reading it meanwhile (``--resume``)
    reads the old file or the whole new one.

    Returns:
        The path of ``config.yaml`` (on every rank).
    """
    import dataclasses

    import yaml

    from autotimm.data.ranks import is_rank_zero, write_text_atomically

    path = folder / "config.yaml"
    if not is_rank_zero():
        return path
    values = dataclasses.asdict(config)
    for name in ("data", "output_dir", "dataset_root", "checkpoint_path"):
        value = values.get(name)
        if isinstance(value, str) and (name != "data" or Path(value).exists()):
            values[name] = str(Path(value).resolve())
    return write_text_atomically(path, yaml.safe_dump(values, sort_keys=False))
