"""One trial on a remote worker (a Ray Tune trial): open the study's storage, ask,
build, measure, save and tell, all through the storage, exactly as the local executor does.

`tags` are written on the trial first thing (the Tune trial id and the driver's id), so a driver
can tie a worker that died to its trial.

Example (not run as a doctest: it needs a created study)::

    frozen = run_remote_trial(recipe, "sqlite:////tmp/s.db", "quickstart", "/tmp/art", threads=1,
                              seed=7, grace_period=30, tags={"driver": "host:1:ab12cd34"})
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..spaces import Recipe
from ._budget import claim_slot, is_not_run
from ._samplers import make_sampler
from ._schema import FAIL_REASON_ATTR, LABEL_ATTR, PRUNED_REASON_ATTR
from ._storage import heartbeat_interval_for, open_storage, trial_heartbeat
from ._trial import context_for, run_trial
from ._warm import warm_start_configs


def run_remote_trial(recipe: Recipe, storage_url: str, study_name: str, artifact_dir: str, threads: int, seed: int,
                     grace_period: int, tags: dict[str, str]) -> FrozenTrial:
    """Run one trial of `study_name` in this process with `threads` torch threads; the finished trial.

    `seed` seeds this trial's sampler (concurrent workers with one seed would sample the same
    configuration); the trial claims its budget slot by the rule every driver follows."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval_for(grace_period),
                           grace_period=grace_period)
    sampler = make_sampler(recipe.sampler, seed=seed, warm_starts=len(warm_start_configs(recipe)), recipe=recipe)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    ctx = context_for(recipe)  # cached per process: a reused worker loads the teacher and data once
    if hasattr(sampler, "attach"):
        sampler.attach(ctx)

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        for key, value in tags.items():  # first, so the driver can tie a crashed worker to its trial
            trial.set_user_attr(key, value)
        claim_slot(trial, recipe.trials)  # the same rule as the local executor: other drivers share the budget
        with trial_heartbeat(trial, heartbeat_interval_for(grace_period)):
            return run_trial(trial, recipe, artifact_dir, ctx)

    finished: list[FrozenTrial] = []
    study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False,
                   callbacks=[lambda _st, frozen: finished.append(frozen)])
    return finished[0]


def state_of(t: FrozenTrial) -> str:
    """The trial's state name, with ``NOT_RUN`` for a trial that gave its budget slot back."""
    return "NOT_RUN" if is_not_run(t) else t.state.name


def trial_result(t: FrozenTrial, objectives: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """What a finished trial reports to Ray Tune: its objectives by name (completed trials only), its
    state, its Optuna number and parameters, and why it failed or was pruned.

    Example:
        >>> import optuna
        >>> t = optuna.trial.create_trial(values=[0.9, 2.5], params={"x": 1.0},
        ...                               distributions={"x": optuna.distributions.FloatDistribution(0, 2)})
        >>> trial_result(t, ["accuracy", "latency_ms"])["accuracy"], trial_result(t, ["accuracy"])["state"]
        (0.9, 'COMPLETE')
    """
    result: dict[str, Any] = {"state": state_of(t), "optuna_trial": t.number,
                              "params": dict(t.params)}
    if t.state == TrialState.COMPLETE and t.values is not None:
        result.update({name: float(v) for name, v in zip(objectives, t.values) if math.isfinite(v)})
    label = t.user_attrs.get(LABEL_ATTR)
    if label:
        result["label"] = label
    reason = t.user_attrs.get(FAIL_REASON_ATTR) or t.user_attrs.get(PRUNED_REASON_ATTR)
    if reason:
        result["reason"] = str(reason)[:300]
    return result


__all__ = ["run_remote_trial", "state_of", "trial_result"]
