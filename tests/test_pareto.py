"""Pareto front and constraints over real Optuna studies."""

from __future__ import annotations

import optuna
import pytest

from vitshrink.search import DIRECTIONS, make_sampler, pareto_trials
from vitshrink.search._trial import constraint_values
from vitshrink.spaces import Recipe


def _study(sampler: str = "random") -> optuna.Study:
    return optuna.create_study(directions=list(DIRECTIONS), sampler=make_sampler(sampler, seed=0))


def _add(study: optuna.Study, values, constraints=None) -> int:
    trial = study.ask()
    for k, v in (constraints or {}).items():
        trial.set_constraint(k, v)
    study.tell(trial, values)
    return trial.number


def test_front_keeps_non_dominated_and_drops_dominated() -> None:
    study = _study()
    a = _add(study, [0.9, 10.0, 1000])
    b = _add(study, [0.8, 5.0, 1000])
    _add(study, [0.8, 10.0, 2000])  # dominated by a and b
    c = _add(study, [0.7, 5.0, 500])
    assert [t.number for t in pareto_trials(study)] == [a, b, c]
    # the same front as Optuna's own
    assert {t.number for t in study.best_trials} == {a, b, c}


def test_infeasible_trials_are_kept_but_not_pareto_eligible() -> None:
    recipe = Recipe.from_toml_text("[constraints]\nmax_accuracy_drop = 0.05\nmax_latency_ms = 8")
    study = _study()
    ok = _add(study, [0.88, 5.0, 100], constraint_values(recipe, 0.9, 0.88, 5.0, 100))
    too_slow = _add(study, [0.95, 9.0, 50], constraint_values(recipe, 0.9, 0.95, 9.0, 50))
    too_bad = _add(study, [0.5, 1.0, 10], constraint_values(recipe, 0.9, 0.5, 1.0, 10))
    assert [t.number for t in pareto_trials(study)] == [ok]
    assert {t.number for t in pareto_trials(study, include_infeasible=True)} == {ok, too_slow, too_bad}
    assert {t.number for t in study.best_trials} == {ok}  # Optuna agrees
    assert study.trials[too_slow].constraints == pytest.approx({"max_accuracy_drop": -0.1, "max_latency_ms": 1.0})


@pytest.mark.parametrize("name", ["nsga2", "tpe", "gp", "random"])
def test_samplers_run_seeded_with_constraints(name) -> None:
    def run() -> list:
        study = _study(name)
        for _ in range(8):
            t = study.ask()
            x = t.suggest_float("x", 0, 1)
            t.set_constraint("c", x - 0.5)
            study.tell(t, [x, 1 - x, x * x])
        return [t.params["x"] for t in study.trials]

    assert run() == run()  # seeded: the same proposals twice


@pytest.mark.parametrize("name", ["tpe", "gp"])
def test_model_based_samplers_explore_after_the_warm_starts(name) -> None:
    from vitshrink.search._driver import warm_start_configs
    from vitshrink.search._samplers import STARTUP_TRIALS

    recipe = Recipe.from_toml_text('[study]\nseed_with = "reference"\n[space]\nquant = ["none", "ort_int8"]')
    warm = len(warm_start_configs(recipe))
    assert warm == 8  # the teacher and the seven hand-picked configurations
    assert make_sampler(name, seed=0, warm_starts=warm)._n_startup_trials == warm + STARTUP_TRIALS
    assert make_sampler(name, seed=0)._n_startup_trials == STARTUP_TRIALS
