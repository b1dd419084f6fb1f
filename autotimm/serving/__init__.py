"""Serving: the REST service (FastAPI) with micro-batching and its web page; a Gradio demo."""

from typing import TYPE_CHECKING

from autotimm._lazy import lazy_exports

if TYPE_CHECKING:  # the public names, for type checkers and the API docs; at run time they load lazily
    from autotimm.serving.app import create_app, load_model, run_server, serve_in_thread
    from autotimm.serving.gradio_app import gradio_app

__getattr__, __dir__ = lazy_exports(globals())

__all__ = [
    "create_app",
    "gradio_app",
    "load_model",
    "run_server",
    "serve_in_thread",
]
