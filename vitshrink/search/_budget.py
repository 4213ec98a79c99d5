"""The trial budget of a study, shared by every driver that runs it: any number of `vitshrink search`
processes (local executor) and Ray drivers on one storage complete exactly `trials` trials.

Each driver decides alone, from the storage, with two rules:

1. It asks for a trial only while COMPLETE + RUNNING < trials (`budget_left`); when running trials
   hold the rest of the budget it waits until one completes (the budget is then met) or fails (its
   slot frees).
2. Rule 1 races: two drivers can see the same free slot. So once its trial exists, a driver counts
   again (`claim_slot`): every COMPLETE trial, and every RUNNING or WAITING trial numbered below its
   own. Every Optuna storage numbers trials in creation order, so of any set of trials that would
   over-fill the budget, the highest-numbered one existed after all the others and counts them
   all: it gives its slot back. Such a trial is never built; it is recorded FAIL with
   ``not_run = True`` and its reason in ``fail_reason`` (FAIL, not PRUNED: samplers ignore FAIL,
   while TPE reads a PRUNED trial as a bad result), it is no failure for ``max_failures``, and if
   it had popped a queued trial (a retry, a warm start) that trial is queued again unchanged.

A warm start enqueued twice (drivers that opened a new study at the same moment each enqueue the
teacher) is run once: the later copy is given back and not queued again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ._schema import (CONFIG_OVERRIDE_ATTR, FAIL_REASON_ATTR, HEARTBEAT_ATTR, NOT_RUN_ATTR, OPTUNA_FAILED_TRIAL_ATTR,
                      OPTUNA_FIXED_PARAMS_ATTR, OWNER_USER_ATTRS, REQUEUED_FROM_ATTR, RETRY_OF_ATTR, ROLE_ATTR)

if TYPE_CHECKING:
    from ..spaces import Recipe

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a driver waiting for other drivers' trials looks at the storage again
BUDGET_TAKEN = "budget already reached by other drivers; not run"


class SlotTaken(Exception):
    """Raised inside a trial that gave its budget slot back (it is recorded FAIL with `not_run`)."""


def is_not_run(t: FrozenTrial) -> bool:
    """A trial that gave its slot back before building anything: no failure, no result."""
    return bool(t.user_attrs.get(NOT_RUN_ATTR))


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials per state name; trials that gave their slot back are counted under ``NOT_RUN``, not FAIL."""
    counts = {s.name: 0 for s in TrialState} | {"NOT_RUN": 0}
    for t in study.get_trials(deepcopy=False):
        counts["NOT_RUN" if is_not_run(t) else t.state.name] += 1
    return counts


def max_pruned(recipe: Recipe) -> int:
    """Pruned (impossible) samples one run tolerates: they cost no training, but a space whose samples are
    nearly all impossible together would otherwise never reach its budget."""
    return max(50, 10 * recipe.trials)


def budget_left(study: optuna.Study, recipe: Recipe, started: float, failures_at_start: int,
                pruned_at_start: int | None = None, own: Callable[[FrozenTrial], bool] | None = None
                ) -> tuple[int, str | None]:
    """``(free slots, None)`` while the search goes on (0 free: wait for the running trials), or
    ``(0, why it stops)``: "trials" (COMPLETE reached the budget), "timeout", "failures" or "pruned".

    PRUNED trials (impossible samples) count neither as completed nor toward max_failures; beyond
    `max_pruned` in one run they stop it. `own`: RUNNING trials the caller counts itself (a Ray
    driver counts its dispatched tasks)."""
    complete = running = failed = pruned = 0
    for t in study.get_trials(deepcopy=False):
        if is_not_run(t):
            continue
        complete += t.state == TrialState.COMPLETE
        failed += t.state == TrialState.FAIL
        pruned += t.state == TrialState.PRUNED
        running += t.state == TrialState.RUNNING and not (own and own(t))
    if complete >= recipe.trials:
        return 0, "trials"
    if recipe.timeout and time.perf_counter() - started >= recipe.timeout:
        return 0, "timeout"
    max_fail = recipe.max_failures if recipe.max_failures is not None else max(5, recipe.trials)
    if failed - failures_at_start >= max_fail:
        return 0, "failures"
    if pruned_at_start is not None and pruned - pruned_at_start >= max_pruned(recipe):
        return 0, "pruned"
    return max(0, recipe.trials - complete - running), None


def claim_slot(trial: optuna.Trial, budget: int) -> None:
    """Let `trial` (just asked, nothing built yet) run, or give its slot back and raise `SlotTaken`.

    Call it first thing in the objective, before anything is sampled or built."""
    trials = trial.study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    duplicate = _duplicate_warm_start(me, trials)
    reason = duplicate or _budget_reached(me, trials, budget)
    if reason is None:
        return
    if not duplicate and _popped(me):
        _requeue(trial.study, me)
    trial.set_user_attr(NOT_RUN_ATTR, True)
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    log.info("trial %d not run: %s", me.number, reason)
    raise SlotTaken(reason)


def _budget_reached(me: FrozenTrial, trials: list[FrozenTrial], budget: int) -> str | None:
    held = sum(1 for t in trials if t.number != me.number and not is_not_run(t) and (
        t.state == TrialState.COMPLETE
        or (t.number < me.number and t.state in (TrialState.RUNNING, TrialState.WAITING))))
    return BUDGET_TAKEN if held >= budget else None


def _warm_key(t: FrozenTrial) -> tuple[str, str] | None:
    """(role, config) of a warm start as first enqueued; None for sampled trials, retries and requeued copies."""
    role, cfg = t.user_attrs.get(ROLE_ATTR), t.user_attrs.get(CONFIG_OVERRIDE_ATTR)
    if role is None or cfg is None or RETRY_OF_ATTR in t.user_attrs or REQUEUED_FROM_ATTR in t.user_attrs \
            or OPTUNA_FAILED_TRIAL_ATTR in t.system_attrs:
        return None
    return role, json.dumps(cfg, sort_keys=True)


def _duplicate_warm_start(me: FrozenTrial, trials: list[FrozenTrial]) -> str | None:
    key = _warm_key(me)
    if key is None:
        return None
    first = next((t for t in trials if t.number < me.number and _warm_key(t) == key), None)
    if first is None:
        return None
    return f"duplicate of warm-start trial {first.number} (enqueued by another driver); not run"


def _popped(t: FrozenTrial) -> bool:
    """A trial taken from the queue (enqueued params, a retry's params): work that must not be lost."""
    return bool(t.params) or OPTUNA_FIXED_PARAMS_ATTR in t.system_attrs


def _requeue(study: optuna.Study, t: FrozenTrial) -> None:
    """Queue `t` again as it was queued: same params, user and system attributes (retry history too)."""
    user = {k: v for k, v in t.user_attrs.items() if k not in OWNER_USER_ATTRS} | {REQUEUED_FROM_ATTR: t.number}
    system = {k: v for k, v in t.system_attrs.items() if k != HEARTBEAT_ATTR}
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, params=t.params,
                                              distributions=t.distributions, user_attrs=user, system_attrs=system))


__all__ = ["BUDGET_TAKEN", "POLL_S", "SlotTaken", "budget_left", "claim_slot", "count_states", "is_not_run",
           "max_pruned"]
