"""Fashion-MNIST end to end with ``auto_fit``: the full data set, a 10-minute budget, test accuracy.

Reads the 60,000 training and 10,000 test images offline from Debian's
``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``),
holds out 10% of the training images for validation, runs
``autotimm.auto_fit(data, time_limit, preset)`` and evaluates the returned model
on the untouched test split, as it predicts (with the test-time augmentation
``auto_fit`` chose, if any) and without test-time augmentation. The target is at least 94.0% test accuracy inside
the budget on 2 CPU cores.

Usage::

    python benchmarks/fashion_mnist.py                       # 10 minutes, preset "fast"
    python benchmarks/fashion_mnist.py --time-limit 20m --preset balanced
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import autotimm

TARGET = 0.94


def main() -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", default="10m", help="auto_fit's budget, e.g. 10m, 600, 1h")
    parser.add_argument("--preset", default="fast", choices=["fast", "balanced", "best"])
    parser.add_argument("--output-dir", default="autotimm_output/fashion_mnist")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    console = Console()
    data = autotimm.ImageDataModule(
        dataset="fashion-mnist", val_split=0.1, seed=args.seed, output_dir=Path(args.output_dir) / "data"
    )
    data.setup()
    console.print(
        f"Fashion-MNIST: {len(data._require_setup()['train'])} train, {len(data._require_setup()['val'])} val, "
        f"{len(data._require_setup()['test'])} test images; {torch.get_num_threads()} torch threads; "
        f"budget {args.time_limit}, preset {args.preset!r}"
    )

    start = time.perf_counter()
    result = autotimm.auto_fit(
        data, time_limit=args.time_limit, preset=args.preset, output_dir=args.output_dir, seed=args.seed
    )
    fit_seconds = time.perf_counter() - start

    test = data._require_setup()["test"]
    images = np.asarray(test.array)
    labels = np.asarray(test.targets)
    start = time.perf_counter()
    logits, _ = result.model.predict_logits(list(images), batch_size=256, progress=True)  # the model's own TTA
    eval_seconds = time.perf_counter() - start
    accuracy = float((logits.argmax(1) == labels).mean())
    plain, _ = result.model.predict_logits(list(images), batch_size=256, tta=False, progress=False)
    plain_accuracy = float((plain.argmax(1) == labels).mean())
    tta = getattr(result.model, "default_tta", "none")

    budget = autotimm.auto.parse_time_limit(args.time_limit)
    table = Table(title="Fashion-MNIST with auto_fit", title_justify="left")
    columns = ("budget", "auto_fit time", "val score", "test accuracy", "without TTA", "target", "met")
    for column in columns:
        table.add_column(column)
    table.add_row(
        f"{budget:.0f} s",
        f"{fit_seconds:.0f} s",
        f"{result.best_score:.4f}",
        f"{accuracy:.2%} (tta={tta})",
        f"{plain_accuracy:.2%}",
        f">= {TARGET:.0%} within the budget",
        "yes" if accuracy >= TARGET and fit_seconds <= budget else "no",
    )
    console.print(table)
    console.print("Best configuration: " + ", ".join(f"{k}={v}" for k, v in result.best_config.items()))
    console.print(f"Test-set prediction took {eval_seconds:.0f} s (not part of the budget).")


if __name__ == "__main__":
    main()
