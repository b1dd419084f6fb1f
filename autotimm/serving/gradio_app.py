"""A Gradio demo of a trained model: an image in (upload, webcam, clipboard), the top classes out.

[`gradio_app`][autotimm.serving.gradio_app.gradio_app] builds a ``gr.Blocks``
page around any model [`load_model`][autotimm.classifier.loading.load_model]
loads (a ``.ckpt`` checkpoint, an ``.onnx`` export, an ensemble folder, a
model folder from ``save_pretrained``, or a run folder), with a ``gr.Label``
of the top-k class names and probabilities, the model's name, classes and
input size, example images and, for checkpoints, a Grad-CAM overlay of the top
class. Gradio does the page, the queue and the client API
(``gradio_client.Client(url).predict(image, api_name="/predict")``);
``autotimm demo MODEL`` launches it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotimm.checks import require_number

__all__ = ["EXAMPLES_PER_DEMO", "gradio_app", "load_demo_model", "run_examples"]

#: How many validation images a run folder gives as examples.
EXAMPLES_PER_DEMO = 4


def _run_checkpoint(folder: Path) -> Path | None:
    """A run folder's model: ``model.ckpt`` (calibrated), else the best checkpoint, else ``last.ckpt``."""
    if (folder / "model.ckpt").is_file():
        return folder / "model.ckpt"
    checkpoints = folder / "checkpoints"
    best = sorted(p for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt") if checkpoints.is_dir() else []
    if best:
        return max(best, key=lambda p: p.stat().st_mtime)
    return checkpoints / "last.ckpt" if (checkpoints / "last.ckpt").is_file() else None


def run_examples(folder: str | os.PathLike[str], count: int = EXAMPLES_PER_DEMO) -> list[str]:
    """A few validation images of a run folder (from its ``splits.json``), one class after another.

    Args:
        folder: A run folder (``autotimm train --output-dir``).
        count: How many images at most.

    Returns:
        Existing image paths; empty when the run's data was not a folder of image files.
    """
    split_file = Path(folder) / "splits.json"
    if not split_file.is_file():
        return []
    saved = json.loads(split_file.read_text(encoding="utf-8"))
    source = str(saved.get("source", ""))
    if not source.startswith("folder "):
        return []
    root = Path(source.removeprefix("folder "))
    by_class: dict[str, list[Path]] = {}
    for relative in saved.get("splits", {}).get("val", []):
        path = root / relative
        if path.is_file():
            by_class.setdefault(Path(relative).parts[0], []).append(path)
    picked: list[str] = []
    while len(picked) < count and any(by_class.values()):  # round-robin over the classes
        for paths in by_class.values():
            if paths and len(picked) < count:
                picked.append(str(paths.pop(0)))
    return picked


def load_demo_model(model_or_path: Any) -> tuple[Any, str, list[str]]:
    """The model of a demo, its display name and default examples.

    Args:
        model_or_path: A loaded model, a model file or folder (see
            [`load_model`][autotimm.classifier.loading.load_model]), a model folder written by
            ``save_pretrained``, or a run folder (its calibrated, best or last checkpoint).

    Returns:
        ``(model, name, examples)``.

    Raises:
        FileNotFoundError: No such file or folder, or a run folder without a checkpoint.
        ValueError: A file or folder of another kind.
    """
    from autotimm.classifier.loading import load_model

    if not isinstance(model_or_path, (str, os.PathLike)):
        return load_model(model_or_path), type(model_or_path).__name__, []
    path = Path(model_or_path)
    examples: list[str] = []
    if path.is_dir():
        from autotimm.classifier.pretrained import is_pretrained_folder

        if is_pretrained_folder(path):
            from autotimm.classifier.module import ImageClassifier

            return ImageClassifier.from_pretrained(path), path.name, []
        if (path / "checkpoints").is_dir() or (path / "splits.json").is_file():
            checkpoint = _run_checkpoint(path)
            if checkpoint is None:
                raise FileNotFoundError(f"`model_or_path` {os.fspath(path)!r}: a run folder with no checkpoint yet")
            examples = run_examples(path)
            path = checkpoint
    return load_model(os.fspath(path), device="cpu"), path.name, examples


def _description(model: Any, name: str) -> str:
    names = list(model.class_names)
    shown = ", ".join(names[:20]) + (f", … ({len(names)} in all)" if len(names) > 20 else "")
    size = None
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is not None:
        size = "×".join(str(v) for v in preprocessor.input_size)
    parts = [f"**Model:** {name}", f"**Classes ({len(names)}):** {shown}"]
    if size:
        parts.append(f"**Input:** {size}")
    return " · ".join(parts)


def gradio_app(
    model_or_path: Any,
    examples: Sequence[str | os.PathLike[str]] | None = None,
    top_k: int = 3,
    explain: bool = True,
    title: str | None = None,
) -> Any:
    """Build a Gradio demo of a trained model.

    Args:
        model_or_path: A loaded model, a ``.ckpt`` / ``.onnx`` file, an ensemble folder, a
            ``save_pretrained`` folder, or a run folder (see
            [`load_demo_model`][autotimm.serving.gradio_app.load_demo_model]).
        examples: Example image paths under the input; ``None``: a few validation images of a run folder.
        top_k: Classes shown (1 to the number of classes; more are cut to it).
        explain: Show a Grad-CAM overlay of the top class (models with a backbone: checkpoints and
            ``save_pretrained`` folders; ignored for ONNX and ensembles).
        title: The page's title; ``None``: ``"<model> demo"``.

    Returns:
        A ``gr.Blocks``; ``.launch()`` serves it. Its API endpoint ``/predict`` takes one image
        and returns the label (``{"label": ..., "confidences": [...]}`` in ``gradio_client``).

    Raises:
        ImportError: Gradio is not installed (``pip install 'autotimm[gradio]'``).
        ValueError: A bad ``top_k``.

    Example:
        >>> app = gradio_app("runs/pets")  # doctest: +SKIP
        >>> app.launch(server_name="127.0.0.1", server_port=7860)  # doctest: +SKIP
    """
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("gradio_app needs Gradio: pip install 'autotimm[gradio]'") from None
    require_number("top_k", top_k, 1, integer=True)
    model, name, found = load_demo_model(model_or_path)
    examples = [os.fspath(e) for e in examples] if examples is not None else found
    top_k = min(int(top_k), len(model.class_names))
    multi_label = bool(getattr(model, "hparams", {}).get("multi_label", False) or getattr(model, "multi_label", False))
    can_explain = explain and hasattr(model, "backbone") and not multi_label

    def predict(image: Any) -> dict[str, float]:
        if image is None:
            return {}
        prediction = model.predict(image, top_k=top_k)[0]
        return {str(label): float(p) for label, p in zip(prediction.labels, prediction.probabilities, strict=True)}

    def overlay(image: Any) -> Any:
        if image is None:
            return None
        from autotimm.evaluation.explanations import explain as explain_image

        return explain_image(model, image).overlay()

    with gr.Blocks(title=title or f"{name} demo") as app:
        gr.Markdown(f"# {title or name + ' demo'}\n\n{_description(model, name)}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", sources=["upload", "webcam", "clipboard"], label="Image")
                button = gr.Button("Predict", variant="primary")
            with gr.Column():
                label = gr.Label(num_top_classes=top_k, label="Prediction")
                heatmap = gr.Image(label="Grad-CAM of the top class", visible=can_explain, interactive=False)
        button.click(predict, inputs=image, outputs=label, api_name="predict")
        image.upload(predict, inputs=image, outputs=label, api_name=False)
        if can_explain:
            button.click(overlay, inputs=image, outputs=heatmap, api_name="explain")
            image.upload(overlay, inputs=image, outputs=heatmap, api_name=False)
        if examples:
            gr.Examples(examples=[[e] for e in examples], inputs=image)
    return app
