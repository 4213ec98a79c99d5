"""What a search hands back (`SearchSummary`) and the error it raises when it cannot start or resume
(`SearchError`): the types the driver and every executor share, below all of them.

Example:
    >>> str(SearchError("study 'x' was created with a different space"))
    "study 'x' was created with a different space"
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna


class SearchError(RuntimeError):
    """A search that cannot start or resume as asked; the message says why and what to do."""


@dataclass
class SearchSummary:
    study: optuna.Study
    completed: int
    failed: int  # failed trials in the study (not those that gave their budget slot back)
    new_trials: int  # trials this driver ran (other drivers' trials and slots given back not counted)
    seconds: float
    stopped_by: str  # "trials", "timeout", "failures", "pruned"
    pruned: int = 0  # PRUNED trials: screened, stopped at a rung or impossible samples (not completed or failed)


__all__ = ["SearchError", "SearchSummary"]
