"""Load on the REST service: requests per second and p50/p95 latency of ``POST /predict``.

Starts ``autotimm.serving.app.run_server`` in a subprocess with a small model
(random ``resnet18`` weights, 224x224 by default; speed does not depend on the
weights), then sends ``--requests`` uploads of one 500x375 JPEG at each
concurrency level from a pool of client threads, and prints, per level:
requests/s, p50 and p95 latency, and the mean images per model call (from
``GET /health``). By default it runs twice: with micro-batching (the
defaults) and without (``max_batch_size=1``), so the gain of batching on this
machine shows. Nothing is asserted.

The clients run on the same machine as the server: on a 2-core CPU they take
a share of it; figures are for comparing settings, not a capacity plan.

Run: ``python benchmarks/serve_load.py [--concurrency 1 4 16] [--requests 64] [--onnx]``.
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
    args = parser.parse_args()

    console = Console(width=max(100, Console().width))
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
    image = buffer.getvalue()
    settings = {"micro-batching": {}}
    if not args.batching_only:
        settings["max_batch_size=1"] = {"max_batch_size": 1}

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
