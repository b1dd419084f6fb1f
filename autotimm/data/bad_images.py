"""Images that fail to decode while training: skipped, replaced, counted, logged and listed.

With ``check_images="header"`` (or ``"none"``) a truncated or corrupt file is only
found when a loader decodes it. [`ImageDataset`][autotimm.data.ImageDataset] then
marks it in a [`BadImageTracker`][autotimm.data.bad_images.BadImageTracker] (one byte
per sample, in shared memory so that every loader worker sees the marks of the
others), and returns the next readable sample of the split instead; marked samples
are never decoded again. [`BadImageMonitor`][autotimm.data.bad_images.BadImageMonitor]
logs the count as ``train/bad_images`` after each epoch that has one, and writes
``bad_images.txt`` into the run folder. When more than ``max_bad_fraction`` of a
split is bad, the run stops with
[`TooManyBadImagesError`][autotimm.data.bad_images.TooManyBadImagesError].
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from autotimm.data.images import READ_ERRORS, decode_image, read_problem
from autotimm.data.ranks import is_rank_zero, write_text_atomically

__all__ = ["BAD_IMAGES_FILE_NAME", "BadImageMonitor", "BadImageTracker", "TooManyBadImagesError"]

#: Name of the list of bad files written in the run folder.
BAD_IMAGES_FILE_NAME = "bad_images.txt"

#: Warnings per process about single bad files; the rest are only counted and listed.
_WARNINGS_PER_PROCESS = 5


class TooManyBadImagesError(RuntimeError):
    """More than ``max_bad_fraction`` of a split failed to decode during training or evaluation."""


class BadImageTracker:
    """Marks the samples of one split that failed to decode, shared by the loader workers.

    Args:
        split: The split's name, for messages.
        paths: A function from a sample index to its file (for messages and the list).
        size: Samples in the split.
        max_bad_fraction: The share of bad samples, in ``[0, 1]``, above which
            [`check`][autotimm.data.bad_images.BadImageTracker.check] raises.
    """

    def __init__(self, split: str, paths: Any, size: int, max_bad_fraction: float) -> None:
        self.split = split
        self.paths = paths
        self.size = size
        self.max_bad_fraction = float(max_bad_fraction)
        # Shared memory: a worker process marks, the main process and the other workers see it.
        self.flags = torch.zeros(max(size, 1), dtype=torch.uint8).share_memory_()
        self._warned = 0

    def is_bad(self, index: int) -> bool:
        """Whether sample ``index`` was found bad."""
        return bool(self.flags[index])

    def count(self) -> int:
        """Bad samples found so far."""
        return int(self.flags.sum())

    def indices(self) -> list[int]:
        """Indices of the bad samples found so far, ascending."""
        return torch.nonzero(self.flags, as_tuple=True)[0].tolist()

    def allowed(self) -> int:
        """The most bad samples the split may have before the run stops."""
        return int(self.max_bad_fraction * self.size)

    def mark(self, index: int, problem: str) -> None:
        """Record that sample ``index`` failed to decode, warn (a few times per process), and check the share.

        Raises:
            TooManyBadImagesError: More than ``max_bad_fraction`` of the split is now bad.
        """
        self.flags[index] = 1
        if self._warned < _WARNINGS_PER_PROCESS:
            self._warned += 1
            warnings.warn(
                f"Skipping unreadable {self.split} image {str(self.paths(index))!r} ({problem}); another sample "
                f"of the split is used instead (counted as {self.split}/bad_images, listed in {BAD_IMAGES_FILE_NAME})",
                UserWarning,
                stacklevel=3,
            )
        self.check()

    def check(self, count: int | None = None) -> None:
        """Raise when ``count`` (default: the bad samples marked here) is more than the split allows.

        Raises:
            TooManyBadImagesError: With the count, the share and the option that sets the limit.
        """
        count = self.count() if count is None else count
        if count > self.allowed():
            examples = ", ".join(repr(str(self.paths(i))) for i in self.indices()[:3])
            raise TooManyBadImagesError(
                f"{count} of {self.size} {self.split} images ({count / max(self.size, 1):.2%}) could not be "
                f"decoded, more than max_bad_fraction={self.max_bad_fraction:g} allows; e.g. {examples}. Fix or "
                "remove them (check_images='full' finds them all at set-up, skip_bad_images=True then leaves "
                "them out), or raise max_bad_fraction."
            )


def _run_folder(trainer: pl.Trainer, datamodule: Any) -> Path:
    for folder in (getattr(trainer, "output_dir", None), getattr(datamodule, "output_dir", None)):
        if folder is not None:
            return Path(folder)
    return Path(trainer.default_root_dir)


class BadImageMonitor(pl.Callback):
    """Logs ``<split>/bad_images`` and writes ``bad_images.txt`` for the bad files a data module's loaders found.

    Added to the trainer by [`ImageDataModule`][autotimm.ImageDataModule] when it makes
    its training loader. After each training epoch (and at the end of validation and
    testing runs) the counts of all ranks are summed; from the first epoch with a bad
    file on, ``train/bad_images`` (the number of distinct training files found bad so
    far) is logged, and global rank 0 writes every bad file found, one
    ``split<TAB>path<TAB>problem`` line each, to ``bad_images.txt`` in the run folder
    (the trainer's ``output_dir``, else the data module's, else ``default_root_dir``).
    Clean data costs one small all-reduce per epoch and logs nothing.

    Args:
        datamodule: The data module whose trackers are read (its ``bad_image_trackers``).
    """

    def __init__(self, datamodule: Any) -> None:
        self.datamodule = datamodule
        self._written: dict[tuple[str, int], str] = {}

    def _counts(self, trainer: pl.Trainer) -> dict[str, int]:
        trackers = self.datamodule.bad_image_trackers
        splits = ("train", "val", "test")
        local = torch.tensor([trackers[s].count() if s in trackers else 0 for s in splits], dtype=torch.float64)
        total = trainer.strategy.reduce(local.to(trainer.strategy.root_device), reduce_op="sum")
        return {s: round(float(v)) for s, v in zip(splits, torch.as_tensor(total).cpu().tolist(), strict=True)}

    def _report(self, trainer: pl.Trainer, pl_module: pl.LightningModule, log_train: bool) -> None:
        if getattr(trainer, "sanity_checking", False):
            return
        counts = self._counts(trainer)
        if not any(counts.values()):
            return
        if log_train and counts["train"]:
            pl_module.log("train/bad_images", float(counts["train"]), on_step=False, on_epoch=True, sync_dist=False)
        self._write(trainer)
        trackers = self.datamodule.bad_image_trackers
        for split, count in counts.items():
            if split in trackers:
                trackers[split].check(count)

    def _write(self, trainer: pl.Trainer) -> None:
        found = [
            (split, str(tracker.paths(i)))
            for split, tracker in self.datamodule.bad_image_trackers.items()
            for i in tracker.indices()
        ]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, found)
            found = sorted({entry for part in gathered for entry in part})
        if not is_rank_zero():
            return
        lines = []
        for split, path in found:
            key = (split, hash(path))
            if key not in self._written:  # why it failed: decoded again once, here, for the list
                try:
                    decode_image(path)
                    problem = "decoded now; failed while loading"
                except READ_ERRORS as err:
                    problem = read_problem(err)
                self._written[key] = problem
            lines.append(f"{split}\t{path}\t{self._written[key]}")
        folder = _run_folder(trainer, self.datamodule)
        os.makedirs(folder, exist_ok=True)
        write_text_atomically(folder / BAD_IMAGES_FILE_NAME, "\n".join(lines) + "\n")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``train/bad_images``, write the list and check the shares (training and validation)."""
        self._report(trainer, pl_module, log_train=True)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the list and check the shares after a validation run outside ``fit``."""
        if trainer.state.fn != "fit":  # during fit the training epoch's report covers validation
            self._report(trainer, pl_module, log_train=False)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the list and check the shares after testing."""
        self._report(trainer, pl_module, log_train=False)
