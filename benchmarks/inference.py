"""Inference speed: eager PyTorch, ``torch.compile`` and ONNX Runtime, side by side in one run.

For each backbone (``resnet18``, ``mobilenetv2_100``, ``vit_tiny_patch16_224``
by default) at 224x224, prints:

- single-image latency (p50 and p95 over ``--runs`` calls) of the bare model,
- batch-32 throughput (images per second, median of ``--batch-runs`` calls),
- each figure's ratio to eager PyTorch.

The backends are timed in turns (one call each, round after round), so that
drift in this machine's speed hits them all alike; compare the ratios.

Then the end-to-end ``predict`` API for resnet18, including decoding and
preprocessing a 500x375 image: one image, and a batch of 32, for
``ImageClassifier.predict`` and ``OnnxPredictor.predict``. Targets on a
2-core CPU: one image under 100 ms and 32 images under 1 s.

Run: ``python benchmarks/inference.py [--models resnet18 ...] [--no-compile]``.
Weights are random (``pretrained=False``): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from autotimm import BackboneConfig, ImageClassifier
from autotimm.data import make_data_config
from autotimm.exporting.exporter import export
from autotimm.prediction.onnx_predictor import OnnxPredictor

SIZE = 224
BATCH = 32


def _onnx_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxPredictor: see there
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _backends(model: ImageClassifier, folder: Path, compile_: bool, console: Console) -> dict[str, Callable]:
    """name -> function from a float32 numpy batch to logits."""

    def torch_fn(module: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run

    backends = {"eager": torch_fn(model)}
    if compile_:
        try:
            compiled = torch.compile(model, dynamic=False)
            start = time.perf_counter()
            for batch in (1, BATCH):  # compile both shapes now, not inside the timing
                torch_fn(compiled)(np.zeros((batch, 3, SIZE, SIZE), np.float32))
            console.print(f"  torch.compile: compiled in {time.perf_counter() - start:.0f} s")
            backends["torch.compile"] = torch_fn(compiled)
        except Exception as err:  # no C++ compiler, unsupported op, ...: report and go on
            console.print(f"  torch.compile unavailable: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    result = export(model, folder / "model.onnx", format="onnx")
    console.print(f"  ONNX export: parity max |diff| {result.max_abs_diff:.2e}")
    backends["onnxruntime"] = _onnx_session(result.path)
    return backends


def _interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Time each function ``runs`` times, in turns; returns seconds per call."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_model(name: str, args: argparse.Namespace, console: Console) -> list[tuple]:
    console.print(f"[bold]{name}[/bold]")
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig(name, pretrained=False), num_classes=10, scheduler=None).eval()
    model.apply_data_info([str(i) for i in range(10)], make_data_config(model.backbone, 3, SIZE))
    with tempfile.TemporaryDirectory() as folder:
        backends = _backends(model, Path(folder), args.compile, console)
        one = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
        batch = np.random.default_rng(1).standard_normal((BATCH, 3, SIZE, SIZE)).astype(np.float32)
        single = _interleaved({k: (lambda f=f: f(one)) for k, f in backends.items()}, args.runs)
        batched = _interleaved({k: (lambda f=f: f(batch)) for k, f in backends.items()}, args.batch_runs)
    rows = []
    eager_p50 = _p(single["eager"], 50)
    eager_tput = BATCH / statistics.median(batched["eager"])
    for backend in backends:
        p50, p95 = _p(single[backend], 50), _p(single[backend], 95)
        tput = BATCH / statistics.median(batched[backend])
        rows.append((name, backend, p50, p95, eager_p50 / p50, tput, tput / eager_tput))
    return rows


def bench_predict_api(args: argparse.Namespace, console: Console) -> list[tuple]:
    """End to end through predict: decode, preprocess, run, decode top-5, for a 500x375 JPEG."""
    torch.manual_seed(0)
    model = ImageClassifier(BackboneConfig("resnet18", pretrained=False), num_classes=10, scheduler=None).eval()
    model.apply_data_info([str(i) for i in range(10)], make_data_config(model.backbone, 3, SIZE))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "photo.jpg"
        pixels = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((500, 375)).save(photo, quality=90)
        onnx = OnnxPredictor(export(model, Path(folder) / "model.onnx").path)
        predictors = {"ImageClassifier.predict": model.predict, "OnnxPredictor.predict": onnx.predict}
        single = _interleaved({k: (lambda f=f: f(photo)) for k, f in predictors.items()}, args.runs)
        batched = _interleaved({k: (lambda f=f: f([photo] * BATCH)) for k, f in predictors.items()}, args.batch_runs)
    for name in predictors:
        rows.append((name, _p(single[name], 50), _p(single[name], 95), statistics.median(batched[name])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"])
    parser.add_argument("--runs", type=int, default=30, help="single-image calls per backend")
    parser.add_argument("--batch-runs", type=int, default=5, help="batch-32 calls per backend")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    console = Console(width=140)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {SIZE}x{SIZE} inputs, random weights, CPU"
    )
    rows = [row for name in args.models for row in bench_model(name, args, console)]
    table = Table(title="Bare model: single-image latency and batch-32 throughput")
    for column in ("model", "backend", "p50 ms", "p95 ms", "latency vs eager", "images/s (32)", "throughput vs eager"):
        table.add_column(column, justify="left" if column in ("model", "backend") else "right")
    for name, backend, p50, p95, speedup, tput, ratio in rows:
        table.add_row(
            name, backend, f"{p50 * 1e3:.1f}", f"{p95 * 1e3:.1f}", f"{speedup:.2f}x", f"{tput:.1f}", f"{ratio:.2f}x"
        )
    console.print(table)

    api = Table(title="resnet18 through predict (500x375 JPEG: decode + preprocess + model + top-5)")
    for column in ("API", "1 image p50 ms", "1 image p95 ms", "32 images s (median)"):
        api.add_column(column, justify="left" if column == "API" else "right")
    for name, p50, p95, batch_s in bench_predict_api(args, console):
        api.add_row(name, f"{p50 * 1e3:.1f}", f"{p95 * 1e3:.1f}", f"{batch_s:.3f}")
    console.print(api)
    console.print("Targets (2 CPU cores): 1 image < 100 ms, 32 images < 1 s; ONNX Runtime >= 1.3x eager on the CNNs.")


if __name__ == "__main__":
    main()
