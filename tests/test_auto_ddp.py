"""auto_fit under DDP with two CPU processes: both ranks take the same decisions, files and metrics are right."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autotimm import ImageClassifier, ImageDataModule, load_builtin_dataset
from autotimm.auto import EnsembleClassifier
from autotimm.evaluation.labelled_data import resolve_labelled_data

pytest.importorskip("optuna")

SCRIPT = Path(__file__).with_name("auto_ddp_script.py")
LIMIT = 35.0


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("auto_ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(LIMIT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=out,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {"out": out, "ranks": ranks}


def test_both_ranks_took_the_same_decisions(ddp_run):
    zero, one = ddp_run["ranks"]
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["best_config"] == one["best_config"] and zero["best_score"] == one["best_score"]
    assert zero["trials"] == one["trials"] and len(zero["trials"]) >= 2
    assert zero["final"] == one["final"] and zero["model"] == one["model"]


def test_files_are_written_once_and_agree(ddp_run):
    out, zero = ddp_run["out"], ddp_run["ranks"][0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["n_trials"] == len(zero["trials"])
    with open(out / "trials.csv") as handle:
        assert [int(row["number"]) for row in csv.DictReader(handle)] == [t["number"] for t in zero["trials"]]
    assert zero["time_used"] <= LIMIT * 1.15 + 5
    assert ImageClassifier.load(out / "best.ckpt").class_names == [str(i) for i in range(10)]
    if zero["model"] == "EnsembleClassifier":
        assert len(EnsembleClassifier.load(out / "ensemble").members) == 2


def test_logged_validation_accuracy_matches_the_checkpoint(ddp_run):
    """The score each rank logged (synced across processes) is the checkpoint's accuracy on the val split."""
    out, zero = ddp_run["out"], ddp_run["ranks"][0]
    digits = load_builtin_dataset("digits")["train"]
    data = ImageDataModule(
        images=digits.images[:600], labels=digits.labels[:600], class_names=digits.class_names, val_split=0.25,
        seed=0, output_dir=out,
    )  # fmt: skip
    kept = [t for t in zero["trials"] if t["checkpoint"]]
    assert kept
    for trial in kept:
        model = ImageClassifier.load(trial["checkpoint"])
        sources, labels = resolve_labelled_data(data, model.class_names, split="val")
        accuracy = float(np.mean(model.predict_logits(sources)[0].argmax(1) == labels))
        assert len(labels) == 150  # even: DistributedSampler adds no padding images
        assert accuracy == pytest.approx(trial["score"], abs=1e-6)
