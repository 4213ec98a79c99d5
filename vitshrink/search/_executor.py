"""What an executor is: the small protocol the local and Tune executors implement, the job the driver
hands them, and the registry that finds an executor by name.

The driver creates or resumes the study, trains the teacher and enqueues the warm starts; an
executor then runs trials against that study until its budget is met (`_budget.py`) and returns a
`SearchSummary`. Executors import this module, never the driver nor each other; the registry
names them by module, so choosing ``local`` never imports Ray. ``ray`` and ``tune`` are one executor
(Ray Tune dispatches the trials); ``ray`` is the name it had when it dispatched Ray tasks itself.

Example:
    >>> make_executor("local").name
    'local'
    >>> sorted(EXECUTORS)
    ['local', 'ray', 'tune']
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import optuna

from ..spaces import ConfigError, Recipe
from ._summary import SearchSummary

if TYPE_CHECKING:
    from ._trial import SearchContext

OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial, dict[str, Any]], None]


@dataclass
class SearchJob:
    """Everything an executor needs from the driver to run the trials of one opened study."""

    study: optuna.Study
    recipe: Recipe
    storage_url: str | None  # as the user gave it: workers elsewhere open the storage by URL
    artifact_dir: str
    ctx: SearchContext  # this process's teacher and data (the local executor trains with them)
    started: float  # perf_counter() when the search started: the timeout counts from there
    grace_period: int
    on_trial: OnTrial | None = None
    taken_at_open: set[int] = field(default_factory=set)  # trials taken when the driver opened the study


@runtime_checkable
class Executor(Protocol):
    """Runs the trials of a `SearchJob` until its budget is met."""

    name: str

    def check(self) -> None:
        """Refuse what this executor cannot do, before the study exists or a teacher trains."""

    def run(self, job: SearchJob) -> SearchSummary:
        """Run trials of `job.study` until `job.recipe`'s budget is met; the summary of this driver's part."""


# name -> "module:factory"; a factory takes address, workers and gpus_per_trial as keywords (tune: callbacks too)
EXECUTORS = {
    "local": "vitshrink.search.local_executor:LocalExecutor",
    "ray": "vitshrink.search.tune_executor:RayExecutor",  # the former Ray-task executor's name: Tune dispatches
    "tune": "vitshrink.search.tune_executor:TuneExecutor",
}


def make_executor(name: str, **options: Any) -> Executor:
    """The executor registered as `name`, made with `options` (``address``, ``workers``, ``gpus_per_trial``)."""
    if name not in EXECUTORS:
        *first, last = EXECUTORS
        raise ConfigError(f"unknown executor {name!r}; use {', '.join(first)} or {last}")
    module, _, factory = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), factory)(**options)


def taken_trials(study: optuna.Study) -> set[int]:
    """Numbers of the trials someone took (every trial but those still queued)."""
    return {t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING}


def check_gpus_per_trial(gpus_per_trial: float) -> None:
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} must be >= 0")


__all__ = ["EXECUTORS", "Executor", "OnTrial", "SearchJob", "check_gpus_per_trial", "make_executor",
           "taken_trials"]
