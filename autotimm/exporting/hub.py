"""The Hugging Face / timm model folder as an export format: written, then loaded back with plain timm and checked.

The folder itself is written by
[`save_pretrained`][autotimm.classifier.pretrained.save_pretrained] (the
classifier layer, so that ``ImageClassifier.save_pretrained`` can use it);
this module adds what an export does on top: the folder is read back with
plain ``timm.create_model("local-dir:DIR", pretrained=True)`` and its logits
must match the classifier's, as ONNX and TorchScript exports are checked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotimm.classifier.pretrained import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, paired_logits, save_pretrained
from autotimm.exporting.exporter import ExportParityError

__all__ = ["PretrainedExport", "export_pretrained"]


@dataclass
class PretrainedExport:
    """What [`export_pretrained`][autotimm.exporting.hub.export_pretrained] wrote and checked.

    Args:
        path: The model folder.
        files: Its files: ``model.safetensors``, ``config.json``, ``README.md``.
        weights_size: Size of ``model.safetensors`` in bytes.
        max_abs_diff: Largest logit difference between plain timm loading the folder and the classifier.
        atol: The tolerance the check used.
    """

    path: Path
    files: list[Path]
    weights_size: int
    max_abs_diff: float
    atol: float

    def __str__(self) -> str:
        names = ", ".join(p.name for p in self.files)
        return f"hf export: {self.path} ({names}; weights {self.weights_size / 1e6:.1f} MB)"


def _timm_logits_difference(model: Any, folder: Path, samples: int = 2) -> float:
    """Load ``folder`` with plain timm and return the largest logit difference from ``model`` on random images."""
    import timm

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    ours, theirs = paired_logits(model, loaded, samples=samples, seed=1)
    return float((ours - theirs).abs().max())


def export_pretrained(
    model: Any, directory: str | os.PathLike[str], atol: float = 1e-4, **save_kwargs: Any
) -> PretrainedExport:
    """Write the model folder and check that plain timm loads it with the classifier's logits.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier].
        directory: The folder to write.
        atol: The largest logit difference accepted (> 0).
        **save_kwargs: ``license``, ``metrics``, ``training_data``, ``threshold``, ``repo_id``
            (see [`save_pretrained`][autotimm.classifier.pretrained.save_pretrained]).

    Returns:
        A [`PretrainedExport`][autotimm.exporting.hub.PretrainedExport].

    Raises:
        ExportParityError: timm's model from the folder disagrees by more than ``atol``.
        ValueError: A bad ``atol``, or a model the folder cannot hold.
    """
    from autotimm.checks import require_number

    require_number("atol", atol, 0, low_open=True)
    folder = save_pretrained(model, directory, **save_kwargs)
    difference = _timm_logits_difference(model, folder)
    if not difference <= atol:
        raise ExportParityError(
            f"timm.create_model('local-dir:{folder}') gives logits up to {difference:.3g} away from the "
            f"classifier's (atol {atol:g})",
            difference,
            atol,
        )
    files = [folder / name for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)]
    return PretrainedExport(folder, files, (folder / WEIGHTS_FILE).stat().st_size, difference, atol)
