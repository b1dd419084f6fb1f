"""Checkpoints a killed run can resume from: atomic safe files, recovery checkpoints, run folders that are never lost.

- [`SafeCheckpointIO`][autotimm.training.checkpointing.SafeCheckpointIO] writes
  every checkpoint to a temporary file in the same folder and renames it, and
  loads every checkpoint with ``weights_only=True``.
- [`ResumeState`][autotimm.training.checkpointing.ResumeState] is the callback
  that records where in an epoch training is, for the
  [`ResumableDataLoader`][autotimm.data.resumable.ResumableDataLoader], and lets a
  resumed run with more or fewer epochs stretch its learning-rate schedule.
- [`prepare_run_folder`][autotimm.training.checkpointing.prepare_run_folder] refuses
  to train into a folder that holds a run, or moves the old run aside.
- [`resume_checkpoint`][autotimm.training.checkpointing.resume_checkpoint] finds the
  checkpoint to resume from.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO

from autotimm.data.ranks import is_rank_zero
from autotimm.data.resumable import ResumableDataLoader, ResumableSampler

__all__ = [
    "LAST_CHECKPOINT",
    "RANK_ZERO_WAIT_S",
    "SCHEDULE_LENGTH_KEYS",
    "ResumeState",
    "RunExistsError",
    "SafeCheckpointIO",
    "atomic_save",
    "moved_run_folder",
    "parse_duration",
    "prepare_run_folder",
    "remove_partial_checkpoints",
    "resume_checkpoint",
    "run_checkpoints",
]

#: The rolling checkpoint a run resumes from, in ``{output_dir}/checkpoints``.
LAST_CHECKPOINT = "last.ckpt"

#: Scheduler state entries that say how long the schedule is (torch's cosine and OneCycle, timm's schedulers):
#: a resumed run keeps the values its own run length gives, so a changed number of epochs changes the schedule.
SCHEDULE_LENGTH_KEYS = frozenset({"T_max", "total_steps", "_schedule_phases", "t_initial", "cycle_limit"})

#: How long the other ranks of a multi-process run wait for rank 0 to move an old run aside (``overwrite``).
RANK_ZERO_WAIT_S = 600.0

_TEMP_SUFFIX = ".tmp"


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with atomic writes and ``weights_only=True`` loads.

    Writing: Lightning serialises the checkpoint in memory and then writes the
    file in place, so a kill during the write leaves a truncated checkpoint
    under the real name. Here a local checkpoint is written to a temporary
    file in the same folder (``.last.ckpt.<random>.tmp``), flushed to disk
    and renamed over the old one with ``os.replace``, which is atomic: the
    name always holds a whole checkpoint, the old one or the new one. Remote
    paths (``s3://``, ...) are written by Lightning's own code.

    Loading: ``weights_only=True`` unless ``False`` is passed explicitly,
    for local files and URLs alike (Lightning's default unpickles remote
    checkpoints, so a checkpoint from a URL could run code).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local files), else as Lightning does.

        Args:
            checkpoint: The checkpoint dict.
            path: The file to write.
            storage_options: Not supported, as in ``TorchCheckpointIO``.
        """
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable | Any = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Load a checkpoint with ``weights_only=True`` (unless ``weights_only=False`` is given).

        Args:
            path: A local path or a URL.
            map_location: Where to put the tensors.
            weights_only: ``None`` or ``True``: refuse anything but tensors and plain data.

        Returns:
            The checkpoint dict.
        """
        return super().load_checkpoint(path, map_location, True if weights_only is None else weights_only)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, flushed to disk, then renamed to ``path``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def remove_partial_checkpoints(folder: Path) -> list[Path]:
    """Delete temporary files that a run killed while writing a checkpoint left in ``folder``.

    Only global rank 0 of a multi-process run deletes them (see
    [`is_rank_zero`][autotimm.data.ranks.is_rank_zero]); the other ranks delete nothing.

    Returns:
        The files deleted (none on the other ranks).
    """
    if not is_rank_zero():
        return []
    stale = sorted(folder.glob(f".*.ckpt.*{_TEMP_SUFFIX}")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class ResumeState(Callback):
    """What a resumed run needs beyond Lightning's own checkpoint.

    - After every training batch it tells a
      [`ResumableDataLoader`][autotimm.data.resumable.ResumableDataLoader] how
      many batches of the epoch are done, so a checkpoint written inside the
      epoch resumes at the next batch (Lightning stores the loader's state
      with the loop's progress). On resume it hands that state back to the
      loader itself: Lightning would, but only when it builds the training
      loader after restoring the checkpoint, and it builds it earlier as soon
      as ``configure_optimizers`` asks for ``trainer.estimated_stepping_batches``
      (as every per-step schedule does).
    - When a checkpoint is loaded, it drops the entries of the saved
      scheduler states that fix the schedule's length (`SCHEDULE_LENGTH_KEYS`),
      so the schedule built for this run's length is kept: the same values
      when the run length did not change, a stretched schedule when the
      number of epochs did.
    """

    def __init__(self) -> None:
        self._loader_state: dict[str, Any] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the training loader at the saved batch of the saved epoch, when resuming."""
        state, self._loader_state = self._loader_state, None
        loader = trainer.train_dataloader
        if not state or not isinstance(loader, ResumableDataLoader):
            return
        loader.load_state_dict(state)
        # Lightning made the loader's iterator before the checkpoint was restored (see above), and a loader with
        # worker processes has already drawn indices from its sampler: make the iterator again, from the saved batch.
        fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
        if fetcher is not None:
            iter(fetcher)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record in the training loader's sampler that ``batch_idx + 1`` batches of this epoch are done."""
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, ResumableSampler):
            loader.sampler.mark(trainer.current_epoch, batch_idx + 1)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Keep the training loader's saved state; drop the saved schedule lengths before Lightning restores them."""
        states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []
        self._loader_state = states[0] if len(states) == 1 else None
        for state in checkpoint.get("lr_schedulers", []):
            if isinstance(state, dict):
                for key in SCHEDULE_LENGTH_KEYS & state.keys():
                    del state[key]

    @property
    def state_key(self) -> str:
        """One per trainer."""
        return "ResumeState"


class RunExistsError(FileExistsError):
    """Training into a folder that already holds a run, without resuming it or overwriting it."""


def run_checkpoints(output_dir: str | Path) -> list[Path]:
    """The checkpoints of the run in ``output_dir`` (``checkpoints/*.ckpt``); empty when it holds no run."""
    folder = Path(output_dir) / "checkpoints"
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def moved_run_folder(output_dir: str | Path, now: datetime | None = None) -> Path:
    """Where `prepare_run_folder` moves an old run: ``{output_dir}.old-YYYYmmdd-HHMMSS`` (``-2``, ... if taken)."""
    folder = Path(output_dir).absolute()
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.old-{stamp}")
    count = 2
    while target.exists():
        target = folder.with_name(f"{folder.name}.old-{stamp}-{count}")
        count += 1
    return target


def prepare_run_folder(
    output_dir: str | Path,
    overwrite: bool = False,
    resume_hint: str = "AutoTrainer.fit(..., resume=True)",
    overwrite_hint: str = "overwrite=True",
    folder_hint: str = "output_dir",
) -> Path | None:
    """Make sure a new run never destroys an old one in ``output_dir``.

    A folder "holds a run" when ``{output_dir}/checkpoints`` has a ``.ckpt``
    file. Logs, ``config.yaml`` and ``splits.json`` alone (a run killed before
    its first checkpoint) are not a run: training starts there again.

    In a multi-process run (torchrun, SLURM, Lightning's ``ddp`` launcher)
    every process calls this before the ``Trainer`` exists; only global rank 0
    (see [`is_rank_zero`][autotimm.data.ranks.is_rank_zero]) moves the old run.
    The other ranks refuse as rank 0 does, or, with ``overwrite``, wait (up to
    `RANK_ZERO_WAIT_S`) until rank 0 has moved it, and move nothing.

    Args:
        output_dir: The new run's folder.
        overwrite: Move an old run aside (the whole folder, to
            [`moved_run_folder`][autotimm.training.checkpointing.moved_run_folder])
            instead of refusing; nothing is deleted.
        resume_hint: How to resume, for the message.
        overwrite_hint: How to overwrite, for the message.
        folder_hint: How the folder is chosen, for the message.

    Returns:
        Where the old run was moved, or ``None`` when there was none (and on
        every rank but 0).

    Raises:
        RunExistsError: The folder holds a run and ``overwrite`` is false; the
            message says how to resume, choose another folder, or overwrite.
        ValueError: ``overwrite`` would move the working folder (or one above it).
        TimeoutError: On a rank other than 0, rank 0 did not move the old run
            within `RANK_ZERO_WAIT_S` seconds.
    """
    checkpoints = run_checkpoints(output_dir)
    if not checkpoints:
        return None
    folder = Path(output_dir)
    if not overwrite:
        raise RunExistsError(
            f"{os.fspath(folder)!r} already holds a run ({checkpoints[-1].name} in {checkpoints[-1].parent}): "
            f"resume it with {resume_hint}, choose another {folder_hint}, or pass {overwrite_hint} "
            f"(which moves the old run to {os.fspath(folder)}.old-<YYYYmmdd-HHMMSS>)"
        )
    here, absolute = Path.cwd().resolve(), folder.resolve()
    if here == absolute or absolute in here.parents:
        raise ValueError(
            f"cannot overwrite the run in {os.fspath(folder)!r}: it is the working folder (or contains it), "
            "which cannot be moved aside; choose another output folder"
        )
    if not is_rank_zero():  # rank 0 moves it; a second mover would move rank 0's fresh folder, or fail
        _wait_until_moved(folder, RANK_ZERO_WAIT_S)
        return None
    target = moved_run_folder(folder)
    shutil.move(os.fspath(folder), os.fspath(target))
    return target


def _wait_until_moved(folder: Path, timeout_s: float) -> None:
    """Wait until ``folder`` holds no run any more (rank 0 moved it aside).

    Raises:
        TimeoutError: It still holds one after ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    while run_checkpoints(folder):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for rank 0 to move the old run in {os.fspath(folder)!r} aside "
                "(overwrite): it is still there; see rank 0's error"
            )
        time.sleep(0.1)


def resume_checkpoint(resume: bool | str | os.PathLike[str], output_dir: str | Path) -> str:
    """The checkpoint that ``resume`` names.

    Args:
        resume: ``True`` or ``"last"``: ``{output_dir}/checkpoints/last.ckpt``;
            a run folder: its ``checkpoints/last.ckpt``; a ``.ckpt`` file: that
            file; a URL (``https://...``): that URL, loaded with ``weights_only=True``.
        output_dir: The trainer's run folder.

    Returns:
        The checkpoint's path or URL.

    Raises:
        FileNotFoundError: There is no such checkpoint; the message names the path looked at.
        ValueError: ``resume`` is of another type.
    """
    if resume is True or resume == "last":
        path = Path(output_dir) / "checkpoints" / LAST_CHECKPOINT
    elif isinstance(resume, (str, os.PathLike)) and not isinstance(resume, bool):
        if "://" in os.fspath(resume):
            return os.fspath(resume)
        path = Path(resume).expanduser()
        if path.is_dir():
            path = path / "checkpoints" / LAST_CHECKPOINT if (path / "checkpoints").is_dir() else path / LAST_CHECKPOINT
    else:
        raise ValueError(
            f"`resume` must be True, 'last', a run folder or a .ckpt file, got {resume!r} ({type(resume).__name__})"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"nothing to resume: no checkpoint at {os.fspath(path)!r} (a run writes checkpoints/{LAST_CHECKPOINT} "
            "after its first epoch, or its first recovery checkpoint)"
        )
    remove_partial_checkpoints(path.parent)
    return os.fspath(path)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", None: "seconds"}


def parse_duration(value: str | timedelta | int | float, name: str = "checkpoint_every") -> timedelta:
    """A duration such as ``"10m"``, ``"90s"``, ``"1.5h"``, ``"2d"``, seconds as a number, or a ``timedelta``.

    Raises:
        ValueError: Anything else, or a duration that is not positive; the message names ``name``.

    Example:
        >>> parse_duration("10m")
        datetime.timedelta(seconds=600)
    """
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        duration = timedelta(seconds=value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        duration = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    else:
        raise ValueError(
            f"`{name}` must be a duration such as '10m', '90s', '1.5h' or '2d' (or seconds, or a timedelta), "
            f"got {value!r}"
        )
    if duration <= timedelta(0):
        raise ValueError(f"`{name}` must be a positive duration, got {value!r}")
    return duration
