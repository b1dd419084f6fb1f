"""Resuming killed runs: kill -9 at an epoch end, inside an epoch and during a checkpoint write; safe loading.

Every killed run is a ``autotimm train`` subprocess (``tests/resume_script.py``)
that sends itself SIGKILL at a chosen point; the uninterrupted reference runs
and the resumes run in this process. On the CPU every op of these runs is
deterministic, so the resumed weights must be bit-identical to the reference
(``torch.equal``), optimizer state included.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib.util
import io
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from resume_script import Trace
from torch.utils.data import DataLoader

import autotimm
from autotimm import AutoTrainer, BackboneConfig, ImageClassifier, ImageDataModule, make_synthetic_dataset
from autotimm.cli import main
from autotimm.cli.common import write_config
from autotimm.cli.train import TrainConfig, resolve_config
from autotimm.data.ranks import RANK_VARIABLES, is_rank_zero
from autotimm.data.resumable import ResumableDataLoader, ResumableSampler
from autotimm.training import checkpointing
from autotimm.training.checkpointing import (
    RunExistsError,
    SafeCheckpointIO,
    parse_duration,
    prepare_run_folder,
    remove_partial_checkpoints,
    resume_checkpoint,
)

SCRIPT = Path(__file__).with_name("resume_script.py")
# digits at 16 px: 1258 training images, 9 steps of 128 an epoch (the last partial batch is dropped).
COMMON = ["--data", "digits", "--image-size", "16", "--backbone", "test_resnet", "--batch-size", "128",
          "--num-workers", "0", "--accelerator", "cpu", "--epochs", "2", "--checkpoint-every-n-steps", "4"]  # fmt: skip
UNFREEZE = ["--unfreeze-schedule", '{"0": 0, "1": "all"}']
SCENARIOS = {
    "epoch-end": ("epoch:1", []),
    "mid-epoch": ("step:13", []),
    "ema-warmup-unfreeze": ("step:13", ["--ema-decay", "0.9", "--warmup-epochs", "1", *UNFREEZE]),
    "onecycle-ema": ("step:6", ["--scheduler", "onecycle", "--ema-decay", "0.95"]),
    "during-write": ("write:2", []),  # the second checkpoint write (step 8) dies half-way
}


def _run(args: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


@contextlib.contextmanager
def _traced(path: Path):
    """Train with a `Trace` callback writing to ``path`` (as the killed runs do)."""
    init = AutoTrainer.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "callbacks": [Trace(path)]})

    AutoTrainer.__init__ = patched
    try:
        yield path
    finally:
        AutoTrainer.__init__ = init


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert different == []
    for key in ("current_model_state", "averaging_state"):  # EMA: the raw weights and the average's count
        assert (key in a) == (key in b)
        if key == "current_model_state" and key in a:
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    for index, values in state_a.items():
        assert all(torch.equal(torch.as_tensor(values[k]), torch.as_tensor(state_b[index][k])) for k in values)
    assert a["lr_schedulers"] == b["lr_schedulers"]


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Every scenario's killed subprocess, all started at once: {name: (run folder, return code)}."""
    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, (kill, extra) in SCENARIOS.items():
        folder = root / name
        command = [sys.executable, str(SCRIPT), kill, "train", *COMMON, *extra, "--output-dir", str(folder)]
        traced = {**env, "RESUME_TRACE": str(root / f"{name}.trace")}
        runs[name] = (folder, subprocess.Popen(command, env=traced, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    results = {}
    for name, (folder, process) in runs.items():
        _, err = process.communicate(timeout=600)
        assert process.returncode == -9, err.decode()[-3000:]
        results[name] = (folder, process.returncode)
    return results


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of each option set, trained once in this process."""
    root = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)

    @functools.cache
    def run(extra: tuple[str, ...]) -> tuple[dict, list[str]]:
        folder = root / str(len(os.listdir(root)))
        with _traced(folder.with_suffix(".trace")) as trace:
            code, err = _run(["train", *COMMON, *extra, "--output-dir", str(folder)])
        assert code == 0, err
        return _load(folder / "checkpoints" / "last.ckpt"), trace.read_text().splitlines()

    return run


@pytest.mark.parametrize("name", ["epoch-end", "mid-epoch", "ema-warmup-unfreeze", "onecycle-ema"])
def test_a_killed_run_resumes_to_the_same_weights(name, killed, reference):
    folder, _ = killed[name]
    before = _load(folder / "checkpoints" / "last.ckpt")
    expected_step = {"epoch-end": 9, "mid-epoch": 12, "ema-warmup-unfreeze": 12, "onecycle-ema": 4}[name]
    assert before["global_step"] == expected_step  # the kill came after that checkpoint, before the next
    with _traced(folder.with_suffix(".resumed.trace")) as trace:
        code, err = _run(["train", "--resume", str(folder)])
    assert code == 0, err
    expected, expected_trace = reference(tuple(SCENARIOS[name][1]))
    _assert_same_training_state(_load(folder / "checkpoints" / "last.ckpt"), expected)
    # Batch by batch: the killed run up to its checkpoint, then the resumed run, are the uninterrupted run: the same
    # epoch, batch index, step, images (their sum), learning rate, weights and random state before every batch.
    killed_trace = folder.with_suffix(".trace").read_text().splitlines()
    resumed = trace.read_text().splitlines()
    assert resumed[0].split()[2] == str(expected_step)  # the resumed run starts at the step after the checkpoint
    assert killed_trace[:expected_step] + resumed == expected_trace


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one(killed, reference):
    folder, _ = killed["during-write"]
    checkpoints = folder / "checkpoints"
    partial = list(checkpoints.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the half-written file, under a temporary name
    assert _load(checkpoints / "last.ckpt")["global_step"] == 4  # the previous checkpoint, whole
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt"]
    code, err = _run(["train", "--resume", str(folder)])
    assert code == 0, err
    assert list(checkpoints.glob(".*.tmp")) == []  # resume removed the partial file
    _assert_same_training_state(_load(checkpoints / "last.ckpt"), reference(())[0])


def test_a_rerun_without_resume_is_refused_and_overwrite_moves_the_run_aside(killed):
    folder, _ = killed["epoch-end"]
    last = folder / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    code, err = _run(["train", *COMMON, "--output-dir", str(folder)])
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 1 and len(lines) == 1, err
    assert "already holds a run" in lines[0] and "--resume" in lines[0] and "--overwrite" in lines[0]
    assert "--output-dir" in lines[0]
    assert last.read_bytes() == before
    with pytest.raises(RunExistsError, match="resume=True"):
        prepare_run_folder(folder)
    assert last.read_bytes() == before


def test_a_resumed_run_refuses_options_that_differ_from_its_config(killed):
    folder, _ = killed["mid-epoch"]
    code, err = _run(["train", "--resume", str(folder), "--lr", "0.5", "--backbone", "resnet18"])
    line = next(line for line in err.splitlines() if "error:" in line)
    assert code == 2 and "--lr 0.5 (the run has null)" in line and "--backbone 'resnet18'" in line
    assert "--resume-force" in line
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert "resume" not in saved or saved["resume"] is None
    # The same options as the run's, a changed --epochs, or --resume-force: accepted.
    given = {"resume", "epochs", "lr", "data"}
    config = TrainConfig(data="digits", resume=str(folder), epochs=7, lr=saved["lr"])
    resolved = resolve_config(config, given)
    assert resolved.epochs == 7 and resolved.backbone == "test_resnet" and resolved.output_dir == str(folder)
    forced = resolve_config(TrainConfig(resume=str(folder), lr=0.5, resume_force=True), {"resume", "lr"})
    assert forced.lr == 0.5 and forced.image_size == 16


def test_more_epochs_on_resume_stretch_the_schedule(killed, tmp_path):
    """OneCycle fails past its total steps: resuming a finished 2-epoch run for 3 epochs must stretch it."""
    folder, _ = killed["onecycle-ema"]
    code, err = _run(["train", "--resume", str(folder), "--epochs", "3"])
    assert code == 0, err
    state = _load(folder / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 27 and state["lr_schedulers"][0]["total_steps"] == 27
    assert yaml.safe_load((folder / "config.yaml").read_text())["epochs"] == 3


# ----------------------------------------------------------------- the sampler
def test_a_resumed_epoch_draws_exactly_the_remaining_batches():
    data = list(range(50))
    sampler = ResumableSampler(data, seed=3, batch_size=8, seed_batches=True)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(full) == data and full != list(ResumableSampler(data, seed=4, batch_size=8))
    draws = []
    for batch in range(3):  # the random state at each batch depends on the position only
        sampler.set_epoch(2)
        it = iter(sampler)
        for _ in range(batch * 8 + 1):
            next(it)
        draws.append(torch.rand(()).item())
    restarted = ResumableSampler(data, seed=0, batch_size=8, seed_batches=True)
    restarted.mark(2, 2)
    state = restarted.state_dict()
    resumed = ResumableSampler(data, batch_size=8, seed_batches=True)
    resumed.load_state_dict({**state, "seed": 3})
    resumed.set_epoch(2)
    tail = list(resumed)
    assert tail == full[16:]
    assert torch.rand(()).item() != draws[2]  # (the state moved on after the epoch)
    resumed.set_epoch(2)
    assert list(resumed) == full  # the saved position applies once
    loader = ResumableDataLoader(data, sampler=resumed, batch_size=8)
    loader.load_state_dict(state)
    assert loader.state_dict()["batches_done"] == 2


def test_the_run_seed_seeds_the_order(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    assert ResumableSampler(range(5)).seed == 11 and ResumableSampler(range(5)).seed_batches
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert not ResumableSampler(range(5)).seed_batches


# ------------------------------------------------------------- trainer options
def test_resume_checkpoint_and_durations(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resume_checkpoint(True, tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resume_checkpoint("last", tmp_path).endswith("last.ckpt")
    assert resume_checkpoint(tmp_path, "elsewhere") == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ValueError, match="`resume` must be"):
        resume_checkpoint(3, tmp_path)
    assert parse_duration("10m").total_seconds() == 600 and parse_duration("1.5h").total_seconds() == 5400
    for bad in ("10 minutes", "0s", -1):
        with pytest.raises(ValueError, match="checkpoint_every"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="checkpoint_every_n_steps"):
        AutoTrainer(output_dir=tmp_path, checkpoint_every_n_steps=0)


def _tiny_fit(out: Path, **kwargs) -> AutoTrainer:
    data = make_synthetic_dataset(4, samples_per_class=8, image_size=16)
    trainer = AutoTrainer(output_dir=out, max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, monitor="train/loss", **kwargs)  # fmt: skip
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4)
    trainer.fit(model, DataLoader(data, batch_size=8))
    return trainer


def test_autotrainer_refuses_a_run_folder_and_overwrite_moves_it_aside(tmp_path):
    out = tmp_path / "run"
    trainer = _tiny_fit(out)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    last = out / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(RunExistsError, match="already holds a run"):
        _tiny_fit(out)
    assert last.read_bytes() == before
    _tiny_fit(out, overwrite=True)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1 and (moved[0] / "checkpoints" / "last.ckpt").read_bytes() == before
    assert last.is_file()


# ------------------------------------------------------- multi-process runs
@pytest.fixture
def rank(monkeypatch):
    """Set this process's launch rank as torchrun would (``rank("1")``), with every other rank variable cleared."""
    for name in (*RANK_VARIABLES, "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)

    def set_rank(value: str, name: str = "RANK") -> None:
        monkeypatch.setenv(name, value)

    return set_rank


def test_the_launch_rank_comes_from_the_environment(rank, monkeypatch):
    assert is_rank_zero()
    rank("1", "LOCAL_RANK")  # Lightning's ddp launcher: LOCAL_RANK only
    assert not is_rank_zero()
    rank("0", "LOCAL_RANK")
    rank("1", "NODE_RANK")  # local rank 0 of the second node
    assert not is_rank_zero()
    monkeypatch.delenv("NODE_RANK")
    rank("3", "SLURM_PROCID")  # LOCAL_RANK first: SLURM_PROCID is set in a one-task job whose ranks Lightning starts
    assert is_rank_zero()
    monkeypatch.delenv("LOCAL_RANK")
    assert not is_rank_zero()
    rank("0")
    assert is_rank_zero()
    rank("one")
    with pytest.raises(ValueError, match=r"RANK must be a process rank.*'one'"):
        is_rank_zero()


def _fake_run(folder: Path) -> tuple[Path, Path]:
    """A run folder with a last.ckpt and a temporary file a kill during a checkpoint write left."""
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes(b"checkpoint")
    partial = folder / "checkpoints" / ".last.ckpt.abc123.tmp"
    partial.write_bytes(b"half")
    return last, partial


def test_only_rank_zero_moves_a_run_aside_or_removes_partial_files(rank, tmp_path, monkeypatch):
    out = tmp_path / "run"
    last, partial = _fake_run(out)
    rank("1")
    with pytest.raises(RunExistsError, match="already holds a run"):  # refused on every rank alike
        prepare_run_folder(out)
    monkeypatch.setattr(checkpointing, "RANK_ZERO_WAIT_S", 0.3)
    with pytest.raises(TimeoutError, match="for rank 0 to move the old run"):
        prepare_run_folder(out, overwrite=True)
    assert remove_partial_checkpoints(last.parent) == []
    assert resume_checkpoint(True, out) == str(last)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and last.is_file() and partial.is_file()

    # With overwrite, rank 1 waits until rank 0 (a thread here) has moved the run, and moves nothing itself.
    monkeypatch.setattr(checkpointing, "RANK_ZERO_WAIT_S", 60)
    moved = tmp_path / "run.old-by-rank-0"
    mover = threading.Timer(0.3, lambda: out.rename(moved))
    mover.start()
    assert prepare_run_folder(out, overwrite=True) is None
    mover.join()
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == [moved.name] and (moved / "checkpoints" / "last.ckpt").is_file()
    )

    rank("0")
    assert remove_partial_checkpoints(moved / "checkpoints") == [moved / "checkpoints" / partial.name]


def test_only_rank_zero_writes_the_config_and_the_split(rank, tmp_path):
    from data_helpers import write_class_folders

    images = write_class_folders(tmp_path / "images", {"a": 6, "b": 5, "c": 7})
    out = tmp_path / "run"
    rank("1")
    assert write_config(TrainConfig(data=str(images)), out) == out / "config.yaml"
    # check_images="none": a rank that checks the files waits for rank 0's check (tests/test_multinode.py).
    rank_1 = ImageDataModule(images, output_dir=out, val_split=0.3, test_split=0.2, seed=3, check_images="none")
    rank_1.setup("fit")
    assert not out.exists()  # neither config.yaml nor splits.json

    rank("0")
    write_config(TrainConfig(data=str(images)), out)
    rank_0 = ImageDataModule(images, output_dir=out, val_split=0.3, test_split=0.2, seed=3)
    rank_0.setup("fit")
    written = ["checked_images.json", "config.yaml", "splits.json"]
    assert sorted(p.name for p in out.iterdir()) == written  # no temporary file left
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == str(images.resolve())
    # The split a rank computes is the one rank 0 writes, and a rank that starts later reads that file.
    rank("1")
    later = ImageDataModule(images, output_dir=out, val_split=0.3, test_split=0.2, seed=3)
    later.setup("fit")
    for split in ("train", "val", "test"):
        assert rank_1.tables[split].items == rank_0.tables[split].items == later.tables[split].items


# --------------------------------------------------------------- unsafe files
class _Marker:
    """Unpickling this creates the marker file: what a malicious checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4)
    path = model.save(tmp_path / "evil" / "checkpoints" / "last.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["payload"] = _Marker(marker)
    torch.save(checkpoint, path)
    with pytest.raises(Exception):  # noqa: B017
        torch.load(path, weights_only=True)
    assert not marker.exists()
    return path, marker


def test_no_load_path_unpickles_code(evil, tmp_path, monkeypatch):
    path, marker = evil
    with pytest.raises(ValueError, match="not an autotimm checkpoint"):
        ImageClassifier.load(path)
    with pytest.raises(ValueError, match="not an autotimm checkpoint"):
        autotimm.load_model(path)
    data = DataLoader(make_synthetic_dataset(4, samples_per_class=4, image_size=16), batch_size=8)
    for resume in ({"resume": path}, {"ckpt_path": path}):
        trainer = AutoTrainer(output_dir=tmp_path / "fit", max_epochs=1, accelerator="cpu", logger=False,
                              enable_progress_bar=False, monitor="train/loss")  # fmt: skip
        model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4)
        with pytest.raises(Exception, match=r"Weights only load failed|weights_only"):
            trainer.fit(model, data, **resume)
    _refuse_through_every_evaluation(path, data, tmp_path)
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (16, 16)).save(image)
    assert _run(["predict", str(path), str(image)])[0] == 1
    assert _run(["evaluate", str(path), "digits"])[0] == 1
    assert _run(["export", str(path), "--output", str(tmp_path / "model.onnx")])[0] == 1
    assert _run(["explain", str(path), str(image), "--output", str(tmp_path / "explained")])[0] == 1
    if importlib.util.find_spec("fastapi") is not None:  # `serve` loads the model before it starts the server
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        code, err = _run(["serve", str(path), "--port", str(port)])
        assert code == 1 and "not an autotimm checkpoint" in err, err
    code, err = _run(["train", "--resume", str(path.parent.parent), *COMMON])
    assert code == 1 and ("Weights only" in err or "weights_only" in err), err
    assert not marker.exists()


def _refuse_through_every_evaluation(ckpt_path: str | Path, data: DataLoader, root: Path) -> None:
    """``validate``/``test``/``predict(ckpt_path=...)`` refuse the file, with autotimm's checkpoint IO or without.

    Without checkpointing, and with a ``TorchCheckpointIO`` of the user's (whose default unpickles URLs), the
    trainer passes ``weights_only=True`` itself.
    """
    from pytorch_lightning.plugins.io import TorchCheckpointIO

    for options in ({}, {"enable_checkpointing": False}, {"plugins": [TorchCheckpointIO()]}):
        trainer = AutoTrainer(output_dir=root / "evaluate", accelerator="cpu", logger=False, enable_progress_bar=False,
                              enable_model_summary=False, monitor="train/loss", **options)  # fmt: skip
        if "plugins" not in options:
            assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO), options
        model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4)
        for name in ("validate", "test", "predict"):
            with pytest.raises(Exception, match=r"Weights only load failed|weights_only"):
                getattr(trainer, name)(model, data, ckpt_path=ckpt_path)


def test_a_remote_checkpoint_is_loaded_safely(evil, tmp_path, monkeypatch):
    """``fit(ckpt_path=URL)``: Lightning would unpickle it (weights_only=False for URLs); it is refused."""
    path, marker = evil
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/last.ckpt"
        data = DataLoader(make_synthetic_dataset(4, samples_per_class=4, image_size=16), batch_size=8)
        trainer = AutoTrainer(output_dir=tmp_path / "remote", max_epochs=1, accelerator="cpu", logger=False,
                              enable_progress_bar=False, monitor="train/loss")  # fmt: skip
        model = ImageClassifier(BackboneConfig("test_resnet", pretrained=False), num_classes=4)
        with pytest.raises(Exception, match=r"Weights only load failed|weights_only"):
            trainer.fit(model, data, ckpt_path=url)
        _refuse_through_every_evaluation(url, data, tmp_path)
    finally:
        server.shutdown()
    assert not marker.exists()


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle", "step", "multistep", "exponential", "plateau",
                                       "cosine_with_restarts"])  # fmt: skip
def test_every_scheduler_state_loads_with_weights_only(scheduler):
    from autotimm.optim.schedulers import create_scheduler

    parameter = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    configs = create_scheduler(optimizer, scheduler, {"warmup_steps": 2}, total_steps=20, steps_per_epoch=5)
    buffer = io.BytesIO()
    torch.save({"lr_schedulers": [c["scheduler"].state_dict() for c in configs]}, buffer)
    buffer.seek(0)
    states = torch.load(buffer, weights_only=True)["lr_schedulers"]
    assert len(states) == 2 and states[1]["warmup_steps"] == 2
