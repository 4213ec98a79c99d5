"""vitshrink inside your own Ray Tune `Tuner`: the trainable and the search algorithm of a study.

`prepare` does what ``vitshrink search`` does before its first trial (refuses what cannot work,
creates or resumes the study in `storage`, trains or loads the teacher, enqueues the warm starts);
the returned `TuneSearch` gives a trainable (one vitshrink trial per Tune trial, reported with
``tune.report``) and a searcher that asks for trials only while the study's budget needs one::

    from ray import tune
    from vitshrink.spaces import resolve_recipe
    from vitshrink.tune import prepare

    search = prepare(resolve_recipe("quickstart").with_overrides(trials=8), storage="sqlite:////tmp/v.db")
    tuner = tune.Tuner(search.trainable(cpus=1),
                       tune_config=tune.TuneConfig(search_alg=search.searcher(), num_samples=-1,
                                                   max_concurrent_trials=2),
                       run_config=tune.RunConfig(name="quickstart", storage_path="/tmp/tune"))
    grid = tuner.fit()           # Tune's ResultGrid: objectives by name, state, Optuna number, params
    summary = search.finish()    # the study's summary; its Pareto front: search.pareto()

The study's storage is the record, as with every executor: the budget is shared with other
drivers (``vitshrink search`` with any executor) and a Tune trial whose worker died is failed and
retried with the same parameters. What holds only with ``--executor tune`` is said in
docs/usage.md (for example the exact budget needs ``num_samples=-1``: Tune's count includes
failed trials and slots given back).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from .search._budget import count_states
from .search._driver import evaluate_pareto_on_test, prepare_search
from .search._executor import OnTrial, SearchJob
from .search._pareto import pareto_trials
from .search._ray import absolute_storage_url
from .search._storage import DEFAULT_GRACE_PERIOD
from .search._summary import SearchSummary
from .search.tune_executor import INTERRUPTED, BudgetSearcher, trainable_for
from .spaces import Recipe


@dataclass
class TuneSearch:
    """A prepared vitshrink study, ready for a Tune `Tuner` of yours (see the module's example)."""

    job: SearchJob
    storage_url: str
    searchers: list[BudgetSearcher] = field(default_factory=list)

    @property
    def study(self) -> optuna.Study:
        return self.job.study

    def trainable(self, cpus: int = 1, gpus: float = 0.0):
        """The Tune trainable: one trial of the study per Tune trial, asking Tune for `cpus` and `gpus`."""
        return trainable_for(self.job.recipe, self.storage_url, self.study.study_name, self.job.artifact_dir,
                             self.job.grace_period, cpus, gpus)

    def searcher(self) -> BudgetSearcher:
        """Tune's search algorithm for this study: a trial while the budget needs one, then FINISHED."""
        searcher = BudgetSearcher(self.job.recipe, self.storage_url, self.study.study_name, self.job.grace_period,
                                  started=self.job.started, on_trial=self.job.on_trial)
        self.searchers.append(searcher)
        return searcher

    def finish(self, evaluate_test: bool = True) -> SearchSummary:
        """After ``tuner.fit()``: fail (and queue for retry) any trial Tune left running (a Ctrl-C), score the
        Pareto front on the test split (stored on the study, as ``vitshrink search`` does) and summarise."""
        for searcher in self.searchers:
            searcher.fail_running(INTERRUPTED)
        if evaluate_test:
            evaluate_pareto_on_test(self.study, self.job.ctx)
        counts = count_states(self.study)
        stopped = next((s.stopped_by for s in reversed(self.searchers) if s.stopped_by), None)
        ran = sum(len(s.ran) for s in self.searchers)
        return SearchSummary(self.study, counts["COMPLETE"], counts["FAIL"], ran, time.perf_counter() - self.job.started,
                             stopped or "interrupted", counts["PRUNED"])

    def pareto(self) -> list[optuna.trial.FrozenTrial]:
        """The study's feasible Pareto-optimal trials."""
        return pareto_trials(self.study)


def prepare(recipe: Recipe, storage: str | None = None, study_name: str | None = None, new_study: bool = False,
            artifact_dir: str | Path | None = None, grace_period: int = DEFAULT_GRACE_PERIOD,
            on_trial: OnTrial | None = None) -> TuneSearch:
    """Create or resume the study of `recipe` in `storage` (a URL every Tune worker can open) and train
    or load its teacher; the returned `TuneSearch` gives the trainable and searcher for a `Tuner`."""
    url = absolute_storage_url(storage)  # refuses an in-memory SQLite, which no worker could open
    job = prepare_search(recipe, url, study_name, new_study, artifact_dir, on_trial=on_trial,
                         grace_period=grace_period)
    return TuneSearch(job, url)


__all__ = ["BudgetSearcher", "TuneSearch", "prepare"]
