"""auto_fit on an Optuna storage: two workers sharing a study, a search killed and resumed, PostgreSQL machines.

The searches are small ("test_resnet" at 16 px on digits, budgets of 15-25 s),
run once per module and checked by several tests.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autotimm import ImageClassifier, ImageDataModule, load_builtin_dataset
from autotimm.auto import auto_fit
from autotimm.auto.results import write_atomically
from autotimm.auto.storage import OutputLock, open_storage, storage_url
from autotimm.auto.study import LOST_NOTE
from autotimm.cli import main
from autotimm.evaluation.labelled_data import resolve_labelled_data

optuna = pytest.importorskip("optuna")

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = dict(backbones=["test_resnet"], image_size=16, seed=0, verbose=False)
#: The stated margin: a search returns within its limit plus this (the last trial's stop, the workers' exits).
MARGIN = 5.0


def within_limit(seconds: float, limit: float) -> bool:
    return seconds <= limit * 1.15 + MARGIN


def small_digits(out: Path) -> ImageDataModule:
    """1000 digits (600 to train, 250 to validate, 150 to test): short epochs, several trials in a small budget."""
    digits = load_builtin_dataset("digits")["train"]
    return ImageDataModule(
        images=digits.images[:1000], labels=digits.labels[:1000], class_names=digits.class_names, val_split=0.25,
        test_split=0.15, seed=0, output_dir=out,
    )  # fmt: skip


def _test_accuracy(checkpoint: Path, out: Path, data: ImageDataModule | None = None) -> float:
    """Accuracy on the held-out test split (of `small_digits`, or of ``data``)."""
    data = small_digits(out) if data is None else data
    data.setup("fit")
    model = ImageClassifier.load(checkpoint)
    sources, labels = resolve_labelled_data(data, model.class_names, split="test")
    return float(np.mean(model.predict_logits(sources)[0].argmax(1) == labels))


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------ two workers sharing a SQLite study
TWO_LIMIT = 25.0


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on the shared 2-core machine two threads per process are slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("two_workers")
    start = time.monotonic()
    result = auto_fit(small_digits(out), TWO_LIMIT, output_dir=out, n_workers=2, **OPTIONS)
    return {"result": result, "elapsed": time.monotonic() - start, "out": out}


def test_two_workers_both_run_trials_of_one_study(two_workers):
    result, out = two_workers["result"], two_workers["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_workers"] == 2 and summary["storage"].endswith("study.db")
    workers = summary["workers"]
    assert len(workers) == 2 and all(workers.values()), workers  # both ran trials
    numbers = [n for trials in workers.values() for n in trials]
    assert len(numbers) == len(set(numbers)) == len(result.trials)  # distinct trial numbers
    study = optuna.load_study(study_name="autotimm", storage=storage_url(None, out))
    assert study.user_attrs["finished"] and {t.number for t in study.trials} >= set(numbers)
    with open(out / "trials.csv") as handle:
        assert sorted(int(row["number"]) for row in csv.DictReader(handle)) == sorted(numbers)


def test_two_workers_end_inside_the_limit_and_the_best_model_predicts(two_workers):
    assert within_limit(two_workers["elapsed"], TWO_LIMIT), two_workers["elapsed"]
    assert two_workers["result"].time_used <= two_workers["elapsed"]
    assert _test_accuracy(two_workers["out"] / "best.ckpt", two_workers["out"]) > 0.15  # ten classes: chance is 0.1


# ------------------------------------------------------------------ kill -9 in mid-trial, then resume
# Two workers, so that one trial has finished while another runs; the kill takes the whole process group.
KILL_LIMIT = 30.0
_SEARCH = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from test_auto_parallel import OPTIONS, small_digits
from autotimm.auto import auto_fit
out = Path(sys.argv[1])
(out / "started").write_text(str(time.time()))
auto_fit(small_digits(out), float(sys.argv[2]), output_dir=out, n_workers=2, **OPTIONS)
"""


def _finished_rows(out: Path) -> dict[int, dict]:
    study = optuna.load_study(study_name="autotimm", storage=storage_url(None, out))
    return {t.number: t.user_attrs["row"] for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def _running(out: Path) -> list[int]:
    study = optuna.load_study(study_name="autotimm", storage=storage_url(None, out))
    return [t.number for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if "worker" in t.user_attrs]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("killed")
    process = subprocess.Popen(
        [sys.executable, "-c", _SEARCH, str(out), str(KILL_LIMIT), str(Path(__file__).parent)],
        env=_env(),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill takes the forked workers too, as a crash would
    )
    before, running = {}, []
    try:
        give_up = time.monotonic() + 180
        while time.monotonic() < give_up and process.poll() is None:
            time.sleep(0.3)
            if (out / "study.db").is_file():
                with contextlib.suppress(Exception):  # the study's tables are still being created
                    before, running = _finished_rows(out), _running(out)
                if before and running:
                    break
        assert process.poll() is None, f"the search ended before a second trial started: {process.stderr.read()}"
        assert before and running, "no trial finished in time"
        os.killpg(process.pid, signal.SIGKILL)
        killed = time.time()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    first = killed - float((out / "started").read_text())
    start = time.monotonic()
    result = auto_fit(small_digits(out), KILL_LIMIT, output_dir=out, **OPTIONS)
    second = time.monotonic() - start
    return dict(out=out, before=before, killed=running, result=result, first=first, second=second)


def test_finished_trials_are_not_run_again(killed_and_resumed):
    run = killed_and_resumed
    rows = {row["number"]: row for row in run["result"].trials}
    for number, row in run["before"].items():  # the same row: kept from the study, not trained again
        assert rows[number]["score"] == row["score"] and rows[number]["seconds"] == row["seconds"]
    workers = {row["worker"] for row in run["result"].trials if row.get("worker")}
    assert len(workers) >= 1 and len(rows) >= len(run["before"])


def test_the_trials_running_at_the_kill_are_failed_and_retried(killed_and_resumed):
    run = killed_and_resumed
    study = optuna.load_study(study_name="autotimm", storage=storage_url(None, run["out"]))
    for number in run["killed"]:
        lost = next(row for row in run["result"].trials if row["number"] == number)
        assert lost["state"] == "failed" and lost["note"].startswith(LOST_NOTE)
        retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == number]
        assert len(retries) == 1 and retries[0].params == lost_params(lost)  # queued again, same parameters


def lost_params(row: dict) -> dict:
    keys = ("backbone", "lr", "weight_decay", "label_smoothing", "mixup_alpha", "augmentation")
    return {key: row[key] for key in keys if key in row and row[key] is not None}


def test_both_calls_together_stay_inside_the_original_limit(killed_and_resumed):
    run = killed_and_resumed
    assert within_limit(run["first"] + run["second"], KILL_LIMIT), (run["first"], run["second"])
    summary = run["result"].summary()
    assert summary["time_used_before"] >= 0.8 * run["first"]  # the killed call's time counts
    assert summary["time_used"] == pytest.approx(summary["time_used_before"] + summary["time_used_this_call"], abs=0.2)
    assert within_limit(summary["time_used"], KILL_LIMIT)


def test_the_resumed_result_is_complete(killed_and_resumed):
    out = killed_and_resumed["out"]
    assert (out / "best.ckpt").is_file() and (out / "trials.csv").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_trials"] == len(killed_and_resumed["result"].trials) and summary["best_score"] > 0.1
    assert not list(out.glob(".*.tmp"))  # written atomically: no temporary file left
    model = ImageClassifier.load(out / "best.ckpt")  # the best trial's model, loadable and predicting
    data = small_digits(out)
    data.setup("fit")
    sources, labels = resolve_labelled_data(data, model.class_names, split="test")
    logits = model.predict_logits(sources)[0]
    assert model.class_names == [str(i) for i in range(10)] and logits.shape == (len(labels), 10)
    assert np.isfinite(logits).all()


# ------------------------------------------------------------------ safety
def test_a_second_search_on_the_same_folder_is_refused(tmp_path):
    with OutputLock(tmp_path, "the test"):
        with pytest.raises(RuntimeError, match=r"in use by another search \(the test\).*join=True"):
            auto_fit("digits", 20, output_dir=tmp_path, **OPTIONS)
    with OutputLock(tmp_path, "again"):  # released on exit
        pass


def test_an_unreachable_storage_is_one_line(tmp_path):
    url = "sqlite:////nonexistent/folder/study.db"
    with pytest.raises(ConnectionError, match=r"`storage` 'sqlite:////nonexistent/folder/study.db' cannot be reached"):
        open_storage(optuna, url)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["auto", "--data", "digits", "--storage", url, "--output-dir", str(tmp_path)])
    assert code == 1 and err.getvalue().count("\n") == 1 and "cannot be reached" in err.getvalue()
    with pytest.raises(ValueError, match=r"`storage` must be None .* got 'mongodb://x'"):
        auto_fit("digits", 20, output_dir=tmp_path, storage="mongodb://x")


def test_parallel_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="`n_workers` must be an int >= 1 or None, got 0"):
        auto_fit("digits", 20, output_dir=tmp_path, n_workers=0)
    with pytest.raises(ValueError, match="`join` and `finish_only` cannot both be True"):
        auto_fit("digits", 20, output_dir=tmp_path, join=True, finish_only=True)
    with pytest.raises(ValueError, match=r"`n_workers` must be 1 when `trainer_kwargs` set \['devices'\]"):
        auto_fit("digits", 20, output_dir=tmp_path, n_workers=2, trainer_kwargs={"devices": 2})
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["auto", "--data", "digits", "--join", "--finish"])
    assert code == 2 and "--join and --finish cannot be used together" in err.getvalue()


def test_a_study_resumed_with_other_options_is_refused(killed_and_resumed, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(killed_and_resumed["out"], out)
    study = optuna.load_study(study_name="autotimm", storage=storage_url(None, out))
    study.set_user_attr("finished", False)
    with pytest.raises(ValueError, match=r"started with seed=0 \(now 1\).*resume=False"):
        auto_fit(small_digits(out), 20, output_dir=out, **{**OPTIONS, "seed": 1})


def test_results_are_written_atomically(tmp_path):
    path = write_atomically(tmp_path / "summary.json", '{"a": 1}')
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ------------------------------------------------------------------ PostgreSQL: two machines
PG_LIMIT = 25.0
#: CI (.ci/run) installs PostgreSQL and sets this: there a missing server fails the test instead of skipping it.
REQUIRE_POSTGRES = os.environ.get("AUTOTIMM_REQUIRE_POSTGRES") == "1"


def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        initdb = None
    if initdb is None or pg_ctl is None:
        reason = "PostgreSQL or psycopg is not installed (apt-get install postgresql; pip install 'autotimm[postgres]')"
        if REQUIRE_POSTGRES:
            pytest.fail(reason + "; CI must have it (.ci/run installs it)")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="autotimm-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        root.chmod(0o755)
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = root / "data", _free_port()
    run = dict(check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "autotimm", "--no-sync"], **run)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-o", options, "-w", "start"], **run)
    try:
        yield f"postgresql://autotimm@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


_JOIN = """
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_auto_parallel import OPTIONS, small_digits
from autotimm.auto import auto_fit
out = Path(sys.argv[1])
auto_fit(small_digits(out), float(sys.argv[2]), output_dir=out, storage=sys.argv[3], study_name="digits-test",
         join=True, **OPTIONS)
"""


@pytest.fixture(scope="module")
def two_machines(postgres, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("machines")
    command = [sys.executable, "-c", _JOIN, str(out), str(PG_LIMIT), postgres, str(Path(__file__).parent)]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    joins = [subprocess.Popen(command, env=_env(), **pipes) for _ in range(2)]  # two "machines", both join=True
    give_up = time.monotonic() + 180  # the first join to arrive creates the study and stores its plan
    while time.monotonic() < give_up and all(join.poll() is None for join in joins):
        with contextlib.suppress(KeyError):
            if "plan" in optuna.load_study(study_name="digits-test", storage=postgres).user_attrs:
                break
        time.sleep(0.5)
    # A third "machine" that waits for the workers' trials, then does the final steps (--finish).
    result = auto_fit(small_digits(out), PG_LIMIT, output_dir=out, storage=postgres, study_name="digits-test",
                      finish_only=True, **OPTIONS)  # fmt: skip
    outputs = [join.communicate(timeout=240) for join in joins]
    for join, (_, err) in zip(joins, outputs, strict=True):
        assert join.returncode == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    return {"out": out, "summary": summary, "url": postgres, "result": result}


def test_two_machines_share_one_postgres_study(two_machines):
    summary = two_machines["summary"]
    assert summary["storage"].startswith("postgresql://") and summary["study_name"] == "digits-test"
    workers = summary["workers"]
    assert len(workers) == 2 and all(workers.values()), workers
    numbers = [n for trials in workers.values() for n in trials]
    assert len(numbers) == len(set(numbers)) == summary["n_trials"]
    study = optuna.load_study(study_name="digits-test", storage=two_machines["url"])
    assert study.user_attrs["finished"] and len(study.user_attrs["sessions"]) == 1  # the joins shared one session


def test_two_machines_end_inside_the_limit_and_the_best_model_predicts(two_machines):
    assert within_limit(two_machines["summary"]["time_used"], PG_LIMIT)
    assert _test_accuracy(two_machines["out"] / "best.ckpt", two_machines["out"]) > 0.15


def test_joining_a_finished_search_from_the_command_line_is_a_no_op(two_machines):
    options = [
        "--storage",
        two_machines["url"],
        "--study-name",
        "digits-test",
        "--output-dir",
        str(two_machines["out"]),
    ]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["auto", "--data", "digits", *options, "--seed", "0", "--backbones", "test_resnet",
                     "--image-size", "16", "--join"])  # fmt: skip
    assert code == 0 and "has finished: no trials to join" in stdout.getvalue()
