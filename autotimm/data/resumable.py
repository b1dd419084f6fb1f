"""Shuffled training batches that a resumed run can continue in the middle of an epoch.

Lightning resumes a run in the middle of an epoch only with a *stateful*
training loader: one with ``state_dict`` / ``load_state_dict``, which Lightning
stores with the loop's progress in the checkpoint and hands back before the
resumed epoch's first batch is drawn. Torch's ``DataLoader`` with
``shuffle=True`` is not stateful and its ``RandomSampler`` draws a new order
from the global random state, so a resumed epoch would repeat some images and
skip others. [`ResumableSampler`][autotimm.data.resumable.ResumableSampler]
draws each epoch's order from ``(seed, epoch)`` alone and can start an epoch at
any batch; [`ResumableDataLoader`][autotimm.data.resumable.ResumableDataLoader]
is the stateful loader around it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

__all__ = ["ResumableDataLoader", "ResumableSampler", "seed_position"]


def seed_position(seed: int, epoch: int, batch: int) -> None:
    """Seed Python's, NumPy's and torch's random generators from a position in training.

    So the random draws of a batch (its augmentation in the main process,
    dropout, mixup) depend on ``(seed, epoch, batch)`` only, not on what ran
    before: a run resumed at that batch draws the same numbers.

    Args:
        seed: The run's seed.
        epoch: The epoch (0-based).
        batch: The batch within the epoch (0-based).
    """
    state = np.random.SeedSequence([seed % 2**63, epoch, batch]).generate_state(2, dtype=np.uint32)
    value = int(state[0]) << 32 | int(state[1])
    random.seed(value)
    np.random.seed(int(state[0]))
    torch.manual_seed(value)


class ResumableSampler(RandomSampler):
    """A shuffling sampler whose order is a function of ``(seed, epoch)``, able to start an epoch part-way.

    A ``RandomSampler`` subclass, so Lightning still sees a shuffled loader
    (and shuffles its ``DistributedSampler`` when it replaces this one on
    several devices). Lightning calls `set_epoch` before each epoch.

    Args:
        data_source: The dataset (only its length is used).
        seed: The seed of the orders. ``None``: the run's seed, ``PL_GLOBAL_SEED``
            as set by ``seed_everything`` / ``AutoTrainer(seed=...)`` (the
            seed Lightning's own ``DistributedSampler`` uses), or, without
            one, a random seed drawn now (kept in the state, so a resumed run
            still sees the same orders).
        batch_size: Images per batch, to count the batches of `state_dict`.
        seed_batches: Reseed the global random generators before each batch
            with [`seed_position`][autotimm.data.resumable.seed_position].
            ``None``: when the run is seeded (``PL_GLOBAL_SEED`` is set).

    Raises:
        ValueError: A ``batch_size`` that is not a positive integer.
    """

    def __init__(
        self,
        data_source: Sized,
        seed: int | None = None,
        batch_size: int = 1,
        seed_batches: bool | None = None,
    ) -> None:
        super().__init__(data_source)  # type: ignore[arg-type]
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be an integer >= 1, got {batch_size!r}")
        run_seed = os.environ.get("PL_GLOBAL_SEED")
        if seed is None:
            seed = int(run_seed) if run_seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.seed = int(seed)
        self.batch_size = batch_size
        self.seed_batches = run_seed is not None if seed_batches is None else seed_batches
        self.epoch = 0
        self.batches_done = 0
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def set_epoch(self, epoch: int) -> None:
        """Draw the order of ``epoch`` next (Lightning calls this before every epoch)."""
        self.epoch = epoch

    def order(self, epoch: int) -> list[int]:
        """The indices of ``epoch`` in the order they are drawn."""
        seed = int(np.random.SeedSequence([self.seed % 2**63, epoch]).generate_state(1, dtype=np.uint64)[0])
        generator = torch.Generator().manual_seed(seed % 2**63)
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def __iter__(self) -> Iterator[int]:
        epoch, start = self.epoch, 0
        if self._resume_at is not None and self._resume_at[0] == epoch:
            start = self._resume_at[1] * self.batch_size
        self._resume_at = None
        for position, index in enumerate(self.order(epoch)[start:], start):
            if self.seed_batches and position % self.batch_size == 0:
                seed_position(self.seed, epoch, position // self.batch_size)
            yield index

    def __len__(self) -> int:
        return len(self.data_source)

    def mark(self, epoch: int, batches_done: int) -> None:
        """Record that ``batches_done`` batches of ``epoch`` were trained on (saved by `state_dict`)."""
        self.epoch, self.batches_done = epoch, batches_done

    def state_dict(self) -> dict[str, int]:
        """The seed and the position in training, as plain ints."""
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict`: its epoch starts after the batches already done."""
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.batches_done = int(state["batches_done"])
        self._resume_at = (self.epoch, self.batches_done)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning can stop and resume in the middle of an epoch.

    Its state is its [`ResumableSampler`][autotimm.data.resumable.ResumableSampler]'s;
    with another sampler (e.g. the ``DistributedSampler`` Lightning puts in on
    several devices) it has none, and a resumed epoch starts from its first batch.
    """

    def state_dict(self) -> dict[str, Any]:
        """The sampler's state (empty for another sampler)."""
        return self.sampler.state_dict() if isinstance(self.sampler, ResumableSampler) else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Hand a state saved by `state_dict` back to the sampler."""
        if state and isinstance(self.sampler, ResumableSampler):
            self.sampler.load_state_dict(state)
