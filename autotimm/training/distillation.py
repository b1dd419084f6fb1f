"""Knowledge distillation: a callback that adds a teacher's soft targets to the student's training loss.

The student's loss becomes ``(1 - alpha) * task loss + alpha * T² * KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al., 2015), or the per-class sigmoid form of it for multi-label
models. A callback rather than more `ImageClassifier` arguments: the teacher
is held by the callback, so it never becomes a submodule of the student, never
enters the optimizer and never enters the student's checkpoint (which records
only its source, hash, ``alpha`` and ``T``). Lightning has no distillation
callback of its own.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn
from torch.nn import functional as F

from autotimm.checks import require_number

__all__ = ["Distillation", "distillation_loss", "file_sha256"]


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0, multi_label: bool = False
) -> torch.Tensor:
    """``T² * KL(softmax(teacher / T) || softmax(student / T))``, batch mean; per-class sigmoids for multi-label.

    The ``T²`` keeps the soft targets' gradients on the scale of the task
    loss's as ``T`` changes. The multi-label form is the binary cross-entropy
    of ``sigmoid(student / T)`` against ``sigmoid(teacher / T)`` minus its
    minimum (the teacher's own entropy), averaged over classes: 0 when the two agree.

    Args:
        student_logits: ``(N, C)``.
        teacher_logits: ``(N, C)``, no gradient needed.
        temperature: ``T`` (> 0); higher values soften both distributions.
        multi_label: Use the per-class sigmoid form.

    Returns:
        The scalar loss.

    Example:
        >>> logits = torch.tensor([[1.0, 2.0, 0.5]])
        >>> float(distillation_loss(logits, logits))
        0.0
    """
    t = temperature
    if multi_label:
        target = torch.sigmoid(teacher_logits.float() / t)
        cross = F.binary_cross_entropy_with_logits(student_logits.float() / t, target)
        entropy = F.binary_cross_entropy(target, target)
        return (cross - entropy) * t * t
    log_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * t * t


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file, or of every file in a folder (sorted by relative path).

    Example:
        >>> file_sha256(__file__) == file_sha256(__file__)
        True
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _weights_sha256(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _input_size(config: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a data config, when it has one."""
    size = config.get("input_size") if isinstance(config, dict) else None
    if size is None or len(size) != 3:
        return None
    channels, height, width = (int(v) for v in size)
    return channels, height, width


def _stats(config: Any) -> tuple[list[float], list[float]] | None:
    if not isinstance(config, dict) or "mean" not in config or "std" not in config:
        return None
    return [float(v) for v in config["mean"]], [float(v) for v in config["std"]]


class Distillation(Callback):
    """Train the model (the student) on ``(1 - alpha) * task loss + alpha * distillation loss``.

    The teacher runs in eval mode under ``no_grad`` on the same inputs as the
    student, after mixup or CutMix, re-normalised when its mean and std differ
    from the student's. A teacher whose data config names another input size
    (e.g. trained at 224 px for a 128 px student) gets the student's batch
    resized to its size (bilinear, antialiased when shrinking) rather than
    refused: an ONNX teacher only runs at its own size, and a convolutional one
    is a weaker teacher away from it. A teacher that takes another number of
    channels is refused. Works with [`ImageClassifier`][autotimm.ImageClassifier]
    students (they call `loss` in ``training_step``); validation and test losses
    are the student's own.

    Args:
        teacher: A trained model, loaded: an ``ImageClassifier`` or
            ``EnsembleClassifier`` (any ``nn.Module`` that maps the student's
            inputs to logits), or an ``OnnxPredictor`` (anything with
            ``run(images) -> logits``); e.g. ``autotimm.load_model(path)``.
            It must have the student's class names, in the same order.
        alpha: Weight of the distillation term, in ``[0, 1]``.
        temperature: Softmax temperature ``T`` (> 0).
        source: Where the teacher came from (a file or folder), recorded in the
            student's checkpoints with its SHA-256; ``None``: the hash of the
            teacher's weights is recorded instead.

    Raises:
        ValueError: ``alpha`` or ``temperature`` out of range, or (when
            training starts) class names or input channels that differ from the student's.
        TypeError: A teacher that is neither an ``nn.Module`` nor has ``run``.

    Example:
        >>> from autotimm import AutoTrainer, load_model
        >>> teacher = load_model("runs/big/checkpoints/best.ckpt")  # doctest: +SKIP
        >>> distill = Distillation(teacher, alpha=0.5, temperature=4.0, source="runs/big/checkpoints/best.ckpt")
        ... # doctest: +SKIP
        >>> AutoTrainer(max_epochs=10, callbacks=[distill]).fit(student, data)  # doctest: +SKIP
    """

    def __init__(
        self, teacher: Any, alpha: float = 0.5, temperature: float = 4.0, source: str | os.PathLike[str] | None = None
    ) -> None:
        require_number("alpha", alpha, 0, 1, high_closed=True)
        require_number("temperature", temperature, 0, low_open=True)
        if not isinstance(teacher, nn.Module) and not callable(getattr(teacher, "run", None)):
            raise TypeError(
                "`teacher` must be a loaded model: an ImageClassifier, an EnsembleClassifier or an OnnxPredictor "
                f"(e.g. autotimm.load_model(path)); got a {type(teacher).__name__}"
            )
        self.teacher = teacher
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.source = None if source is None else os.fspath(source)
        if self.source is not None:
            self.sha256 = file_sha256(self.source)
        else:
            self.sha256 = _weights_sha256(teacher) if isinstance(teacher, nn.Module) else None
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        #: The teacher's ``(C, H, W)`` from its data config; ``None``: it takes the student's inputs as they are.
        self.input_size = _input_size(getattr(teacher, "data_config", None))

    @property
    def state_key(self) -> str:
        """One distillation per run: the key of its record in checkpoints."""
        return "Distillation"

    @property
    def record(self) -> dict[str, Any]:
        """What the student's checkpoints record about the teacher."""
        return {
            "teacher": self.source,
            "teacher_type": type(self.teacher).__name__,
            "sha256": self.sha256,
            "alpha": self.alpha,
            "temperature": self.temperature,
            "teacher_input_size": None if self.input_size is None else list(self.input_size),
        }

    # ---------------------------------------------------------------- hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the class names, freeze the teacher on the student's device and hand it to the student."""
        if getattr(getattr(pl_module, "hparams", {}), "get", lambda key: None)("cache_features"):
            raise ValueError(
                "Distillation needs the student's images, but this model trains on cached backbone features "
                "(cache_features=True): build it with cache_features=False"
            )
        student = list(getattr(pl_module, "class_names", None) or [])
        teacher = list(getattr(self.teacher, "class_names", None) or [])
        if teacher and student and [str(c) for c in teacher] != [str(c) for c in student]:
            raise ValueError(
                f"the teacher's class names {teacher[:10]}{'...' if len(teacher) > 10 else ''} differ from the "
                f"student's {student[:10]}{'...' if len(student) > 10 else ''}: distil from a teacher trained on the "
                "same classes, in the same order"
            )
        student_size = _input_size(getattr(getattr(pl_module, "hparams", {}), "get", lambda key: None)("data_config"))
        if student_size is not None:
            self._check_channels(student_size[0])
        if isinstance(self.teacher, nn.Module):
            self.teacher.to(pl_module.device).eval().requires_grad_(False)
        self._shift = self._renormalisation(pl_module)
        pl_module.distillation = self

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Detach the teacher from the student."""
        if getattr(pl_module, "distillation", None) is self:
            pl_module.distillation = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Detach the teacher from the student when training fails."""
        self.on_fit_end(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's record (source, hash, alpha, temperature), saved in the student's checkpoints."""
        return self.record

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the teacher is given again when a run resumes."""

    # ----------------------------------------------------------------- loss
    def _renormalisation(self, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scale, shift)`` taking the student's normalised inputs to the teacher's normalisation, if they differ."""
        student = _stats(getattr(getattr(pl_module, "hparams", {}), "get", lambda key: None)("data_config"))
        teacher = _stats(getattr(self.teacher, "data_config", None))
        if student is None or teacher is None or student == teacher:
            return None
        (s_mean, s_std), (t_mean, t_std) = (np.array(v) for v in student), (np.array(v) for v in teacher)
        scale = torch.tensor(s_std / t_std, dtype=torch.float32).view(1, -1, 1, 1)
        shift = torch.tensor((s_mean - t_mean) / t_std, dtype=torch.float32).view(1, -1, 1, 1)
        return scale, shift

    def _check_channels(self, channels: int) -> None:
        if self.input_size is not None and channels != self.input_size[0]:
            raise ValueError(
                f"the teacher takes {self.input_size[0]}-channel images (its data_config input_size is "
                f"{list(self.input_size)}), but the student's have {channels} channels: distil from a teacher with "
                "the student's number of input channels"
            )

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's logits for the student's (normalised, possibly mixed) inputs ``x``.

        Resized to the teacher's input size first when it has another one.

        Raises:
            ValueError: ``x`` has another number of channels than the teacher takes.
        """
        if self._shift is not None:
            scale, shift = self._shift
            x = x * scale.to(x) + shift.to(x)
        if self.input_size is not None:
            self._check_channels(x.shape[1])
            size = self.input_size[1:]
            if tuple(x.shape[-2:]) != size:
                shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        if isinstance(self.teacher, nn.Module):
            return self.teacher(x).float()
        logits = self.teacher.run(x.detach().float().cpu().numpy())
        return torch.as_tensor(np.asarray(logits), dtype=torch.float32, device=x.device)

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor, task_loss: torch.Tensor, multi_label: bool) -> Any:
        """``(1 - alpha) * task_loss + alpha * distillation_loss``; the student's ``training_step`` calls this.

        Args:
            x: The inputs the student saw.
            student_logits: The student's logits on them.
            task_loss: The student's own loss.
            multi_label: Use the sigmoid form.

        Returns:
            ``(total loss, distillation term)``.
        """
        soft = distillation_loss(student_logits, self.teacher_logits(x), self.temperature, multi_label)
        return (1 - self.alpha) * task_loss + self.alpha * soft, soft
