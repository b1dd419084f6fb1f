"""``autotimm serve``: a REST service and web page for a checkpoint, ONNX export or ensemble (``autotimm.serving``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from autotimm.cli.options import number, positional

__all__ = ["CONFIG", "ServeConfig", "run"]

NAME = "serve"
HELP = "Serve a checkpoint, ONNX export or ensemble over HTTP (REST API and web page)."
DESCRIPTION = """\
Start a web service for a trained classifier (a .ckpt checkpoint, an .onnx
export or an ensemble folder): a REST API to post images to and a web page to
try it. Stop it with Ctrl+C. Needs `pip install "autotimm[serve]"` (FastAPI,
uvicorn)."""
EXAMPLES = """\
examples:
  autotimm serve runs/pets/checkpoints/last.ckpt
  autotimm serve pets.onnx --host 0.0.0.0 --port 8080 --top-k 3
  # then: curl -F "file=@photo.jpg" http://127.0.0.1:8000/predict, or open http://127.0.0.1:8000/"""


@dataclass
class ServeConfig:
    """Options of ``autotimm serve``.

    Args:
        ckpt: The model: a .ckpt checkpoint, an .onnx export or an ensemble folder (from `autotimm auto`).
        host: Address to listen on; 0.0.0.0 accepts connections from other machines.
        port: Port to listen on, in [1, 65536).
        top_k: Labels per image when a request does not say (>= 1, at most the model's classes).
        device: Where a .ckpt model or an ensemble runs: cpu, cuda, cuda:1, auto (CUDA when available), ...
        max_batch_size: Images per model call at most; concurrent requests share calls (>= 1; 1 turns it off).
        batch_window_ms: How long a request waits for others to share its model call, in milliseconds (>= 0).
        max_upload_bytes: The largest image upload accepted (>= 1).
        max_image_pixels: The most pixels (width x height) an uploaded image may have, read from its header
            before decoding (>= 1; 40 megapixels by default).
        max_concurrent_decodes: Uploads decoded at the same time at most; others wait (>= 1). With
            --max-image-pixels, this bounds the memory decoding takes.
        log_level: uvicorn's log level: critical, error, warning, info, debug or trace.
    """

    ckpt: str = field(metadata=positional())
    host: str = "127.0.0.1"
    port: int = field(default=8000, metadata=number(1, 65536))
    top_k: int = field(default=5, metadata=number(1))
    device: str = "cpu"
    max_batch_size: int = field(default=16, metadata=number(1))
    batch_window_ms: float = field(default=5.0, metadata=number(0))
    max_upload_bytes: int = field(default=5 * 1024 * 1024, metadata=number(1))
    max_image_pixels: int = field(default=40_000_000, metadata=number(1))
    max_concurrent_decodes: int = field(default=2, metadata=number(1))
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"


#: The options dataclass of this subcommand.
CONFIG = ServeConfig


def run(config: ServeConfig) -> int:
    """Run the service until interrupted.

    Args:
        config: The options.

    Returns:
        0 once the server stops.

    Raises:
        FileNotFoundError: No such model file or folder.
        ImportError: The service or its dependencies are not installed.
    """
    from autotimm.cli.common import load_predictor, model_path

    model_path(config.ckpt)  # before the imports: a bad CKPT is the first error
    try:
        from autotimm.serving.app import model_name, run_server
    except ImportError as err:
        raise ImportError(
            f'autotimm serve needs the service dependencies: pip install "autotimm[serve]" ({err})'
        ) from err
    _check_port(config.host, config.port)
    model = load_predictor(config.ckpt, config.device)  # before uvicorn: a bad file is a one-line error
    try:
        run_server(
            model,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            top_k=config.top_k,
            device=config.device,
            max_batch_size=config.max_batch_size,
            batch_window_ms=config.batch_window_ms,
            max_upload_bytes=config.max_upload_bytes,
            max_image_pixels=config.max_image_pixels,
            max_concurrent_decodes=config.max_concurrent_decodes,
            name=model_name(config.ckpt),  # the file's name on the page, not the class of the loaded model
        )
    except SystemExit as stop:  # uvicorn exits 3 when it cannot start; its log says why
        if stop.code not in (0, None):
            raise RuntimeError(
                f"the server could not start on {config.host}:{config.port} (see the log above)"
            ) from None
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail fast, before the model loads, when the address cannot be listened on."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
