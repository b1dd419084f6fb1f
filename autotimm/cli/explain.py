"""``autotimm explain``: Grad-CAM or attention-rollout pictures of why a checkpoint predicted what it did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotimm.cli.options import UsageError, positional

__all__ = ["CONFIG", "ExplainConfig", "output_names", "run"]

NAME = "explain"
HELP = "Draw Grad-CAM or attention-rollout heat-maps of a checkpoint's predictions as PNG files."
DESCRIPTION = """\
Explain the predictions of a trained classifier (a .ckpt checkpoint): for
each image, a PNG with the image as the model saw it next to a heat-map of
the regions that drove the prediction, titled with the class and its
probability. IMAGES are image files, folders (searched recursively) or quoted
glob patterns.

--method gradcam (Grad-CAM) works for every timm backbone; rollout (attention
rollout) for ViT-style ones. The files are named after the images:
DIR/<image name>_<method>.png. Explanations need the PyTorch model, so .onnx
exports are refused."""
EXAMPLES = """\
examples:
  autotimm explain runs/pets/checkpoints/last.ckpt photos/cat.jpg --output explanations
  autotimm explain runs/pets/checkpoints/last.ckpt photos/ --target dog --output why-dog
  autotimm explain runs/vit/checkpoints/last.ckpt "photos/*.jpg" --method rollout --output rollout"""


@dataclass
class ExplainConfig:
    """Options of ``autotimm explain``.

    Args:
        ckpt: The model: a .ckpt checkpoint (from `autotimm train`).
        images: Image files, folders (recursive) or quoted glob patterns.
        output: The folder the PNG files are written to (created).
        method: gradcam (every timm backbone) or rollout (ViT-style backbones).
        target: The class to explain, by name (or index); null: the predicted class of each image.
        alpha: Weight of the heat-map over the image, in [0, 1].
        device: Where the model runs: auto (CUDA when available), cpu, cuda, cuda:1, ...
    """

    ckpt: str = field(metadata=positional())
    images: list[str] = field(metadata=positional(nargs="+"))
    output: str = "explanations"
    method: Literal["gradcam", "rollout"] = "gradcam"
    target: str | None = None
    alpha: float = 0.5
    device: str = "auto"


#: The options dataclass of this subcommand.
CONFIG = ExplainConfig


def output_names(sources: list[str | None], method: str) -> list[str]:
    """The PNG file name of each image: ``<stem>_<method>.png``, numbered where two images share a stem.

    Args:
        sources: Each image's file path (``None`` for an image without one).
        method: The explanation method, for the names.

    Returns:
        One file name per image, all different.

    Example:
        >>> output_names(["a/cat.jpg", "b/cat.png", "dog.jpg"], "gradcam")
        ['cat_gradcam.png', 'cat-2_gradcam.png', 'dog_gradcam.png']
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for index, source in enumerate(sources):
        stem = Path(source).stem if source else f"image-{index}"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem if seen[stem] == 1 else f'{stem}-{seen[stem]}'}_{method}.png")
    return names


def _target(value: str | None, class_names: list[str]) -> int | str | None:
    """A class name as it is; a number that is not a class name as an index."""
    if value is None or value in class_names:
        return value
    return int(value) if value.strip().isdigit() else value


def _print_table(rows: list[tuple[str, str, float, Path]], output: Path) -> None:
    from rich.table import Table

    from autotimm.cli.common import console

    table = Table(title=f"Explanations ({len(rows)} image{'' if len(rows) == 1 else 's'})", title_justify="left")
    table.add_column("Image", overflow="fold")
    table.add_column("Class")
    table.add_column("Probability", justify="right")
    table.add_column("File", overflow="fold")
    for source, name, probability, path in rows:
        table.add_row(source, name, f"{probability:.1%}", path.name)
    out = console()
    out.print(table)
    out.print(f"Written to: {output}", highlight=False)


def run(config: ExplainConfig) -> int:
    """Explain each image as ``config`` says and write one PNG per image.

    Args:
        config: The options.

    Returns:
        0.

    Raises:
        UsageError: A model other than a .ckpt checkpoint.
        ValueError: A target that is not a class, or rollout on a model without attention blocks.
        FileNotFoundError: A missing checkpoint or image.
    """
    from autotimm.cli.common import model_path

    if not 0 <= config.alpha <= 1:
        raise UsageError(f"--alpha must be a number in [0, 1], got {config.alpha!r}")
    ckpt = model_path(config.ckpt)
    if ckpt.is_dir() or ckpt.suffix.lower() != ".ckpt":
        kind = "an ensemble folder" if ckpt.is_dir() else f"a {ckpt.suffix.lower()} file"
        raise UsageError(
            f"CKPT must be a .ckpt checkpoint to explain (the heat-maps need the PyTorch model's gradients and "
            f"attention), got {kind}: {config.ckpt!r}"
        )

    from autotimm.cli.common import load_predictor
    from autotimm.evaluation.explanations import explain
    from autotimm.prediction.inputs import collect_inputs

    sources = collect_inputs(list(config.images))
    model: Any = load_predictor(config.ckpt, config.device)
    target = _target(config.target, [str(n) for n in model.class_names])
    output = Path(config.output)
    rows = []
    for source, name in zip(sources, output_names([s.source for s in sources], config.method), strict=True):
        result = explain(model, source, target=target, method=config.method, alpha=config.alpha)
        path = result.save(output / name)
        rows.append((source.source or "<image>", result.target_name, result.probability, path))
    _print_table(rows, output)
    return 0
