"""A REST service and a web page for a trained classifier (FastAPI + uvicorn: ``pip install "autotimm[serve]"``).

[`create_app`][autotimm.serving.app.create_app] builds the app; [`run_server`][autotimm.serving.app.run_server]
serves it (``autotimm serve model.ckpt`` does that). Endpoints: ``POST /predict``, ``POST /predict/batch``,
``GET /health``, ``GET /labels``, the OpenAPI docs at ``/docs`` and a page at ``/``. See the serving guide.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

from PIL import Image

try:
    from fastapi import FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse
    from starlette.concurrency import run_in_threadpool
except ImportError as _err:  # pragma: no cover - depends on the installation
    raise ImportError('The REST service needs FastAPI: pip install "autotimm[serve]"') from _err

from autotimm.checks import require_number
from autotimm.classifier.loading import load_model, model_kind
from autotimm.prediction.predict import Prediction
from autotimm.serving.batching import MicroBatcher
from autotimm.serving.http import (
    DecodeStats,
    HealthResponse,
    LabelsResponse,
    PredictResponse,
    RequestGuard,
    decode_upload,
    error_responses,
    format_bytes,
    validation_error,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENT_DECODES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_UPLOAD_BYTES",
    "create_app",
    "load_model",
    "model_name",
    "run_server",
    "serve_in_thread",
]

logger = logging.getLogger(__name__)

#: The default upload limit per image: 5 MiB.
DEFAULT_MAX_UPLOAD_BYTES = 5 * 1024 * 1024
#: The default pixel limit per image: 40 megapixels (a 7300x5500 photo), below Pillow's 89 megapixels.
#: A decode of that size takes up to about 600 MB (WebP; a PNG 160-320 MB, a JPEG a few MB, decoded reduced).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: The default number of uploads decoded at the same time; more wait their turn.
DEFAULT_MAX_CONCURRENT_DECODES = 2
#: Room for multipart headers and boundaries on top of the images in a request body.
_MULTIPART_OVERHEAD = 64 * 1024
_PAGE = Path(__file__).with_name("web") / "index.html"


def model_name(model: Any) -> str:
    """How the service names a model on its page and in ``/health``: its file or folder name, else its type.

    A checkpoint in a run's ``checkpoints/`` folder is named with its run, since
    ``last.ckpt`` alone says little.

    Args:
        model: A path, or a loaded model (an ``OnnxPredictor`` has the ``path`` of its file).

    Returns:
        The name.

    Example:
        >>> model_name("runs/pets/checkpoints/last.ckpt"), model_name("exported/pets.onnx")
        ('pets/last.ckpt', 'pets.onnx')
    """
    path = model if isinstance(model, (str, os.PathLike)) else getattr(model, "path", None)
    if not isinstance(path, (str, os.PathLike)) or not Path(path).name:
        return type(model).__name__
    path = Path(path)
    if path.parent.name == "checkpoints" and path.parent.parent.name:
        return f"{path.parent.parent.name}/{path.name}"
    return path.name


def _describe(model: Any, name: str) -> dict[str, Any]:
    """Name, type, backbone, classes and input size of a loaded model."""
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, dict):
        multi_label = bool(hparams.get("multi_label", False))
        backbone = hparams.get("backbone")
        backbone = backbone.get("model_name") if isinstance(backbone, dict) else backbone
    else:
        multi_label = bool(getattr(model, "multi_label", False))
        backbone = (getattr(model, "metadata", None) or {}).get("backbone")
    preprocessor = getattr(model, "preprocessor", None)
    input_size = [int(v) for v in preprocessor.input_size] if preprocessor is not None else None
    return {
        "model": name,
        "model_type": type(model).__name__,
        "backbone": None if backbone is None else str(backbone),
        "class_names": [str(c) for c in model.class_names],
        "multi_label": multi_label,
        "input_size": input_size,
    }


class _Service:
    """The loaded model, its batcher and the limits; shared by the routes."""

    def __init__(self, model: Any, device: str, top_k: int, options: dict[str, Any]) -> None:
        self.source = model
        self.device = device
        self.default_top_k = top_k
        self.max_upload_bytes: int = options["max_upload_bytes"]
        self.max_batch_images: int = options["max_batch_images"]
        self.max_image_pixels: int = options["max_image_pixels"]
        self.max_concurrent_decodes: int = options["max_concurrent_decodes"]
        self.batcher = MicroBatcher(self._predict, options["max_batch_size"], options["batch_window_ms"])
        self.name: str = options["name"] or model_name(model)
        self.model: Any = None
        self.preprocessor: Any = None  # the model's, when it has one: JPEGs are decoded reduced to its size
        self.info: dict[str, Any] = {}
        self.started = time.monotonic()
        # At most this many uploads are decoded at once: a decode of a large image takes hundreds of MB.
        # Made in `start`, in the event loop that serves (a semaphore belongs to one loop).
        self.decode_slots: asyncio.Semaphore | None = None
        self.decode_stats = DecodeStats()

    def _predict(self, images: list[Image.Image], top_k: int) -> list[Prediction]:
        return self.model.predict(images, top_k=top_k, batch_size=max(1, len(images)), progress=False)

    async def start(self) -> None:
        started = time.perf_counter()
        self.model = await run_in_threadpool(load_model, self.source, self.device)
        self.info = _describe(self.model, self.name)
        self.preprocessor = getattr(self.model, "preprocessor", None)  # a property that builds it: read once
        self.decode_slots = asyncio.Semaphore(self.max_concurrent_decodes)
        await self.batcher.start()
        size = self.info["input_size"] or [3, 224, 224]
        await self.batcher.run_now([Image.new("RGB", (size[-1], size[-2]))], 1)  # warm-up: fail now, not later
        logger.info(
            "Loaded %s (%s, %d classes) in %.1f s",
            self.name,
            self.info["backbone"] or self.info["model_type"],
            len(self.info["class_names"]),
            time.perf_counter() - started,
        )
        self.started = time.monotonic()

    async def stop(self) -> None:
        await self.batcher.close()

    def require_model(self) -> dict[str, Any]:
        if self.model is None or not self.batcher.running:
            raise HTTPException(503, "The model is not loaded (the service is starting or stopping)")
        return self.info

    def top_k(self, requested: int | None) -> int:
        num_classes = len(self.require_model()["class_names"])
        if requested is None:
            return min(self.default_top_k, num_classes)
        if not 1 <= requested <= num_classes:
            raise HTTPException(422, f"`top_k` must be an integer from 1 to {num_classes} (the model's classes)")
        return requested

    async def read_image(self, upload: UploadFile) -> Image.Image:
        name = upload.filename or "upload"
        data = await upload.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise HTTPException(
                413, f"{name!r} is larger than the upload limit of {format_bytes(self.max_upload_bytes)}"
            )
        if self.decode_slots is None:
            raise HTTPException(503, "The model is not loaded (the service is starting or stopping)")
        async with self.decode_slots:
            return await run_in_threadpool(self._decode, data, name)

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The size JPEGs are decoded reduced to (the model's preprocessing decides), or ``None``."""
        return None if self.preprocessor is None else self.preprocessor.draft_size

    def _decode(self, data: bytes, name: str) -> Image.Image:
        """Decode an upload (in a worker thread) and resize it as the model's preprocessing does first.

        The resize (``Preprocessor.resized``, the first step of every prediction, which leaves
        an image of its output size unchanged) happens here, inside the decode slot, so that a
        request waiting for its model call holds a small image, not a large decoded one.
        """
        decoded = None
        self.decode_stats.started()
        try:
            decoded = decode_upload(data, name, self.max_image_pixels, self.draft_size)
        finally:
            self.decode_stats.finished(decoded)
        return decoded if self.preprocessor is None else self.preprocessor.resized(decoded)

    async def predict(self, uploads: list[UploadFile], top_k: int | None) -> list[dict[str, Any]]:
        k = self.top_k(top_k)
        with self.batcher.preparing():  # a batch waiting to run may wait for this request
            images = await asyncio.gather(*(self.read_image(upload) for upload in uploads))
            future = self.batcher.enqueue(images, k)
        predictions = await future
        return [
            {
                "filename": upload.filename,
                "predictions": [
                    {"label": label, "probability": probability}
                    for label, probability in zip(prediction.labels, prediction.probabilities, strict=True)
                ],
            }
            for upload, prediction in zip(uploads, predictions, strict=True)
        ]


def create_app(
    model: Any,
    top_k: int = 5,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_batch_images: int = 16,
    batch_window_ms: float = 5.0,
    max_batch_size: int = 16,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_concurrent_decodes: int = DEFAULT_MAX_CONCURRENT_DECODES,
    device: str = "cpu",
    name: str | None = None,
) -> FastAPI:
    """Build the FastAPI app that serves a classifier.

    The model is loaded once, when the app starts (its lifespan), and warmed up
    with one prediction. Uploads are decoded in threads, at most
    ``max_concurrent_decodes`` at a time; an image's size is read from its header
    first, so an image over ``max_image_pixels`` is refused before any pixel is
    decoded, and a JPEG is decoded at a reduced scale near the model's input size
    ([`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]).
    Predictions run in a worker thread, and concurrent requests are micro-batched
    into one model call (see [`MicroBatcher`][autotimm.serving.batching.MicroBatcher]).

    Args:
        model: What [`load_model`][autotimm.classifier.loading.load_model] loads: a ``.ckpt`` checkpoint,
            an ``.onnx`` file written by ``autotimm.export``, a folder written by ``EnsembleClassifier.save``,
            or a loaded model (``ImageClassifier``, ``OnnxPredictor``, or anything with ``predict`` and
            ``class_names``).
        top_k: Classes per image when a request gives no ``top_k`` (at most the model's classes).
        max_upload_bytes: The largest image file accepted (413 above).
        max_batch_images: The most images in one ``/predict/batch`` request (413 above).
        batch_window_ms: How long a request waits for others to share its model call.
        max_batch_size: Images per model call at most (1 turns micro-batching off).
        max_image_pixels: The most pixels (width x height) an upload may have (413 above), read from
            its header before decoding: 40 megapixels by default (Pillow itself refuses more than
            about 179 megapixels, whatever this says).
        max_concurrent_decodes: Uploads decoded at the same time at most (others wait): with
            ``max_image_pixels``, this bounds the memory decoding takes (up to about 600 MB each at
            40 megapixels).
        device: Where a checkpoint's or an ensemble's weights go (``"cpu"``, ``"cuda"``, ``"auto"``).
        name: How the model is named on the web page and in ``/health`` (default:
            [`model_name`][autotimm.serving.app.model_name], its file or folder name).

    Returns:
        The app; serve it with uvicorn, or [`run_server`][autotimm.serving.app.run_server].

    Raises:
        FileNotFoundError: No such model file or folder.
        ValueError: A model file or folder of another type, or a bad limit.
        TypeError: A ``model`` of another kind.

    Example:
        >>> app = create_app("runs/pets/checkpoints/last.ckpt", top_k=3)  # doctest: +SKIP
    """
    model_kind(model, "model")
    options: dict[str, Any] = {
        "top_k": top_k,
        "max_upload_bytes": max_upload_bytes,
        "max_batch_images": max_batch_images,
        "max_batch_size": max_batch_size,
        "max_image_pixels": max_image_pixels,
        "max_concurrent_decodes": max_concurrent_decodes,
    }
    for option, value in options.items():
        require_number(option, value, 1, integer=True)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ValueError(f"`name` must be a non-empty string or None, got {name!r}")
    options["batch_window_ms"] = batch_window_ms
    options["name"] = name
    service = _Service(model, device, top_k, options)  # checks the batching arguments

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await service.start()
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title=f"autotimm: {service.name}",
        description='Image classification with an autotimm model. Errors are JSON: `{"detail": "..."}`.',
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, validation_error)
    per_image = max_upload_bytes + _MULTIPART_OVERHEAD
    app.add_middleware(
        RequestGuard,
        limits={"/predict": per_image, "/predict/batch": per_image * max_batch_images},
        hint=f" (images of at most {format_bytes(max_upload_bytes)}, {max_batch_images} per batch request)",
    )

    errors = error_responses(400, 413, 415, 422, 500, 503)

    @app.post("/predict", response_model=PredictResponse, responses=errors)
    async def predict(
        file: Annotated[UploadFile, File(description="The image (PNG, JPEG, WebP, BMP, GIF, TIFF).")],
        top_k: Annotated[int | None, Query(description="Classes to return (default: the server's).")] = None,
    ) -> dict[str, Any]:
        """Predict the top-k classes of one image."""
        [result] = await service.predict([file], top_k)
        return result

    @app.post("/predict/batch", response_model=list[PredictResponse], responses=errors)
    async def predict_batch(
        files: Annotated[list[UploadFile], File(description="The images, in one multipart field `files`.")],
        top_k: Annotated[int | None, Query(description="Classes to return per image.")] = None,
    ) -> list[dict[str, Any]]:
        """Predict the top-k classes of several images, in order."""
        if len(files) > service.max_batch_images:
            raise HTTPException(413, f"{len(files)} images in one request; the limit is {service.max_batch_images}")
        return await service.predict(files, top_k)

    @app.get("/health", response_model=HealthResponse, responses=error_responses(503))
    async def health() -> dict[str, Any]:
        """The service's state, its model and its limits."""
        info = service.require_model()
        batcher = service.batcher
        return {
            "status": "ok",
            **{key: value for key, value in info.items() if key != "class_names"},
            "num_classes": len(info["class_names"]),
            "top_k": min(service.default_top_k, len(info["class_names"])),
            "max_upload_bytes": service.max_upload_bytes,
            "max_batch_images": service.max_batch_images,
            "max_image_pixels": service.max_image_pixels,
            "uptime_s": round(time.monotonic() - service.started, 3),
            "batching": {
                "max_batch_size": batcher.max_batch_size,
                "batch_window_ms": batcher.batch_window_ms,
                **batcher.stats.to_dict(),
            },
            "decoding": {
                "max_concurrent_decodes": service.max_concurrent_decodes,
                "draft_size": None if service.draft_size is None else list(service.draft_size),
                **service.decode_stats.to_dict(),
            },
        }

    @app.get("/labels", response_model=LabelsResponse, responses=error_responses(503))
    async def labels() -> dict[str, Any]:
        """The model's class names, in label order."""
        info = service.require_model()
        return {"labels": info["class_names"], "multi_label": info["multi_label"]}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        if not _PAGE.is_file():
            raise HTTPException(404, "The web page is not installed (autotimm/web/index.html is missing)")
        return HTMLResponse(_PAGE.read_text(encoding="utf-8"))

    return app


def _log_config(log_level: str) -> dict[str, Any]:
    """The logging configuration of uvicorn, with this module's logger on uvicorn's handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"][__name__] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config


def run_server(model: Any, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options: Any) -> None:
    """Serve a classifier with uvicorn until interrupted (Ctrl+C).

    Args:
        model: As for [`create_app`][autotimm.serving.app.create_app].
        host: The address to listen on (``"0.0.0.0"`` for every interface).
        port: The TCP port.
        log_level: uvicorn's log level (``"debug"``, ``"info"``, ``"warning"``, ...).
        **options: Passed to [`create_app`][autotimm.serving.app.create_app] (``top_k``, ``max_upload_bytes``, ...).

    Example:
        >>> run_server("runs/pets/checkpoints/last.ckpt", port=8000)  # doctest: +SKIP
    """
    import uvicorn

    app = create_app(model, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=_log_config(log_level))


@contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", timeout: float = 120.0
) -> Iterator[str]:
    """Run an app with uvicorn in a background thread, for tests and notebooks.

    Args:
        app: The app (from [`create_app`][autotimm.serving.app.create_app]).
        host: The address to listen on.
        port: The TCP port (0: a free one).
        log_level: uvicorn's log level.
        timeout: Seconds to wait for the start-up (the model loads then).

    Yields:
        The base URL, e.g. ``"http://127.0.0.1:53817"``; the server stops when the block ends.

    Raises:
        RuntimeError: The server did not start (see its log).
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="autotimm-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The server on {host} did not start; see its log above")
            time.sleep(0.02)
        bound = sock.getsockname()[1]
        yield f"http://[{host}]:{bound}" if ":" in host else f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
