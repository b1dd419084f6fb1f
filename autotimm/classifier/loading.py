"""One loader for every kind of trained model: a checkpoint, an ONNX export, an ensemble folder or a loaded model.

[`load_model`][autotimm.classifier.loading.load_model] is what the REST service
and the command line load their model with. This module imports no torch: an
ONNX model loads where only numpy, Pillow and onnxruntime are installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["MODEL_KINDS", "ModelKind", "load_model", "model_kind"]

#: What `load_model` accepts, in words, for messages.
MODEL_KINDS = (
    "a .ckpt checkpoint, an .onnx file from autotimm.export, a folder written by EnsembleClassifier.save, "
    "or a loaded model with predict and class_names"
)

#: What `model_kind` finds: a ``.ckpt`` file, an ``.onnx`` file, an ensemble folder, a model folder from
#: ``save_pretrained`` (``model.safetensors`` and ``config.json``) or a loaded model.
ModelKind = Literal["checkpoint", "onnx", "ensemble", "pretrained", "loaded"]

_SUFFIX_KINDS: dict[str, ModelKind] = {".ckpt": "checkpoint", ".onnx": "onnx"}


def model_kind(model_or_path: Any, name: str = "model_or_path") -> ModelKind:
    """What [`load_model`][autotimm.classifier.loading.load_model] would load, checked without loading it.

    Args:
        model_or_path: A path (``str`` or path-like) or a loaded model.
        name: How the argument is named in the messages.

    Returns:
        ``"checkpoint"`` (a ``.ckpt`` file), ``"onnx"`` (an ``.onnx`` file),
        ``"ensemble"`` (a folder with ``ensemble.json``), ``"pretrained"`` (a
        folder with ``model.safetensors`` and ``config.json``, from
        ``save_pretrained``) or ``"loaded"`` (an object with ``predict`` and ``class_names``).

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: A file or folder of another kind.
        TypeError: Another kind of object.

    Example:
        >>> model_kind("no/such/model.ckpt")
        Traceback (most recent call last):
        ...
        FileNotFoundError: `model_or_path` 'no/such/model.ckpt' does not exist; it must be a .ckpt checkpoint, ...
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        return _path_kind(Path(model_or_path), name)
    if callable(getattr(model_or_path, "predict", None)) and hasattr(model_or_path, "class_names"):
        return "loaded"
    raise TypeError(f"`{name}` must be {MODEL_KINDS}; got a {type(model_or_path).__name__}")


def _path_kind(path: Path, name: str) -> ModelKind:
    """The kind of model file or folder at ``path``."""
    if path.is_dir():
        from autotimm.classifier.ensemble import MANIFEST_FILE

        if (path / MANIFEST_FILE).is_file():
            return "ensemble"
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            return "pretrained"  # a save_pretrained / timm model folder
        raise ValueError(f"`{name}` must be {MODEL_KINDS}; got the folder {os.fspath(path)!r}, with no {MANIFEST_FILE}")
    if not path.exists():
        raise FileNotFoundError(f"`{name}` {os.fspath(path)!r} does not exist; it must be {MODEL_KINDS}")
    kind = _SUFFIX_KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"`{name}` must be {MODEL_KINDS}; got the file {os.fspath(path)!r}")
    return kind


def _resolve_device(device: str | torch.device) -> str | torch.device:
    """``"auto"``: ``"cuda"`` when CUDA is available, else ``"cpu"``; any other device as it is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(model_or_path: Any, device: str | torch.device = "auto") -> Any:
    """Load a trained model of any kind, ready to ``predict``.

    Args:
        model_or_path: A ``.ckpt`` file ([`ImageClassifier.load`][autotimm.ImageClassifier.load]),
            an ``.onnx`` file ([`OnnxPredictor`][autotimm.prediction.onnx_predictor.OnnxPredictor];
            no torch needed), a folder written by
            [`EnsembleClassifier.save`][autotimm.classifier.ensemble.EnsembleClassifier.save]
            ([`EnsembleClassifier.load`][autotimm.classifier.ensemble.EnsembleClassifier.load]),
            a model folder written by ``save_pretrained``
            ([`ImageClassifier.from_pretrained`][autotimm.ImageClassifier.from_pretrained]),
            or an object with ``predict`` and ``class_names`` (returned as it is).
        device: Where a checkpoint's or an ensemble's weights go: ``"auto"``
            (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; an
            ONNX model picks its own execution providers (CUDA when available).

    Returns:
        A model with ``predict`` and ``class_names``.

    Raises:
        FileNotFoundError: No such file or folder.
        ValueError: A file or folder of another kind, a file that is not an
            autotimm model, or a CUDA ``device`` without CUDA.
        TypeError: Another kind of object.

    Example:
        >>> model = load_model("runs/pets/checkpoints/best.ckpt")  # doctest: +SKIP
        >>> model.predict("photo.jpg")[0].label  # doctest: +SKIP
        'cat'
    """
    kind = model_kind(model_or_path)
    if kind == "loaded":
        return model_or_path
    path = os.fspath(model_or_path)
    if kind == "onnx":
        from autotimm.prediction.onnx_predictor import OnnxPredictor

        return OnnxPredictor(path)
    if kind == "ensemble":
        from autotimm.classifier.ensemble import EnsembleClassifier

        return EnsembleClassifier.load(path, map_location=_resolve_device(device))
    from autotimm.classifier.module import ImageClassifier

    if kind == "pretrained":
        return ImageClassifier.from_pretrained(path, map_location=_resolve_device(device))
    return ImageClassifier.load(path, map_location=_resolve_device(device))
