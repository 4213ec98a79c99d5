"""The one place vitshrink reaches into Optuna's private API: small named functions over it.

Everything else in vitshrink uses Optuna's public API, and a test (tests/test_optuna_adapter.py)
fails when an Optuna private name appears outside this module; the same file runs every function
here against every storage vitshrink opens (SQLite, PostgreSQL, journal file, journal Redis), so an
Optuna upgrade that moves one of these breaks here, visibly, and nowhere else.

Why each private use remains (Optuna 5.0):

- `storage_of`: ``Study._storage``. A study has no public getter for its storage, and a trial
  (``optuna.Trial``, ``FrozenTrial``) reaches it only through its study; the storage a driver opened
  itself is not the same object (Optuna wraps an RDB storage in its cache, which owns the heartbeat).
- `trial_id`, `study_id`: ``_trial_id``, ``_study_id``. Storages address trials and studies by id;
  the public route (``get_study_id_from_name``, ``get_trial_id_from_study_id_trial_number``) costs
  one or two queries per call, inside heartbeat threads and stale checks that run all the time.
- `get_trial`, `set_trial_user_attr`, `set_trial_system_attr`: one trial read or written through the
  storage. ``study.get_trials()`` reads the whole study to return one trial; ``Trial.set_user_attr``
  exists only on a live trial of this process (a stale trial belongs to another), and Optuna 5 has
  no public system-attribute setter at all (the journal heartbeat is one).
- `set_trial_state`: a RUNNING trial of another (dead) process marked FAIL. ``study.tell`` would also
  run this process's sampler's ``after_trial`` on a trial it never sampled; the storage's setter
  raises ``UpdateFinishedTrialError`` when another process finished it first, which callers rely on.
- `heartbeat_enabled`, `stale_trial_ids`, `heartbeat_grace_period`: Optuna's heartbeat
  (``optuna.storages._heartbeat``, ``BaseHeartbeat._get_stale_trial_ids``, the RDB grace period
  behind the cache). Public ``optuna.storages.fail_stale_trials`` fails stale trials but records no
  reason and does not say which; vitshrink stores why a trial failed.
- `compute_hypervolume`: ``optuna._hypervolume.compute_hypervolume``; Optuna has no public hypervolume of a
  point set (its plots compute it privately).

Example:
    >>> study = optuna.create_study(directions=["maximize", "minimize"])
    >>> trial = study.ask()
    >>> get_trial(study, trial).number == trial.number
    True
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import optuna
from optuna._hypervolume import compute_hypervolume as optuna_hypervolume
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

AnyTrial = Union[optuna.Trial, FrozenTrial]


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage `study` (and its trials) read and write, as Optuna wraps it."""
    return study._storage  # noqa: SLF001 - no public getter (see the module docstring)


def study_id(study: optuna.Study) -> int:
    """`study`'s id in its storage."""
    return study._study_id  # noqa: SLF001


def trial_id(trial: AnyTrial) -> int:
    """The storage id of a live or frozen trial (not its `number`, which counts within the study)."""
    return trial._trial_id  # noqa: SLF001


def get_trial(study: optuna.Study, trial: AnyTrial) -> FrozenTrial:
    """A fresh copy of one trial of `study` from the storage (its system attributes included)."""
    return storage_of(study).get_trial(trial_id(trial))


def set_trial_user_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    """Write a user attribute of any trial of `study`, whichever process runs it."""
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def set_trial_system_attr(study: optuna.Study, trial: AnyTrial, key: str, value: Any) -> None:
    """Write a system attribute of any trial of `study` (Optuna 5 has no public setter)."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def set_trial_state(study: optuna.Study, trial: AnyTrial, state: TrialState) -> bool:
    """Set a trial's state in the storage; raises `optuna.exceptions.UpdateFinishedTrialError`
    when it is already finished (another process finished or failed it first)."""
    return storage_of(study).set_trial_state_values(trial_id(trial), state)


def heartbeat_enabled(storage: BaseStorage) -> bool:
    """Whether Optuna's own heartbeat runs for `storage` (RDB storages opened with an interval)."""
    return is_heartbeat_enabled(storage)


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Storage ids of `study`'s RUNNING trials whose Optuna heartbeat is older than the storage's grace
    period; empty where Optuna keeps no heartbeat (journal storages)."""
    storage = storage_of(study)
    if not heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study_id(study)))  # noqa: SLF001


def heartbeat_grace_period(storage: BaseStorage) -> int | None:
    """The grace period of an RDB storage's heartbeat (seen through Optuna's cache), else None."""
    return getattr(getattr(storage, "_backend", storage), "grace_period", None)


def compute_hypervolume(points: Iterable, reference: Any) -> float:
    """The hypervolume dominated by `points` (an (n, d) array, all minimised) up to `reference`."""
    return float(optuna_hypervolume(points, reference))


__all__ = ["compute_hypervolume", "get_trial", "heartbeat_enabled", "heartbeat_grace_period", "set_trial_state",
           "set_trial_system_attr", "set_trial_user_attr", "stale_trial_ids", "storage_of", "study_id", "trial_id"]
