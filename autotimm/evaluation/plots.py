"""Figures of the evaluation report: reliability diagrams, image grids and a message figure.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so
drawing works in threads, on machines without a display and never opens a window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotimm.evaluation.calibration import ReliabilityBins, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw_reliability", "image_grid_figure", "message_figure", "reliability_diagram", "save_figure"]

_OVER = "#d62728"  # over-confident gap
_UNDER = "#2ca02c"  # under-confident gap
_BAR = "#1f77b4"


def save_figure(figure: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``figure`` as a PNG (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def draw_reliability(panels: Sequence[tuple[str, ReliabilityBins]], title: str | None = None) -> Figure:
    """Reliability diagrams side by side, each over a histogram of the samples per bin.

    Args:
        panels: ``(name, bins)`` per column, e.g. before and after calibration.
        title: The figure title.

    Returns:
        The figure.
    """
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(5.0 * len(panels), 6.8), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3.2, 1.0])
    for column, (name, bins) in enumerate(panels):
        top = fig.add_subplot(grid[0, column])
        bottom = fig.add_subplot(grid[1, column], sharex=top)
        left, width = bins.edges[:-1], np.diff(bins.edges)
        filled = bins.count > 0
        top.bar(
            left[filled],
            bins.accuracy[filled],
            width[filled],
            align="edge",
            color=_BAR,
            edgecolor="black",
            linewidth=0.6,
            label="Accuracy",
        )
        gap = bins.confidence - bins.accuracy
        colours = [_OVER if g > 0 else _UNDER for g in gap[filled]]
        top.bar(
            left[filled],
            gap[filled],
            width[filled],
            bottom=bins.accuracy[filled],
            align="edge",
            color=[to_rgba(c, 0.3) for c in colours],
            edgecolor=colours,
            hatch="//",
            linewidth=0.8,
        )
        top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.2)
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("Accuracy")
        top.set_title(f"{name}\nECE = {bins.ece:.4f}", fontsize=11)
        top.tick_params(labelbottom=False)
        fraction = bins.count / max(int(bins.count.sum()), 1)
        bottom.bar(left, fraction, width, align="edge", color="gray", edgecolor="black", linewidth=0.4)
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("Confidence (top-1 probability)")
        bottom.set_ylabel("Share")
    handles = [
        Patch(facecolor=_BAR, edgecolor="black", label="Accuracy"),
        Patch(facecolor=to_rgba(_OVER, 0.3), edgecolor=_OVER, hatch="//", label="Gap: over-confident"),
        Patch(facecolor=to_rgba(_UNDER, 0.3), edgecolor=_UNDER, hatch="//", label="Gap: under-confident"),
        Patch(facecolor="none", edgecolor="gray", linestyle="--", label="Perfect calibration"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2 if len(panels) == 1 else 4)
    if title:
        fig.suptitle(title)
    return fig


def image_grid_figure(
    images: Sequence[np.ndarray], titles: Sequence[str], columns: int = 4, title: str | None = None
) -> Figure:
    """A grid of ``(H, W, 3)`` uint8 images with a title each.

    Args:
        images: The images.
        titles: One (possibly multi-line) title per image.
        columns: Images per row at most.
        title: The figure title.

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = Figure(figsize=(2.8 * columns, (2.6 + 0.22 * lines) * rows + (0.5 if title else 0)))
    for i, (image, text) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(image, interpolation="nearest" if max(image.shape[:2]) < 96 else "antialiased")
        ax.set_title(text, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def message_figure(message: str, title: str | None = None) -> Figure:
    """A small figure that only shows ``message`` (for reports with nothing to draw)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 2))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=13, wrap=True)
    if title:
        fig.suptitle(title)
    return fig


def reliability_diagram(
    probs: Any,
    labels: Any,
    n_bins: int = 15,
    calibrated_probs: Any | None = None,
    temperature: float | None = None,
    title: str | None = None,
) -> Figure:
    """Draw a reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.

    Bars are the accuracy of each bin; the shaded part between a bar's top and
    the bin's mean confidence is the calibration gap (red: over-confident,
    green: under-confident). A histogram below shows how many samples each bin
    holds. With ``calibrated_probs`` a second column shows the same after
    temperature scaling. The ECE is in each panel's title.

    Args:
        probs: ``(N, C)`` probabilities before calibration (temperature 1).
        labels: ``(N,)`` true class indices.
        n_bins: Number of bins.
        calibrated_probs: ``(N, C)`` probabilities after temperature scaling, or ``None``.
        temperature: The temperature of ``calibrated_probs`` (of ``probs`` without them), for the title.
        title: A title for the whole figure.

    Returns:
        A matplotlib figure (not shown; save it with ``fig.savefig``).

    Raises:
        ValueError: Bad shapes, labels out of range, values that are not probabilities.
    """
    if calibrated_probs is None:
        name = "Reliability" + (f" (T = {temperature:.3g})" if temperature is not None else "")
        return draw_reliability([(name, reliability_bins(probs, labels, n_bins))], title)
    after = "After calibration" + (f" (T = {temperature:.3g})" if temperature is not None else "")
    panels = [("Before calibration (T = 1)", probs), (after, calibrated_probs)]
    return draw_reliability([(name, reliability_bins(p, labels, n_bins)) for name, p in panels], title)
