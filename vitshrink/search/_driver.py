"""The search driver: create or resume the Optuna study of a recipe and run trials up to the budget.

Example:
    >>> from vitshrink.spaces import resolve_recipe
    >>> study = run_search(resolve_recipe("quickstart"), storage="sqlite:///vitshrink.db")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from .. import __version__
from ..digests import data_sha256
from ..spaces import CompressionConfig, ConfigError, Recipe, SearchSpace
from ._fingerprint import FINGERPRINT_ATTR, changed_sections, differences, merged, recipe_fingerprint, stored_fingerprint
from ._latency import record_latency_reference
from ._pareto import pareto_trials
from ._samplers import make_sampler
from ._storage import (ARTIFACT_DIR_ATTR, DEFAULT_GRACE_PERIOD, default_artifact_dir, fail_stale_trials,
                       heartbeat_interval_for, mask_url, open_storage, study_names, trial_heartbeat)
from ._trial import (DIRECTIONS, METRIC_NAMES, SearchContext, check_space_fits_teacher, load_data, make_context,
                     recipe_doc, run_trial)

log = logging.getLogger(__name__)

RECIPE_ATTR = "vitshrink.recipe"
TEACHER_ATTR = "vitshrink.teacher"


class SearchError(RuntimeError):
    """A search that cannot start or resume as asked; the message says why and what to do."""


@dataclass
class SearchSummary:
    study: optuna.Study
    completed: int
    failed: int
    new_trials: int
    seconds: float
    stopped_by: str  # "trials", "timeout", "failures", "pruned"
    pruned: int = 0  # trials pruned as impossible samples (never built; not counted as completed or failed)


def reference_configs(space: SearchSpace) -> list[CompressionConfig]:
    """The reference study's hand-picked set: dynamic int8; KD into a small student; 30 % and 50 %
    pruning; Nystrom with two landmark counts; student + dynamic int8."""
    fixed = dict(space.fixed)
    student_epochs = int(fixed.get("student_epochs", 10))
    kd = int(fixed.get("kd_epochs", 0))
    lm = space.dimension("landmarks")
    lo, hi = (int(lm.low), int(lm.high)) if lm and lm.choices is None else (4, 8)
    student = dict(student="custom", student_depth=2, student_embed_dim=32, student_heads=2,
                   student_epochs=student_epochs)
    return [
        CompressionConfig(quant="dynamic_int8"),
        CompressionConfig(**student),
        CompressionConfig(prune_heads=0.3, prune_mlp=0.3, kd_epochs=kd),
        CompressionConfig(prune_heads=0.5, prune_mlp=0.5, kd_epochs=kd),
        CompressionConfig(lowrank="nystrom", landmarks=lo, kd_epochs=kd),
        CompressionConfig(lowrank="nystrom", landmarks=hi, kd_epochs=kd),
        CompressionConfig(**student, quant="dynamic_int8"),
    ]


def _free_name(storage, name: str) -> str:
    names = set(study_names(storage))
    i = 2
    while f"{name}-{i}" in names:
        i += 1
    return f"{name}-{i}"


def open_or_create_study(recipe: Recipe, storage_url: str | None, study_name: str | None = None,
                         new_study: bool = False, artifact_dir: str | Path | None = None,
                         n_existing_seed: bool = True, grace_period: int = DEFAULT_GRACE_PERIOD,
                         fingerprint: dict[str, Any] | None = None) -> optuna.Study:
    """Create the recipe's study, or resume it after checking it is the same study: its stored
    fingerprint (teacher, data, target, objectives, constraints, space) matches `fingerprint`
    (default: the recipe's, without the data digest). A difference is refused, listed, before
    anything runs; `new_study` starts a new study under a free name instead.

    `grace_period`: seconds without a heartbeat after which a RUNNING trial counts as stale."""
    fingerprint = fingerprint or recipe_fingerprint(recipe)
    storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval_for(grace_period),
                           grace_period=grace_period)
    name = study_name or recipe.name
    existing = name in study_names(storage)
    if existing:
        stored = optuna.load_study(study_name=name, storage=storage)
        if stored.user_attrs.get(RECIPE_ATTR) is None:
            raise SearchError(f"study {name!r} in {mask_url(storage_url or '')} was not created by vitshrink; "
                              "choose another --study name")
        if new_study:
            name = _free_name(storage, name)
            existing = False
        else:
            old = stored_fingerprint(stored.user_attrs, RECIPE_ATTR)
            if diff := differences(old, fingerprint):
                what = " and ".join(changed_sections(diff))
                lines = "\n  ".join(diff)
                raise SearchError(f"study {name!r} was created with a different {what}:\n  {lines}\n"
                                  "resume with the stored settings, or pass --new-study to start a new study "
                                  f"(it will be named {_free_name(storage, name)!r})")
            fingerprint = merged(old, fingerprint)
    n_trials = len(optuna.load_study(study_name=name, storage=storage).trials) if existing else 0
    sampler = make_sampler(recipe.sampler, seed=recipe.seed + n_trials if n_existing_seed else recipe.seed,
                           warm_starts=len(warm_start_configs(recipe)))
    study = optuna.create_study(study_name=name, storage=storage, directions=list(DIRECTIONS), sampler=sampler,
                                load_if_exists=True)
    if not existing:
        study.set_metric_names(list(METRIC_NAMES))
        study.set_user_attr(RECIPE_ATTR, recipe_doc(recipe))
        study.set_user_attr("vitshrink.version", __version__)
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(Path(artifact_dir or default_artifact_dir(storage_url)).resolve()))
    if study.user_attrs.get(FINGERPRINT_ATTR) != fingerprint:  # new, or an older study's, now recorded
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    return study


def count_states(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def warm_start_configs(recipe: Recipe) -> list[tuple[str, CompressionConfig]]:
    """(role, config) of the trials every new study of `recipe` opens with: the teacher, then the
    hand-picked reference set when `seed_with = "reference"`."""
    warm = [("teacher", CompressionConfig())]
    if recipe.seed_with == "reference":
        warm += [("reference", cfg) for cfg in reference_configs(recipe.space)]
    return warm


def enqueue_warm_starts(study: optuna.Study, recipe: Recipe) -> None:
    """The teacher is the first trial of every study; `seed_with = "reference"` adds the hand-picked set."""
    if study.get_trials(deepcopy=False):
        return
    for role, cfg in warm_start_configs(recipe):
        study.enqueue_trial(recipe.space.params_for(cfg, strict=False),
                            user_attrs={"config_override": cfg.to_dict(), "role": role})


def run_search(
    recipe: Recipe,
    storage: str | None = None,
    study_name: str | None = None,
    new_study: bool = False,
    artifact_dir: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int = 1,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial, dict[str, Any]], None] | None = None,
    on_teacher_epoch: Callable[[int, int, float], None] | None = None,
    evaluate_test: bool = True,
    grace_period: int = DEFAULT_GRACE_PERIOD,
) -> SearchSummary:
    """Run (or resume) the study of `recipe` until it holds `recipe.trials` completed trials,
    `recipe.timeout` seconds have passed, or too many trials failed.

    Trials left RUNNING by a dead process (same host) or without a heartbeat for `grace_period`
    seconds are failed and retried with the same parameters."""
    start = time.perf_counter()
    check_space_fits_teacher(recipe)  # an impossible space is refused before the study exists
    fingerprint = recipe_fingerprint(recipe)  # reads the teacher checkpoint: a missing one is refused here
    data = load_data(recipe)  # cheap next to the teacher: its digest is checked before any training
    fingerprint["data"]["sha256"] = data_sha256(data)
    study = open_or_create_study(recipe, storage, study_name, new_study, artifact_dir, grace_period=grace_period,
                                 fingerprint=fingerprint)
    ctx = make_context(recipe, progress=on_teacher_epoch, data=data)
    study.set_user_attr(TEACHER_ATTR, ctx.teacher_spec.to_dict())
    study.set_user_attr("vitshrink.teacher_accuracy", ctx.teacher_accuracy)
    study.set_user_attr("vitshrink.data", ctx.data.describe())
    study.set_user_attr("vitshrink.classes", list(ctx.data.class_names))
    study.set_user_attr("vitshrink.target", ctx.target.describe())
    record_latency_reference(study, ctx)  # a new study fixes what its latency objective means, before any trial
    enqueue_warm_starts(study, recipe)
    art_dir = study.user_attrs[ARTIFACT_DIR_ATTR]
    if executor == "ray":
        from .ray_executor import run_on_ray

        summary = run_on_ray(study, recipe, storage, art_dir, address=address, workers=workers, on_trial=on_trial,
                             started=start, grace_period=grace_period)
    elif executor == "local":
        summary = _run_local(study, recipe, art_dir, ctx, on_trial, start, grace_period)
    else:
        raise ConfigError(f"unknown executor {executor!r}; use local or ray")
    if evaluate_test:
        evaluate_pareto_on_test(study, ctx)
    return summary


def max_pruned(recipe: Recipe) -> int:
    """Pruned (impossible) samples one run tolerates: they cost no training, but a space whose samples are
    nearly all impossible together would otherwise never reach its budget."""
    return max(50, 10 * recipe.trials)


def budget_left(study: optuna.Study, recipe: Recipe, started: float, failures_at_start: int,
                pruned_at_start: int | None = None) -> tuple[int, str | None]:
    """Completed trials still wanted, or 0 and why the run stops. PRUNED trials (impossible samples)
    count neither as completed nor toward max_failures; beyond `max_pruned` in one run they stop it."""
    counts = count_states(study)
    if counts["COMPLETE"] >= recipe.trials:
        return 0, "trials"
    if recipe.timeout and time.perf_counter() - started >= recipe.timeout:
        return 0, "timeout"
    max_fail = recipe.max_failures if recipe.max_failures is not None else max(5, recipe.trials)
    if counts["FAIL"] - failures_at_start >= max_fail:
        return 0, "failures"
    if pruned_at_start is not None and counts["PRUNED"] - pruned_at_start >= max_pruned(recipe):
        return 0, "pruned"
    return recipe.trials - counts["COMPLETE"], None


def _run_local(study: optuna.Study, recipe: Recipe, art_dir: str, ctx: SearchContext, on_trial, started: float,
               grace_period: int = DEFAULT_GRACE_PERIOD) -> SearchSummary:
    at_start = count_states(study)
    failures_at_start, pruned_at_start = at_start["FAIL"], at_start["PRUNED"]
    before = len(study.trials)
    stopped_by = "trials"

    def callback(st: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if on_trial:
            on_trial(st, frozen, count_states(st))

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        with trial_heartbeat(trial, heartbeat_interval_for(grace_period)):
            return run_trial(trial, recipe, art_dir, ctx)

    while True:
        fail_stale_trials(study, grace_period)  # a crashed run's trials: failed, re-enqueued, run first
        left, reason = budget_left(study, recipe, started, failures_at_start, pruned_at_start)
        if not left:
            stopped_by = reason or "trials"
            break
        timeout = None if recipe.timeout is None else max(1.0, recipe.timeout - (time.perf_counter() - started))
        study.optimize(objective, n_trials=1, timeout=timeout,
                       catch=(Exception,), callbacks=[callback], gc_after_trial=False)
    counts = count_states(study)
    return SearchSummary(study, counts["COMPLETE"], counts["FAIL"], len(study.trials) - before,
                         time.perf_counter() - started, stopped_by, counts["PRUNED"])


def evaluate_pareto_on_test(study: optuna.Study, ctx: SearchContext) -> dict[int, float]:
    """Evaluate each Pareto trial once on the test split and store it on the study (never used to choose)."""
    from ..objectives import accuracy
    from ._artifacts import rebuild_trial

    results = {}
    for t in pareto_trials(study):
        key = f"vitshrink.test_accuracy.{t.number}"
        if key in study.user_attrs:
            continue
        try:
            loaded = rebuild_trial(study, t, ctx.teacher, ctx.data)
            acc = float(accuracy(loaded.model, ctx.data.test).accuracy)
        except Exception as exc:  # noqa: BLE001 - a report, not a reason to lose the search
            log.warning("test evaluation of trial %d failed: %s", t.number, exc)
            continue
        study.set_user_attr(key, acc)
        results[t.number] = acc
    return results
