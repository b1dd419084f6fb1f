"""The set-up check of image files, done once for all ranks: rank 0 checks and writes the result, the others read it.

In a run of several processes (``torchrun``, SLURM, Lightning's ``ddp``
launcher) every process sets up the same data. Checking the files' headers on
every rank would read a million files once per GPU, and two ranks that saw a
file differently (a copy still being written, a flaky network file system)
would train on different sample tables, which hangs or skews DDP. So, for a
folder or CSV source with an ``output_dir``, only global rank 0 (see
[`is_rank_zero`][autotimm.data.ranks.is_rank_zero]) checks the files and writes
what it found, the bad-file list, to ``output_dir/checked_images.json`` next to
the split file; every other rank waits for that file (at most
`wait_timeout` seconds) and reads it. All ranks then drop the same files.

The file is kept like the split file: a later run on the same files (the same
paths and labels, and the same ``check_images`` mode) into the same folder
reuses it instead of checking again, once the files it lists as bad are found
to be still bad (a fixed file makes rank 0 check again, and the other ranks
wait for the new list). A file that goes bad after the check is caught while
training, as with ``check_images="header"``. Delete the file to force a check.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from autotimm.data.images import find_bad_images, probe_image, report_bad_images
from autotimm.data.ranks import is_rank_zero
from autotimm.data.sources import SourceData, drop_bad_images, has_files, keep_files, source_paths
from autotimm.data.splits import source_fingerprint, write_run_record

__all__ = ["CHECK_FILE_NAME", "WAIT_TIMEOUT_VARIABLE", "check_source_once", "wait_timeout"]

#: Name of the check's result, written in ``output_dir`` next to ``splits.json``.
CHECK_FILE_NAME = "checked_images.json"
#: The environment variable that sets how long a rank other than 0 waits for rank 0's check, in seconds.
WAIT_TIMEOUT_VARIABLE = "AUTOTIMM_RANK_WAIT_TIMEOUT"
_DEFAULT_TIMEOUT_S = 1800.0
_POLL_S = 0.5
_FORMAT = 1


def wait_timeout() -> float:
    """Seconds a rank other than 0 waits for ``checked_images.json``: `WAIT_TIMEOUT_VARIABLE`, else 1800.

    Raises:
        ValueError: The variable is set to something other than a positive number; the message names it.
    """
    text = os.environ.get(WAIT_TIMEOUT_VARIABLE, "").strip()
    if not text:
        return _DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"the environment variable {WAIT_TIMEOUT_VARIABLE} must be a positive number of seconds, "
                         f"got {text!r}")  # fmt: skip
    return value


def _record_key(source: SourceData, mode: str) -> dict[str, Any]:
    return {"format": _FORMAT, "fingerprint": source_fingerprint(source), "check_images": mode}


def _read_record(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The record at ``path`` if it is one for ``key`` (the same files and mode), else ``None``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or (on a file system without atomic renames) half written
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in key.items()):
        return None
    if not isinstance(record.get("bad"), list):
        return None
    return record


def _still_bad(record: dict[str, Any], paths: Any, mode: str) -> bool:
    """Whether every file a record lists as bad still fails the check (a cheap test that it is current)."""
    return all(probe_image(paths[int(index)], mode) is not None for index, _ in record["bad"])


def check_source_once(
    source: SourceData, skip_bad_images: bool, mode: str, output_dir: str | Path | None
) -> SourceData:
    """Check the files of ``source`` on rank 0 only and drop the same bad files on every rank.

    Without an ``output_dir``, or for a source without files (arrays), or with
    ``mode="none"``, this is [`drop_bad_images`][autotimm.data.sources.drop_bad_images]
    on the calling process.

    Args:
        source: What a reader found.
        skip_bad_images: Leave the bad files out with one warning, instead of raising on the first.
        mode: ``"header"`` or ``"full"`` (``"none"`` checks nothing), as ``check_images``.
        output_dir: The folder of the split file, where the result is written.

    Returns:
        ``source`` without the bad files.

    Raises:
        FileNotFoundError: A missing file, without ``skip_bad_images`` (on every rank).
        ValueError: An unreadable file, without ``skip_bad_images`` (on every rank); no readable training image.
        TimeoutError: A rank other than 0 waited `wait_timeout` seconds for rank 0's result.
        OSError: Rank 0 cannot write the result.
    """
    if output_dir is None or mode == "none" or not has_files(source):
        return drop_bad_images(source, skip_bad_images, mode)
    path = Path(output_dir) / CHECK_FILE_NAME
    paths = source_paths(source)
    key = _record_key(source, mode)
    if is_rank_zero():
        record = _read_record(path, key)
        if record is None or not _still_bad(record, paths, mode):
            bad = find_bad_images(paths, mode)
            record = {
                **key,
                "source": source.description,
                "files": len(paths),
                "bad": [[index, problem] for index, problem in bad],
                "bad_files": [str(paths[index]) for index, _ in bad],
            }
            write_run_record(path, record, "image check")
    else:
        record = _wait_for_record(path, key, paths, mode)
    bad = [(int(index), str(problem)) for index, problem in record["bad"]]
    report_bad_images(paths, bad, skip_bad_images, "images", stacklevel=4)
    skipped = {index for index, _ in bad}
    return keep_files(source, [i for i in range(len(paths)) if i not in skipped])


def _wait_for_record(path: Path, key: dict[str, Any], paths: Any, mode: str) -> dict[str, Any]:
    """Poll for rank 0's current record of these files; raise ``TimeoutError`` after `wait_timeout` seconds."""
    timeout = wait_timeout()
    deadline = time.monotonic() + timeout
    while True:
        record = _read_record(path, key)
        if record is not None and _still_bad(record, paths, mode):
            return record
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"waited {timeout:g}s for rank 0 to check the image files and write {str(path)!r}, in vain: "
                f"did rank 0 fail, or does it write to another `output_dir` (every rank must pass the same one, "
                f"on a file system all nodes share)? Set {WAIT_TIMEOUT_VARIABLE} to wait longer"
            )
        time.sleep(_POLL_S)
