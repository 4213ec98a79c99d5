"""The search driver: Optuna study, samplers, budget, storages and executors (local, ray)."""

from ._driver import SearchError, SearchSummary, count_states, open_or_create_study, reference_configs, run_search
from ._pareto import is_feasible, pareto_front, pareto_trials
from ._samplers import SAMPLERS, make_sampler
from ._storage import DEFAULT_STORAGE, StorageError, default_artifact_dir, mask_url, open_storage
from ._trial import DIRECTIONS, METRIC_NAMES, SearchContext, context_for, make_context, run_trial

__all__ = [
    "DEFAULT_STORAGE", "DIRECTIONS", "METRIC_NAMES", "SAMPLERS", "SearchContext", "SearchError", "SearchSummary",
    "StorageError", "context_for", "count_states", "default_artifact_dir", "is_feasible", "make_context",
    "make_sampler", "mask_url", "open_or_create_study", "open_storage", "pareto_front", "pareto_trials",
    "reference_configs", "run_search", "run_trial",
]
