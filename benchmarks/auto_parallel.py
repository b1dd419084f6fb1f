"""The same auto_fit search with 1 and with N workers on one machine, same budget: trials, best score, wall time.

    python benchmarks/auto_parallel.py                              # digits, 60 s, 1 and 2 workers
    python benchmarks/auto_parallel.py --dataset fashion-mnist --time-limit 10m --workers 1,2,4

On a CPU-only machine each worker gets an equal share of the cores, so N
workers run N trials at once, each ~N times slower: the trials completed per
hour stay about the same (less on 2 cores, where each worker has one core and
the set-up of every trial runs on it too). On a machine with several GPUs,
each worker gets its own GPU and the trials per hour scale with the devices.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from autotimm.auto import auto_fit
from autotimm.auto.presets import parse_time_limit


def run(dataset: str, limit: float, workers: int, out: Path, backbones: list[str] | None, image_size: int | None):
    start = time.monotonic()
    try:
        result = auto_fit(
            dataset,
            limit,
            output_dir=out / f"workers_{workers}",
            n_workers=workers,
            backbones=backbones,
            image_size=image_size,
            seed=0,
            verbose=False,
            resume=False,
        )
    except RuntimeError as err:  # e.g. no trial fitted on a (very) busy machine: a figure too, printed as such
        wall = round(time.monotonic() - start, 1)
        return {"workers": workers, "trials": 0, "complete": 0, "pruned": 0, "failed": 0, "best_score": None,
                "wall_s": wall, "trial_s": 0.0, "trials_per_hour": 0.0, "error": str(err)[:160]}  # fmt: skip
    wall = time.monotonic() - start
    states: dict[str, int] = {}
    for row in result.trials:
        states[row["state"]] = states.get(row["state"], 0) + 1
    trained = sum(row["seconds"] for row in result.trials)
    return {
        "workers": workers,
        "trials": len(result.trials),
        "complete": states.get("complete", 0),
        "pruned": states.get("pruned", 0),
        "failed": states.get("failed", 0),
        "best_score": result.best_score,
        "wall_s": round(wall, 1),
        "trial_s": round(trained, 1),
        "trials_per_hour": round(3600 * len(result.trials) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits (default), fashion-mnist or any auto_fit data")
    parser.add_argument(
        "--time-limit", type=parse_time_limit, default=60.0, help="per search: seconds or e.g. '10m' (default 60)"
    )
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--backbones", default=None, help="comma-separated timm names (default: the preset's)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--output-dir", default="benchmarks_output/auto_parallel")
    args = parser.parse_args()
    out = Path(args.output_dir)
    backbones = args.backbones.split(",") if args.backbones else None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.dataset}, {args.time_limit:g} s per search, {cores} CPU cores, {gpus} GPUs")
    rows = []
    for count in [int(n) for n in args.workers.split(",")]:
        row = run(args.dataset, args.time_limit, count, out, backbones, args.image_size)
        rows.append(row)
        print(json.dumps(row))
    header = f"{'workers':>7} {'trials':>6} {'complete':>8} {'pruned':>6} {'failed':>6} {'best val':>8} "
    header += f"{'wall s':>7} {'trial s':>7} {'trials/h':>8}"
    print(header)
    for row in rows:
        score = "n/a" if row["best_score"] is None else f"{row['best_score']:.4f}"
        print(
            f"{row['workers']:>7} {row['trials']:>6} {row['complete']:>8} {row['pruned']:>6} {row['failed']:>6} "
            f"{score:>8} {row['wall_s']:>7} {row['trial_s']:>7} {row['trials_per_hour']:>8}"
        )
    print("trial s: the trials' seconds added up (more than the wall time when workers run trials at once)")


if __name__ == "__main__":
    main()
