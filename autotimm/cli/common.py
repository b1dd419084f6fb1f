"""Helpers shared by the subcommands: data sources, model files, output."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "MODEL_SUFFIXES",
    "builtin_names",
    "console",
    "labelled_datamodule",
    "load_predictor",
    "require_file",
    "write_config",
]

#: File kinds ``evaluate`` and ``predict`` load: Lightning checkpoints and exported ONNX models.
MODEL_SUFFIXES = (".ckpt", ".onnx")


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


def load_predictor(path: str, device: str = "auto") -> Any:
    """Load a ``.ckpt`` as an ``ImageClassifier`` or an ``.onnx`` file as an ``OnnxPredictor``.

    Args:
        path: The model file.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...; for ``.ckpt`` files.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Another kind of file.
    """
    file = require_file(path, "CKPT", "a .ckpt checkpoint or an .onnx export")
    suffix = file.suffix.lower()
    if suffix == ".onnx":
        from autotimm.prediction.onnx_predictor import OnnxPredictor

        return OnnxPredictor(file)
    if suffix != ".ckpt":
        raise ValueError(f"CKPT {path!r} must be a .ckpt checkpoint or an .onnx export, got a {suffix or 'bare'} file")
    import torch

    from autotimm.classifier.module import ImageClassifier

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return ImageClassifier.load(os.fspath(file), map_location=device)


def write_config(config: Any, folder: Path) -> Path:
    """Write a subcommand's options dataclass to ``folder/config.yaml``; ``--config`` repeats the run from it.

    ``data`` (when it exists on disk), ``output_dir`` and ``dataset_root`` are
    made absolute, so that the file repeats the run from any working directory.
    """
    import dataclasses

    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    values = dataclasses.asdict(config)
    for name in ("data", "output_dir", "dataset_root"):
        value = values.get(name)
        if isinstance(value, str) and (name != "data" or Path(value).exists()):
            values[name] = str(Path(value).resolve())
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path
