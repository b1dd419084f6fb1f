"""GPU benchmark: training, data loading, inference and DDP throughput of autotimm against plain PyTorch/timm.

For each model (default resnet50 at batch 256 and vit_base_patch16_224 at
batch 128, 224 px, random weights):

- training images/s through ``ImageClassifier`` + ``AutoTrainer`` and through
  a plain timm loop (AdamW, cross-entropy, the same batch on the device), for
  ``fp32``, ``bf16`` (bf16-mixed), ``bf16+cl`` (+ channels_last) and
  ``bf16+cl+compile`` (+ ``torch.compile``), and the ratio ours / plain
  (target >= 0.95);
- the real JPEG data loader (``ImageDataModule`` over JPEGs written to a
  temporary folder, with its training transform) in images/s per worker
  count, against the GPU's appetite (the plain loop's images/s on synthetic
  input already on the device);
- inference images/s: eager, compiled, and ONNX Runtime (CUDA provider on a
  GPU when installed; the CPU provider on ``--device cpu``);
- DDP over all visible GPUs against one device (skipped, with a note, on one GPU).

It prints a table and writes JSON (``--json PATH``). ``--device cpu --steps 2
--models test_resnet,test_vit --batch-sizes 4,4 --image-size 32`` runs every
code path tiny on a CPU (the test suite does, so the script cannot rot).

Run on a GPU: ``python benchmarks/gpu.py [--json gpu.json] [--steps 30] [--workers 0,4,8,16]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from pytorch_lightning import Callback
from torch import nn
from torch.nn import functional as F

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule

NUM_CLASSES = 1000
SETTINGS = ("fp32", "bf16", "bf16+cl", "bf16+cl+compile")


class SameBatch:
    """A loader that yields the same on-device batch ``steps`` times (synthetic input, no data loading)."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __iter__(self):
        return (self.batch for _ in range(self.steps))

    def __len__(self) -> int:
        return self.steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(Callback):
    """Wall clock (after a device sync) at the end of every training batch."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.ends = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.ends.append(time.perf_counter())


def images_per_s(ends: list[float], warmup: int, batch_size: int) -> float:
    return batch_size * (len(ends) - warmup) / (ends[-1] - ends[warmup - 1])


def make_batch(args: argparse.Namespace, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, args.image_size, args.image_size, generator=g)
    return x.to(args.device), torch.randint(0, NUM_CLASSES, (batch_size,), generator=g).to(args.device)


def train_plain(name: str, setting: str, batch: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> float:
    """Images/s of a plain timm loop."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).to(args.device)
    x, y = batch
    if "+cl" in setting:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    step_model = torch.compile(model) if "compile" in setting else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    autocast = torch.autocast(args.device.type, dtype=torch.bfloat16) if "bf16" in setting else nullcontext()
    model.train()
    ends = []
    for _ in range(args.warmup + args.steps):
        with autocast:
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(args.device)
        ends.append(time.perf_counter())
    return images_per_s(ends, args.warmup, len(x))


def train_ours(name: str, setting: str, batch: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> float:
    """Images/s of ``ImageClassifier`` + ``AutoTrainer`` (metrics, scheduler, logger and checkpoints on)."""
    torch.manual_seed(0)
    model = ImageClassifier(
        BackboneConfig(name, pretrained=False),
        num_classes=NUM_CLASSES,
        lr=1e-3,
        channels_last="+cl" in setting,
        compile="compile" in setting,
    )
    clock = Clock(args.device)
    with tempfile.TemporaryDirectory() as folder:
        AutoTrainer(
            output_dir=folder,
            accelerator=args.device.type,
            devices=1,
            max_epochs=1,
            precision="bf16-mixed" if "bf16" in setting else "32-true",
            monitor="train/loss",
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        ).fit(model, train_dataloaders=SameBatch(batch, args.warmup + args.steps))
    return images_per_s(clock.ends, args.warmup, len(batch[0]))


def write_jpegs(folder: Path, count: int, size: int) -> None:
    """``count`` random JPEGs (``size`` px, quality 90) in an ImageFolder layout of 10 classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        target = folder / f"class{i % 10}"
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(target / f"{i}.jpg", quality=90)


def loader_speed(folder: Path, batch_size: int, workers: int, args: argparse.Namespace) -> float:
    """Images/s of ``ImageDataModule``'s training loader (decode + training transform + collate)."""
    data = ImageDataModule(
        data_dir=folder,
        image_size=args.image_size,
        batch_size=batch_size,
        num_workers=workers,
        val_split=0.1,
        test_split=0.0,
        output_dir=None,
    )
    data.setup("fit")
    loader = data.train_dataloader()
    ends, seen = [], 0
    while len(ends) < args.warmup + args.steps:
        for x, _ in loader:
            if args.device.type == "cuda":
                x = x.to(args.device, non_blocking=True)
            sync(args.device)
            ends.append(time.perf_counter())
            seen += len(x)
            if len(ends) >= args.warmup + args.steps:
                break
    return images_per_s(ends, args.warmup, batch_size)


def inference(name: str, batch: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    """Images/s of eager, compiled and ONNX Runtime inference (bf16 autocast on CUDA for eager and compiled)."""
    x = batch[0]
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES).to(args.device).eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.device.type == "cuda" else nullcontext()
    results: dict[str, Any] = {}
    for label, runner in (("eager", model), ("compiled", torch.compile(model))):
        times = []
        with torch.inference_mode(), autocast:
            for _ in range(args.warmup + args.steps):
                start = time.perf_counter()
                runner(x)
                sync(args.device)
                times.append(time.perf_counter() - start)
        results[label] = len(x) / statistics.median(times[args.warmup :])
    results["onnxruntime"] = onnx_speed(model, x, args)
    return results


def onnx_speed(model: nn.Module, x: torch.Tensor, args: argparse.Namespace) -> float | str:
    """ONNX Runtime images/s (fp32), or why it was skipped."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "skipped: onnxruntime is not installed"
    wanted = "CUDAExecutionProvider" if args.device.type == "cuda" else "CPUExecutionProvider"
    if wanted not in ort.get_available_providers():
        return f"skipped: no {wanted} (pip install onnxruntime-gpu)"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            torch.onnx.export(
                model.float().cpu(), x[:1].float().cpu(), path, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                dynamo=False,
            )  # fmt: skip
        except Exception as err:
            model.to(x.device)
            return f"skipped: ONNX export failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        session = ort.InferenceSession(path, providers=[wanted])
    feed = {"x": x.float().cpu().numpy()}
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    model.to(x.device)
    return len(x) / statistics.median(times[args.warmup :])


def ddp(name: str, batch_size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Images/s per device of DDP over every visible GPU against one device (bf16+cl), in a subprocess each."""
    count = torch.cuda.device_count() if args.device.type == "cuda" else 0
    if count < 2:
        return {"note": f"skipped: {count} GPU(s) visible; DDP needs 2 or more"}
    per_device = {}
    for devices in (1, count):
        command = [sys.executable, __file__, "--ddp-worker", str(devices), "--models", name]
        command += ["--batch-sizes", str(batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--image-size", str(args.image_size)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        per_device[devices] = float(output.strip().splitlines()[-1])
    return {"one device": per_device[1], f"{count} devices, per device": per_device[count]}


def ddp_worker(args: argparse.Namespace) -> None:
    """One DDP fit (the subprocess of `ddp`): prints images/s per device on rank 0."""
    name, batch_size = args.models[0], args.batch_sizes[0]
    batch = make_batch(argparse.Namespace(**{**vars(args), "device": torch.device("cpu")}), batch_size)
    model = ImageClassifier(BackboneConfig(name, pretrained=False), num_classes=NUM_CLASSES, channels_last=True)
    clock = Clock(torch.device("cuda"))
    with tempfile.TemporaryDirectory() as folder:
        trainer = AutoTrainer(
            output_dir=folder,
            accelerator="cuda",
            devices=args.ddp_worker,
            strategy="ddp" if args.ddp_worker > 1 else "auto",
            max_epochs=1,
            precision="bf16-mixed",
            monitor="train/loss",
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        trainer.fit(model, train_dataloaders=SameBatch(batch, args.warmup + args.steps))
    if trainer.global_rank == 0:
        print(images_per_s(clock.ends, args.warmup, batch_size))


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"device": str(args.device), "torch": torch.__version__, "models": {}}
    if args.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(args.device)
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(Path(folder), args.jpegs, args.jpeg_size)
        for name, batch_size in zip(args.models, args.batch_sizes, strict=True):
            batch = make_batch(args, batch_size)
            result: dict[str, Any] = {"batch_size": batch_size, "training": {}}
            for setting in args.settings:
                plain, ours = train_plain(name, setting, batch, args), train_ours(name, setting, batch, args)
                result["training"][setting] = {"plain": plain, "ours": ours, "ours/plain": ours / plain}
                print(f"  {name} {setting}: plain {plain:.1f}, ours {ours:.1f} images/s", flush=True)
            appetite = max(r["plain"] for r in result["training"].values())
            loaders = {w: loader_speed(Path(folder), batch_size, w, args) for w in args.workers}
            result["data loading"] = {"GPU appetite (best plain)": appetite, "JPEG loader by workers": loaders}
            result["inference"] = inference(name, batch, args)
            result["ddp"] = ddp(name, batch_size, args)
            report["models"][name] = result
            del batch
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report.get('gpu', report['device'])}, torch {report['torch']}")
    print(f"{'model':<24} {'setting':<17} {'plain img/s':>12} {'ours img/s':>11} {'ours/plain':>11}")
    for name, result in report["models"].items():
        for setting, row in result["training"].items():
            print(f"{name:<24} {setting:<17} {row['plain']:12.1f} {row['ours']:11.1f} {row['ours/plain']:11.3f}")
    print(f"\n{'model':<24} {'data loading':<40} {'images/s':>10}")
    for name, result in report["models"].items():
        loading = result["data loading"]
        print(f"{name:<24} {'GPU appetite (synthetic, best plain)':<40} {loading['GPU appetite (best plain)']:10.1f}")
        for workers, speed in loading["JPEG loader by workers"].items():
            print(f"{name:<24} {f'JPEG loader, {workers} workers':<40} {speed:10.1f}")
    print(f"\n{'model':<24} {'inference':<12} {'images/s':>10}")
    for name, result in report["models"].items():
        for label, speed in result["inference"].items():
            print(
                f"{name:<24} {label:<12} {speed:>10.1f}"
                if isinstance(speed, float)
                else f"{name:<24} {label:<12} {speed}"
            )
    for name, result in report["models"].items():
        print(f"{name} DDP: {result['ddp']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a tiny dry run")
    parser.add_argument("--models", default="resnet50,vit_base_patch16_224", type=lambda s: s.split(","))
    parser.add_argument("--batch-sizes", default="256,128", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (batches) per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--settings", default=",".join(SETTINGS), type=lambda s: s.split(","))
    parser.add_argument("--workers", default="0,4,8,16", type=lambda s: [int(w) for w in s.split(",")])
    parser.add_argument("--jpegs", type=int, default=2048, help="JPEG files generated for the loader")
    parser.add_argument("--jpeg-size", type=int, default=320, help="their side in pixels (resized to --image-size)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend; 'eager' traces without generating code (a quick dry run)",
    )
    parser.add_argument("--ddp-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if len(args.models) != len(args.batch_sizes):
        parser.error("--models and --batch-sizes need as many entries")
    if unknown := set(args.settings) - set(SETTINGS):
        parser.error(f"unknown --settings {sorted(unknown)}; accepted: {', '.join(SETTINGS)}")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    warnings.filterwarnings("ignore")
    if args.compile_backend != "inductor":  # for this script's plain loops and ImageClassifier(compile=...) alike
        compile_with = torch.compile

        def compile_on_backend(model: Any, **kwargs: Any) -> Any:
            kwargs.pop("mode", None)  # modes are inductor's
            return compile_with(model, backend=args.compile_backend, **kwargs)

        torch.compile = compile_on_backend
    if args.ddp_worker:
        ddp_worker(args)
        return
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here; pass --device cpu for a dry run")
    if args.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    report = run(args)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
