"""Figures of the evaluation report: reliability diagrams, image grids and a message figure.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot), so
drawing works in threads, on machines without a display and never opens a window.

Class names in any script: [`font_fallback`][autotimm.evaluation.plots.font_fallback]
finds installed fonts with the glyphs matplotlib's default font lacks (Noto Sans
CJK, Droid Sans Fallback, ... for Chinese, Japanese or Korean names), and
[`class_labels`][autotimm.evaluation.plots.class_labels] falls back to class
indices with a legend when no installed font has them, so that no figure draws
empty boxes or warns once per missing glyph.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotimm.evaluation.calibration import ReliabilityBins, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FontFallback",
    "add_legend",
    "class_labels",
    "draw_reliability",
    "font_fallback",
    "image_grid_figure",
    "message_figure",
    "per_class_bar_figure",
    "reliability_diagram",
    "sample_indices",
    "save_figure",
]

_OVER = "#d62728"  # over-confident gap
_UNDER = "#2ca02c"  # under-confident gap
_BAR = "#1f77b4"


# matplotlib's own last-resort font has a placeholder box for every character: it shows no glyph.
_PLACEHOLDER_FONTS = ("Last Resort",)


@functools.cache
def _installed_fonts() -> tuple[tuple[str, frozenset[int]], ...]:
    """Every font matplotlib knows (but the placeholder one), with the code points it has glyphs for."""
    from matplotlib import font_manager, ft2font

    fonts: list[tuple[str, frozenset[int]]] = []
    seen: set[str] = set()
    for entry in font_manager.fontManager.ttflist:
        if entry.fname in seen or entry.name.startswith(_PLACEHOLDER_FONTS):
            continue
        seen.add(entry.fname)
        try:
            fonts.append((entry.name, frozenset(ft2font.FT2Font(entry.fname).get_charmap())))
        except (OSError, RuntimeError, ValueError):  # an unreadable font file: not a candidate
            continue
    return tuple(fonts)


def _default_font_chars() -> frozenset[int]:
    """The code points of the font matplotlib draws text with by default (``rcParams["font.family"]``)."""
    import matplotlib
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family=matplotlib.rcParams["font.family"]))
    return frozenset(ft2font.FT2Font(path).get_charmap())


@dataclass(frozen=True)
class FontFallback:
    """Which installed fonts draw some texts, as [`font_fallback`][autotimm.evaluation.plots.font_fallback] found.

    Args:
        families: Font families to try after the default one, for the glyphs it lacks (empty: none needed).
        uncovered: Characters that no installed font has a glyph for.
    """

    families: tuple[str, ...] = ()
    uncovered: frozenset[str] = frozenset()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """Draw (create and save figures) inside this to use the fallback fonts; nothing changes outside it."""
        import matplotlib

        if not self.families:
            yield
            return
        families = [*matplotlib.rcParams["font.family"], *self.families]
        with matplotlib.rc_context({"font.family": families}):
            yield

    def shown(self, text: str) -> str:
        """``text`` with each character no font has written as its code point, U+XXXX (nothing left to warn about)."""
        return "".join(f"U+{ord(c):04X}" if c in self.uncovered else c for c in text)


def font_fallback(texts: Iterable[str]) -> FontFallback:
    """Find installed fonts with the glyphs of ``texts`` that matplotlib's default font lacks.

    Each font is added only if it has glyphs still missing; fonts are tried in matplotlib's font list order.
    The fonts' glyph tables are read once per process.

    Args:
        texts: The texts to draw, e.g. class names.

    Returns:
        The fallback families, and the characters no installed font has.

    Example:
        >>> font_fallback(["cat", "dog"]).families
        ()
    """
    needed = {ord(c) for text in texts for c in str(text) if not c.isspace()}
    missing = needed - _default_font_chars() if any(c > 127 for c in needed) else set()
    families: list[str] = []
    for name, chars in _installed_fonts() if missing else ():
        if missing & chars:
            families.append(name)
            missing -= chars
            if not missing:
                break
    return FontFallback(tuple(dict.fromkeys(families)), frozenset(chr(c) for c in missing))


def class_labels(class_names: Sequence[str]) -> tuple[list[str], str | None, FontFallback]:
    """What a figure writes for each class: its name, or its index when no installed font can draw every name.

    Args:
        class_names: The class names.

    Returns:
        ``(labels, legend, fonts)``: the labels to draw; ``None``, or (with index labels) a legend of
        ``index: name`` lines with the characters no font has escaped; and the fonts to draw with
        (use ``fonts.context()``).

    Example:
        >>> class_labels(["cat", "dog"])[:2]
        (['cat', 'dog'], None)
    """
    names = [str(n) for n in class_names]
    fonts = font_fallback(names)
    if not fonts.uncovered:
        return names, None, fonts
    legend = "\n".join(f"{i}: {fonts.shown(name)}" for i, name in enumerate(names))
    return [str(i) for i in range(len(names))], legend, fonts


def add_legend(figure: Figure, legend: str | None) -> None:
    """Write a class legend (from `class_labels`) under the figure; ``save_figure`` keeps text outside the axes."""
    if legend:
        figure.text(0.01, 0.0, "Classes:\n" + legend, ha="left", va="top", fontsize=8, family="monospace")


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
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    columns: int = 4,
    title: str | None = None,
    colors: Sequence[str] | None = None,
) -> Figure:
    """A grid of ``(H, W, 3)`` uint8 images with a title each.

    Args:
        images: The images.
        titles: One (possibly multi-line) title per image.
        columns: Images per row at most.
        title: The figure title.
        colors: A matplotlib colour per image for its title and frame (e.g. green right, red wrong); ``None``: plain.

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
        ax.set_title(text, fontsize=9, **({"color": colors[i]} if colors else {}))
        ax.set_xticks([])
        ax.set_yticks([])
        if colors:
            for spine in ax.spines.values():
                spine.set_edgecolor(colors[i])
                spine.set_linewidth(3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def sample_indices(labels: np.ndarray, max_images: int = 24, per_class: int = 4, seed: int = 0) -> list[int]:
    """A stratified choice of images to show: up to ``per_class`` of each class, at most ``max_images`` in all.

    With more classes than ``max_images``, ``max_images`` classes are drawn at
    random (seeded), one image each; otherwise every class gets
    ``min(per_class, max_images // classes)`` (at least one) of its images, drawn at random.

    Args:
        labels: The true class of each image.
        max_images: The most images chosen (>= 1).
        per_class: The most images of one class.
        seed: Seed of the random choice.

    Returns:
        Indices into ``labels``, grouped by class in class order.

    Example:
        >>> sample_indices(np.array([0, 0, 0, 1, 1, 2]), max_images=6, per_class=2, seed=0)
        [1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) > max_images:
        classes = np.sort(rng.choice(classes, size=max_images, replace=False))
    take = max(1, min(per_class, max_images // max(1, len(classes))))
    chosen: list[int] = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        chosen += sorted(int(i) for i in rng.choice(members, size=min(take, len(members)), replace=False))
    return chosen[:max_images]


def per_class_bar_figure(
    class_names: Sequence[str],
    values: Sequence[float],
    support: Sequence[int],
    metric: str = "recall",
    max_classes: int = 40,
) -> Figure:
    """Horizontal bars of a per-class metric, sorted worst first, with each class's support written on its bar.

    With more than ``max_classes`` classes only the worst ``max_classes`` are
    drawn (the title says so), so that every name stays legible.

    Args:
        class_names: What to write for each class (see `class_labels`).
        values: The metric of each class, in ``[0, 1]``.
        support: The number of images of each class.
        metric: The metric's name, for the axis and the title.
        max_classes: The most classes drawn (>= 1).

    Returns:
        The figure.
    """
    from matplotlib.figure import Figure

    order = sorted(range(len(values)), key=lambda i: (values[i], -support[i], str(class_names[i])))
    shown = order[:max_classes]
    title = f"Per-class {metric}, worst first"
    if len(order) > len(shown):
        title = f"Per-class {metric}: the {len(shown)} worst of {len(order)} classes (all in per_class.csv)"
    fig = Figure(figsize=(7.5, 1.2 + 0.28 * len(shown)), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(shown))[::-1]  # worst at the top
    scores = [float(values[i]) for i in shown]
    colours = [_OVER if v < 0.5 else _BAR for v in scores]
    ax.barh(positions, scores, color=colours, height=0.7)
    ax.set_yticks(positions, [str(class_names[i]) for i in shown], fontsize=8 if len(shown) > 25 else 9)
    ax.set_xlim(0, 1.18)
    ax.set_xticks(np.linspace(0, 1, 6))
    for y, value, i in zip(positions, scores, shown, strict=True):
        ax.text(min(value, 1.0) + 0.01, y, f"{value:.2f} (n={int(support[i])})", va="center", fontsize=7.5)
    ax.set_xlabel(metric)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
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
