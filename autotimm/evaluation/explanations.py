"""Why did the model say that? Grad-CAM and attention-rollout heat-maps for one image.

[`explain`][autotimm.evaluation.explanations.explain] runs an
[`ImageClassifier`][autotimm.ImageClassifier] on one image, with its own
preprocessing, and returns an [`Explanation`][autotimm.evaluation.explanations.Explanation]:
a heat-map of the input regions that drove the prediction, the input as the
model saw it, and helpers to blend the two and save a picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autotimm.checks import is_int, require_number
from autotimm.prediction.inputs import collect_inputs

__all__ = ["EXPLAIN_METHODS", "Explanation", "explain"]

#: The methods of [`explain`][autotimm.evaluation.explanations.explain], and what each one needs.
EXPLAIN_METHODS: dict[str, str] = {
    "gradcam": "Grad-CAM on the last feature map (CNNs) or on the tokens entering the last block (ViT-style models)",
    "rollout": "attention rollout through every block (ViT-style models with timm attention blocks)",
}


@dataclass(repr=False)
class Explanation:
    """A heat-map of where the model looked, for one image and one class.

    Attributes:
        heatmap: ``(H, W)`` float32 in ``[0, 1]`` at the model's input size;
            1 marks the most relevant pixels.
        target: Index of the explained class.
        target_name: Name of the explained class.
        probability: The model's calibrated probability of that class.
        method: ``"gradcam"`` or ``"rollout"``.
        image: ``(H, W, 3)`` uint8: the input as the model saw it (resized,
            cropped, normalisation undone), aligned with ``heatmap``.
        alpha: Default heat-map weight of [`overlay`][autotimm.evaluation.explanations.Explanation.overlay].
        source: The image's file path, or ``None`` for an in-memory image.
    """

    heatmap: np.ndarray
    target: int
    target_name: str
    probability: float
    method: str
    image: np.ndarray
    alpha: float = 0.5
    source: str | None = field(default=None)

    def overlay(self, alpha: float | None = None) -> np.ndarray:
        """Blend the heat-map, drawn with the jet colour map, over the image.

        Args:
            alpha: Heat-map weight in ``[0, 1]`` (0: the image only); defaults to ``self.alpha``.

        Returns:
            ``(H, W, 3)`` uint8 RGB.

        Raises:
            ValueError: ``alpha`` outside ``[0, 1]``.
        """
        from matplotlib import colormaps

        alpha = _check_alpha(self.alpha if alpha is None else alpha)
        colours = colormaps["jet"](np.clip(self.heatmap, 0.0, 1.0))[..., :3] * 255.0
        blended = (1.0 - alpha) * self.image.astype(np.float32) + alpha * colours
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def save(self, path: str | os.PathLike[str], alpha: float | None = None) -> Path:
        """Save the image next to its overlay, titled with the class name and probability.

        Drawn on a matplotlib ``Figure`` (no pyplot state). The format follows the
        file suffix; PNG when there is none.

        Args:
            path: The file to write; parent folders are created.
            alpha: Heat-map weight of the overlay; defaults to ``self.alpha``.

        Returns:
            The path written.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from autotimm.evaluation.plots import font_fallback

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fonts = font_fallback([self.target_name])  # e.g. a CJK font for a Chinese class name, when installed
        with fonts.context():
            fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
            FigureCanvasAgg(fig)
            left, right = fig.subplots(1, 2)
            left.imshow(self.image)
            left.set_title("input", fontsize=10)
            right.imshow(self.overlay(alpha))
            right.set_title(self.method, fontsize=10)
            for ax in (left, right):
                ax.set_axis_off()
            name = self.target_name if not fonts.uncovered else f"class {self.target}: {fonts.shown(self.target_name)}"
            fig.suptitle(f"{name}  (p = {self.probability:.1%})")
            fig.savefig(path, format=None if path.suffix else "png")
        return path

    def __repr__(self) -> str:
        """The numbers and the arrays' shapes, not the arrays (a heat-map has tens of thousands of values)."""

        def shape(array: np.ndarray) -> str:
            return f"<{array.dtype} array {tuple(array.shape)}>" if isinstance(array, np.ndarray) else repr(array)

        return (
            f"Explanation(target={self.target!r}, target_name={self.target_name!r}, "
            f"probability={self.probability:.4f}, method={self.method!r}, heatmap={shape(self.heatmap)}, "
            f"image={shape(self.image)}, alpha={self.alpha!r}, source={self.source!r})"
        )


# ---------------------------------------------------------------------- checks
def _check_alpha(alpha: Any) -> float:
    require_number("alpha", alpha, 0, 1, high_closed=True)
    return float(alpha)


def _check_method(method: Any) -> str:
    if method not in EXPLAIN_METHODS:
        raise ValueError(f"`method` must be one of {list(EXPLAIN_METHODS)}, got {method!r}")
    return method


def _resolve_target(target: Any, class_names: Sequence[str]) -> int:
    """Class index of ``target`` (an index or a class name)."""
    count = len(class_names)
    if isinstance(target, str):
        if target in class_names:
            return list(class_names).index(target)
        shown = ", ".join(repr(n) for n in class_names[:20]) + (", ..." if count > 20 else "")
        raise ValueError(f"`target` {target!r} is not a class name; the model's classes are {shown}")
    if is_int(target):
        if 0 <= int(target) < count:
            return int(target)
        raise ValueError(f"`target` index {int(target)} is out of range; use 0 to {count - 1} or a class name")
    raise ValueError(f"`target` must be None, a class index (0 to {count - 1}) or a class name, got {target!r}")


# ---------------------------------------------------------------------- model state
@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; every module's own train/eval flag restored afterwards, even on error."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _prepare(model: Any, image: Any) -> tuple[torch.Tensor, np.ndarray, str | None]:
    """Preprocess one image: the ``(1, C, H, W)`` model input, the picture it shows, and its source."""
    sources = collect_inputs(image)
    if len(sources) != 1:
        shown = ", ".join(str(s.source or "<in-memory image>") for s in sources[:3])
        raise ValueError(
            f"`image` must be exactly one image, got {len(sources)} ({shown}{', ...' if len(sources) > 3 else ''}); "
            "call explain once per image"
        )
    preprocessor = model.preprocessor
    array = preprocessor(sources[0].load(preprocessor.in_chans))
    return torch.from_numpy(array)[None], preprocessor.denormalize(array), sources[0].source


# ---------------------------------------------------------------------- maps
def _patch_grid(backbone: nn.Module, num_patches: int, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(rows, cols)`` of a ViT's patch tokens for an input of ``size``."""
    embed = getattr(backbone, "patch_embed", None)
    candidates = []
    grid = getattr(embed, "grid_size", None)
    if grid is not None:
        candidates.append(tuple(int(g) for g in grid))
    patch = getattr(embed, "patch_size", None)
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else patch
        candidates.append((size[0] // int(ph), size[1] // int(pw)))
        candidates.append((math.ceil(size[0] / int(ph)), math.ceil(size[1] / int(pw))))
    side = math.isqrt(num_patches)
    candidates.append((side, side))
    for rows, cols in candidates:
        if rows * cols == num_patches:
            return rows, cols
    raise ValueError(f"cannot arrange {num_patches} patch tokens into a grid for an input of size {size}")


def _to_heatmap(grid_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Upsample a ``(h, w)`` map to ``size`` (bilinear) and scale it to ``[0, 1]``."""
    upsampled = F.interpolate(grid_map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = upsampled.min(), upsampled.max()
    scaled = (upsampled - low) / (high - low) if high > low else torch.zeros_like(upsampled)
    return scaled.detach().cpu().numpy().astype(np.float32)


def _last_block_norm(backbone: nn.Module) -> nn.Module | None:
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
        return getattr(blocks[-1], "norm1", None)
    return None


def _gradcam(model: Any, x: torch.Tensor, target: Any) -> tuple[np.ndarray, int, torch.Tensor]:
    """Grad-CAM: ReLU of the feature channels weighted by their mean gradient for the target logit."""
    backbone = model.backbone
    captured: dict[str, torch.Tensor] = {}

    def capture(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        # A fresh leaf that needs gradients: works even when the backbone is frozen.
        captured["tokens"] = output.detach().requires_grad_(True)
        return captured["tokens"]

    norm = _last_block_norm(backbone)
    handle = norm.register_forward_hook(capture) if isinstance(norm, nn.Module) else None
    try:
        # CNNs: gradients start at the last feature map, so the backbone runs without building a graph.
        with torch.enable_grad() if handle is not None else torch.no_grad():
            features = backbone.forward_features(x)
    finally:
        if handle is not None:
            handle.remove()
    if not isinstance(features, torch.Tensor) or features.ndim not in (3, 4):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(
            f"gradcam needs a backbone whose forward_features returns a (B, C, H, W) feature map or (B, N, D) "
            f"tokens; {type(backbone).__name__} returned {shape}"
        )
    if features.ndim == 4 or "tokens" not in captured:
        # CNN maps, or tokens of a model without timm blocks: use the last feature stage itself.
        features = features.detach().requires_grad_(True)
        activation = features
    else:
        activation = captured["tokens"]
    logits = model.head(backbone.forward_head(features))
    index = int(logits[0].argmax()) if target is None else target
    (grads,) = torch.autograd.grad(logits[0, index], activation)
    acts, grads = activation.detach()[0], grads[0]
    if acts.ndim == 3:  # (C, H, W), or (H, W, C) for NHWC models such as Swin
        if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
            acts, grads = acts.permute(2, 0, 1), grads.permute(2, 0, 1)
    else:  # (N, D) tokens: drop the class/register tokens, lay patches on their grid
        prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
        rows, cols = _patch_grid(backbone, acts.shape[0] - prefix, tuple(x.shape[-2:]))
        acts = acts[prefix:].T.reshape(-1, rows, cols)
        grads = grads[prefix:].T.reshape(-1, rows, cols)
    weights = grads.mean(dim=(1, 2), keepdim=True)
    cam = F.relu((weights * acts).sum(dim=0))
    return _to_heatmap(cam, tuple(x.shape[-2:])), index, logits.detach()


def _is_timm_attention(module: Any) -> bool:
    return hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)


def _rollout(model: Any, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Attention rollout (Abnar & Zuidema, 2020): head-averaged attention plus identity, multiplied through blocks."""
    backbone = model.backbone
    blocks = getattr(backbone, "blocks", None)
    attns = list(blocks) if isinstance(blocks, (nn.Sequential, nn.ModuleList)) else []
    attns = [getattr(block, "attn", None) for block in attns]
    if not attns or not all(_is_timm_attention(a) for a in attns):
        raise ValueError(
            f"method='rollout' needs a ViT-style backbone (timm blocks with self-attention, e.g. vit_*, deit_*); "
            f"{type(backbone).__name__} has none. Use method='gradcam', which works for every timm model"
        )
    maps: list[torch.Tensor] = []

    def record(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        maps.append(args[0].detach())  # the softmaxed attention (B, heads, N, N)

    fused = [a.fused_attn for a in attns]
    handles = []
    try:
        for attn in attns:
            attn.fused_attn = False  # the explicit path computes (and passes through attn_drop) the attention matrix
            handles.append(attn.attn_drop.register_forward_hook(record))
        with torch.no_grad():
            logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
        for attn, value in zip(attns, fused, strict=True):
            attn.fused_attn = value
    if len(maps) != len(attns) or any(m.ndim != 4 or m.shape[-1] != m.shape[-2] for m in maps):
        raise ValueError(
            f"method='rollout' could not read the attention matrices of {type(backbone).__name__} "
            "(its attention blocks are not timm's standard ones); use method='gradcam'"
        )
    tokens = maps[0].shape[-1]
    eye = torch.eye(tokens, device=maps[0].device)
    rollout = eye
    for attention in maps:
        mixed = attention[0].float().mean(dim=0) + eye
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    has_class_token = getattr(backbone, "cls_token", None) is not None
    relevance = rollout[0, prefix:] if has_class_token else rollout[prefix:, prefix:].mean(dim=0)
    rows, cols = _patch_grid(backbone, tokens - prefix, tuple(x.shape[-2:]))
    return _to_heatmap(relevance.reshape(rows, cols), tuple(x.shape[-2:])), logits


# ---------------------------------------------------------------------- entry point
def explain(
    model: nn.Module,
    image: Any,
    target: int | str | None = None,
    method: str = "gradcam",
    output_path: str | os.PathLike[str] | None = None,
    alpha: float = 0.5,
) -> Explanation:
    """Explain one prediction with a heat-map over the input image.

    The image gets the model's own evaluation preprocessing (as in
    ``model.predict``). ``"gradcam"`` (Grad-CAM, Selvaraju et al., 2017) weights
    the last feature map's channels by the mean gradient of the target logit:
    for CNNs the last stage's ``(C, h, w)`` map, for ViT-style models the patch
    tokens entering the last block. ``"rollout"`` (attention rollout, Abnar &
    Zuidema, 2020) multiplies the head-averaged attention of every block and
    reads how much the class token draws on each patch; it does not depend on
    ``target``. The model is put in eval mode and restored afterwards; its
    weights and ``requires_grad`` flags are not touched.

    Args:
        model: An [`ImageClassifier`][autotimm.ImageClassifier].
        image: One image: a file path, a Pillow image, a numpy array
            (``(H, W)`` or ``(H, W, C)``; uint8 or floats in ``[0, 1]``) or a
            tensor ``(C, H, W)``.
        target: The class to explain: an index or a class name; ``None`` for
            the predicted class.
        method: ``"gradcam"`` (every timm model) or ``"rollout"`` (ViT-style models).
        output_path: Also save the picture there (see
            [`Explanation.save`][autotimm.evaluation.explanations.Explanation.save]).
        alpha: Heat-map weight of the overlay, in ``[0, 1]``.

    Returns:
        An [`Explanation`][autotimm.evaluation.explanations.Explanation].

    Raises:
        ValueError: Several images, an unknown method, a target that is not a
            class name or index, an alpha outside ``[0, 1]``, or ``"rollout"``
            on a model without attention blocks.
        FileNotFoundError: The image file does not exist.
        TypeError: An image of an unsupported type.

    Example:
        >>> from autotimm import BackboneConfig, ImageClassifier
        >>> model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=2,
        ...                         class_names=["cat", "dog"])
        >>> result = explain(model, np.zeros((64, 64, 3), np.uint8), target="dog")
        >>> result.heatmap.shape == result.image.shape[:2], result.target
        (True, 1)
    """
    _check_method(method)
    alpha = _check_alpha(alpha)
    index = None if target is None else _resolve_target(target, model.class_names)
    with _eval_mode(model):  # the input is made in here too: never an inference-mode tensor
        x, picture, source = _prepare(model, image)
        parameter = next(model.parameters())
        x = x.to(parameter.device, parameter.dtype)
        if method == "gradcam":
            heatmap, index, logits = _gradcam(model, x, index)
        else:
            heatmap, logits = _rollout(model, x)
            index = int(logits[0].argmax()) if index is None else index
    scaled = logits[0].float() / float(model.temperature)
    probabilities = scaled.sigmoid() if model.hparams.multi_label else scaled.softmax(dim=0)
    result = Explanation(
        heatmap=heatmap,
        target=index,
        target_name=model.class_names[index],
        probability=float(probabilities[index]),
        method=method,
        image=picture,
        alpha=alpha,
        source=source,
    )
    if output_path is not None:
        result.save(output_path)
    return result
