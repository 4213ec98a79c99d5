"""The Ray Tune executor: Ray Tune dispatches the trials (its `Tuner`, resources, callbacks, loggers and
experiment folder), and the study's Optuna storage stays the one record of the search.

Tune asks a search algorithm for work; `BudgetSearcher` answers from the storage, by the rule every
vitshrink driver follows (`_budget.py`): it hands out a trial only while COMPLETE + RUNNING is
below the budget (counting other drivers' trials), returns None while running trials hold the rest,
and ``FINISHED`` once the budget is met (or the timeout, or too many failures). Each Tune trial
then asks the study for its configuration where it runs (`_worker.run_remote_trial`): vitshrink's
define-by-run space, its sampler (which builds and measures candidate structures with the teacher
and data loaded in that process), screening, rungs, heartbeats and the slot claim all run as with
the local executor, so Tune and local drivers share one exact budget. A Tune trial
whose worker died leaves its Optuna trial RUNNING; the searcher fails it and queues its retry with
the same parameters (Tune's own retries are off: a retry is the study's, counted once).

Why Tune does not sample: Tune's `OptunaSearch` asks and tells from the driver and ignores
intermediate results with several objectives, while vitshrink's sampler needs the teacher's
structure and measured latencies, and its rungs report per epoch; so the searcher decides *when* a
trial runs and the trial decides *what* it runs. What Tune reports per trial (`tune.report`) is the
finished trial's objectives by name, its state, Optuna number, parameters and reason.

Resuming: run the same command. Tune's experiment folder (``<artifacts>/tune/<study>``) is a log,
not state: ``Tuner.restore`` is refused with one sentence (`NOT_RESTORED`; it would replay Tune's
view of trials the storage has already failed and retried), and a resumed search is a new Tune
experiment in the same folder. Ctrl-C stops at once: Tune's SIGINT handler, which lets running
trials go on, is off inside `run_on_tune`. ``--executor ray`` is this executor under its former name.

Example (not run as a doctest: it needs Ray)::

    summary = run_search(recipe, storage="postgresql://user@db/vitshrink", executor="tune", workers=4,
                         tune_callbacks=[MLflowLoggerCallback()])
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..spaces import ConfigError, Recipe
from ._budget import budget_left, count_states, is_not_run
from ._executor import OnTrial, SearchJob, check_gpus_per_trial
from ._optuna import get_trial
from ._schema import DRIVER_ATTR, TUNE_TRIAL_ATTR, WORKER_ATTR
from ._storage import (DEFAULT_GRACE_PERIOD, fail_stale_trials, fail_trial_and_retry, heartbeat_interval_for,
                       open_storage, this_worker)
from ._summary import SearchError, SearchSummary
from ._worker import run_remote_trial, trial_result
from ._ray import (LOOPBACK_ENV, MAX_TASK_ERRORS, POLL_S, absolute_storage_url, check_gpus, check_target, connect, cpu_share,
                   refuse_missing_gpus)

if "ray" not in sys.modules:  # a local cluster started here stays on loopback (read when Ray is imported)
    os.environ.setdefault(LOOPBACK_ENV, "0")
try:  # Ray Tune is a dependency, but the module stays importable (and says what to install) without it
    from ray import tune
    from ray.tune.search import Searcher
except ImportError:  # pragma: no cover - exercised only where Ray is missing
    tune = None
    Searcher = object

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by the user (Ctrl-C); retried when the search resumes"
NOT_RESTORED = ("a vitshrink search is not resumed by Tuner.restore: run the same vitshrink search command (or "
                "vitshrink.tune.prepare) again, and the study resumes from its storage")


@contextlib.contextmanager
def _environ(**values: str):
    """Environment variables set for the block (Tune reads its switches from the environment)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _need_tune() -> None:
    if tune is None:
        raise SearchError("the tune executor needs Ray Tune: pip install 'ray[tune]'")


class BudgetSearcher(Searcher):
    """A Ray Tune search algorithm over a vitshrink study: a trial while the study's budget needs one.

    Each suggestion is ``{"seed": ..., "driver": ...}``: the trial's sampler seed (consecutive per
    driver, so concurrent trials sample apart) and this searcher's id, which the trial records so a
    worker's death is tied to its trial. `started` (``time.perf_counter()``) starts the recipe's
    timeout; `on_trial` is called with each finished trial as with the other executors.
    """

    def __init__(self, recipe: Recipe, storage_url: str, study_name: str, grace_period: int = DEFAULT_GRACE_PERIOD,
                 started: float | None = None, on_trial: OnTrial | None = None):
        _need_tune()
        super().__init__()
        self.recipe, self.grace_period, self.on_trial = recipe, grace_period, on_trial
        self.started = time.perf_counter() if started is None else started
        self.driver_id = f"{this_worker()}:{uuid.uuid4().hex[:8]}"
        storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval_for(grace_period),
                               grace_period=grace_period)
        self.study = optuna.load_study(study_name=study_name, storage=storage)
        at_start = count_states(self.study)
        self._failures_at_start, self._pruned_at_start = at_start["FAIL"], at_start["PRUNED"]
        self._seed0 = recipe.seed + len(self.study.get_trials(deepcopy=False))
        self.pending: dict[str, int] = {}  # Tune trial id -> its seed, until Tune says it ended
        self.ran: list[int] = []  # Optuna trials this searcher's Tune trials ran (slots given back not counted)
        self.stopped_by: str | None = None  # why it said FINISHED: "trials", "timeout", "failures", "pruned"
        self.error: str | None = None
        self._dispatched = 0
        self._task_errors: list[str] = []
        self._checked_at = self._stale_checked_at = -float("inf")
        self._answer: tuple[int, str | None] = (0, None)

    # --- Tune's Searcher API ------------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is the study's; Tune's metric and mode are for Tune's own reports

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.study is None:
            raise SearchError(NOT_RESTORED)
        if self.error is not None:
            return Searcher.FINISHED
        left, reason = self._budget()
        if reason is not None:
            self.stopped_by = reason
            return Searcher.FINISHED
        if left - len(self.pending) <= 0:
            return None  # running trials (here or elsewhere) hold the rest of the budget: ask again later
        seed = self._seed0 + self._dispatched
        self._dispatched += 1
        self.pending[trial_id] = seed
        self._checked_at = -float("inf")  # the next question counts again
        return {"seed": seed, "driver": self.driver_id}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.pending.pop(trial_id, None)
        self._checked_at = -float("inf")
        frozen = self._trial_of(trial_id)
        if frozen is None:
            if error:  # the Tune trial failed before its Optuna trial existed: a broken worker set-up
                self._task_errors.append(f"Tune trial {trial_id} failed before running a trial")
                log.warning("%s", self._task_errors[-1])
                if len(self._task_errors) >= MAX_TASK_ERRORS:
                    self.error = (f"{len(self._task_errors)} Ray Tune trials in a row failed before running a "
                                  f"trial; see their error.txt under the Tune experiment folder")
            return
        self._task_errors.clear()
        if error and frozen.state == TrialState.RUNNING:  # the worker died with it
            worker = frozen.user_attrs.get(WORKER_ATTR, "?")
            fail_trial_and_retry(self.study, frozen, f"Ray Tune trial {trial_id}: its worker {worker} died "
                                                     "while running it")
            frozen = get_trial(self.study, frozen)
        if not is_not_run(frozen):
            self.ran.append(frozen.number)
        if self.on_trial is not None:
            self.on_trial(self.study, frozen, count_states(self.study))

    def __getstate__(self) -> dict[str, Any]:
        """What Tune pickles (its ``tuner.pkl``): the settings, not the open storage or the caller's callback."""
        return {k: v for k, v in self.__dict__.items() if k not in ("study", "on_trial")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, study=None, on_trial=None)

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study's storage is the search's state (resume by running it again)."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: see `save`."""

    # --- the storage ----------------------------------------------------------------------------------------------
    def _budget(self) -> tuple[int, str | None]:
        """`budget_left` from the storage, asked at most every POLL_S seconds unless a trial started or ended."""
        now = time.monotonic()
        if now - self._stale_checked_at >= min(5, heartbeat_interval_for(self.grace_period)):
            fail_stale_trials(self.study, self.grace_period)
            self._stale_checked_at = now
        if now - self._checked_at >= POLL_S:
            self._answer = budget_left(self.study, self.recipe, self.started, self._failures_at_start,
                                       self._pruned_at_start, own=self._own)
            self._checked_at = now
        return self._answer

    def _own(self, t: FrozenTrial) -> bool:  # RUNNING trials counted through `pending` instead
        return t.user_attrs.get(DRIVER_ATTR) == self.driver_id

    def _trial_of(self, trial_id: str) -> FrozenTrial | None:
        return next((t for t in self.study.get_trials(deepcopy=False)
                     if t.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id and self._own(t)), None)

    def fail_running(self, reason: str) -> list[int]:
        """Fail (and queue the retry of) every trial of this searcher still RUNNING: after Tune stopped."""
        failed = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if self._own(t) and fail_trial_and_retry(self.study, t, reason):
                failed.append(t.number)
        return failed


def vitshrink_trial(config: dict[str, Any], recipe: Recipe, storage_url: str, study_name: str, artifact_dir: str,
               grace_period: int, threads: int, workdir: str | None = None) -> None:
    """The Tune trainable: one trial of the study (asked, built, measured and told through the storage),
    reported to Tune with `tune.report` (its objectives by name, state, Optuna number and parameters)."""
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)  # Tune starts trainables in their trial folder; recipe paths are the driver's
    trial_id = tune.get_context().get_trial_id()
    frozen = run_remote_trial(recipe, storage_url, study_name, artifact_dir, threads, int(config["seed"]),
                              grace_period, tags={TUNE_TRIAL_ATTR: trial_id, DRIVER_ATTR: str(config["driver"])})
    tune.report(trial_result(frozen, recipe.objectives) | {"worker": this_worker()})


def trainable_for(recipe: Recipe, storage_url: str, study_name: str, artifact_dir: str,
                  grace_period: int = DEFAULT_GRACE_PERIOD, cpus: int = 1, gpus: float = 0.0):
    """The Tune trainable running trials of `study_name`, asking Tune for `cpus` CPUs and `gpus` GPUs."""
    _need_tune()
    fn = tune.with_parameters(vitshrink_trial, recipe=recipe, storage_url=absolute_storage_url(storage_url),
                              study_name=study_name, artifact_dir=str(Path(artifact_dir).resolve()),
                              grace_period=grace_period, threads=max(1, int(cpus)), workdir=os.getcwd())
    resources: dict[str, float] = {"cpu": cpus}
    if gpus > 0:
        resources["gpu"] = gpus  # a fraction shares a GPU; Ray sets CUDA_VISIBLE_DEVICES per trial
    return tune.with_resources(fn, resources)


def trial_dirname(trial) -> str:
    """A Tune trial's folder name: its trainable and id (the default repeats the config, driver id included)."""
    return f"{trial.trainable_name}_{trial.trial_id}"


def tune_folder(artifact_dir: str | Path) -> Path:
    """Where Tune's experiments of a study's searches go: ``<artifacts>/tune``."""
    return Path(artifact_dir).resolve() / "tune"


def run_on_tune(job: SearchJob, address: str | None = None, workers: int = 1, gpus_per_trial: float = 0.0,
                callbacks: list[Any] | None = None, verbose: int = 0) -> SearchSummary:
    """Run `job` as Ray Tune trials, up to `workers` at once, until the budget of its recipe is met.

    Tune's experiment (its results, default loggers and `callbacks`) lands in
    ``<artifacts>/tune/<study>``. Ctrl-C: Tune stops its trials; their Optuna trials are failed and
    queued for retry, then KeyboardInterrupt is raised as with the other executors."""
    _need_tune()
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1")
    study, recipe = job.study, job.recipe
    url = absolute_storage_url(job.storage_url)
    ray, owned = connect(address)
    searcher = None
    try:
        check_target(ray, recipe)
        share = cpu_share(ray, workers)
        check_gpus(ray, gpus_per_trial)
        searcher = BudgetSearcher(recipe, url, study.study_name, job.grace_period, job.started, job.on_trial)
        trainable = trainable_for(recipe, url, study.study_name, job.artifact_dir, job.grace_period, share,
                                  gpus_per_trial)
        log.info("tune: %d workers x %d CPUs, storage %s, experiment %s", workers, share, url,
                 tune_folder(job.artifact_dir) / study.study_name)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=workers,
                                        trial_dirname_creator=trial_dirname,
                                        reuse_actors=True),  # a reused worker keeps its teacher and data loaded
            run_config=tune.RunConfig(name=study.study_name, storage_path=str(tune_folder(job.artifact_dir)),
                                      callbacks=list(callbacks or []), verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=0)))
        # Tune's own lines go to stderr (stdout stays the caller's: tables, JSON). Ctrl-C stops at once, as with
        # the other executors: Tune's SIGINT handler would let running trials go on (and maybe finish) first
        with contextlib.redirect_stdout(sys.stderr), _environ(TUNE_DISABLE_SIGINT_HANDLER="1"):
            tuner.fit()
        if searcher.error is not None:
            raise SearchError(searcher.error)
        if searcher.stopped_by is None:  # Tune ended before the budget said so (a SIGUSR1: Tune's stop signal)
            raise KeyboardInterrupt
    except BaseException as exc:
        if searcher is not None:
            reason = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else f"the Tune driver stopped: {exc}"[:300]
            searcher.fail_running(reason)
        raise
    finally:
        if owned:
            ray.shutdown()
    counts = count_states(study)
    return SearchSummary(study, counts["COMPLETE"], counts["FAIL"], len(searcher.ran),
                         time.perf_counter() - job.started, searcher.stopped_by or "trials", counts["PRUNED"])


@dataclass
class TuneExecutor:
    """Runs up to `workers` trials at once as Ray Tune trials on the cluster at `address` (None: a
    local cluster on loopback), each asking Tune for `gpus_per_trial` GPUs; `callbacks` are Tune's."""

    address: str | None = None
    workers: int = 1
    gpus_per_trial: float = 0.0
    callbacks: list[Any] = field(default_factory=list)
    verbose: int = 0
    name: ClassVar[str] = "tune"

    def check(self) -> None:
        _need_tune()
        if self.gpus_per_trial:
            check_gpus_per_trial(self.gpus_per_trial)
            refuse_missing_gpus(self.address, self.gpus_per_trial)

    def run(self, job: SearchJob) -> SearchSummary:
        return run_on_tune(job, address=self.address, workers=self.workers, gpus_per_trial=self.gpus_per_trial,
                           callbacks=self.callbacks, verbose=self.verbose)


@dataclass
class RayExecutor(TuneExecutor):
    """``--executor ray``: the name kept for the one Ray dispatcher, Ray Tune. Until this version it
    dispatched Ray tasks by hand (its own wait loop, worker cap, resources, Ctrl-C and dead-worker
    handling); Tune does all of that, at 20-30 ms more per trial (benchmarks/distributed.py)."""

    name: ClassVar[str] = "ray"


__all__ = ["BudgetSearcher", "RayExecutor", "TuneExecutor", "run_on_tune", "trainable_for", "trial_dirname", "tune_folder",
           "vitshrink_trial"]
