"""HTTP plumbing of the REST service: response schemas, safe decoding of uploads, and request limits.

Used by [`create_app`][autotimm.serving.app.create_app]; needs FastAPI (``pip install "autotimm[serve]"``).
"""

from __future__ import annotations

import io
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel

from autotimm.data.images import STORED_SIZE_KEY, ImageTooLargeError, decode_image

__all__ = [
    "DecodeStats",
    "ErrorResponse",
    "HealthResponse",
    "LabelScore",
    "LabelsResponse",
    "PredictResponse",
    "RequestGuard",
    "decode_upload",
    "error_responses",
    "format_bytes",
    "validation_error",
]

logger = logging.getLogger("autotimm.serving.app")

#: The body of every unexpected error (the details go to the server log).
GENERIC_500 = "Internal server error; the details are in the server log."


class LabelScore(BaseModel):
    """One class and its probability."""

    label: str
    probability: float


class PredictResponse(BaseModel):
    """The predictions for one uploaded image, most probable first."""

    filename: str | None
    predictions: list[LabelScore]


class LabelsResponse(BaseModel):
    """The model's class names, in label order."""

    labels: list[str]
    multi_label: bool


class HealthResponse(BaseModel):
    """The service's state, its model and its limits."""

    status: str
    model: str
    model_type: str
    backbone: str | None
    num_classes: int
    multi_label: bool
    input_size: list[int] | None
    top_k: int
    max_upload_bytes: int
    max_batch_images: int
    max_image_pixels: int
    uptime_s: float
    batching: dict[str, int | float]
    decoding: dict[str, int | list[int] | None]


class ErrorResponse(BaseModel):
    """An error: what went wrong, in words."""

    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entry for error status codes, each an ``ErrorResponse``."""
    return {code: {"model": ErrorResponse} for code in codes}


def format_bytes(size: int) -> str:
    """A size in words: ``"5 MiB"``, ``"64 KiB"``, ``"900 bytes"``."""
    for unit, scale in (("MiB", 1024**2), ("KiB", 1024)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


def decode_upload(
    data: bytes, filename: str, max_pixels: int, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Decode uploaded bytes with Pillow, upright by their EXIF orientation, or raise the HTTP error that says why not.

    Decoded by [`decode_image`][autotimm.data.decode_image], as files are for training and
    prediction: the bytes decide what the image is (its name and declared content type are
    not looked at), and its size is read from the header before any pixel is decoded.

    Args:
        data: The uploaded bytes.
        filename: The upload's name, for the messages.
        max_pixels: Refuse images of more pixels (width times height), with a 413.
        draft_size: Decode a JPEG reduced, down to no less than this ``(width, height)``
            (see [`Preprocessor.draft_size`][autotimm.prediction.Preprocessor.draft_size]);
            ``None``: at full size.

    Returns:
        The decoded image.

    Raises:
        HTTPException: 400 (empty, corrupt or truncated), 413 (too many pixels), 415 (not an image).

    Example:
        >>> decode_upload(b"not an image", "notes.txt", 40_000_000)
        Traceback (most recent call last):
        ...
        fastapi.exceptions.HTTPException: 415: 'notes.txt' is not an image (send a PNG, JPEG, ...)
    """
    if not data:
        raise HTTPException(400, f"The upload {filename!r} is empty")
    try:
        return decode_image(data, max_pixels=max_pixels, draft_size=draft_size)
    except UnidentifiedImageError:
        raise HTTPException(
            415, f"{filename!r} is not an image (send a PNG, JPEG, WebP, BMP, GIF or TIFF file)"
        ) from None
    except Image.DecompressionBombError as err:  # Pillow's own limit, far above ours: refused when opened
        raise HTTPException(
            413, f"{filename!r} has more pixels than the limit of {max_pixels:,} pixels ({err})"
        ) from None
    except ImageTooLargeError as err:
        raise HTTPException(413, f"{filename!r} is {err}") from None
    except Exception as err:  # Pillow raises many kinds for broken headers and truncated or corrupt data
        raise HTTPException(400, _corrupt(data, filename, err)) from None


@dataclass
class DecodeStats:
    """Counters of the uploads decoded so far, safe to update from the decoding threads.

    Args:
        decodes: Uploads decoded (or refused after their header was read).
        reduced: JPEGs decoded at a reduced scale (``draft_size``).
        active: Decodes running now.
        peak: The most decodes that ran at the same time.
    """

    decodes: int = 0
    reduced: int = 0
    active: int = 0
    peak: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def started(self) -> None:
        """Count a decode that starts (in the thread that decodes)."""
        with self._lock:
            self.decodes += 1
            self.active += 1
            self.peak = max(self.peak, self.active)

    def finished(self, image: Image.Image | None) -> None:
        """Count a decode that ends, with its image (``None`` when it failed)."""
        with self._lock:
            self.active -= 1
            if image is not None and STORED_SIZE_KEY in image.info:
                self.reduced += 1

    def to_dict(self) -> dict[str, int]:
        """The counters as plain data (for JSON)."""
        with self._lock:
            return {"decodes": self.decodes, "reduced": self.reduced, "active": self.active, "peak": self.peak}


def _corrupt(data: bytes, filename: str, err: Exception) -> str:
    """Say what is wrong with an upload that Pillow could not decode: its header, or (with its format) its data."""
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header only: did the decoding fail after it?
            image_format = image.format
    except Exception:
        return f"{filename!r} is a corrupt image ({type(err).__name__}: {err})"
    return f"{filename!r} is a corrupt or truncated {image_format} image ({type(err).__name__}: {err})"


async def _send_json(send: Any, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLarge(Exception):
    pass


#: How much of a refused body is read (and discarded) before the 413 goes out. Closing a connection with
#: unread data makes the kernel send a reset, and the client loses the response; past this, it does.
_DRAIN_BYTES = 64 * 1024 * 1024


async def _drain(receive: Any, budget: int = _DRAIN_BYTES) -> None:
    """Read and discard the rest of a request body (up to ``budget`` bytes)."""
    while budget > 0:
        event = await receive()
        if event["type"] != "http.request":
            return
        budget -= len(event.get("body", b""))
        if not event.get("more_body", False):
            return


class RequestGuard:
    """ASGI middleware: caps the upload routes' request bodies (413) and turns unexpected errors into a plain 500.

    A body announced larger than the cap is refused without being parsed; a body
    without a length is counted as it arrives and refused when it passes the cap.
    Either way the rest of the body is read and discarded (never stored) before
    the 413 goes out, so that the client gets the answer, not a reset connection;
    a client that sends ``Expect: 100-continue`` (curl does for large files)
    gets the 413 before it sends the body at all.

    Args:
        app: The ASGI app.
        limits: Route (path suffix) -> the most bytes its request body may have.
        hint: Added to the 413 message (e.g. the per-image limit).
    """

    def __init__(self, app: Any, limits: dict[str, int], hint: str = "") -> None:
        self.app = app
        self.limits = limits
        self.hint = hint

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = next((r for r in self.limits if scope["path"].rstrip("/").endswith(r)), None)
        limit = self.limits[route] if route and scope["method"] == "POST" else None
        message = f"The request body is larger than the limit of {format_bytes(limit or 0)} for {route}{self.hint}"
        if limit is not None:
            headers = dict(scope["headers"])
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                if headers.get(b"expect", b"").lower() != b"100-continue":  # else the body was never sent
                    await _drain(receive)
                await _send_json(send, 413, message)
                return
        state = {"received": 0, "too_large": False, "started": False, "body_done": False}

        async def guarded_receive() -> dict[str, Any]:
            event = await receive()
            if limit is not None and event["type"] == "http.request":
                state["received"] += len(event.get("body", b""))
                state["body_done"] = not event.get("more_body", False)
                if state["received"] > limit:
                    state["too_large"] = True
                    raise _BodyTooLarge
            return event

        async def guarded_send(event: dict[str, Any]) -> None:
            if state["too_large"]:  # the app answers the broken body with an error: answer 413 instead, once
                if not state["started"]:
                    state["started"] = True
                    if not state["body_done"]:
                        await _drain(receive)
                    await _send_json(send, 413, message)
                return
            state["started"] = True
            await send(event)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if state["too_large"]:
                if not state["started"]:
                    if not state["body_done"]:
                        await _drain(receive)
                    await _send_json(send, 413, message)
                return
            logger.exception("Unexpected error on %s %s", scope["method"], scope["path"])
            if state["started"]:
                raise
            await _send_json(send, 500, GENERIC_500)


async def validation_error(request: Any, exc: RequestValidationError) -> JSONResponse:
    """Answer a request that fails FastAPI's validation with 422 and ONE string ``detail``, like every other error.

    FastAPI's own answer is a list of objects, which breaks clients written to
    the documented ``{"detail": "..."}``.
    """
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()) if part not in ("body", "query"))
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    hint = " (send images as multipart form fields: 'file' for /predict, 'files' for /predict/batch)"
    missing = any(error.get("type") == "missing" for error in exc.errors())
    return JSONResponse(status_code=422, content={"detail": "; ".join(parts) + (hint if missing else "")})
