"""Two nodes on one machine: two ``torchrun --nnodes=2 --node_rank=0|1`` launches on CPU (gloo), on folder data and on
LitData shards. Each rank must load its own, disjoint part of the training data, the run must finish, and rank 0's
checkpoint must load."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import write_class_folders

from autotimm import ImageClassifier, ImageDataModule
from autotimm.data.checked import CHECK_FILE_NAME, WAIT_TIMEOUT_VARIABLE, check_source_once
from autotimm.data.sources import read_folder

SCRIPT = Path(__file__).with_name("multinode_script.py")
REPO = SCRIPT.parent.parent
TIMEOUT_S = 240  # about 15 s each on two idle cores

pytestmark = [
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.skipif(sys.platform == "win32", reason="torchrun's rendezvous and gloo on loopback: POSIX only"),
    pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    cluster = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_", "JSM_")
    names = {"LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED"}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(cluster)}
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _two_nodes(mode: str, data: Path, output: Path) -> list[str]:
    """Start both launches together; return their outputs (node 0's first)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    port = str(_free_port())
    procs = []
    for node in (0, 1):
        command = [
            torchrun, "--nnodes=2", f"--node_rank={node}", "--nproc-per-node=1", "--master_addr=127.0.0.1",
            f"--master_port={port}", str(SCRIPT), mode, str(data), str(output),
        ]  # fmt: skip
        procs.append(
            subprocess.Popen(
                command,
                cwd=REPO,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
        except subprocess.TimeoutExpired:
            for other in procs:
                os.killpg(other.pid, signal.SIGKILL)
            pytest.fail(f"the two-node run took over {TIMEOUT_S} s")
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-6000:]
    return outputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    write_class_folders(root / "data", {"a": 8, "b": 8, "c": 8})
    return root


def _check_run(outputs: list[str], output: Path, train_ids: set[str]) -> tuple[set[str], set[str]]:
    lines = [line for line in outputs[0].splitlines() if line.startswith('{"world_size"')]
    assert lines, outputs[0][-6000:]
    result = json.loads(lines[-1])
    assert result["world_size"] == 2
    model = ImageClassifier.load(result["checkpoint"])
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 3)
    seen = [set((output / f"ids_rank{rank}.txt").read_text().split()) for rank in (0, 1)]
    assert seen[0] and seen[1]
    assert not seen[0] & seen[1], "the two ranks loaded some of the same training samples"
    assert seen[0] | seen[1] <= train_ids
    return seen[0], seen[1]


@pytest.mark.usefixtures("single_thread")
def test_two_nodes_on_folder_data(folder, tmp_path):
    output = tmp_path / "out"
    outputs = _two_nodes("folder", folder / "data", output)
    data = ImageDataModule(folder / "data", val_split=0.25, test_split=0.0, seed=0, output_dir=output)
    data.setup()  # the split the run wrote (splits.json, by rank 0 only)
    train_ids = set(data.tables["train"].items)
    first, second = _check_run(outputs, output, train_ids)
    assert first | second == train_ids  # 18 images, 9 per rank: every one once
    assert len(list(output.glob("splits.json"))) == 1
    # The files' headers were checked once, by rank 0; rank 1 read its result from checked_images.json.
    assert (output / "image_checks.txt").read_text().split("\n") == ["0 24", ""]
    assert json.loads((output / CHECK_FILE_NAME).read_text())["bad"] == []


@pytest.mark.usefixtures("single_thread")
def test_two_nodes_on_shards(folder, tmp_path):
    pytest.importorskip("litdata")
    from autotimm.data.shards import write_shards

    shards = tmp_path / "shards"
    source = ImageDataModule(folder / "data", val_split=0.25, test_split=0.0, seed=0, output_dir=shards)
    write_shards(source, shards, shard_size="2KB", verbose=False)  # several shards per split
    output = tmp_path / "out"
    outputs = _two_nodes("shards", shards, output)
    train_ids = {str(item) for item in source.tables["train"].items}
    first, second = _check_run(outputs, output, train_ids)
    assert len(first) == len(second)  # LitData gives both ranks as many samples
    assert len(first | second) >= len(train_ids) - 2  # at most world_size - 1 left out to even them up


# ------------------------------------------------------------------ the image check, once for all ranks
@pytest.fixture
def with_bad_file(tmp_path):
    """A class folder with one file that is no image (``b/3.png``)."""
    data = write_class_folders(tmp_path / "data", {"a": 4, "b": 4})
    (data / "b" / "3.png").write_bytes(b"not an image")
    return data


def _as_rank(monkeypatch, rank: int) -> None:
    for name in ("LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")


def _no_checking(monkeypatch) -> None:
    import autotimm.data.checked as checked

    def refuse(paths, mode="full"):
        raise AssertionError("this rank checked the files itself")

    monkeypatch.setattr(checked, "find_bad_images", refuse)


def test_rank_zero_checks_and_writes_the_bad_files_the_other_ranks_read(with_bad_file, tmp_path, monkeypatch):
    output = tmp_path / "run"
    _as_rank(monkeypatch, 0)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file"):
        first = ImageDataModule(with_bad_file, output_dir=output, skip_bad_images=True, seed=0)
        first.setup()
    record = json.loads((output / CHECK_FILE_NAME).read_text())
    assert record["check_images"] == "header" and record["files"] == 8
    assert [Path(path).relative_to(with_bad_file).as_posix() for path in record["bad_files"]] == ["b/3.png"]
    _as_rank(monkeypatch, 1)
    _no_checking(monkeypatch)  # rank 1 reads rank 0's result: it never opens the 8 files itself
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable image file"):
        second = ImageDataModule(with_bad_file, output_dir=output, skip_bad_images=True, seed=0)
        second.setup()
    for split in first.splits:  # the same sample table on both ranks
        assert list(second.tables[split].items) == list(first.tables[split].items)
    # Without skip_bad_images every rank fails on the same file, rank 1 from rank 0's list.
    with pytest.raises(ValueError, match=r"b/3\.png"):
        ImageDataModule(with_bad_file, output_dir=output, seed=0).setup()


def test_other_ranks_wait_for_rank_zero_and_time_out_clearly(with_bad_file, tmp_path, monkeypatch):
    _as_rank(monkeypatch, 1)
    _no_checking(monkeypatch)
    monkeypatch.setenv(WAIT_TIMEOUT_VARIABLE, "0.3")
    with pytest.raises(
        TimeoutError, match=r"waited 0.3s for rank 0 to check the image files.*AUTOTIMM_RANK_WAIT_TIMEOUT"
    ):
        ImageDataModule(with_bad_file, output_dir=tmp_path / "run", skip_bad_images=True).setup()
    monkeypatch.setenv(WAIT_TIMEOUT_VARIABLE, "soon")
    with pytest.raises(
        ValueError, match=r"AUTOTIMM_RANK_WAIT_TIMEOUT must be a positive number of seconds, got 'soon'"
    ):
        ImageDataModule(with_bad_file, output_dir=tmp_path / "run", skip_bad_images=True).setup()


def test_a_record_whose_bad_file_was_fixed_is_not_reused(with_bad_file, tmp_path, monkeypatch):
    output = tmp_path / "run"
    _as_rank(monkeypatch, 0)
    with pytest.warns(UserWarning):
        check_source_once(read_folder(with_bad_file), True, "header", output)
    (with_bad_file / "b" / "3.png").unlink()
    write_class_folders(with_bad_file, {"b": 4}, seed=5)  # b/3.png is an image again
    _as_rank(monkeypatch, 1)
    monkeypatch.setenv(WAIT_TIMEOUT_VARIABLE, "0.3")
    with pytest.raises(TimeoutError):  # the old list is out of date: rank 1 waits for rank 0's new one
        check_source_once(read_folder(with_bad_file), True, "header", output)
    _as_rank(monkeypatch, 0)
    assert len(check_source_once(read_folder(with_bad_file), True, "header", output).splits["train"]) == 8
    assert json.loads((output / CHECK_FILE_NAME).read_text())["bad"] == []
    _as_rank(monkeypatch, 1)
    assert len(check_source_once(read_folder(with_bad_file), True, "header", output).splits["train"]) == 8
