"""Lightning's ``ddp`` strategy on two CPU processes: fit, checkpoints, synced metrics, rank-0-only files, test.

``tests/ddp_script.py`` (the example of ``docs/guide/distributed.md``) trains in
a subprocess; Lightning's ``ddp`` runs the script again for rank 1. The tests
then check, in one process, what the two ranks printed and wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from autotimm import ImageClassifier, ImageDataModule

SCRIPT = Path(__file__).with_name("ddp_script.py")
REPO = SCRIPT.parent.parent
GUIDE = REPO / "docs" / "guide" / "distributed.md"
#: The script's data settings, to rebuild its splits in one process (its splits.json makes them the same).
DATA_KWARGS = dict(
    dataset="digits", image_size=32, val_split=0.1, test_split=0.055, batch_size=32, num_workers=0, seed=0
)
NUM_CLASSES = 10
TIMEOUT_S = 300  # about 15 s of CPU time; generous for a loaded, shared machine

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.skipif(sys.platform == "win32", reason="the ddp test uses POSIX process groups"),
]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_env() -> dict[str, str]:
    """The test's environment without any distributed or cluster settings, plus a fresh local rendezvous."""
    cluster = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_", "LSB_", "JSM_")
    names = {"LOCAL_RANK", "RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED"}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith(cluster)}
    env.update(
        HF_HUB_OFFLINE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        OMP_NUM_THREADS="1",  # one thread per rank: two ranks on two cores
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
    )
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo on loopback, whatever the host name resolves to
    return env


def _run_script(output_dir: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(output_dir)]
    # A session of its own, so that a timeout ends rank 1 (started by rank 0) too.
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=_ddp_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the ddp run took over {TIMEOUT_S} s; its output:\n{out[-6000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out)


@torch.no_grad()
def _evaluate(model: ImageClassifier, data: ImageDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a whole split, in one process, in sample order."""
    logits, labels = [], []
    for x, y in data._loader(data.dataset(split)):
        logits.append(model(x))
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    pytest.importorskip("sklearn")  # the digits data set
    output_dir = tmp_path_factory.mktemp("ddp") / "out"
    run = _run_script(output_dir)
    assert run.returncode == 0, run.stdout[-6000:]
    # One JSON line per rank (rank 1 inherits rank 0's stdout).
    lines = [line for line in run.stdout.splitlines() if line.startswith('{"rank"')]
    ranks = sorted(map(json.loads, lines), key=lambda r: r["rank"])
    assert len(ranks) == 2, run.stdout[-6000:]
    return output_dir, ranks, run.stdout


def _data(output_dir: Path, model: ImageClassifier) -> ImageDataModule:
    data = ImageDataModule(**DATA_KWARGS, output_dir=output_dir)  # reuses the run's splits.json
    data.configure_for(model.backbone)
    data.setup()
    return data


def _best_score(path: str) -> float:
    """The monitored ``val/accuracy`` of the best checkpoint, as its ModelCheckpoint state recorded it."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    checkpoints = [s for s in state["callbacks"].values() if "best_model_score" in s]  # the ModelCheckpoints
    (score,) = [s["best_model_score"] for s in checkpoints if s["monitor"] == "val/accuracy"]
    return float(score)


def test_guide_shows_the_tested_script():
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    assert SCRIPT.read_text() in blocks


def test_two_ranks_ran_and_shared_the_data(ddp_run):
    _, ranks, _ = ddp_run
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 for r in ranks)
    # DistributedSampler: 180 validation images, 90 per rank; 99 test images padded to 100, 50 per rank.
    assert [r["val_images_on_this_rank"] for r in ranks] == [90, 90]
    assert [r["test_images_on_this_rank"] for r in ranks] == [50, 50]
    # train/loss is logged per rank without sync (rank 0's goes to the logger); the rest is synced.
    for key in ("val/loss", "val/accuracy", "val/f1_macro", "val/top5_accuracy", "train/accuracy"):
        assert ranks[0]["metrics"][key] == ranks[1]["metrics"][key], key
    assert ranks[0]["test_metrics"] == ranks[1]["test_metrics"]
    assert ranks[0]["confusion_matrix"] == ranks[1]["confusion_matrix"]
    assert sum(map(sum, ranks[0]["confusion_matrix"])) == 180  # both ranks' images, on each rank
    assert ranks[0]["best_checkpoint"] == ranks[1]["best_checkpoint"]


def test_only_rank_zero_wrote_files(ddp_run):
    output_dir, ranks, _ = ddp_run
    files = sorted(str(p.relative_to(output_dir)) for p in output_dir.rglob("*") if p.is_file())
    best = Path(ranks[0]["best_checkpoint"])
    assert best.parent == output_dir / "checkpoints"
    checkpoints = [f for f in files if f.startswith("checkpoints/")]
    assert sorted(checkpoints) == sorted([f"checkpoints/{best.name}", "checkpoints/last.ckpt"])
    assert [p.name for p in (output_dir / "logs").iterdir()] == ["version_0"]  # one TensorBoard run
    events = [f for f in files if "tfevents" in f]
    # One event file for fit, one for test, from one process (the pid is the name's second to last field).
    assert len(events) == 2 and len({e.split(".")[-2] for e in events}) == 1, events
    assert set(files) == {*checkpoints, *events, "logs/version_0/hparams.yaml", "splits.json",
                          "history.json", "history.csv", "curves.png"}  # fmt: skip


def test_checkpoints_load_and_metrics_match_one_process(ddp_run):
    output_dir, ranks, _ = ddp_run
    best = ImageClassifier.load(ranks[0]["best_checkpoint"])
    last = ImageClassifier.load(output_dir / "checkpoints" / "last.ckpt")
    assert best.hparams.backbone["model_name"] == "test_resnet" and best.hparams.num_classes == NUM_CLASSES
    assert best.class_names == [str(i) for i in range(NUM_CLASSES)]
    data = _data(output_dir, best)
    assert len(data.dataset("val")) == 180 and len(data.dataset("test")) == 99

    # The best checkpoint's score is val/accuracy over the whole validation set (180 = 2 x 90: no padding).
    logits, labels = _evaluate(best, data, "val")
    correct = (logits.argmax(1) == labels).sum().item()
    assert round(_best_score(ranks[0]["best_checkpoint"]) * 180) == correct
    assert correct > 180 * 0.2  # it learnt something: chance is 10 %

    # The metrics after fit are those of the last epoch, i.e. of the weights in last.ckpt.
    logits, labels = _evaluate(last, data, "val")
    predicted = logits.argmax(1)
    metrics = ranks[0]["metrics"]
    assert round(metrics["val/accuracy"] * 180) == (predicted == labels).sum().item()
    # val/loss is logged with sync_dist=True: the mean of the two ranks' means, i.e. the mean over all 180 images.
    assert metrics["val/loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    # The confusion matrix is synced by torchmetrics: all 180 images, on every rank.
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    matrix.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    assert ranks[0]["confusion_matrix"] == matrix.tolist()

    # trainer.test(ckpt_path="best"): 99 test images; the sampler pads to 100 with the first one again.
    logits, labels = _evaluate(best, data, "test")
    hits = logits.argmax(1) == labels
    accuracy = ranks[0]["test_metrics"]["test/accuracy"]
    assert round(accuracy * 100) == hits.sum().item() + hits[0].item()
    assert abs(accuracy - hits.float().mean().item()) <= 1 / 100  # the documented bound: (world_size - 1) / 100


def test_checkpoint_predicts(ddp_run):
    output_dir, ranks, _ = ddp_run
    model = ImageClassifier.load(ranks[0]["best_checkpoint"])
    data = _data(output_dir, model)
    table = data._require_setup()["val"]
    images = [table.load(i, in_chans=1) for i in range(8)]  # the 8 x 8 grey digits, as Pillow images
    predictions = model.predict(images, top_k=3)
    assert len(predictions) == 8 and all(len(p.labels) == 3 for p in predictions)
    with torch.no_grad():  # the same images through the data module's evaluation transform
        expected = model(torch.stack([data.dataset("val")[i][0] for i in range(8)])).argmax(1)
    assert [p.labels[0] for p in predictions] == [str(i) for i in expected.tolist()]
