"""The search driver: create or resume the Optuna study of a recipe and run trials up to the budget.

Example (not run as a doctest: it runs a whole search)::

    from vitshrink.spaces import resolve_recipe
    study = run_search(resolve_recipe("quickstart"), storage="sqlite:///vitshrink.db")
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from .. import __version__
from ..digests import data_sha256
from ..objectives import directions_of
from ..preprocessing import describe_preprocessing
from ..spaces import CompressionConfig, ConfigError, Recipe, SearchSpace
from ._budget import POLL_S, budget_left, claim_slot, count_states, is_not_run, max_pruned  # noqa: F401 - re-exported
from ._fingerprint import changed_sections, differences, merged, recipe_fingerprint, stored_fingerprint
from ._latency import record_latency_reference
from ._pareto import pareto_trials
from ._samplers import make_sampler
from ._schema import (ARTIFACT_DIR_ATTR, CLASSES_ATTR, CONFIG_OVERRIDE_ATTR, DATA_ATTR, FINGERPRINT_ATTR,
                      PREPROCESSING_ATTR, RECIPE_ATTR, ROLE_ATTR, TARGET_ATTR, TEACHER_ACCURACY_ATTR, TEACHER_ATTR,
                      TRAINING_ATTR, VERSION_ATTR, key_of_test_accuracy)
from ._storage import (DEFAULT_GRACE_PERIOD, default_artifact_dir, fail_stale_trials,
                       heartbeat_interval_for, mask_url, open_storage, study_names, trial_heartbeat)
from ._trial import SearchContext, check_space_fits_teacher, load_data, make_context, run_trial, training_device_of

log = logging.getLogger(__name__)


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
    pruned: int = 0  # trials pruned as impossible samples (never built; not counted as completed or failed)


def reference_configs(space: SearchSpace) -> list[CompressionConfig]:
    """The reference study's hand-picked set: dynamic int8; KD into a small student; 30 % and 50 %
    pruning; Nystrom with two landmark counts; student + dynamic int8."""
    fixed = dict(space.fixed)
    student_epochs = int(fixed.get("student_epochs", 10))
    kd = int(fixed.get("kd_epochs", 0))
    lm = space.dimension("landmarks")
    lo, hi = (int(lm.low), int(lm.high)) if lm and lm.choices is None else (4, 8)
    # a recipe's fixed recovery settings shape every reference config that distils
    recovery = {k: fixed[k] for k in ("kd_augment", "kd_feature_weight") if k in fixed}
    student = dict(student="custom", student_depth=2, student_embed_dim=32, student_heads=2,
                   student_epochs=student_epochs, **recovery)
    tuned = recovery if kd else {}
    return [
        CompressionConfig(quant="dynamic_int8"),
        CompressionConfig(**student),
        CompressionConfig(prune_heads=0.3, prune_mlp=0.3, kd_epochs=kd, **tuned),
        CompressionConfig(prune_heads=0.5, prune_mlp=0.5, kd_epochs=kd, **tuned),
        CompressionConfig(lowrank="nystrom", landmarks=lo, kd_epochs=kd, **tuned),
        CompressionConfig(lowrank="nystrom", landmarks=hi, kd_epochs=kd, **tuned),
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
        stored = _created_study(storage, name)
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
    study = optuna.create_study(study_name=name, storage=storage, directions=directions_of(recipe.objectives),
                                sampler=sampler,
                                load_if_exists=True)
    if not existing:
        study.set_metric_names(list(recipe.objectives))
        study.set_user_attr(RECIPE_ATTR, recipe.to_dict())
        study.set_user_attr(VERSION_ATTR, __version__)
        study.set_user_attr(ARTIFACT_DIR_ATTR, str(Path(artifact_dir or default_artifact_dir(storage_url)).resolve()))
    if study.user_attrs.get(FINGERPRINT_ATTR) != fingerprint:  # new, or an older study's, now recorded
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    return study


CREATION_WAIT_S = 10.0


def _created_study(storage, name: str) -> optuna.Study:
    """The stored study, once the driver creating it (another process, at this moment) has written
    its vitshrink attributes: without waiting, a second driver started with the first would read a
    study without them and refuse it. A study that has them, or trials, is returned at once."""
    deadline = time.monotonic() + CREATION_WAIT_S
    while True:
        stored = optuna.load_study(study_name=name, storage=storage)
        attrs = stored.user_attrs
        if FINGERPRINT_ATTR in attrs or stored.get_trials(deepcopy=False) or time.monotonic() >= deadline:
            return stored
        if RECIPE_ATTR in attrs:  # the fingerprint is written next; an older vitshrink's study never has one
            deadline = min(deadline, time.monotonic() + 1.0)
        time.sleep(0.2)


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
                            user_attrs={CONFIG_OVERRIDE_ATTR: cfg.to_dict(), ROLE_ATTR: role})


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
    gpus_per_trial: float = 0.0,
) -> SearchSummary:
    """Run (or resume) the study of `recipe` until it holds `recipe.trials` completed trials,
    `recipe.timeout` seconds have passed, or too many trials failed.

    Trials left RUNNING by a dead process (same host) or without a heartbeat for `grace_period`
    seconds are failed and retried with the same parameters."""
    start = time.perf_counter()
    if gpus_per_trial:  # GPUs Ray cannot give are refused before the study exists or a teacher trains
        _check_gpus_per_trial(executor, address, gpus_per_trial)
    check_space_fits_teacher(recipe)  # an impossible space is refused before the study exists
    fingerprint = recipe_fingerprint(recipe)  # reads the teacher checkpoint: a missing one is refused here
    training_device_of(recipe)  # so is a GPU asked for and absent, before the data is read
    data = load_data(recipe)  # cheap next to the teacher: its digest is checked before any training
    fingerprint["data"]["sha256"] = data_sha256(data)
    study = open_or_create_study(recipe, storage, study_name, new_study, artifact_dir, grace_period=grace_period,
                                 fingerprint=fingerprint)
    # trials taken when this driver opened the study (and fixed its sampler's seed): any other trial it
    # does not take itself is another driver's, sampling from the same seed unless one reseeds
    taken_at_open = _taken(study)
    ctx = make_context(recipe, progress=on_teacher_epoch, data=data)
    study.set_user_attr(TEACHER_ATTR, ctx.teacher_spec.to_dict())
    study.set_user_attr(TEACHER_ACCURACY_ATTR, ctx.teacher_accuracy)
    study.set_user_attr(DATA_ATTR, ctx.data.describe())
    study.set_user_attr(CLASSES_ATTR, list(ctx.data.class_names))
    study.set_user_attr(TARGET_ATTR, ctx.target.describe())
    study.set_user_attr(TRAINING_ATTR, ctx.training.describe())  # this driver's; trials record their own
    study.set_user_attr(PREPROCESSING_ATTR, describe_preprocessing(recipe.dataset, ctx.data))
    record_latency_reference(study, ctx)  # a new study fixes what its latency objective means, before any trial
    enqueue_warm_starts(study, recipe)
    art_dir = study.user_attrs[ARTIFACT_DIR_ATTR]
    if executor == "ray":
        from .ray_executor import run_on_ray

        summary = run_on_ray(study, recipe, storage, art_dir, address=address, workers=workers, on_trial=on_trial,
                             started=start, grace_period=grace_period, gpus_per_trial=gpus_per_trial)
    elif executor == "local":
        summary = _run_local(study, recipe, art_dir, ctx, on_trial, start, grace_period, taken_at_open)
    else:
        raise ConfigError(f"unknown executor {executor!r}; use local or ray")
    if evaluate_test:
        evaluate_pareto_on_test(study, ctx)
    return summary


def _run_local(study: optuna.Study, recipe: Recipe, art_dir: str, ctx: SearchContext, on_trial, started: float,
               grace_period: int = DEFAULT_GRACE_PERIOD, taken_before: set[int] | None = None) -> SearchSummary:
    """Run trials in this process until the study's budget is met: other drivers on the same storage
    (processes, Ray) share the budget, and this one waits while their running trials hold the rest.

    `taken_before`: trials already taken when the study was opened (default: now)."""
    at_start = count_states(study)
    failures_at_start, pruned_at_start = at_start["FAIL"], at_start["PRUNED"]
    if taken_before is None:
        taken_before = _taken(study)
    asked: set[int] = set()  # trials this driver took (ran or gave back)
    reseeded = False
    ran: list[int] = []  # trials this driver ran (not those it gave back)

    def callback(st: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if not is_not_run(frozen):
            ran.append(frozen.number)
        if on_trial:
            on_trial(st, frozen, count_states(st))

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        nonlocal reseeded
        asked.add(trial.number)
        claim_slot(trial, recipe.trials)  # another driver may have taken the last slot since budget_left
        if not reseeded and _other_driver_active(trial.study, taken_before, asked):
            # drivers that opened the study together share its seed (recipe seed + trials at open): left
            # as is, each would sample the same configurations. Checked after this trial exists, so of two
            # drivers sampling at once the later one sees the other. Alone, a driver keeps the seed.
            trial.study.sampler.reseed_rng()
            reseeded = True
        with trial_heartbeat(trial, heartbeat_interval_for(grace_period)):
            return run_trial(trial, recipe, art_dir, ctx)

    while True:
        fail_stale_trials(study, grace_period)  # a crashed run's trials: failed, re-enqueued, run first
        free, stopped_by = budget_left(study, recipe, started, failures_at_start, pruned_at_start)
        if stopped_by:
            break
        if not free:  # the rest of the budget is running elsewhere: wait until it completes or a trial fails
            time.sleep(POLL_S)
            continue
        timeout = None if recipe.timeout is None else max(1.0, recipe.timeout - (time.perf_counter() - started))
        study.optimize(objective, n_trials=1, timeout=timeout,
                       catch=(Exception,), callbacks=[callback], gc_after_trial=False)
    counts = count_states(study)
    return SearchSummary(study, counts["COMPLETE"], counts["FAIL"], len(ran), time.perf_counter() - started,
                         stopped_by, counts["PRUNED"])


def _taken(study: optuna.Study) -> set[int]:
    return {t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING}


def _other_driver_active(study: optuna.Study, taken_before: set[int], asked: set[int]) -> bool:
    """Whether another driver took a trial since this one started (queued trials, such as retries
    this driver enqueued itself, do not count until someone takes them)."""
    return any(t.number not in taken_before and t.number not in asked and t.state != optuna.trial.TrialState.WAITING
               for t in study.get_trials(deepcopy=False))


def evaluate_pareto_on_test(study: optuna.Study, ctx: SearchContext) -> dict[int, float]:
    """Evaluate each Pareto trial once on the test split and store it on the study (never used to choose)."""
    from ..objectives import accuracy
    from ._artifacts import rebuild_trial

    results = {}
    for t in pareto_trials(study):
        key = key_of_test_accuracy(t.number)
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


def _check_gpus_per_trial(executor: str, address: str | None, gpus_per_trial: float) -> None:
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g} must be >= 0")
    if executor != "ray":
        raise ConfigError(f"--gpus-per-trial applies to Ray tasks; add --executor ray, or leave it out (the local "
                          "executor trains on [teacher.train] device)")
    from .ray_executor import refuse_missing_gpus

    refuse_missing_gpus(address, gpus_per_trial)
