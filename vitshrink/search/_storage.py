"""Optuna storages by URL (SQLite, PostgreSQL, journal file, journal Redis), the artifact store
beside them, password masking for every message and log line, and stale-trial handling.

A trial left RUNNING by a process that died (kill -9, a lost machine, a killed Ray worker) is
failed and re-enqueued with the same parameters. RDB storages use Optuna's heartbeat; journal
storages have none in Optuna, so `trial_heartbeat` writes an equivalent one (a trial system
attribute) and `fail_stale_trials` checks it. On the trial's own host a dead owner process is
detected at once, without waiting for the grace period.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Iterator

import optuna
import redis
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from ._optuna import (get_trial, heartbeat_enabled, heartbeat_grace_period, set_trial_state, set_trial_system_attr,
                      set_trial_user_attr, stale_trial_ids, storage_of, trial_id)
from ._schema import (ARTIFACT_DIR_ATTR, FAIL_REASON_ATTR, HEARTBEAT_ATTR, NOT_RUN_ATTR,  # noqa: F401 - re-exported
                      OPTUNA_FAILED_TRIAL_ATTR, OWNER_USER_ATTRS, REQUEUED_FROM_ATTR, RETRY_OF_ATTR, WORKER_ATTR)

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///vitshrink.db"
DEFAULT_GRACE_PERIOD = 30


class StorageError(RuntimeError):
    """A storage URL that is malformed or unreachable; the message masks any password."""


def mask_url(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db` (also for redis:// URLs).

    Works on any text holding URLs (messages, log lines); a password containing ``@`` is masked whole.

    Example:
        >>> mask_url("cannot open postgresql://me:p@ss@db:5432/x: refused")
        'cannot open postgresql://me:***@db:5432/x: refused'
    """
    return re.sub(r"(://[^:/@\s]*:)[^\s/]*@", r"\1***@", url)


def _is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.startswith("redis://") or url.startswith("rediss://") or url.endswith(".log")


def heartbeat_interval_for(grace_period: int) -> int:
    """Beat three times per grace period, so one slow write never makes a live trial look stale."""
    return max(1, int(grace_period) // 3)


def open_storage(url: str | None, heartbeat_interval: int | None = 10,
                 grace_period: int | None = DEFAULT_GRACE_PERIOD, max_retry: int = 3) -> BaseStorage:
    """An Optuna storage for `url`:

    - ``sqlite:///path.db`` (the default, one machine), ``postgresql://user@host/db`` (many machines),
      any other SQLAlchemy URL Optuna supports;
    - ``journal:///path/file.log`` or a ``*.log`` path: Optuna's journal storage on a file (NFS-friendly);
    - ``redis://host:port/db``: Optuna's journal storage on Redis.

    RDB storages get Optuna's heartbeat, so trials left RUNNING by a crashed worker are marked FAIL
    after `grace_period` seconds and retried (RetryFailedTrialCallback) with the same parameters.
    """
    url = url or DEFAULT_STORAGE
    masked = mask_url(url)
    try:
        if url.startswith("redis://") or url.startswith("rediss://"):
            _ping_redis(url)  # fail now, with a clear message, rather than on the first write
            return JournalStorage(JournalRedisBackend(url))
        if _is_journal(url):
            path = url.removeprefix("journal://").removeprefix("journal:")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        if "://" not in url:
            raise StorageError(f"storage {masked!r} is not a URL; use sqlite:///file.db, postgresql://user@host/db, "
                               "journal:///file.log or redis://host:6379")
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict = {}
        if heartbeat_interval:
            with warnings.catch_warnings():  # Optuna marks its heartbeat API experimental; it is what we rely on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                kwargs = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period,
                          "heartbeat_stale_trial_callback": RetryStaleTrial(max_retry=max_retry)}
        url = _with_installed_driver(url)
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver errors vary (sqlalchemy, psycopg2, redis); one message for all
        reason = mask_url(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if "import DB access module" in reason or isinstance(exc, ImportError):
            raise StorageError(f"cannot open storage {masked}: the database driver for this URL is not installed; "
                               "pip install 'psycopg[binary]' (PostgreSQL), pymysql (MySQL) or redis (Redis), "
                               "or name an installed driver in the URL, e.g. postgresql+psycopg2://") from None
        raise StorageError(f"cannot open storage {masked}: {reason}; check the URL, that the server is running "
                           "and reachable, and the credentials") from None


def _ping_redis(url: str) -> None:
    client = redis.Redis.from_url(url)  # what JournalRedisBackend connects with
    try:
        client.ping()
    finally:
        client.close()


def _with_installed_driver(url: str) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2 (vitshrink depends on it, so Optuna's own tools
    open a study with the very URL the user gave); use psycopg2 when only it is installed, and read
    Heroku-style `postgres://` as PostgreSQL. An explicit `postgresql+driver://` is kept as written."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def default_artifact_dir(url: str | None) -> Path:
    """Artifacts live beside a SQLite or journal file (`x.db` -> `x.artifacts/`), else in ./vitshrink-artifacts."""
    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///"):
        p = Path(url.removeprefix("sqlite:///")).expanduser()
        return p.with_suffix(".artifacts")
    if _is_journal(url) and not url.startswith("redis"):
        p = Path(url.removeprefix("journal://").removeprefix("journal:"))
        return p.with_suffix(".artifacts")
    return Path(os.getcwd()) / "vitshrink-artifacts"


def artifact_store(path: str | Path) -> optuna.artifacts.FileSystemArtifactStore:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(p))


def study_names(storage: BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def describe_storage(url: str | None) -> str:
    return mask_url(url or DEFAULT_STORAGE)


def is_rdb(url: str | None) -> bool:
    u = url or DEFAULT_STORAGE
    return "://" in u and not _is_journal(u)


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (a WAITING copy with the same params, `failed_trial` and
    `retry_history` system attributes), minus the dead owner's attributes (`OWNER_USER_ATTRS`,
    the journal heartbeat)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in OWNER_USER_ATTRS}
        clean.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != HEARTBEAT_ATTR}
        super().__call__(study, clean)


@contextlib.contextmanager
def trial_heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Beat for `trial` every `interval` seconds while the block runs, where Optuna does not.

    RDB storages with a heartbeat already beat (Optuna's own thread); on journal storages this
    writes `HEARTBEAT_ATTR` as a trial system attribute, which `fail_stale_trials` reads.

    Example (not run as a doctest: it needs a study and its trials)::

        with trial_heartbeat(trial, interval=10):
            run_trial(trial, recipe, artifact_dir)
    """
    study = trial.study
    if heartbeat_enabled(storage_of(study)):
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                set_trial_system_attr(study, trial, HEARTBEAT_ATTR, time.time())
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the trial goes on
                log.debug("heartbeat of trial %d not written: %s", trial.number, exc)
            if stop.wait(interval):
                return

    set_trial_system_attr(study, trial, HEARTBEAT_ATTR, time.time())
    thread = threading.Thread(target=beat, name=f"vitshrink-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def this_worker() -> str:
    """This process as trials record their owner: ``host:pid``.

    Example:
        >>> this_worker().rsplit(":", 1)[1] == str(os.getpid())
        True
    """
    return f"{os.uname().nodename}:{os.getpid()}"


def owner_is_gone(worker: str | None) -> bool:
    """True when `worker` ("host:pid", as trials record it) names a process on this host that no
    longer runs (or is a zombie). Other hosts, or a live pid, are left to the heartbeat."""
    if not worker or ":" not in worker:
        return False
    host, _, pid_text = worker.rpartition(":")
    if host != os.uname().nodename or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    with contextlib.suppress(OSError, IndexError):
        # a killed child nobody has reaped yet still answers kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return False


def fail_trial_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, max_retry: int = 3) -> bool:
    """Mark a RUNNING `trial` FAIL with `reason` and enqueue its retry (same params); False when
    another process finished or failed it first, so a trial is never retried twice."""
    try:
        set_trial_user_attr(study, trial, FAIL_REASON_ATTR, reason)
        if not set_trial_state(study, trial, TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    if any(t.user_attrs.get(REQUEUED_FROM_ATTR) == trial.number for t in study.get_trials(deepcopy=False)):
        return True  # it was giving its budget slot back and had queued its parameters again already
    log.warning("trial %d failed: %s; retrying it with the same parameters", trial.number, reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryStaleTrial(max_retry=max_retry)
    retry(study, get_trial(study, trial))
    return True


def fail_stale_trials(study: optuna.Study, grace_period: float = DEFAULT_GRACE_PERIOD, max_retry: int = 3) -> list[int]:
    """Fail and retry the RUNNING trials whose owner is gone: a dead process on this host, or no
    heartbeat for `grace_period` seconds (Optuna's heartbeat table on RDB storages, whose own grace
    period applies there; `HEARTBEAT_ATTR` on journal storages). Returns the trial numbers failed here.

    Optuna's `fail_stale_trials` (run by `Study.optimize` too) does the same on RDB storages but
    records no reason; this one stores ``fail_reason`` on the trial first.

    Example (not run as a doctest: it needs a study and its trials)::

        fail_stale_trials(study, grace_period=30)  # -> [3]
    """
    storage = storage_of(study)
    optuna_beats = heartbeat_enabled(storage)
    stale_ids = stale_trial_ids(study)
    rdb_grace = heartbeat_grace_period(storage) or grace_period
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        reason = None
        if owner_is_gone(worker):
            reason = f"its worker {worker} stopped (killed or crashed) while running it"
        elif trial_id(t) in stale_ids:
            reason = f"no heartbeat from {worker or 'its worker'} for over {rdb_grace} s"
        elif not optuna_beats:
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            last = float(beat) if beat is not None else (t.datetime_start.timestamp() if t.datetime_start else now)
            if now - last > grace_period:
                reason = f"no heartbeat from {worker or 'its worker'} for {now - last:.0f} s"
        if reason and fail_trial_and_retry(study, t, reason, max_retry):
            failed.append(t.number)
    return failed


def fail_own_running_trials(url: str | None, reason: str) -> list[tuple[str, int]]:
    """After an interrupt: fail (and retry) every trial in the storage still RUNNING in this process,
    so the storage holds no RUNNING trial nobody owns. Returns (study, trial number) pairs.

    Example (not run as a doctest: it needs a study and its trials)::

        fail_own_running_trials("sqlite:///vitshrink.db", "interrupted by the user")  # -> []
    """
    storage = open_storage(url, heartbeat_interval=None)
    me = this_worker()
    done = []
    for name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(WORKER_ATTR) == me and fail_trial_and_retry(study, t, reason):
                done.append((name, t.number))
    return done


def is_retry(trial: optuna.Trial) -> bool:
    """Whether `trial` re-runs an earlier one (a crashed or killed trial's retry, an interrupted trial's,
    or a queued copy given back by another driver): its configuration already passed screening once."""
    if RETRY_OF_ATTR in trial.user_attrs or REQUEUED_FROM_ATTR in trial.user_attrs:
        return True
    frozen = get_trial(trial.study, trial)  # a live trial's system attributes have no public getter
    return OPTUNA_FAILED_TRIAL_ATTR in frozen.system_attrs
