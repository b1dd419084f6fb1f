"""``EnsembleClassifier``: several trained classifiers whose probabilities are averaged, used like one model.

Its forward pass returns ``log(sum_i w_i * softmax(logits_i / T_i))``, the log
of the averaged calibrated probabilities. Softmax of these "logits" is the
averaged probability, so what works on an ``ImageClassifier``'s logits works
unchanged: ``predict``, ``predict_logits``,
[`evaluate`][autotimm.evaluation.report.evaluate] and ``calibrate`` (which then
scales the averaged probabilities). ``autotimm.export`` takes single
``ImageClassifier`` s only.

Images are preprocessed once, with the ensemble's ``data_config``. Members
must agree with it on the input size and on resizing and cropping; each
member's own mean and std are restored exactly by a per-channel affine map of
the normalised input, ``x * std_e / std_i + (mean_e - mean_i) / std_i``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.data import AttributeDict
from torch import nn

from autotimm.classifier.predictor import InferenceMixin

__all__ = ["EnsembleClassifier"]

#: The data_config keys members must share with the ensemble (the rest of preprocessing happens once).
SHARED_PREPROCESSING = ("input_size", "interpolation", "crop_pct", "crop_mode")
#: The file that makes a folder an ensemble: its members, weights, preprocessing and temperature.
MANIFEST_FILE = "ensemble.json"


def _channel_stats(config: dict[str, Any], key: str) -> torch.Tensor:
    channels = int(config["input_size"][0])
    values = [float(v) for v in config[key]]
    values = values * channels if len(values) == 1 else values
    return torch.tensor(values, dtype=torch.float32).reshape(channels, 1, 1)


class EnsembleClassifier(InferenceMixin, nn.Module):
    """Average the probabilities of several single-label classifiers.

    Args:
        members: Trained [`ImageClassifier`][autotimm.ImageClassifier] s with
            the same class names in the same order.
        weights: One weight per member (> 0), normalised to sum to 1; default: equal.
        data_config: The preprocessing of the ensemble's input; default: the first member's.

    Raises:
        ValueError: No members, multi-label members, different class names,
            bad weights, or a member whose input size, interpolation or crop
            differs from ``data_config``.

    Example:
        >>> from autotimm import BackboneConfig, ImageClassifier
        >>> config = BackboneConfig("test_resnet", pretrained=False)
        >>> members = [ImageClassifier(config, num_classes=3) for _ in range(2)]
        >>> ensemble = EnsembleClassifier(members)
        >>> probabilities = ensemble(torch.zeros(1, 3, 64, 64)).softmax(dim=1)
        >>> round(float(probabilities.sum()), 5)
        1.0
    """

    def __init__(
        self,
        members: Sequence[Any],
        weights: Sequence[float] | None = None,
        data_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("`members` must hold at least one classifier, got none")
        names = [str(n) for n in members[0].class_names]
        for index, member in enumerate(members):
            if bool(member.hparams.get("multi_label", False)):
                raise ValueError(f"`members`[{index}] is multi-label; EnsembleClassifier averages single-label models")
            if [str(n) for n in member.class_names] != names:
                raise ValueError(
                    f"`members`[{index}] has class names {list(member.class_names)}, member 0 has {names}; "
                    "every member needs the same classes in the same order"
                )
        if weights is None:
            weights = [1.0] * len(members)
        weights = [float(w) for w in weights]
        if len(weights) != len(members) or not all(w > 0 for w in weights):
            raise ValueError(f"`weights` must be {len(members)} positive numbers (one per member), got {weights}")
        configs = [dict(member.preprocessor.data_config) for member in members]
        config = dict(data_config) if data_config is not None else configs[0]
        for index, member_config in enumerate(configs):
            for key in SHARED_PREPROCESSING:
                ours, theirs = config.get(key), member_config.get(key)
                if key == "input_size":
                    ours, theirs = [int(v) for v in ours], [int(v) for v in theirs]
                if ours != theirs:
                    raise ValueError(
                        f"`members`[{index}] expects {key}={theirs!r} but the ensemble's data_config has {ours!r}; "
                        f"members must share {', '.join(SHARED_PREPROCESSING)} (mean and std may differ)"
                    )
        mean, std = _channel_stats(config, "mean"), _channel_stats(config, "std")
        scales = [std / _channel_stats(c, "std") for c in configs]
        shifts = [(mean - _channel_stats(c, "mean")) / _channel_stats(c, "std") for c in configs]
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights) / sum(weights))
        self.register_buffer("scales", torch.stack(scales))
        self.register_buffer("shifts", torch.stack(shifts))
        # Temperature scaling of the averaged probabilities (set by `calibrate`); 1 leaves them as they are.
        self.register_buffer("temperature", torch.ones(()))
        self._data_config = config
        self.class_names = names
        self.hparams = AttributeDict(num_classes=len(names), multi_label=False, data_config=config)

    @property
    def data_config(self) -> dict[str, Any]:
        """The preprocessing of the ensemble's input (timm data config); members get theirs from it."""
        return dict(self._data_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the averaged member probabilities, ``(N, num_classes)``, for normalised images ``(N, C, H, W)``."""
        total = None
        for index, member in enumerate(self.members):
            inputs = x * self.scales[index].to(x.dtype) + self.shifts[index].to(x.dtype)
            probabilities = (member(inputs).float() / member.temperature).softmax(dim=1) * self.weights[index]
            total = probabilities if total is None else total + probabilities
        assert total is not None
        return total.clamp_min(torch.finfo(total.dtype).tiny).log()

    def predict_step(self, batch: Any, batch_idx: int = 0) -> torch.Tensor:
        """Averaged probabilities ``(N, num_classes)`` (with the ensemble's temperature)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return (self(x) / self.temperature).softmax(dim=1)

    def save(self, path: str | os.PathLike[str]) -> Path:  # type: ignore[override]
        """Write the ensemble to a folder: one checkpoint per member and ``ensemble.json``.

        Args:
            path: The folder (created).

        Returns:
            The folder.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for index, member in enumerate(self.members):
            files.append(f"member_{index}.ckpt")
            member.save(folder / files[-1])
        manifest = {
            "members": files,
            "weights": self.weights.tolist(),
            "data_config": self.data_config,
            "temperature": float(self.temperature),
            "class_names": self.class_names,
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        return folder

    @classmethod
    def load(  # type: ignore[override]
        cls, path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
    ) -> EnsembleClassifier:
        """Load an ensemble written by [`save`][autotimm.classifier.ensemble.EnsembleClassifier.save], in eval mode.

        Args:
            path: The folder.
            map_location: Where to put the weights.

        Raises:
            FileNotFoundError: The folder or its ``ensemble.json`` is missing.
        """
        from autotimm.classifier.module import ImageClassifier

        folder = Path(path)
        manifest_file = folder / MANIFEST_FILE
        if not manifest_file.is_file():
            raise FileNotFoundError(
                f"`path` {os.fspath(path)!r} is not an ensemble folder: it has no {MANIFEST_FILE} "
                "(write one with EnsembleClassifier.save)"
            )
        manifest = json.loads(manifest_file.read_text())
        members = [ImageClassifier.load(folder / name, map_location=map_location) for name in manifest["members"]]
        ensemble = cls(members, manifest["weights"], manifest["data_config"])
        ensemble.temperature.fill_(float(manifest.get("temperature", 1.0)))
        return ensemble.eval()
