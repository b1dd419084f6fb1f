"""``autotimm demo``: a Gradio page for a trained model (``autotimm.serving.gradio_app``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from autotimm.cli.options import number, positional

__all__ = ["CONFIG", "DemoConfig", "run"]

NAME = "demo"
HELP = "Try a model in a Gradio page: upload, webcam or clipboard image, top-k classes, Grad-CAM."
DESCRIPTION = """\
Open a Gradio demo of a trained classifier: a .ckpt checkpoint, an .onnx
export, an ensemble folder, a model folder from `export --format hf`, or a run
folder (its calibrated, best or last checkpoint, with a few validation images
as examples). The page shows the top-k classes with their probabilities, the
model's classes and input size and, for checkpoints, a Grad-CAM overlay of the
top class. --share asks Gradio for a temporary public link (needs internet).
Stop it with Ctrl+C. Needs `pip install "autotimm[gradio]"`.

(`make demo` is another thing: it trains the quickstart model.)"""
EXAMPLES = """\
examples:
  autotimm demo runs/pets
  autotimm demo runs/pets/checkpoints/best.ckpt --top-k 5 --port 7861
  autotimm demo pets.onnx --examples photos/cat.jpg --examples photos/dog.jpg
  autotimm demo pets-hf --host 0.0.0.0 --share"""


@dataclass
class DemoConfig:
    """Options of ``autotimm demo``.

    Args:
        model: A .ckpt checkpoint, an .onnx export, an ensemble folder, a model folder or a run folder.
        host: Address to listen on; 0.0.0.0 accepts connections from other machines.
        port: Port to listen on, in [1, 65536).
        share: Also ask Gradio for a temporary public *.gradio.live link (needs internet).
        top_k: Classes shown (>= 1, at most the model's classes).
        examples: Example images under the input, repeatable; default: a run folder's validation images.
        explain: Show a Grad-CAM overlay of the top class (checkpoints and model folders).
    """

    model: str = field(metadata=positional())
    host: str = "127.0.0.1"
    port: int = field(default=7860, metadata=number(1, 65536))
    share: bool = False
    top_k: int = field(default=3, metadata=number(1))
    examples: list[str] | None = None
    explain: bool = True


#: The options dataclass of this subcommand.
CONFIG = DemoConfig


def run(config: DemoConfig) -> int:
    """Build the page and serve it until Ctrl+C.

    Args:
        config: The options.

    Returns:
        0.
    """
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    from autotimm.cli.common import console
    from autotimm.serving.gradio_app import gradio_app

    app = gradio_app(config.model, examples=config.examples, top_k=config.top_k, explain=config.explain)
    console().print(f"Demo of {config.model} on http://{config.host}:{config.port} (Ctrl+C stops it)", highlight=False)
    app.launch(server_name=config.host, server_port=config.port, share=config.share, quiet=True)
    return 0
