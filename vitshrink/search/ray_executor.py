"""The Ray executor: each trial is a Ray task that asks for a trial and tells its result through
the study's own Optuna storage, dispatched by the driver only while the budget still needs it.

Why not Ray Tune with `OptunaSearch`: Tune keeps its own experiment state (trial ids, checkpoints,
`Tuner.restore`) beside Optuna's, and its searcher asks and tells from the driver, so a resumed
search would have two records to reconcile, and Tune's trial count is not Optuna's count of
COMPLETE trials. Here the Optuna storage stays the one source of truth, exactly as with the local
executor: a task runs ``study.optimize(n_trials=1)`` against the same storage (so it gets Optuna's
heartbeat, enqueued warm starts and retries for free), and the driver starts a task only while
``completed + running < budget``, counting the trials of every other driver of the study; each task
then claims its slot by the rule the local executor uses (`_budget.claim_slot`), so Ray and local
drivers together complete exactly the budget. Trials that die with their worker are failed and
retried with the same parameters, never counted twice.

Each task gets an equal CPU share (``num_cpus``) and sets torch's threads to it. Without
`address` a local cluster is started on loopback with this machine's CPUs. With a ``ray:RESOURCE``
latency target, the trial's model is timed by a nested task that needs ``{RESOURCE: 1}`` (capacity
1 on the target node), so measurements run on that node and never overlap; with ``cpu:N`` the
machine-wide latency lock keeps measurements on one machine apart.

Example (not run as a doctest: it needs a Ray cluster)::

    summary = run_search(recipe, storage="postgresql://user@db/vitshrink", executor="ray",
                         address="auto", workers=4)
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import optuna
from optuna.trial import TrialState

from ..spaces import ConfigError, Recipe
from ._budget import budget_left, count_states, is_not_run
from ._executor import SearchJob, check_gpus_per_trial
from ._optuna import get_trial
from ._ray import (MAX_TASK_ERRORS, POLL_S, absolute_storage_url, check_gpus, check_target, connect, cpu_share,
                   refuse_missing_gpus)
from ._schema import DRIVER_ATTR, RAY_TASK_ATTR, WORKER_ATTR
from ._storage import (DEFAULT_GRACE_PERIOD, fail_stale_trials, fail_trial_and_retry,
                       heartbeat_interval_for, this_worker)
from ._summary import SearchError, SearchSummary
from ._worker import run_remote_trial

log = logging.getLogger(__name__)

def _trial_task(recipe: Recipe, storage_url: str, study_name: str, artifact_dir: str, threads: int, seed: int,
                grace_period: int, driver_id: str) -> dict[str, Any]:
    """One trial on a Ray worker: ask, build, measure, save, tell (all through the storage)."""
    import ray

    task_id = ray.get_runtime_context().get_task_id()
    frozen = run_remote_trial(recipe, storage_url, study_name, artifact_dir, threads, seed, grace_period,
                              tags={RAY_TASK_ATTR: task_id, DRIVER_ATTR: driver_id})
    return {"trial": frozen.number, "worker": this_worker()}


def _trial_of_task(study: optuna.Study, task_id: str) -> optuna.trial.FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(RAY_TASK_ATTR) == task_id), None)


def run_on_ray(
    study: optuna.Study,
    recipe: Recipe,
    storage_url: str | None,
    artifact_dir: str,
    address: str | None = None,
    workers: int = 1,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial, dict[str, int]], None] | None = None,
    started: float | None = None,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    gpus_per_trial: float = 0.0,
) -> SearchSummary:
    """Run `study` on Ray with up to `workers` concurrent trials until the budget of `recipe` is met;
    each trial task asks Ray for `gpus_per_trial` GPUs (a fraction shares one).

    `storage_url` must be reachable from every node (PostgreSQL, Redis, or a file on shared storage).
    Returns the driver's `SearchSummary`; trials of crashed workers are failed and retried.

    Example (not run as a doctest: it needs a Ray cluster)::

        run_on_ray(study, recipe, "sqlite:////tmp/s.db", "/tmp/s.artifacts", workers=2)
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    started = time.perf_counter() if started is None else started
    url = absolute_storage_url(storage_url)
    ray, owned = connect(address)
    pending: dict[Any, int] = {}
    try:
        check_target(ray, recipe)
        share = cpu_share(ray, workers)
        check_gpus(ray, gpus_per_trial)
        options: dict[str, Any] = {"num_cpus": share, "max_retries": 0, "name": "vitshrink-trial"}
        if gpus_per_trial > 0:
            options["num_gpus"] = gpus_per_trial  # fractions share a GPU; Ray sets CUDA_VISIBLE_DEVICES per task
        # workers on this machine reuse the driver's teacher cache; elsewhere the folder is created
        env = {k: os.environ[k] for k in ("VITSHRINK_CACHE",) if k in os.environ}
        if env:
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(_trial_task).options(**options)
        driver_id = f"{this_worker()}:{uuid.uuid4().hex[:8]}"
        log.info("ray: %d workers x %d CPUs, storage %s", workers, share, url)
        at_start = count_states(study)
        failures_at_start, pruned_at_start = at_start["FAIL"], at_start["PRUNED"]
        before = len(study.trials)
        ran: list[int] = []  # trials this driver's tasks ran (not those that gave their slot back)

        def own(t: optuna.trial.FrozenTrial) -> bool:  # counted through `pending` instead
            return t.user_attrs.get(DRIVER_ATTR) == driver_id

        dispatched, task_errors, last_stale_check = 0, [], 0.0
        while True:
            if time.monotonic() - last_stale_check >= min(5, heartbeat_interval_for(grace_period)):
                fail_stale_trials(study, grace_period)
                last_stale_check = time.monotonic()
            left, reason = budget_left(study, recipe, started, failures_at_start, pruned_at_start, own=own)
            if reason is None:
                free = left - len(pending)
                while len(pending) < workers and free > 0:
                    ref = task.remote(recipe, url, study.study_name, artifact_dir, share,
                                      recipe.seed + before + dispatched, grace_period, driver_id)
                    pending[ref] = dispatched
                    dispatched += 1
                    free -= 1
            if not pending:
                if reason is not None:
                    break
                time.sleep(POLL_S)  # the budget is held by trials running elsewhere
                continue
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                pending.pop(ref)
                frozen = _collect(ray, study, ref, task_errors)
                if frozen is not None and not is_not_run(frozen):
                    ran.append(frozen.number)
                if frozen is not None and on_trial:
                    on_trial(study, frozen, count_states(study))
            if len(task_errors) >= MAX_TASK_ERRORS:
                raise SearchError(f"{len(task_errors)} Ray trial tasks in a row failed before running a trial; "
                                  f"the last: {task_errors[-1]}")
    except BaseException:  # Ctrl-C or a broken setup: stop the tasks still running, then report
        _interrupt(ray, pending)
        raise
    finally:
        if owned:
            ray.shutdown()
    counts = count_states(study)
    _, reason = budget_left(study, recipe, started, failures_at_start, pruned_at_start)
    return SearchSummary(study, counts["COMPLETE"], counts["FAIL"], len(ran), time.perf_counter() - started,
                         reason or "trials", counts["PRUNED"])


@dataclass
class RayExecutor:
    """Runs up to `workers` trials at once as Ray tasks on the cluster at `address` (None: a local
    cluster on loopback), each asking for `gpus_per_trial` GPUs."""

    address: str | None = None
    workers: int = 1
    gpus_per_trial: float = 0.0
    name: ClassVar[str] = "ray"

    def check(self) -> None:
        if self.gpus_per_trial:  # GPUs Ray cannot give are refused before the study exists or a teacher trains
            check_gpus_per_trial(self.gpus_per_trial)
            refuse_missing_gpus(self.address, self.gpus_per_trial)

    def run(self, job: SearchJob) -> SearchSummary:
        return run_on_ray(job.study, job.recipe, job.storage_url, job.artifact_dir, address=self.address,
                          workers=self.workers, on_trial=job.on_trial, started=job.started,
                          grace_period=job.grace_period, gpus_per_trial=self.gpus_per_trial)


def _collect(ray, study: optuna.Study, ref, task_errors: list[str]) -> optuna.trial.FrozenTrial | None:
    """The finished trial of task `ref`; a task whose worker died has its trial failed and retried."""
    try:
        number = ray.get(ref)["trial"]
    except ray.exceptions.RayError as exc:
        reason = _task_failure(exc)
        trial = _trial_of_task(study, ref.task_id().hex())
        if trial is None:
            task_errors.append(reason)
            log.warning("a Ray trial task failed before running a trial: %s", reason)
            return None
        task_errors.clear()
        if trial.state == TrialState.RUNNING:
            fail_trial_and_retry(study, trial, f"Ray worker {trial.user_attrs.get(WORKER_ATTR, '?')} died: {reason}")
        return get_trial(study, trial)  # one trial, not the whole study
    task_errors.clear()
    return study.get_trials(deepcopy=False)[number]


def _task_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _interrupt(ray, pending: dict[Any, int]) -> None:
    """Interrupt the running tasks (their trials are recorded FAIL, interrupted) and wait briefly."""
    for ref in pending:
        ray.cancel(ref)
    if pending:
        ray.wait(list(pending), num_returns=len(pending), timeout=10)


__all__ = ["RayExecutor", "absolute_storage_url", "connect", "cpu_share", "run_on_ray"]
