"""Kill/resume soak: kill -9 one ``autotimm train`` run N times at random points, resuming after each kill.

Usage::

    python benchmarks/resume_soak.py                  # 20 kills
    python benchmarks/resume_soak.py --kills 5 --checkpoint-every-n-steps 3

The run is small (the built-in ``digits`` at 16 px, timm's ``test_resnet``,
CPU, no loader workers), so the soak takes minutes. Each training process
writes its optimizer step to a heartbeat file at each batch's start and end; the soak waits until
the run reaches a random step past its last checkpoint, waits a random
fraction of a second more (so some kills land inside a checkpoint write),
and sends SIGKILL. Then it resumes with ``autotimm train --resume RUN_DIR``.
It prints how many kills were resumed, the optimizer steps lost per kill
(steps reached minus the step of the checkpoint resumed from: mean and max),
and whether the final weights equal, bit for bit, those of the same run
trained without interruption.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(args: list[str]) -> int:
    """``autotimm train ARGS`` with a callback that writes the optimizer step to ``$SOAK_HEARTBEAT``."""
    import pytorch_lightning as pl

    from autotimm.cli import main
    from autotimm.training import trainer as trainer_module

    heartbeat = Path(os.environ["SOAK_HEARTBEAT"])
    first = _first_file(heartbeat)

    class Heartbeat(pl.Callback):
        # At a batch's start (the step it resumed at, for the first) and end (after the step and any checkpoint):
        # after a kill the file holds the optimizer steps done, whether the kill came inside a batch or between.
        def on_train_batch_start(self, trainer: pl.Trainer, *rest: object) -> None:
            if not first.exists():
                first.write_text(str(trainer.global_step))
            heartbeat.write_text(str(trainer.global_step))

        def on_train_batch_end(self, trainer: pl.Trainer, *rest: object) -> None:
            heartbeat.write_text(str(trainer.global_step))

    init = trainer_module.AutoTrainer.__init__

    def patched(self: trainer_module.AutoTrainer, *a: object, **k: object) -> None:
        k["callbacks"] = [Heartbeat()]
        init(self, *a, **k)

    trainer_module.AutoTrainer.__init__ = patched  # type: ignore[method-assign]
    return main(args)


def _train_args(options: argparse.Namespace, folder: Path) -> list[str]:
    return ["train", "--data", "digits", "--image-size", "16", "--backbone", "test_resnet", "--batch-size", "128",
            "--num-workers", "0", "--accelerator", "cpu", "--epochs", str(options.epochs),
            "--checkpoint-every-n-steps", str(options.checkpoint_every_n_steps), "--ema-decay", "0.9",
            "--warmup-epochs", "1", "--output-dir", str(folder)]  # fmt: skip


def _last_step(folder: Path) -> int:
    import torch

    last = folder / "checkpoints" / "last.ckpt"
    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"]) if last.is_file() else 0


def _first_file(heartbeat: Path) -> Path:
    """Where a training process writes the step of its first batch (the step it resumed at)."""
    return heartbeat.with_name(heartbeat.name + ".first")


def _start(command: list[str], heartbeat: Path) -> subprocess.Popen:
    heartbeat.unlink(missing_ok=True)
    _first_file(heartbeat).unlink(missing_ok=True)
    env = {**os.environ, "SOAK_HEARTBEAT": str(heartbeat), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "--child", *command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _reached(heartbeat: Path) -> int:
    try:
        return int(heartbeat.read_text() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def _first_step(process: subprocess.Popen, heartbeat: Path) -> int:
    """The step at the first batch of a new process (-1 if it ends without training)."""
    while _reached(_first_file(heartbeat)) < 0 and process.poll() is None:
        time.sleep(0.02)
    return _reached(_first_file(heartbeat))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return _child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the run (default 20)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the run (9 steps each)")
    parser.add_argument("--checkpoint-every-n-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--root", type=Path, default=None, help="work folder (default: a temporary one)")
    options = parser.parse_args()
    rng = random.Random(options.seed)
    root = options.root or Path(tempfile.mkdtemp(prefix="resume_soak_"))
    root.mkdir(parents=True, exist_ok=True)
    total = 9 * options.epochs
    heartbeat = root / "heartbeat"

    started = time.perf_counter()
    reference = root / "reference"
    process = _start(_train_args(options, reference), heartbeat)
    if process.wait() != 0:
        raise SystemExit(f"the reference run failed: {process.stderr.read().decode()[-2000:]}")

    run = root / "soak"
    command = _train_args(options, run)
    lost: list[int] = []
    resumed = 0
    pending: int | None = None  # the step the next process must start at: the last checkpoint's
    for kill in range(options.kills):
        saved = _last_step(run)
        if saved >= total - 1:
            print(f"kill {kill + 1}: the run is nearly finished (step {saved}); no more kills")
            break
        target = rng.randint(saved + 1, total - 1)
        process = _start(command, heartbeat)
        first = _first_step(process, heartbeat)
        if pending is not None:
            resumed += int(first == pending)
        while _reached(heartbeat) < target and process.poll() is None:
            time.sleep(0.02)
        if process.poll() is not None:
            raise SystemExit(f"the run ended before its kill: {process.stderr.read().decode()[-2000:]}")
        time.sleep(rng.uniform(0, 0.3))
        seen = _reached(heartbeat)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        # Read after the kill: the steps done when it came (the value seen before, if it died mid-write).
        reached = max(_reached(heartbeat), seen)
        pending = _last_step(run)
        lost.append(reached - pending)
        print(f"kill {kill + 1}: killed at step {reached}, last checkpoint at step {pending}: {reached - pending} lost")
        command = ["train", "--resume", str(run)]
    process = _start(command, heartbeat)
    first = _first_step(process, heartbeat)
    if process.wait() != 0:
        raise SystemExit(f"the final resume failed: {process.stderr.read().decode()[-2000:]}")
    if pending is not None:
        resumed += int(first in (pending, -1))  # -1: nothing was left to train

    import torch

    a = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    equal = a["global_step"] == b["global_step"] and all(
        torch.equal(value, b["state_dict"][name]) for name, value in a["state_dict"].items()
    )
    mean = sum(lost) / max(len(lost), 1)
    verdict = "EQUAL" if equal else "DIFFERENT"
    print(f"\n{len(lost)} kills, {resumed} resumed; steps lost per kill: mean {mean:.1f}, max {max(lost, default=0)}")
    print(
        f"checkpoint every {options.checkpoint_every_n_steps} steps; final weights {verdict} to the uninterrupted run's"
    )
    print(f"{time.perf_counter() - started:.0f} s")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
