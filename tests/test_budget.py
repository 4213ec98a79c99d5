"""The budget shared by many drivers of one study: a trial past the budget gives its slot back unbuilt
(not a failure, its queued parameters queued again), drivers wait while others' trials hold the rest,
and three concurrent `vitshrink search` processes complete exactly `--trials` trials."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from recipes import tiny_recipe
from support import GRACE, recipe_text, storage_url
from vitshrink.search import open_storage
from vitshrink.search._budget import BUDGET_TAKEN, SlotTaken, budget_left, claim_slot, count_states
from vitshrink.spaces import Recipe

X = {"x": FloatDistribution(0, 1)}


def _recipe(trials: int) -> Recipe:
    return Recipe.from_toml_text(tiny_recipe("budget", trials=trials))


def _study(kind: str, tmp_path: Path) -> optuna.Study:
    return optuna.create_study(study_name="budget", storage=open_storage(storage_url(kind, tmp_path)))


def _run_one(study: optuna.Study, budget: int) -> list[int]:
    """One trial as a driver runs it: claim the slot, then 'build' (here: record that it ran)."""
    built: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        claim_slot(trial, budget)
        built.append(trial.number)
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=1, catch=(SlotTaken,))
    return built


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_trial_past_the_budget_gives_its_slot_back_and_queues_its_params_again(kind, tmp_path) -> None:
    study, recipe = _study(kind, tmp_path), _recipe(trials=2)
    done = study.ask(X)
    study.tell(done, 0.1)
    other = study.ask(X)  # another driver's trial, running
    # a retried trial waits in the queue; this driver pops it although the budget is held
    study.enqueue_trial({"x": 0.5}, user_attrs={"retry_of": 9, "role": "teacher", "config_override": {}})
    assert _run_one(study, budget=2) == []

    popped = study.trials[2]
    assert popped.state == TrialState.FAIL and popped.user_attrs["not_run"] is True
    assert popped.user_attrs["fail_reason"] == BUDGET_TAKEN
    again = [t for t in study.trials if t.state == TrialState.WAITING]
    assert len(again) == 1 and again[0].system_attrs["fixed_params"] == {"x": 0.5}
    assert again[0].user_attrs == {"retry_of": 9, "role": "teacher", "config_override": {}, "requeued_from": 2}
    # given back is no failure; the budget is held (1 complete + 1 running): wait
    assert count_states(study)["FAIL"] == 0 and count_states(study)["NOT_RUN"] == 1
    assert budget_left(study, recipe, time.perf_counter(), 0) == (0, None)

    study.tell(other, state=TrialState.FAIL)  # the running trial fails: its slot frees
    assert budget_left(study, recipe, time.perf_counter(), 0) == (1, None)
    assert _run_one(study, budget=2) == [again[0].number]  # the queued params run now, once
    assert study.trials[again[0].number].params == {"x": 0.5}
    assert budget_left(study, recipe, time.perf_counter(), 1) == (0, "trials")


def test_a_trial_created_while_a_lower_numbered_one_still_waits_gives_back(tmp_path) -> None:
    """The race rule 2 closes: a driver listed the queue before a retry was queued, then created a
    fresh trial; the queued (lower-numbered) retry will be popped by someone and never counts this one."""
    study = _study("journal", tmp_path)
    study.enqueue_trial({"x": 0.5})
    fresh = optuna.Trial(study, study._storage.create_new_trial(study._study_id))
    with pytest.raises(SlotTaken):
        claim_slot(fresh, 1)
    trials = study.trials
    assert trials[1].state == TrialState.RUNNING and trials[1].user_attrs["not_run"] is True  # optimize marks FAIL
    assert [t.state for t in trials].count(TrialState.WAITING) == 1  # a fresh trial queues nothing
    assert _run_one(study, budget=1) == [0]


def test_a_warm_start_enqueued_twice_runs_once(tmp_path) -> None:
    study = _study("sqlite", tmp_path)
    for _ in range(2):  # two drivers opened the new study at the same moment
        study.enqueue_trial({"x": 0.0}, user_attrs={"role": "teacher", "config_override": {}})
    assert _run_one(study, budget=5) == [0]
    assert _run_one(study, budget=5) == []
    dup = study.trials[1]
    assert dup.state == TrialState.FAIL and dup.user_attrs["not_run"] is True
    assert "duplicate of warm-start trial 0" in dup.user_attrs["fail_reason"]
    assert not [t for t in study.trials if t.state == TrialState.WAITING]  # not queued again


# --- many real drivers ------------------------------------------------------------------------------------------


def _driver(recipe: Path, storage: str, cwd: Path, trials: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vitshrink.cli", "-q", "search", str(recipe), "--storage", storage,
           "--trials", str(trials), "--grace-period", str(GRACE)]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when_running(proc: subprocess.Popen, storage: str, name: str, timeout: float = 300) -> int | None:
    """kill -9 `proc` once it builds a trial (and some trial is complete); the killed trial's number."""
    deadline = time.monotonic() + timeout
    owner = f"{os.uname().nodename}:{proc.pid}"
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)
        except KeyError:
            trials = []
        mine = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == owner]
        if mine and any(t.state == TrialState.COMPLETE for t in trials):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return mine[0].number
        time.sleep(0.1)
    return None


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize("kind, sampler", [("postgres", "random"), ("journal", "random"), ("journal", "vitshrink")])
def test_three_drivers_complete_exactly_the_budget(kind, sampler, tmp_path, unique_name) -> None:
    """With the vitshrink sampler too: each driver proposes from the shared storage, none twice."""
    name, cleanup = unique_name
    storage = storage_url(kind, tmp_path)
    if kind == "postgres":
        cleanup.append(storage)
    recipe = tmp_path / f"{name}.toml"
    recipe.write_text(recipe_text(name, trials=2, kd_epochs=2, sampler=sampler))  # trials of a second or two
    budget = 9
    drivers = [_driver(recipe, storage, tmp_path, budget) for _ in range(3)]
    try:
        # one driver dies mid-trial: its trial is failed, retried by the others, and still counted once
        killed = _kill_when_running(drivers[0], storage, name)
        results = [(p.wait(timeout=900), p.stderr.read()) for p in drivers]
    finally:
        for p in drivers:
            if p.poll() is None:
                p.kill()
            p.wait()
    for i, (rc, err) in enumerate(results):
        assert rc == (-signal.SIGKILL if i == 0 and killed is not None else 0), err[-2000:]

    trials = optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    states = [t.state for t in trials]
    table = [(t.number, t.state.name, t.user_attrs.get("fail_reason") or t.user_attrs.get("pruned_reason"))
             for t in trials]
    assert states.count(TrialState.COMPLETE) == budget, table
    assert TrialState.RUNNING not in states, table
    # every FAIL is the killed trial or a slot given back unbuilt
    real_failures = [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("not_run")]
    assert [t.number for t in real_failures] == ([killed] if killed is not None else []), table
    assert all("worker" not in t.user_attrs and "config" not in t.user_attrs
               for t in trials if t.user_attrs.get("not_run"))  # given back before anything ran
    # no retried configuration ran twice; the killed one ran once more: to completion, or stopped at a rung
    # as the uninterrupted trial could have been (a retry is not screened again, but its peers may be ahead)
    for failed in real_failures:
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
        ran = [t for t in retries if t.state == TrialState.COMPLETE or "stopped" in t.user_attrs]
        assert len(ran) == 1, table
    # drivers that share the recipe's seed still sample apart: no configuration completed twice, the
    # killed one's included (float params: equal means the same draw)
    ran = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials if t.state == TrialState.COMPLETE]
    # on failure, each trial with how it was queued, to tell a retry or requeue run twice from a sampler repeat
    queued = [(t.number, t.state.name, {k: t.system_attrs.get(k) for k in ("fixed_params", "failed_trial")},
               {k: t.user_attrs.get(k) for k in ("retry_of", "requeued_from", "not_run", "role", "worker")})
              for t in trials]
    assert len(ran) == len(set(ran)), queued
    if sampler == "vitshrink":  # the drivers' own proposals, each stored with its trial
        # (trials sampled while the teacher, the unit of every objective, still ran are drawn without a
        # proposal, and so are queued copies: how many depends on the load; a failed proposal is logged)
        said = [line for _, err in results for line in err.splitlines() if "proposer failed" in line]
        proposed = sum("proposal" in t.user_attrs for t in trials if t.state == TrialState.COMPLETE)
        assert proposed >= budget // 2 and not said, (proposed, said, queued)
    # the warm start (the teacher) completed once, however many drivers enqueued it
    assert sum(t.user_attrs.get("role") == "teacher" for t in trials if t.state == TrialState.COMPLETE) == 1


def test_a_driver_opening_while_another_samples_sees_it_and_reseeds(tmp_path, monkeypatch) -> None:
    """Two drivers open a study at one trial count (one sampler seed). The first samples a trial while
    the second is still creating its study object: the second's baseline comes from the same read as
    its seed, so it counts that trial as another driver's, reseeds, and samples apart. (With the
    baseline read after the creation, neither reseeded and both completed one configuration.)"""
    from vitshrink.search import _driver
    from vitshrink.search._trial import sample_config
    from vitshrink.search._warm import enqueue_warm_starts
    from vitshrink.search.local_executor import _other_driver_active

    recipe = Recipe.from_toml_text(recipe_text("race", trials=9, kd_epochs=2, sampler="random"))
    url = storage_url("journal", tmp_path)

    def one_trial(study: optuna.Study, taken: set[int]) -> tuple[str, bool]:
        """A local driver's trial up to sampling: claim the slot, reseed if another driver is active, sample."""
        trial = study.ask()
        claim_slot(trial, recipe.trials)
        other = _other_driver_active(study, taken, {trial.number})
        if other:
            study.sampler.reseed_rng()
        config = sample_config(trial, recipe)
        study.tell(trial, [0.5, 1.0, 1.0])
        return config.to_json(), other

    first, taken, _ = _driver._open_study(recipe, url, None, False, None, True, GRACE, None)
    enqueue_warm_starts(first, recipe)
    one_trial(first, taken)  # the teacher: one trial stored
    x, x_taken, _ = _driver._open_study(recipe, url, None, False, None, True, GRACE, None)
    create = _driver.optuna.create_study
    sampled = {}

    def create_while_x_samples(*args, **kwargs):  # driver Y has read the study; X samples now
        study = create(*args, **kwargs)
        sampled["x"] = one_trial(x, x_taken)
        return study

    monkeypatch.setattr(_driver.optuna, "create_study", create_while_x_samples)
    y, y_taken, _ = _driver._open_study(recipe, url, None, False, None, True, GRACE, None)
    monkeypatch.setattr(_driver.optuna, "create_study", create)
    assert y_taken == x_taken == {0}  # both read one taken trial: the same seed
    y_config, y_reseeded = one_trial(y, y_taken)
    assert not sampled["x"][1] and y_reseeded  # X saw no one; Y saw X's trial
    assert y_config != sampled["x"][0]


@pytest.mark.parametrize("naming", ["technique", "flat"])
def test_warm_start_trials_carry_their_params_under_the_study_naming(tmp_path, naming) -> None:
    """The teacher and the reference set are enqueued with the params of their configs that the space
    can represent; the trial that runs one suggests exactly those (under the study's naming), so a
    model-based sampler learns from the warm starts, and its config is the enqueued one."""
    from vitshrink.search._trial import sample_config
    from vitshrink.search._warm import enqueue_warm_starts

    text = '[study]\nseed_with = "reference"\n[space]\ntechniques = ["prune", "nystrom", "dynamic_int8"]\n' \
           '[space.prune]\nheads = [0.0, 0.5]\nmlp = {low = 0.1, high = 0.5, optional = true}\n' \
           '[space.nystrom]\nlandmarks = [4, 16]\n'
    recipe = Recipe.from_toml_text(text)
    if naming == "flat":
        recipe = dataclasses.replace(recipe, space=dataclasses.replace(recipe.space, naming="flat"))
    study = optuna.create_study(storage=storage_url("sqlite", tmp_path), directions=["maximize"] * 3)
    enqueue_warm_starts(study, recipe)
    queued = [t for t in study.get_trials(deepcopy=False)]
    assert len(queued) > 2  # the teacher and some of the reference set
    for _ in queued:
        trial = study.ask()
        config = sample_config(trial, recipe)
        assert config.to_dict() == trial.user_attrs["config_override"]
        expected = recipe.space.params_for(config, strict=False)
        assert trial.params == expected and expected, config.to_json()
        study.tell(trial, [0.5, 1.0, 1.0])
    names = {k for t in study.get_trials() for k in t.params}
    assert ("runtime" in names and "prune.heads" in names) if naming == "technique" else ("quant" in names and "prune_heads" in names)
