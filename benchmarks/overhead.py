"""Per-step framework overhead: ``ImageClassifier`` + ``AutoTrainer`` against a plain PyTorch loop.

The model's compute is made nearly free (``overhead_tiny``: one 3x3
convolution registered as a timm model, or ``--model test_resnet``; 16x16
images, batch 8, the batches already in memory as tensors), so what is left
of a step is the framework's own work. Steps are timed by the process's CPU
clock (other processes on a shared machine do not count). In one run, interleaved (plain, library, plain,
library, ... in ``--repeats`` rounds), each path trains ``--steps`` steps:

- ``plain``: ``model(x)``, cross-entropy, ``backward``, ``optimizer.step()``,
  ``zero_grad`` on the same backbone + linear head, with the settings
  ``ImageClassifier`` defaults to: torch's fused AdamW over two parameter groups
  (weight decay on weights only, as timm's ``train.py`` groups them), and the
  model and each batch in channels-last memory format.
- ``defaults``: ``ImageClassifier(BackboneConfig("overhead_tiny", pretrained=False), num_classes=10)``
  with what a user gets: the default metrics (accuracy, top-5, macro F1), the
  per-step cosine schedule, the TensorBoard logger, the progress bar, the
  model summary, the best and last checkpoints at epoch end, ``history.json``.
  A two-batch validation set lets the default ``val/accuracy`` monitor work.
- ``lightning floor``: a bare ``LightningModule`` (the same model, loss and
  optimizer, one ``training_step`` returning the loss) under a bare
  ``pytorch_lightning.Trainer`` with logger, checkpoints, progress bar and
  summary off: what Lightning's loop costs by itself.
- ``+ <diagnostic>``: the defaults with one optional diagnostic on
  (each ``LoggingConfig`` switch, and EMA).

A step is timed in steady state: the CPU clock between the end of batch
``--warmup`` and the end of the last batch, over the steps between, read
in ``on_train_batch_end`` (start-up, validation and epoch-end checkpoints
fall outside; they are reported once as "fit total"). Numbers are medians
over the repeats; the machine's noise shows in the range.

``--compile`` adds a section: cold ``torch.compile`` time and steady-state
speed-up of ``ImageClassifier(compile=True)`` for training and inference on a
bigger model (``--compile-model``, default resnet18 at 64 px).

Run: ``python benchmarks/overhead.py [--steps 300] [--repeats 5] [--warmup 20]
[--threads 1] [--no-diagnostics] [--compile] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import timm
import timm.optim
import torch
from pytorch_lightning import Callback
from timm.models import register_model
from torch import nn
from torch.nn import functional as F

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier

NUM_CLASSES = 10
#: The clock of the per-step times: process CPU time (other processes on the cores do not count).
CLOCK = time.process_time
#: ImageClassifier keyword arguments of each optional diagnostic, each measured on its own.
DIAGNOSTICS: dict[str, dict[str, Any]] = {
    "+ log_learning_rate": {"logging_config": {"log_learning_rate": True}},
    "+ log_gradient_norm": {"logging_config": {"log_gradient_norm": True}},
    "+ log_weight_norm": {"logging_config": {"log_weight_norm": True}},
    "+ log_confusion_matrix": {"logging_config": {"log_confusion_matrix": True}},
    "+ ema_decay=0.999": {"ema_decay": 0.999},
}


class Batches:
    """Batches already in memory, as a loader: iterable, with a length (a bare list would be many loaders)."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_batches(steps: int, batch_size: int, image_size: int, seed: int = 0) -> Batches:
    """``steps`` batches of random images and labels, in memory."""
    generator = torch.Generator().manual_seed(seed)
    return Batches(
        [
            (
                torch.randn(batch_size, 3, image_size, image_size, generator=generator),
                torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator),
            )
            for _ in range(steps)
        ]
    )


class TinyNet(nn.Module):
    """One 3x3 convolution (16 channels) and global average pooling: a backbone whose compute is nearly free."""

    def __init__(self, num_classes: int = 0, in_chans: int = 3, **_: Any) -> None:
        super().__init__()
        self.num_features = 16
        self.conv = nn.Conv2d(in_chans, self.num_features, 3, padding=1)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {"input_size": (in_chans, 16, 16), "mean": (0.5,) * in_chans, "std": (0.5,) * in_chans}
        self.pretrained_cfg |= {"interpolation": "bilinear", "crop_pct": 1.0, "num_classes": num_classes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).relu().mean((2, 3)))


@register_model
def overhead_tiny(pretrained: bool = False, **kwargs: Any) -> TinyNet:
    """`TinyNet` as a timm model, so that ``ImageClassifier`` builds it by name."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("pretrained_cfg", "pretrained_cfg_overlay")}
    return TinyNet(**kwargs)


def plain_model(name: str) -> nn.Module:
    """The headless timm backbone plus a linear head, as ``ImageClassifier`` builds it (channels-last)."""
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES))
    return model.to(memory_format=torch.channels_last)


def plain_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """AdamW as ``ImageClassifier`` and timm's ``train.py`` build it: no weight decay on biases and norms
    (two parameter groups, timm's ``param_groups_weight_decay``), and torch's fused kernel."""
    groups = timm.optim.param_groups_weight_decay(model, weight_decay=1e-4)
    return torch.optim.AdamW(groups, lr=1e-3, fused=True)


class StepClock(Callback):
    """Record `CLOCK` at the end of every training batch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends.append(CLOCK())


def steady_ms(ends: list[float], warmup: int) -> float:
    """Milliseconds per step between the end of batch ``warmup`` and the last batch's end."""
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup) * 1e3


def run_plain(batches: Batches, args: argparse.Namespace) -> tuple[float, float]:
    """The hand-written loop; returns (steady ms per step, total seconds)."""
    start = time.perf_counter()
    model = plain_model(args.model)
    optimizer = plain_optimizer(model)
    model.train()
    ends = []
    for x, y in batches:
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ends.append(CLOCK())
    return steady_ms(ends, args.warmup), time.perf_counter() - start


class FloorModule(pl.LightningModule):
    """The least a LightningModule can be: the plain model, its loss and optimizer."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.model = plain_model(name)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self.model(batch[0].contiguous(memory_format=torch.channels_last)), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return plain_optimizer(self)


def run_floor(batches: Batches, args: argparse.Namespace) -> tuple[float, float]:
    """A bare LightningModule under a bare Trainer (everything optional off)."""
    start = time.perf_counter()
    clock = StepClock()
    with tempfile.TemporaryDirectory() as folder:
        pl.Trainer(
            default_root_dir=folder,
            accelerator="cpu",
            devices=1,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        ).fit(FloorModule(args.model), train_dataloaders=batches)
    return steady_ms(clock.ends, args.warmup), time.perf_counter() - start


def run_library(
    batches: Batches,
    val: Batches,
    args: argparse.Namespace,
    profiler: cProfile.Profile | None = None,
    **model_kwargs: Any,
) -> tuple[float, float]:
    """``ImageClassifier`` + ``AutoTrainer`` with the defaults (plus ``model_kwargs``)."""
    start = time.perf_counter()
    torch.manual_seed(0)
    model = ImageClassifier(
        BackboneConfig(args.model, pretrained=False), num_classes=NUM_CLASSES, lr=1e-3, **model_kwargs
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory() as folder:
        trainer = AutoTrainer(output_dir=folder, accelerator="cpu", devices=1, max_epochs=1, callbacks=[clock])
        if profiler is not None:
            profiler.enable()
        trainer.fit(model, train_dataloaders=batches, val_dataloaders=val)
        if profiler is not None:
            profiler.disable()
    return steady_ms(clock.ends, args.warmup), time.perf_counter() - start


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} ({min(values):.2f}-{max(values):.2f})"


def measure(args: argparse.Namespace) -> None:
    """The interleaved rounds and the table."""
    batches = make_batches(args.steps, args.batch_size, args.image_size)
    val = make_batches(2, args.batch_size, args.image_size, seed=1)
    paths: dict[str, Callable[[], tuple[float, float]]] = {
        "plain": lambda: run_plain(batches, args),
        "defaults": lambda: run_library(batches, val, args),
        "lightning floor": lambda: run_floor(batches, args),
    }
    if args.diagnostics:
        for label, kwargs in DIAGNOSTICS.items():
            paths[label] = lambda kwargs=kwargs: run_library(batches, val, args, **kwargs)
    results: dict[str, list[tuple[float, float]]] = {label: [] for label in paths}
    for label, run in paths.items():  # one untimed run each: imports, first-call caches
        if label in ("plain", "defaults", "lightning floor"):
            run()
    for round_ in range(args.repeats):
        order = list(paths) if round_ % 2 == 0 else list(paths)[::-1]
        for label in order:
            results[label].append(paths[label]())
        line = "  ".join(f"{label} {results[label][-1][0]:.2f}" for label in paths)
        print(f"  round {round_ + 1}/{args.repeats}, ms/step: {line}", flush=True)
    plain = statistics.median(ms for ms, _ in results["plain"])
    print()
    print(
        f"ms per step, median (range) of {args.repeats} interleaved repeats; {args.model}, "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} steps ({args.warmup} untimed)"
    )
    print(f"{'path':<26} {'ms/step':>20} {'- plain':>9} {'fit total s':>12}")
    for label, values in results.items():
        median = statistics.median(ms for ms, _ in values)
        total = statistics.median(s for _, s in values)
        print(f"{label:<26} {summary([ms for ms, _ in values]):>20} {median - plain:+9.3f} {total:12.2f}")
    defaults = statistics.median(ms for ms, _ in results["defaults"])
    floor = statistics.median(ms for ms, _ in results["lightning floor"])
    print(
        f"\ndefaults - plain: {defaults - plain:+.3f} ms/step (target <= 1 ms): "
        f"Lightning's own loop {floor - plain:+.3f}, autotimm's on top {defaults - floor:+.3f}"
    )


def profile_defaults(args: argparse.Namespace) -> None:
    """cProfile of one default fit: the functions with the most cumulative time per step."""
    batches = make_batches(args.steps, args.batch_size, args.image_size)
    val = make_batches(2, args.batch_size, args.image_size, seed=1)
    run_library(batches, val, args)  # warm
    profiler = cProfile.Profile()
    run_library(batches, val, args, profiler=profiler)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    print(out.getvalue())


def measure_compile(args: argparse.Namespace) -> None:
    """Cold compile time and steady-state speed-up of ``compile=True``, training and inference."""
    size, batch = args.compile_image_size, args.compile_batch_size
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    print(f"\ntorch.compile: {args.compile_model}, {size}x{size}, batch {batch}, {torch.get_num_threads()} threads")
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = ImageClassifier(
            BackboneConfig(args.compile_model, pretrained=False), num_classes=NUM_CLASSES, compile=compiled
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model.train()

        def train_step(model: ImageClassifier = model, optimizer: torch.optim.Optimizer = optimizer) -> None:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        start = time.perf_counter()
        train_step()
        cold_train = time.perf_counter() - start
        model.eval()
        with torch.inference_mode():
            start = time.perf_counter()
            model(x)
            cold_infer = time.perf_counter() - start
        train_times, infer_times = [], []
        for _ in range(args.compile_repeats):  # interleaved within the model: training, then inference
            model.train()
            start = time.perf_counter()
            train_step()
            train_times.append(time.perf_counter() - start)
            model.eval()
            with torch.inference_mode():
                start = time.perf_counter()
                model(x)
                infer_times.append(time.perf_counter() - start)
        rows.append((compiled, cold_train, cold_infer, statistics.median(train_times), statistics.median(infer_times)))
    print(f"{'compile':<8} {'first train step s':>19} {'first inference s':>18} {'train ms':>9} {'infer ms':>9}")
    for compiled, cold_train, cold_infer, train, infer in rows:
        print(f"{compiled!s:<8} {cold_train:19.2f} {cold_infer:18.2f} {train * 1e3:9.1f} {infer * 1e3:9.1f}")
    eager, compiled = rows
    print(
        f"steady-state speed-up of compile=True: training {eager[3] / compiled[3]:.2f}x, "
        f"inference {eager[4] / compiled[4]:.2f}x; cold compile (first step - eager's first step): "
        f"training {compiled[1] - eager[1]:.1f} s, inference {compiled[2] - eager[2]:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="overhead_tiny", help="timm model name (random weights); overhead_tiny: one conv layer"
    )
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="steps per fit (one epoch)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps at the start of each fit")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds of every path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--no-diagnostics", dest="diagnostics", action="store_false", help="skip (c)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one default fit instead")
    parser.add_argument("--compile", action="store_true", help="also measure ImageClassifier(compile=True)")
    parser.add_argument("--compile-only", action="store_true", help="only the --compile section")
    parser.add_argument("--compile-model", default="resnet18")
    parser.add_argument("--compile-image-size", type=int, default=64)
    parser.add_argument("--compile-batch-size", type=int, default=16)
    parser.add_argument("--compile-repeats", type=int, default=10)
    args = parser.parse_args()
    if args.steps <= args.warmup or args.warmup < 1 or args.repeats < 1:
        parser.error("need --steps > --warmup >= 1 and --repeats >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, {torch.get_num_threads()} threads")
    start = time.perf_counter()
    if args.profile:
        profile_defaults(args)
    elif not args.compile_only:
        measure(args)
    if args.compile or args.compile_only:
        measure_compile(args)
    print(f"Total time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
