"""The local executor: trials run one at a time in this process, against the study's storage.

Any number of local drivers (and Ray drivers) may run one study: they share its budget through the
storage (`_budget.py`), and a driver that finds another sampling beside it reseeds its sampler.

Example (not run as a doctest: it runs a whole search)::

    summary = run_search(recipe, storage="sqlite:///vitshrink.db", executor="local")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import optuna

from ..spaces import ConfigError, Recipe
from ._budget import POLL_S, budget_left, claim_slot, count_states, is_not_run
from ._executor import SearchJob, check_gpus_per_trial, taken_trials
from ._storage import DEFAULT_GRACE_PERIOD, fail_stale_trials, heartbeat_interval_for, trial_heartbeat
from ._summary import SearchSummary
from ._trial import SearchContext, run_trial


@dataclass
class LocalExecutor:
    """Runs trials in this process; `address` and `workers` are the Tune executor's and ignored here."""

    address: str | None = None
    workers: int = 1
    gpus_per_trial: float = 0.0
    name: ClassVar[str] = "local"

    def check(self) -> None:
        if self.gpus_per_trial:
            check_gpus_per_trial(self.gpus_per_trial)
            raise ConfigError("--gpus-per-trial applies to Ray Tune trials; add --executor tune, or leave it out (the local "
                              "executor trains on [teacher.train] device)")

    def run(self, job: SearchJob) -> SearchSummary:
        return _run_local(job.study, job.recipe, job.artifact_dir, job.ctx, job.on_trial, job.started,
                          job.grace_period, job.taken_at_open)


def _run_local(study: optuna.Study, recipe: Recipe, art_dir: str, ctx: SearchContext, on_trial, started: float,
               grace_period: int = DEFAULT_GRACE_PERIOD, taken_before: set[int] | None = None) -> SearchSummary:
    """Run trials in this process until the study's budget is met: other drivers on the same storage
    (processes, Ray) share the budget, and this one waits while their running trials hold the rest.

    `taken_before`: trials already taken when the study was opened (default: now)."""
    at_start = count_states(study)
    failures_at_start, pruned_at_start = at_start["FAIL"], at_start["PRUNED"]
    if taken_before is None:
        taken_before = taken_trials(study)
    asked: set[int] = set()  # trials this driver took (ran or gave back)
    reseeded = False
    ran: list[int] = []  # trials this driver ran (not those it gave back)

    def callback(st: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if not is_not_run(frozen):
            ran.append(frozen.number)
        if on_trial:
            on_trial(st, frozen, count_states(st))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        nonlocal reseeded
        asked.add(trial.number)
        claim_slot(trial, recipe.trials)  # another driver may have taken the last slot since budget_left
        if not reseeded and _other_driver_active(trial.study, taken_before, asked):
            # drivers that opened the study together share its seed (recipe seed + trials at open): left
            # as is, each would sample the same configurations. Checked after this trial exists, so of two
            # drivers sampling at once the later one sees the other. Alone, a driver keeps the seed.
            trial.study.sampler.reseed_rng()
            reseeded = True
        with trial_heartbeat(trial, heartbeat_interval_for(grace_period)):
            return run_trial(trial, recipe, art_dir, ctx)

    while True:
        fail_stale_trials(study, grace_period)  # a crashed run's trials: failed, re-enqueued, run first
        free, stopped_by = budget_left(study, recipe, started, failures_at_start, pruned_at_start)
        if stopped_by:
            break
        if not free:  # the rest of the budget is running elsewhere: wait until it completes or a trial fails
            time.sleep(POLL_S)
            continue
        timeout = None if recipe.timeout is None else max(1.0, recipe.timeout - (time.perf_counter() - started))
        study.optimize(objective, n_trials=1, timeout=timeout,
                       catch=(Exception,), callbacks=[callback], gc_after_trial=False)
    counts = count_states(study)
    return SearchSummary(study, counts["COMPLETE"], counts["FAIL"], len(ran), time.perf_counter() - started,
                         stopped_by, counts["PRUNED"])


def _other_driver_active(study: optuna.Study, taken_before: set[int], asked: set[int]) -> bool:
    """Whether another driver took a trial since this one started (queued trials, such as retries
    this driver enqueued itself, do not count until someone takes them)."""
    return any(t.number not in taken_before and t.number not in asked and t.state != optuna.trial.TrialState.WAITING
               for t in study.get_trials(deepcopy=False))


__all__ = ["LocalExecutor"]
