"""A run's files in a multi-process run: which process writes them (known before any ``Trainer`` exists), atomically.

Under ``torchrun``, SLURM's ``srun`` or Lightning's own ``ddp`` launcher every
process runs the same script, and what it does before Lightning starts (moving
an old run aside, writing ``splits.json`` and ``config.yaml``) would be done by
every process at once. [`is_rank_zero`][autotimm.data.ranks.is_rank_zero] tells
the one process that does it from the environment the launcher set; the others
read what it wrote, or wait for it.
[`write_text_atomically`][autotimm.data.ranks.write_text_atomically] writes such a
file so that a reader never sees half of it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["RANK_VARIABLES", "is_rank_zero", "write_text_atomically"]

#: The environment variables that give a process's rank, in the order they are read (as Lightning reads them):
#: ``RANK`` (torchrun, Lightning's launchers), ``LOCAL_RANK`` (with ``NODE_RANK`` / ``GROUP_RANK``: Lightning's
#: ``ddp`` launcher, which sets no ``RANK``), ``SLURM_PROCID`` (srun), ``JSM_NAMESPACE_RANK`` (LSF's jsrun).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")

_NODE_VARIABLES = ("NODE_RANK", "GROUP_RANK")


def _environment_value(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"the environment variable {name} must be a process rank (an integer), got {value!r}"
        ) from None


def is_rank_zero() -> bool:
    """Whether this process is global rank 0: the one that writes a run's files (a single process always is).

    Decided, in this order, by the process group when ``torch.distributed``
    has one; else by the first of `RANK_VARIABLES` that is set, where
    ``LOCAL_RANK`` counts as rank 0 only on node 0 (``NODE_RANK`` /
    ``GROUP_RANK`` unset or 0); else by Lightning's ``rank_zero_only.rank``.
    So it is right before the ``Trainer`` and its process group exist, which
    is when a run's folder is prepared.

    Returns:
        ``True`` for the process that writes, ``False`` for every other rank.

    Raises:
        ValueError: A rank variable that is not an integer; the message names it.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    for name in RANK_VARIABLES:
        rank = _environment_value(name)
        if rank is None:
            continue
        if name == "LOCAL_RANK":
            node = next((n for n in map(_environment_value, _NODE_VARIABLES) if n is not None), 0)
            return rank == 0 and node == 0
        return rank == 0
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temporary file next to ``path``, then rename it to ``path`` (``os.replace``).

    A process reading ``path`` meanwhile reads the old file or the whole new
    one, never a part; a kill during the write leaves the old file. The file
    gets the permissions of any new file (the umask's), and its folder is made.

    Args:
        path: The file to write.
        text: Its content, written as UTF-8.

    Returns:
        ``path``, as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as file:
            file.write(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path
