"""Shared fixtures: offline mode, generated data and a quiet, fast trainer."""

from __future__ import annotations

import os

# Never wait on the network: the hub is unreachable on these machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from autotimm import make_synthetic_dataset

NUM_CLASSES = 4
IMAGE_SIZE = 32


@pytest.fixture
def train_loader() -> DataLoader:
    data = make_synthetic_dataset(NUM_CLASSES, samples_per_class=24, image_size=IMAGE_SIZE, seed=0)
    return DataLoader(data, batch_size=16, shuffle=True)


@pytest.fixture
def val_loader() -> DataLoader:
    data = make_synthetic_dataset(NUM_CLASSES, samples_per_class=12, image_size=IMAGE_SIZE, seed=1)
    return DataLoader(data, batch_size=48)


@pytest.fixture
def single_thread():
    """Run on one torch thread: for tiny tensors, thread start-up and contention cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(root: Path | None = None, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU trainer (writing under ``root`` when given)."""
    options: dict[str, Any] = dict(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=None if root is None else str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)
