"""Multi-process (DDP) support of the search: start the processes early, then let rank 0 decide for all.

Lightning's ``strategy="ddp"`` starts the other processes by running the
user's script again, at the first ``fit``. The search makes decisions before
any training (which backbones are fast enough, what each trial tries), so
`start_processes` runs one tiny ``fit`` first: after it every process is in
the process group, and every later decision is taken on rank 0 and sent to
the others with `broadcast`, so all processes train the same trials.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autotimm.data.ranks import is_rank_zero  # the one rank test of the package, re-exported for the search

__all__ = ["barrier", "broadcast", "is_rank_zero", "on_rank_zero", "start_processes", "world_size"]

T = TypeVar("T")
_LAUNCH_KEYS = ("accelerator", "devices", "strategy", "num_nodes")


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    """Processes in the process group (1 without one)."""
    return torch.distributed.get_world_size() if _initialized() else 1


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every process (any picklable object); the value itself without a process group."""
    if world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if world_size() > 1:
        torch.distributed.barrier()


def on_rank_zero(function: Callable[[], T]) -> T:
    """Run ``function`` on rank 0 and give every process its result, or raise its error on every process.

    So a failure on rank 0 never leaves the others waiting for a broadcast.
    """
    outcome: tuple[bool, Any] = (True, None)
    if is_rank_zero():
        try:
            outcome = (True, function())
        except Exception as err:  # re-raised below, on every rank
            outcome = (False, err)
    ok, value = broadcast(outcome)
    if not ok:
        raise value
    return value


class _Probe(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def start_processes(trainer_kwargs: dict[str, Any]) -> int:
    """Start the training processes now, if the trainer arguments ask for several, and return how many.

    Raises:
        ValueError: A multi-process strategy other than ``"ddp"`` (``ddp_spawn``
            and notebook strategies run each ``fit`` in new processes, which
            cannot share the search's decisions).
    """
    if _initialized():
        return world_size()
    launch = {key: trainer_kwargs[key] for key in _LAUNCH_KEYS if key in trainer_kwargs}
    if not launch:
        return 1
    quiet = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    probe = pl.Trainer(**launch, **quiet, max_steps=1, limit_val_batches=0, num_sanity_val_steps=0)
    if probe.world_size == 1:
        return 1
    from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = probe.strategy.launcher
    if launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        raise ValueError(
            f"`trainer_kwargs` strategy {trainer_kwargs.get('strategy', 'auto')!r} starts new processes for every "
            "fit, which cannot share the search's decisions; use strategy='ddp' (run from a script) for several "
            "devices"
        )
    level = logging.getLogger("pytorch_lightning").level
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    try:
        samples = torch.zeros(probe.world_size, 1)
        probe.fit(_Probe(), DataLoader(TensorDataset(samples), batch_size=1))
    finally:
        logging.getLogger("pytorch_lightning").setLevel(level)
    return world_size()
