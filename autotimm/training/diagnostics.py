"""Optional training diagnostics: learning rate, norms and the confusion matrix."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from pytorch_lightning.loggers import Logger

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["LoggingConfig", "confusion_matrix_figure", "log_figure", "total_norm"]


@dataclass
class LoggingConfig:
    """Switches for the extra values [`ImageClassifier`][autotimm.ImageClassifier] logs.

    Args:
        log_learning_rate: Log ``train/lr``, the learning rate of the first
            parameter group, every step.
        log_gradient_norm: Log ``train/grad_norm``, the global L2 norm of all
            gradients, before every optimizer step.
        log_weight_norm: Log ``train/weight_norm``, the global L2 norm of all
            trainable parameters, before every optimizer step.
        log_confusion_matrix: Log ``val/confusion_matrix``, a figure with class
            names on both axes, after every validation epoch. TensorBoard gets
            the figure; other loggers are skipped, and the matrix itself is kept
            on the model as ``val_confusion_matrix_values``.
    """

    log_learning_rate: bool = False
    log_gradient_norm: bool = False
    log_weight_norm: bool = False
    log_confusion_matrix: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for hyper-parameters and checkpoints."""
        return asdict(self)


def total_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of ``tensors`` as one tensor, with no per-tensor device sync.

    Uses `torch.nn.utils.get_total_norm` (fused per-device norms), so the
    only sync is when the logger reads the value.
    """
    tensors = [t.detach() for t in tensors]
    if not tensors:
        return torch.tensor(0.0)
    return torch.nn.utils.get_total_norm(tensors, norm_type=2.0)


def confusion_matrix_figure(
    matrix: torch.Tensor | Any, class_names: Sequence[str], normalize: bool = False, title: str | None = None
) -> Figure:
    """Draw a confusion matrix with class names on the axes.

    Args:
        matrix: ``(C, C)`` counts (tensor or array), rows are true classes, columns predictions.
        class_names: ``C`` names.
        normalize: Divide each row by its total (the share of each true class
            predicted as each class; rows without samples stay 0) and print
            two-decimal fractions instead of counts.
        title: A title above the matrix.

    Returns:
        A matplotlib figure (not shown; the caller closes it).
    """
    from matplotlib.figure import Figure  # lazy: only needed when the option is on

    values = torch.as_tensor(matrix).detach().cpu().to(torch.int64).double()
    if normalize:
        values = values / values.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(max(4.0, 0.5 * len(class_names) + 2.0), 40.0)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(values.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, labels=list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, labels=list(class_names))
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    if title:
        ax.set_title(title)
    if len(class_names) <= 30:
        threshold = (1.0 if normalize else values.max().item()) / 2
        for i in ticks:
            for j in ticks:
                value = values[i, j].item()
                text = f"{value:.2f}" if normalize else str(int(value))
                ax.text(j, i, text, ha="center", va="center", color="white" if value > threshold else "black")
    fig.tight_layout()
    return fig


def log_figure(loggers: Sequence[Logger], tag: str, figure: Figure, step: int) -> None:
    """Write ``figure`` to every logger that takes figures (TensorBoard, MLflow, W&B, CSV; see `log_figure_to`)."""
    from autotimm.training.loggers import log_figure_to

    for logger in loggers:
        log_figure_to(logger, tag, figure, step)
