"""The search driver: Optuna study, samplers, budget, storages and executors (local, Ray Tune).

Imports run one way, top to bottom::

    _driver                          opens or resumes the study, trains the teacher, picks an executor by name
    local_executor, tune_executor    run trials until the budget is met (neither imports the other or the driver;
                                     tune_executor is also ``--executor ray``)
    _ray, _worker                    Ray cluster set-up and checks; one trial on a remote worker
    _executor                        the Executor protocol, SearchJob and the name registry
    _budget, _summary, _warm, _trial the budget, SearchSummary / SearchError, warm starts, one trial
    _storage                         storages by URL, heartbeats, stale trials
    _optuna                          the only module that touches Optuna's private API
"""

from ._budget import count_states
from ._driver import open_or_create_study, run_search
from ._executor import EXECUTORS, Executor, SearchJob, make_executor
from ._pareto import is_feasible, pareto_front, pareto_trials
from ._samplers import SAMPLERS, make_sampler
from ._storage import DEFAULT_STORAGE, StorageError, default_artifact_dir, mask_url, open_storage
from ._summary import SearchError, SearchSummary
from ._trial import DIRECTIONS, METRIC_NAMES, SearchContext, context_for, make_context, run_trial
from ._warm import reference_configs

__all__ = [
    "DEFAULT_STORAGE", "DIRECTIONS", "EXECUTORS", "Executor", "METRIC_NAMES", "SAMPLERS", "SearchContext",
    "SearchError", "SearchJob", "SearchSummary", "StorageError", "context_for", "count_states", "default_artifact_dir",
    "is_feasible", "make_context", "make_executor", "make_sampler", "mask_url", "open_or_create_study", "open_storage",
    "pareto_front", "pareto_trials", "reference_configs", "run_search", "run_trial",
]
