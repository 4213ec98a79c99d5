"""The search driver: create or resume the Optuna study of a recipe and run trials up to the budget.

Example (not run as a doctest: it runs a whole search)::

    from vitshrink.spaces import resolve_recipe
    study = run_search(resolve_recipe("quickstart"), storage="sqlite:///vitshrink.db")
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import optuna

from .._version import __version__
from ..digests import data_sha256
from ..objectives import accuracy, directions_of
from ..preprocessing import describe_preprocessing
from ..spaces import ConfigError, Recipe
from ._artifacts import rebuild_trial
from ._budget import count_states, max_pruned  # noqa: F401 - re-exported
from ._executor import OnTrial, SearchJob, make_executor
from ._fingerprint import changed_sections, differences, merged, recipe_fingerprint, stored_fingerprint
from ._latency import latency_warnings, record_latency_reference
from ._pareto import pareto_trials
from ._samplers import make_sampler
from ._schema import (ARTIFACT_DIR_ATTR, CLASSES_ATTR, DATA_ATTR, FINGERPRINT_ATTR,
                      PREPROCESSING_ATTR, RECIPE_ATTR, TARGET_ATTR, TEACHER_ACCURACY_ATTR, TEACHER_ATTR,
                      TRAINING_ATTR, VERSION_ATTR, key_of_test_accuracy)
from ._storage import DEFAULT_GRACE_PERIOD, default_artifact_dir, heartbeat_interval_for, mask_url, open_storage, study_names
from ._summary import SearchError, SearchSummary
from ._trial import SearchContext, check_space_fits_teacher, load_data, make_context, training_device_of
from ._warm import enqueue_warm_starts, reference_configs, warm_start_configs  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


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
    return _open_study(recipe, storage_url, study_name, new_study, artifact_dir, n_existing_seed, grace_period,
                       fingerprint)[0]


def _open_study(recipe: Recipe, storage_url: str | None, study_name: str | None, new_study: bool,
                artifact_dir: str | Path | None, n_existing_seed: bool, grace_period: int,
                fingerprint: dict[str, Any] | None) -> tuple[optuna.Study, set[int], Recipe]:
    """`open_or_create_study`, the trials taken when it read the study to seed its sampler, and the
    recipe its trials sample with: `recipe`, naming its parameters as the stored study does (a study
    an earlier vitshrink created keeps its flat parameter names).

    The seed (the recipe's, plus the trials stored) and that set come from one read: a trial another
    driver sampled after it is not in the set, so `local_executor._other_driver_active` sees that
    driver and reseeds. (Read twice, with the study's creation between, a driver of the same seed
    that sampled in between was in neither: both drew the same configuration, seen once in the
    three-driver budget test.)"""
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
            naming = stored.user_attrs[RECIPE_ATTR].get("study", {}).get("param_names", "flat")
            if naming != recipe.space.naming:
                recipe = dataclasses.replace(recipe, space=dataclasses.replace(recipe.space, naming=naming))
    opened = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False) if existing else []
    taken = {t.number for t in opened if t.state != optuna.trial.TrialState.WAITING}
    n_trials = len(opened)
    sampler = make_sampler(recipe.sampler, seed=recipe.seed + n_trials if n_existing_seed else recipe.seed,
                           warm_starts=len(warm_start_configs(recipe)), recipe=recipe)
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
    return study, taken, recipe


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


def run_search(
    recipe: Recipe,
    storage: str | None = None,
    study_name: str | None = None,
    new_study: bool = False,
    artifact_dir: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    workers: int = 1,
    on_trial: OnTrial | None = None,
    on_teacher_epoch: Callable[[int, int, float], None] | None = None,
    evaluate_test: bool = True,
    grace_period: int = DEFAULT_GRACE_PERIOD,
    gpus_per_trial: float = 0.0,
    tune_callbacks: list[Any] | None = None,
) -> SearchSummary:
    """Run (or resume) the study of `recipe` until it holds `recipe.trials` completed trials,
    `recipe.timeout` seconds have passed, or too many trials failed.

    Trials left RUNNING by a dead process (same host) or without a heartbeat for `grace_period`
    seconds are failed and retried with the same parameters. `tune_callbacks`: Ray Tune callbacks
    (MLflow, W&B, ...) for ``executor="tune"``."""
    options: dict[str, Any] = {"address": address, "workers": workers, "gpus_per_trial": gpus_per_trial}
    if tune_callbacks:
        if executor != "tune":
            raise ConfigError(f"tune_callbacks are Ray Tune callbacks; they need executor='tune', not {executor!r}")
        options["callbacks"] = list(tune_callbacks)
    runner = make_executor(executor, **options)
    runner.check()  # e.g. GPUs Ray cannot give: refused before the study exists or a teacher trains
    job = prepare_search(recipe, storage, study_name, new_study, artifact_dir, on_trial=on_trial,
                         on_teacher_epoch=on_teacher_epoch, grace_period=grace_period)
    summary = runner.run(job)
    for line in latency_warnings([t for t in job.study.get_trials(deepcopy=False) if t.number not in job.taken_at_open]):
        log.warning(line)  # once per run, with the trials it concerns
    if evaluate_test:
        evaluate_pareto_on_test(job.study, job.ctx)
    return summary


def prepare_search(
    recipe: Recipe,
    storage: str | None = None,
    study_name: str | None = None,
    new_study: bool = False,
    artifact_dir: str | Path | None = None,
    on_trial: OnTrial | None = None,
    on_teacher_epoch: Callable[[int, int, float], None] | None = None,
    grace_period: int = DEFAULT_GRACE_PERIOD,
) -> SearchJob:
    """Everything before the first trial: refuse what cannot work, create or resume the study, train
    (or load) the teacher, record what the study means and enqueue the warm starts. Any executor (or
    a Ray Tune `Tuner` of the user's, `vitshrink.tune`) then runs the returned job's trials."""
    start = time.perf_counter()
    check_space_fits_teacher(recipe)  # an impossible space is refused before the study exists
    fingerprint = recipe_fingerprint(recipe)  # reads the teacher checkpoint: a missing one is refused here
    training_device_of(recipe)  # so is a GPU asked for and absent, before the data is read
    data = load_data(recipe)  # cheap next to the teacher: its digest is checked before any training
    fingerprint["data"]["sha256"] = data_sha256(data)
    # with the trials taken when this driver read the study to fix its sampler's seed: any other trial
    # it does not take itself is another driver's, sampling from the same seed unless one reseeds
    study, taken_at_open, recipe = _open_study(recipe, storage, study_name, new_study, artifact_dir, True,
                                               grace_period, fingerprint)
    ctx = make_context(recipe, progress=on_teacher_epoch, data=data)
    if hasattr(study.sampler, "attach"):  # the vitshrink sampler measures structures with this context
        study.sampler.attach(ctx)
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
    return SearchJob(study, recipe, storage, art_dir, ctx, start, grace_period, on_trial, taken_at_open)


def evaluate_pareto_on_test(study: optuna.Study, ctx: SearchContext) -> dict[int, float]:
    """Evaluate each Pareto trial once on the test split and store it on the study (never used to choose)."""

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
