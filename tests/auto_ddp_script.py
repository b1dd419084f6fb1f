"""Run ``auto_fit`` under DDP on two CPU processes; each rank writes what it got to ``rank<N>.json``.

Used by ``tests/test_auto_ddp.py``: ``python tests/auto_ddp_script.py OUT_DIR TIME_LIMIT``. Lightning starts
rank 1 by running this script again, so everything before ``auto_fit`` runs in both processes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch.distributed as dist

from autotimm import ImageDataModule, load_builtin_dataset
from autotimm.auto import auto_fit


def main(out: Path, limit: float) -> None:
    start = time.monotonic()
    digits = load_builtin_dataset("digits")["train"]
    data = ImageDataModule(
        images=digits.images[:600],
        labels=digits.labels[:600],
        class_names=digits.class_names,
        val_split=0.25,
        seed=0,
        output_dir=out,
    )
    result = auto_fit(
        data,
        time_limit=limit,
        output_dir=out,
        n_trials=3,
        backbones=["test_resnet"],
        image_size=16,
        refit=True,
        ensemble=2,
        verbose=False,
        # float32: the test re-scores the checkpoints in float32 and wants the logged scores exactly
        # (bf16 autocast, the CPU default where it is fast, can move an image across the boundary).
        trainer_kwargs={"accelerator": "cpu", "devices": 2, "strategy": "ddp", "precision": "32-true"},
    )
    rank = dist.get_rank() if dist.is_initialized() else -1
    info = {
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "best_config": result.best_config,
        "best_score": result.best_score,
        "trials": [{k: row[k] for k in ("number", "state", "score", "epochs", "checkpoint")} for row in result.trials],
        "time_used": result.time_used,
        "elapsed": time.monotonic() - start,
        "model": type(result.model).__name__,
        "final": result.details["final"],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]))
