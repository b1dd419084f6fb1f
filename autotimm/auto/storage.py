"""The search's persistent state: an Optuna RDB storage (SQLite by default), its sessions, and the output lock.

Everything workers share lives in the Optuna study, so that any number of
processes, on one machine or several, can join the same search:

- the **plan** (the budget split, the kept candidates, the measured time
  model), written once by the process that created the study, as a study
  user attribute; the other workers read it instead of measuring again;
- the **session** (``start`` wall time, seconds ``used_before`` it, and
  ``seen``, the last time a live process of the search was seen), which turns
  the time limit into one deadline for every worker and makes a resumed search
  count only the time that remains;
- each **trial's row** (configuration, state, epochs, score, checkpoint,
  times, worker), as a trial user attribute written before the trial is told.

Optuna's heartbeat (``heartbeat_interval``) marks a trial whose worker died
(``kill -9``, a lost machine) as failed once ``grace_period`` passes, and
``RetryHeartbeatStaleTrialCallback`` enqueues it again with the same
parameters, once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CLOCK_SECONDS",
    "GRACE_SECONDS",
    "HEARTBEAT_SECONDS",
    "LIVE_SECONDS",
    "STUDY_FILE",
    "OutputLock",
    "SearchRecord",
    "SessionClock",
    "open_storage",
    "shown_url",
    "storage_url",
    "trial_heartbeat",
    "worker_name",
]

#: The default storage: a SQLite file in ``output_dir``.
STUDY_FILE = "study.db"
#: Seconds between two heartbeats of a running trial (Optuna's ``heartbeat_interval``).
HEARTBEAT_SECONDS = 2
#: A running trial without a heartbeat for this long is failed (and retried once): Optuna's ``grace_period``.
GRACE_SECONDS = 8
#: Seconds between two updates of the session's ``seen`` time.
CLOCK_SECONDS = 1.0
#: A session seen less than this long ago is alive: a new call continues it instead of starting a new one.
LIVE_SECONDS = 6.0
_SCHEMES = ("sqlite", "postgresql", "mysql")


def worker_name() -> str:
    """This process as the trial table names it: ``host/pid``."""
    return f"{socket.gethostname()}/{os.getpid()}"


def storage_url(storage: str | None, output_dir: Path) -> str:
    """The storage URL: ``storage``, or ``sqlite:///{output_dir}/study.db``.

    Raises:
        ValueError: ``storage`` is not a ``sqlite:///``, ``postgresql://`` or ``mysql://`` URL.
    """
    if storage is None:
        return f"sqlite:///{(Path(output_dir) / STUDY_FILE).resolve()}"
    scheme = storage.split("://", 1)[0].split("+", 1)[0] if isinstance(storage, str) and "://" in storage else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"`storage` must be None (a SQLite file in output_dir) or a database URL such as "
            f"'sqlite:///path/study.db' or 'postgresql://user:password@host/db', got {storage!r}"
        )
    return storage


def shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is shown as given: it has no password to hide
        return url


def open_storage(optuna: Any, url: str) -> Any:
    """Connect to ``url`` as an Optuna ``RDBStorage`` with the search's heartbeat and retry.

    Raises:
        ImportError: The database driver is missing (``pip install 'autotimm[postgres]'`` for PostgreSQL).
        ConnectionError: The database cannot be reached; one line, naming the URL (without its password).
    """
    if url.startswith("sqlite"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}}  # workers wait for each other's writes
    else:
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry,
            )
        except ImportError as err:
            extra = " (pip install 'autotimm[postgres]')" if url.startswith("postgresql") else ""
            cause = err.__cause__ or err  # Optuna's own message does not name the module
            raise ImportError(f"`storage` {shown_url(url)!r} needs a database driver: {cause}{extra}") from None
        except Exception as err:  # SQLAlchemy's OperationalError and friends: one line is enough
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConnectionError(f"`storage` {shown_url(url)!r} cannot be reached: {detail}") from None


@contextlib.contextmanager
def trial_heartbeat(storage: Any, trial: Any) -> Iterator[None]:
    """Record ``trial``'s heartbeat every ``HEARTBEAT_SECONDS`` while the block runs (what ``optimize`` does).

    ``study.ask``/``tell`` do not start Optuna's heartbeat thread, so the search runs its own.
    """
    record = getattr(storage, "record_heartbeat", None)
    if record is None:
        yield
        return
    trial_id = trial._trial_id  # Optuna's Trial has no public id; its own optimize loop reads the same attribute
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a busy database skips one beat; the grace period covers it
                record(trial_id)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name="autotimm-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@dataclass
class SearchRecord:
    """The study of one search and what the search keeps in it.

    Args:
        study: The Optuna study.
        storage: Its ``RDBStorage``.
        url: The storage URL.
        created: Whether this process created the study (and so prepares the plan).
    """

    study: Any
    storage: Any
    url: str
    created: bool

    @property
    def name(self) -> str:
        """The study name."""
        return self.study.study_name

    def get(self, key: str, default: Any = None) -> Any:
        """A study user attribute (read fresh from the storage)."""
        return self.study.user_attrs.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Set a study user attribute (JSON data)."""
        self.study.set_user_attr(key, json.loads(json.dumps(value, default=str)))

    @property
    def plan(self) -> dict[str, Any] | None:
        """The stored plan, or ``None`` before the preparing process wrote it."""
        return self.get("plan")

    def wait_for_plan(self, timeout: float) -> dict[str, Any]:
        """The plan, waiting up to ``timeout`` seconds for the preparing process to write it.

        Raises:
            TimeoutError: It did not appear.
        """
        end = time.monotonic() + timeout
        while True:
            plan = self.plan
            if plan is not None:
                return plan
            if time.monotonic() > end:
                raise TimeoutError(
                    f"study {self.study.study_name!r} on {shown_url(self.url)!r} has no plan after {timeout:.0f}s: "
                    "the process that created it did not finish its preparation (start the search without --join)"
                )
            time.sleep(0.5)

    def session(self) -> dict[str, Any] | None:
        """The current session: ``id``, ``start`` (wall time), ``used_before`` and ``seen`` (seconds)."""
        return self.get("session")

    def open_session(self, fresh: bool, called: float | None = None) -> dict[str, Any]:
        """Continue the live session, or start one that counts the time every earlier session used.

        Args:
            fresh: The study is new (nothing was used before).
            called: Wall time of the call that opens it (a new session starts then); ``None``: now.
        """
        now = time.time()
        old = None if fresh else self.session()
        if old is not None and now - old["seen"] < LIVE_SECONDS:
            return old
        used = 0.0 if old is None else old["used_before"] + max(old["seen"] - old["start"], 0.0)
        start = now if called is None else min(called, now)
        session = {"id": uuid.uuid4().hex, "start": start, "used_before": used, "seen": now}
        self.set("session", session)
        history = list(self.get("sessions", []))
        self.set("sessions", [*history, {"start": start, "used_before": round(used, 2)}])
        return session

    def running(self, optuna: Any) -> int:
        """Trials running now (after failing those whose worker stopped beating)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(self.study)
        return len(self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


class SessionClock:
    """A thread that writes the session's ``seen`` time every ``CLOCK_SECONDS``, so a killed search's time counts.

    Args:
        record: The search's study.
        session: The session to keep alive.
    """

    def __init__(self, record: SearchRecord, session: dict[str, Any]) -> None:
        self.record = record
        self.session = dict(session)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="autotimm-clock", daemon=True)

    def _beat(self) -> None:
        with self._lock:
            current = self.record.session() or self.session
            if current.get("id") != self.session["id"]:  # a newer session took over: leave it alone
                return
            self.record.set("session", {**current, "seen": max(time.time(), current.get("seen", 0.0))})

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the clock between two beats: a process forked inside the block inherits no lock of the database's."""
        with self._lock:
            yield

    def _run(self) -> None:
        while not self._stop.wait(CLOCK_SECONDS):
            with contextlib.suppress(Exception):  # a busy database skips one beat
                self._beat()

    def __enter__(self) -> SessionClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._beat()


class OutputLock:
    """An exclusive lock on ``output_dir/.auto_fit.lock``: a second search on the same folder is refused.

    Workers of one search (``join``) do not take it. The lock is an OS file
    lock (``fcntl.flock``), so it is released when its process ends, even by
    ``kill -9`` (forked children close their copy of it); on systems without
    ``fcntl`` there is no lock.

    Args:
        output_dir: The search's output folder.
        description: What holds it (shown to a refused second call).
    """

    def __init__(self, output_dir: Path, description: str) -> None:
        self.path = Path(output_dir) / ".auto_fit.lock"
        self.description = description
        self._handle: Any = None

    def __enter__(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks in the standard library
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # held open for the lock's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RuntimeError(
                f"auto_fit: output_dir {str(self.path.parent)!r} is in use by another search ({holder}); wait for "
                "it, give another output_dir, or add workers to it with join=True (--join)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(self.description)
        handle.flush()
        self._handle = handle
        if hasattr(os, "register_at_fork"):  # forked workers and loaders must not keep the lock after this process
            os.register_at_fork(after_in_child=self._forget)
        return self

    def _forget(self) -> None:
        """In a forked child: close the inherited lock file, so the lock ends with the process that took it."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
