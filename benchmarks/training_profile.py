"""Component timing for ``benchmarks/training.py``: where a training step's time goes.

The model's and the optimizer's methods are wrapped with timers, so the
metrics, ``self.log``, the scheduler, the hooks and Lightning's own loop each
show up as milliseconds per step, next to the plain loop's forward, backward
and optimizer update. Run through ``python benchmarks/training.py``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from pytorch_lightning import Callback
from rich.console import Console
from rich.table import Table

from autotimm import ImageClassifier


def instrument(model: ImageClassifier, parts: dict[str, float]) -> Callback:
    """Wrap the model's step methods with timers adding to ``parts``; returns a callback timing the optimizer."""
    state = {"in_metrics": False, "closure_end": 0.0}

    def wrap(owner: Any, name: str, key: str | Callable[[], str], flag: bool = False) -> None:
        function = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            label = key() if callable(key) else key
            state["in_metrics"] |= flag
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                parts[label] += time.perf_counter() - start
                state["in_metrics"] &= not flag
                state["closure_end"] = time.perf_counter()  # the last wrapped call before the update is the hook

        setattr(owner, name, timed)

    wrap(model, "_log_metrics", "train metrics", flag=True)
    wrap(model, "training_step", "training_step")
    wrap(model, "_logits", "forward")
    wrap(model, "log", lambda: "self.log, metrics" if state["in_metrics"] else "self.log('train/loss')")
    for _, metric in model.metrics.items("train"):
        wrap(metric, "update", "torchmetrics update")
    wrap(model, "backward", "backward")
    wrap(model, "optimizer_zero_grad", "zero_grad")
    wrap(model, "on_before_optimizer_step", "on_before_optimizer_step")
    wrap(model, "lr_scheduler_step", "lr_scheduler_step")

    class OptimizerTimer(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            def after_step(*_: Any) -> None:
                parts["optimizer update"] += time.perf_counter() - state["closure_end"]

            trainer.optimizers[0].register_step_post_hook(after_step)

    return OptimizerTimer()


#: (row label, component key) of the profile table; the plain loop's "forward + loss" is its training_step.
PROFILE_ROWS = [
    ("fetch the batch (plain loop)", "fetch the batch"),
    ("training_step (plain: forward + loss)", "training_step"),
    ("  forward (_logits)", "forward"),
    ("  train metrics (_log_metrics)", "train metrics"),
    ("    torchmetrics update", "torchmetrics update"),
    ("    self.log of the metrics", "self.log, metrics"),
    ("  self.log('train/loss')", "self.log('train/loss')"),
    ("zero_grad", "zero_grad"),
    ("backward", "backward"),
    ("on_before_optimizer_step (norm logging)", "on_before_optimizer_step"),
    ("optimizer update (AdamW)", "optimizer update"),
    ("lr_scheduler_step", "lr_scheduler_step"),
    ("the rest (Lightning's loop)", "the rest"),
    ("garbage collection (inside the parts above)", "garbage collection"),
    ("whole step", "whole step"),
    ("overhead: whole step - forward - backward - optimizer update", "overhead"),
]
#: Components that do not overlap; "the rest" is the whole step minus these.
ACCOUNTED = {"fetch the batch", "zero_grad", "training_step", "backward", "on_before_optimizer_step"}
ACCOUNTED |= {"optimizer update", "lr_scheduler_step"}


def profile(bench: Any, console: Console) -> None:
    """Component times per step of plain, defaults and lean in each setting; overhead-based ratio estimates."""
    warmup, estimates = bench.args.warmup, []
    for setting in bench.args.settings:
        runs = {path: bench.run(path, setting, seed=100, profile=True) for path in bench.args.paths}
        columns = {"plain": runs["defaults"].plain_parts, **{p: run.library_parts for p, run in runs.items()}}
        for parts in columns["plain"]:
            parts["training_step"] = parts["forward + loss"]
        medians: dict[str, dict[str, float]] = {}
        for column, steps in columns.items():
            for parts in steps:
                parts["the rest"] = parts["whole step"] - sum(v for k, v in parts.items() if k in ACCOUNTED)
                compute = parts.get("forward", parts["training_step"]) + parts["backward"] + parts["optimizer update"]
                parts["overhead"] = parts["whole step"] - compute
            keys = {k for parts in steps for k in parts}
            medians[column] = {k: statistics.median(p.get(k, 0.0) for p in steps[warmup:]) * 1e3 for k in keys}
        table = Table(title=f"Where a step's time goes, {setting}: median ms per step over {bench.args.steps} steps")
        for column in ("component", *columns):
            table.add_column(column, justify="left" if column == "component" else "right")
        for label, key in PROFILE_ROWS:
            table.add_row(label, *(f"{m[key]:.2f}" if key in m else "-" for m in medians.values()))
        console.print(table)
        plain = medians["plain"]
        for path in [p for p in bench.args.paths if p != "fused"]:  # fused changes the compute, not the overhead
            overhead = medians[path]["overhead"]
            estimate = plain["whole step"] / (plain["whole step"] - plain["overhead"] + overhead)
            estimates.append((setting, path, overhead - plain["overhead"], estimate))
    console.print(
        "'the rest': the whole step minus the parts above that do not overlap: Lightning's loop (fetching the "
        "batch, hooks, progress tracking, the logger connector). 'overhead': everything but the model's forward, "
        "backward and the optimizer's update."
    )
    summary = Table(title="Library/plain speed estimated from the overhead: plain step / (plain compute + overhead)")
    for column in ("setting", "path", "extra ms per step", "estimated library/plain"):
        summary.add_column(column, justify="left" if column in ("setting", "path") else "right")
    for setting, path, extra, estimate in estimates:
        summary.add_row(setting, path, f"{extra:+.2f}", f"{estimate:.3f}")
    console.print(summary)
