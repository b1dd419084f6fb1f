"""Local worker processes of a parallel search: one per GPU, or an equal share of the CPU cores each.

On GPUs, `start_workers` starts ``python -m autotimm.auto.worker`` once per
slot, each seeing its GPU as its only one (``CUDA_VISIBLE_DEVICES`` must be set
before CUDA starts, so these are fresh interpreters). On CPUs, `fork_workers`
forks the prepared search instead: a fresh interpreter would spend seconds
importing torch, timm and Lightning, a sizeable share of a small budget. Each
CPU worker gets an equal share of the cores (its CPU affinity and torch's
thread count, so that the loaders' default worker count, which follows the
affinity, shares them too). Each worker runs trials of the search's study
until the shared deadline.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "WorkerSlot",
    "apply_slot",
    "can_fork",
    "default_workers",
    "dump_stack_on_sigterm",
    "fork_workers",
    "start_workers",
    "wait_workers",
    "worker_slots",
]


@dataclass(frozen=True)
class WorkerSlot:
    """Where one local worker runs.

    Args:
        index: The worker's index, from 0.
        cores: The CPU cores it may use.
        gpu: The CUDA device it sees as its only one (an entry of the parent's visible devices), or ``None``.
    """

    index: int
    cores: tuple[int, ...]
    gpu: str | None = None


def _cores() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _visible_gpus() -> list[str]:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def default_workers(trainer_kwargs: dict[str, Any]) -> int:
    """One worker per visible GPU, one on a machine without (or when ``trainer_kwargs`` choose the devices)."""
    if any(key in trainer_kwargs for key in ("devices", "strategy", "num_nodes")):
        return 1
    if str(trainer_kwargs.get("accelerator", "auto")).lower() not in ("auto", "gpu", "cuda"):
        return 1
    return max(len(_visible_gpus()), 1)


def worker_slots(count: int, use_gpus: bool) -> list[WorkerSlot]:
    """Split this machine between ``count`` workers: a GPU each (round robin) when there are GPUs, and the cores.

    With more workers than cores, workers share cores round robin.
    """
    cores, gpus = _cores(), (_visible_gpus() if use_gpus else [])
    slots = []
    for index in range(count):
        share = cores[index * len(cores) // count : (index + 1) * len(cores) // count] or [cores[index % len(cores)]]
        slots.append(WorkerSlot(index, tuple(share), gpus[index % len(gpus)] if gpus else None))
    return slots


def apply_slot(slot: WorkerSlot) -> None:
    """Confine this process to its slot: its cores (affinity and torch threads)."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, slot.cores)
    torch.set_num_threads(len(slot.cores))


def start_workers(payload: dict[str, Any], slots: list[WorkerSlot], folder: Path) -> list[subprocess.Popen]:
    """Start one ``python -m autotimm.auto.worker`` per slot; their output goes to ``folder/worker_<i>.log``.

    Args:
        payload: What every worker needs (pickled, with the slots, to ``folder/worker_payload.pkl``):
            the data and the options.
        slots: Where each runs.
        folder: Where the payload and the logs go.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "worker_payload.pkl"
    with open(path, "wb") as handle:
        pickle.dump({**payload, "slots": slots}, handle)
    processes = []
    for slot in slots:
        env = dict(os.environ)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        with open(folder / f"worker_{slot.index}.log", "wb") as log:
            command = [sys.executable, "-m", "autotimm.auto.worker", str(path), str(slot.index)]
            processes.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
    return processes


def can_fork() -> bool:
    """Whether this platform forks processes (Linux, macOS); Windows starts fresh interpreters instead."""
    return "fork" in multiprocessing.get_all_start_methods()


def _forked(target: Any, slot: WorkerSlot, log: Path) -> None:
    with open(log, "ab") as handle:  # the worker's prints and errors go to its log, as a started worker's do
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    dump_stack_on_sigterm()
    apply_slot(slot)
    target(slot)


def dump_stack_on_sigterm() -> None:
    """Write every thread's stack to stderr (the worker's log) when a late worker is told to stop."""
    import faulthandler
    import signal

    faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)


def fork_workers(target: Any, slots: list[WorkerSlot], folder: Path) -> list[Any]:
    """Fork one process per slot that runs ``target(slot)`` on its share of the cores.

    Args:
        target: What each worker runs, given its slot (CPU trials only: CUDA does not survive a fork).
        slots: Where each runs.
        folder: Where the logs go (``worker_<i>.log``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("fork")
    processes = []
    for slot in slots:
        log = folder / f"worker_{slot.index}.log"
        process = context.Process(target=_forked, args=(target, slot, log), name=f"autotimm-worker-{slot.index}")
        process.start()
        processes.append(process)
    return processes


def _wait(process: Any, timeout: float) -> int | None:
    """Wait up to ``timeout`` for a ``Popen`` or a ``multiprocessing.Process``; its exit code, ``None`` if running."""
    if isinstance(process, subprocess.Popen):
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    process.join(timeout)
    return process.exitcode


def wait_workers(processes: list[Any], deadline: float, folder: Path) -> list[str]:
    """Wait for the workers until ``deadline`` (``time.monotonic()``), then kill those left; return their errors.

    Args:
        processes: What `start_workers` or `fork_workers` returned.
        deadline: When to stop waiting.
        folder: Their logs' folder.

    Returns:
        One line per worker that failed: its exit code and the last line of its log.
    """
    codes = []
    for process in processes:
        code = _wait(process, max(deadline - time.monotonic(), 0.1))
        if code is None:  # past the deadline: its stack goes to its log, then it is stopped
            process.terminate()
            code = _wait(process, 1.0)
        if code is None:
            process.kill()
            code = _wait(process, 10.0)
        codes.append(code)
    errors = []
    for index, code in enumerate(codes):
        if code != 0:
            log = folder / f"worker_{index}.log"
            lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
            errors.append(f"worker {index} exited with {code}: {lines[-1] if lines else ''}")
    return errors
