"""Shared fixtures: offline mode, generated data and a quiet, fast trainer."""

from __future__ import annotations

import os

# Never wait on the network: the hub is unreachable on these machines.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
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


def make_trainer(root: Path, max_epochs: int = 2, **kwargs: Any) -> pl.Trainer:
    """A quiet trainer writing under ``root``."""
    options: dict[str, Any] = dict(
        max_epochs=max_epochs,
        default_root_dir=str(root),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    options.update(kwargs)
    return pl.Trainer(**options)
