"""Seeded Optuna samplers by name.

Constraints are stored on each trial with `Trial.set_constraint` (Optuna 5's way); every sampler
here reads them from the trials, so infeasible trials are kept but feasible ones are preferred.
"""

from __future__ import annotations

import optuna

from ..spaces import ConfigError, Recipe
from ._proposer import VitshrinkSampler

SAMPLERS = ("vitshrink", "nsga2", "tpe", "gp", "random")
# the vitshrink sampler without one of its parts, for benchmarks/search_efficiency.py's ablations
ABLATIONS = {"vitshrink-no-zero-shot": {"zero_shot": False}, "vitshrink-no-cold-start": {"cold_start": False}}


STARTUP_TRIALS = 6  # random trials of TPE and GP before they model, after the warm starts


def make_sampler(name: str, seed: int = 0, warm_starts: int = 0, recipe: Recipe | None = None
                 ) -> optuna.samplers.BaseSampler:
    """vitshrink's proposer (default: `search/_proposer.py`, needs the `recipe`), NSGA-II,
    multi-objective TPE, Gaussian-process (GPSampler), or random.

    `warm_starts`: how many enqueued trials (the teacher, the reference set) open the study. TPE and GP
    still explore `STARTUP_TRIALS` random trials after them: hand-picked warm starts show the sampler
    a few corners of the space, they do not replace exploring it.
    """
    startup = warm_starts + STARTUP_TRIALS
    if name == "vitshrink" or name in ABLATIONS:
        if recipe is None:
            raise ConfigError("the vitshrink sampler proposes from the recipe's space; pass recipe=")
        return VitshrinkSampler(recipe, seed=seed, **ABLATIONS.get(name, {}))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
