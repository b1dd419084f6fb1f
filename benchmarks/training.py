"""Training speed: ``ImageClassifier`` + ``AutoTrainer`` against a plain PyTorch loop, side by side in one run.

The same timm backbone (random weights), in-memory data and batch size go
through:

- ``plain``: a hand-written loop. The model is the headless timm backbone
  plus a linear head, AdamW (lr 1e-3, weight decay 1e-4), cross-entropy,
  ``model.train()``, ``zero_grad``/``backward``/``step``, batches from a
  ``DataLoader`` over a ``TensorDataset`` (shuffled, no workers).
- ``defaults``: ``ImageClassifier(backbone, num_classes)`` with its defaults:
  train metrics (accuracy, top-5 accuracy, macro F1), the per-step cosine
  schedule, and AdamW with weight decay on kernels only. It is trained by
  ``AutoTrainer.fit`` on a loader like the plain one's. The validation loop,
  logger, checkpoints, progress bar and model summary are off, because the
  plain loop has none of them.
- ``lean``: the same, with ``metrics=[]`` and ``scheduler=None``.
- ``fused`` (with ``--fused``): ``defaults`` with ``optimizer_kwargs={"fused": True}``:
  torch's fused AdamW kernel, against the per-tensor loop that torch picks by
  default for CPU tensors.

Each path runs in each setting: ``fp32``, ``bf16`` (``AutoTrainer(precision="bf16-mixed")``
and ``torch.autocast("cpu", torch.bfloat16)`` around the forward pass and loss
of the plain loop; backward runs outside autocast in both), and ``+cl``
(``ImageClassifier(channels_last=True)``, and for the plain loop the model and
each batch in ``torch.channels_last``).

How it is timed. The two paths are interleaved step by step: in each
``AutoTrainer.fit`` (one library path in one setting), a callback runs one
step of the plain loop after every library step. So each library step is
paired with a plain step taken less than a second later, and a shared machine's
changing load hits both alike. A library step is timed from the end of the
previous plain step to Lightning's ``on_train_batch_end``. That window covers
one whole iteration of Lightning's loop: fetching the batch, the training step
with its metrics and logging, backward, the optimizer step, the scheduler and
the hooks. A plain step is timed from fetching its batch to the end of
``optimizer.step()``. Each fit runs ``--warmup`` untimed steps and then
``--steps`` timed ones, on a fresh optimizer. One epoch holds all of them, so
start-up and epoch-end work fall outside the timing. Each step is timed twice:
by the wall clock and by this process's CPU time (which leaves out the time
other processes hold the core). A fit's ratio is the median over its steps of
plain time / library time. The tables give the median of these ratios over
``--rounds`` rounds, with their range. Each round runs the fits in a
different order. A ``control`` pairs two identical plain loops the same way,
so its spread around 1 is the noise of the method on this machine. The option
speed-ups (bf16, channels_last) compare the median step times of fits in the
same round.

A noisy machine cannot resolve a 1% difference in whole steps. So the script
then times each component of a step (``benchmarks/training_profile.py``): the
model's and the optimizer's methods are wrapped with timers (``--no-profile``
skips this). The metrics, ``self.log``, the scheduler, the hooks and
Lightning's own loop then show up as milliseconds per step, and their sum
gives a ratio estimate that does not depend on the noise of the backbone's
compute.

Run: ``python benchmarks/training.py [--model resnet18] [--image-size 64] [--batch-size 32]
[--steps 10] [--rounds 3] [--settings fp32 bf16 fp32+cl] [--threads N] [--fused] [--no-profile]``.
On a machine shared with other jobs, pass ``--threads 1``: two OpenMP threads
on two busy cores can run several times slower while they spin-wait.
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from contextlib import nullcontext
from types import SimpleNamespace
from typing import Any

import timm
import torch
from pytorch_lightning import Callback
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from training_profile import instrument, profile

from autotimm import AutoTrainer, BackboneConfig, ImageClassifier
from autotimm.data.synthetic import make_synthetic_dataset

NUM_CLASSES = 10
TARGET = 0.97
SETTINGS = ("fp32", "bf16", "fp32+cl", "bf16+cl")
#: Keyword arguments of ImageClassifier per library path.
LIBRARY_PATHS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "lean": {"metrics": [], "scheduler": None},
    "fused": {"optimizer_kwargs": {"fused": True}},
}


def clocks() -> tuple[float, float]:
    """(wall, process CPU) seconds."""
    return time.perf_counter(), time.process_time()


class GCClock:
    """Seconds spent in Python's garbage collector (via ``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds, self._start = 0.0, 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start


GC = GCClock()


class PlainLoop:
    """The hand-written training loop, one step per call, so that it can run between AutoTrainer's steps."""

    def __init__(self, model: nn.Module, loader: DataLoader, setting: str) -> None:
        self.model, self.bf16, self.channels_last = model, setting.startswith("bf16"), setting.endswith("+cl")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        self.batches = iter(loader)
        self.parts: dict[str, float] = {}  # seconds per component of the last step
        model.train()

    def step(self) -> tuple[float, float]:
        """One training step; returns its (wall, CPU) seconds."""
        wall, cpu = clocks()
        collected = GC.seconds
        x, y = next(self.batches)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        self.optimizer.zero_grad()
        t2 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if self.bf16 else nullcontext():
            loss = F.cross_entropy(self.model(x), y)
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        self.optimizer.step()
        end, end_cpu = clocks()
        self.parts = {"fetch the batch": t1 - wall, "zero_grad": t2 - t1, "forward + loss": t3 - t2}
        self.parts |= {"backward": t4 - t3, "optimizer update": end - t4, "whole step": end - wall}
        self.parts["garbage collection"] = GC.seconds - collected
        return end - wall, end_cpu - cpu


class Interleave(Callback):
    """Time every library step and run one plain step after each; keeps both lists of (wall, CPU) seconds."""

    def __init__(self, plain: PlainLoop) -> None:
        self.plain = plain
        self.library: list[tuple[float, float]] = []
        self.plain_steps: list[tuple[float, float]] = []
        self.library_parts: list[dict[str, float]] = []
        self.plain_parts: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)  # filled by `instrument`
        self._start, self._gc = clocks(), GC.seconds

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self._gc = clocks(), GC.seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        wall, cpu = clocks()
        self.library.append((wall - self._start[0], cpu - self._start[1]))
        self.current["whole step"] = wall - self._start[0]
        self.current["garbage collection"] = GC.seconds - self._gc
        self.library_parts.append(dict(self.current))
        self.current.clear()
        self.plain_steps.append(self.plain.step())
        self.plain_parts.append(self.plain.parts)
        self._start, self._gc = clocks(), GC.seconds


class Bench:
    """Models and data of one run; every fit and control goes through here."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.total = args.warmup + args.steps
        size = args.batch_size * self.total  # one epoch of exactly the steps of one fit
        data = make_synthetic_dataset(NUM_CLASSES, -(-size // NUM_CLASSES), image_size=args.image_size, seed=0)
        self.dataset = TensorDataset(*(t[:size] for t in data.tensors))
        self.plain: dict[tuple[str, str], nn.Module] = {}
        self.library: dict[tuple[str, str], ImageClassifier] = {}
        for setting in args.settings:
            for copy in ("plain", "control"):
                torch.manual_seed(0)
                backbone = timm.create_model(args.model, pretrained=False, num_classes=0)
                model = nn.Sequential(backbone, nn.Linear(backbone.num_features, NUM_CLASSES))
                self.plain[copy, setting] = model.to(memory_format=torch.channels_last) if "+cl" in setting else model
            for path in args.paths:
                torch.manual_seed(0)
                self.library[path, setting] = ImageClassifier(
                    BackboneConfig(args.model, pretrained=False),
                    num_classes=NUM_CLASSES,
                    lr=1e-3,
                    weight_decay=1e-4,
                    channels_last=setting.endswith("+cl"),
                    **LIBRARY_PATHS[path],
                )

    def loader(self, seed: int) -> DataLoader:
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(self.dataset, self.args.batch_size, shuffle=True, drop_last=True, generator=generator)

    def run(self, path: str, setting: str, seed: int, profile: bool = False) -> Any:
        """Interleave a plain loop with ``path`` (a library path, or a second plain loop for ``control``)."""
        plain = PlainLoop(self.plain["plain", setting], self.loader(seed + 1), setting)
        if path == "control":
            other = PlainLoop(self.plain["control", setting], self.loader(seed), setting)
            pairs = [(other.step(), plain.step()) for _ in range(self.total)]
            return SimpleNamespace(library=[a for a, _ in pairs], plain_steps=[b for _, b in pairs])
        model = self.library[path, setting]
        timer = Interleave(plain)
        callbacks = [timer, instrument(model, timer.current)] if profile else [timer]
        with tempfile.TemporaryDirectory() as folder:
            AutoTrainer(
                output_dir=folder,
                accelerator="cpu",
                devices=1,
                max_steps=self.total,
                limit_val_batches=0,
                num_sanity_val_steps=0,
                precision="bf16-mixed" if setting.startswith("bf16") else "32-true",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=callbacks,
            ).fit(model, train_dataloaders=self.loader(seed))
        if len(timer.library) != self.total:
            raise RuntimeError(f"expected {self.total} steps, the callback saw {len(timer.library)}")
        return timer


def timed(run: Any, warmup: int, clock: int) -> tuple[list[float], list[float]]:
    """Timed (library, plain) seconds of one run by one clock (0: wall, 1: CPU)."""
    return [t[clock] for t in run.library[warmup:]], [t[clock] for t in run.plain_steps[warmup:]]


def ratio(run: Any, warmup: int, clock: int = 0) -> float:
    """Median over steps of plain seconds / library seconds: the library's speed relative to plain."""
    library, plain = timed(run, warmup, clock)
    return statistics.median(p / b for b, p in zip(library, plain, strict=True))


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def measure(bench: Bench, console: Console) -> dict[tuple[str, str], list[Any]]:
    """Every (path, setting) run, ``--rounds`` times, in a different order each round."""
    args = bench.args
    runs = [(path, setting) for setting in args.settings for path in [*args.paths, "control"]]
    results: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for round_ in range(args.rounds):
        order = runs[round_ % len(runs) :] + runs[: round_ % len(runs)]
        for path, setting in order if round_ % 2 == 0 else order[::-1]:
            results[path, setting].append(bench.run(path, setting, seed=round_))
        line = "  ".join(f"{p}/{s} {ratio(results[p, s][-1], args.warmup):.3f}" for p, s in runs)
        console.print(f"  round {round_ + 1}/{args.rounds}, speed vs plain (wall): {line}")
    return results


def report(results: dict[tuple[str, str], list[Any]], args: argparse.Namespace, console: Console) -> None:
    def speed(path: str, setting: str, side: int) -> float:
        seconds = [t for run in results[path, setting] for t in timed(run, args.warmup, 0)[side]]
        return args.batch_size / statistics.median(seconds)

    table = Table(
        title=f"Speed relative to the plain loop (plain time / library time): median (range) of {args.rounds} rounds"
    )
    for column in ("setting", "path", "images/s", "plain images/s", "library/plain", "by CPU clock", "control"):
        table.add_column(column, justify="left" if column in ("setting", "path") else "right")
    lowest = {}
    for setting in args.settings:
        control = cell([ratio(run, args.warmup) for run in results["control", setting]])
        for path in args.paths:
            wall, cpu = ([ratio(run, args.warmup, c) for run in results[path, setting]] for c in (0, 1))
            lowest[path, setting] = statistics.median(wall)
            speeds = [f"{speed(path, setting, side):.1f}" for side in (0, 1)]
            table.add_row(setting, path, *speeds, cell(wall), cell(cpu), control if path == args.paths[0] else "")
    console.print(table)
    worst = min(v for (path, _), v in lowest.items() if path == "defaults")
    console.print(
        f"Target: defaults/plain >= {TARGET} in every setting; lowest median here {worst:.3f}: "
        f"{'meets' if worst >= TARGET else 'below'} it. The control (two identical plain loops) shows the noise: "
        "ratios inside its range are not a measured difference. Images/s are by the wall clock."
    )
    pairs = [("bf16 / fp32", "bf16", "fp32"), ("channels_last / contiguous, fp32", "fp32+cl", "fp32")]
    pairs += [
        ("channels_last / contiguous, bf16", "bf16+cl", "bf16"),
        ("bf16 + channels_last / fp32", "bf16+cl", "fp32"),
    ]
    rows = [(label, a, b) for label, a, b in pairs if a in args.settings and b in args.settings]
    if rows:
        options = Table(title="Speed-up of each option, same path, runs of the same round: median (range)")
        for column in ("option", "plain", *args.paths):
            options.add_column(column, justify="left" if column == "option" else "right")
        for label, a, b in rows:
            cells = []
            for path, side in [("defaults", 1)] + [(path, 0) for path in args.paths]:
                per_round = [
                    statistics.median(timed(slow, args.warmup, 0)[side])
                    / statistics.median(timed(fast, args.warmup, 0)[side])
                    for fast, slow in zip(results[path, a], results[path, b], strict=True)
                ]
                cells.append(cell(per_round))
            options.add_row(label, *cells)
        console.print(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="timm model name (random weights)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per run before the timed ones")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every variant, in turns")
    parser.add_argument("--settings", nargs="+", default=["fp32", "bf16", "fp32+cl"], choices=SETTINGS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument(
        "--fused", action="store_true", help="add a path: defaults with optimizer_kwargs={'fused': True}"
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the component timing")
    args = parser.parse_args()
    if args.warmup < 0 or args.steps < 1 or args.rounds < 1:
        parser.error("--warmup must be >= 0, --steps and --rounds >= 1")
    args.paths = ["defaults", "lean", "fused"] if args.fused else ["defaults", "lean"]
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for logger in ("pytorch_lightning", "lightning_fabric", "lightning.pytorch"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    console = Console(width=160)
    console.print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model} (random weights), "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {NUM_CLASSES} classes; "
        f"{args.warmup} warm-up + {args.steps} timed steps per run, {args.rounds} rounds"
    )
    start = time.perf_counter()
    bench = Bench(args)
    report(measure(bench, console), args, console)
    if args.profile:
        profile(bench, console)  # last: it wraps the library models' methods for good
    console.print(f"Total time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
