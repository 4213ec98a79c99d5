"""The vitshrink sampler chooses what to train from what is known before training: its expected
hypervolume improvement is exact, its surrogates rank, its pool is deduplicated by the model it makes,
its cold start covers the cheap front, its choices and predictions are stored on the study through
Optuna's sampler interface, and a resumed search proposes what the uninterrupted one would."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from recipes import tiny_recipe
from vitshrink.search._optuna import compute_hypervolume
from vitshrink.search._surrogate import (choose_surrogate, expected_improvement, fit_log_linear,
                                         loo_rank_correlation)
from vitshrink.spaces import CompressionConfig, Recipe

REF = np.array([1.0, 1.1, 1.1])


def _hv(points: np.ndarray) -> float:
    inside = points[np.all(points < REF, axis=1)] if len(points) else points
    return float(compute_hypervolume(inside, REF)) if len(inside) else 0.0


@pytest.mark.parametrize("seed", range(5))
def test_improvement_of_a_certain_candidate_is_the_exact_hypervolume_gain(seed) -> None:
    rng = np.random.default_rng(seed)
    front = rng.uniform([0.0, 0.05, 0.05], [0.6, 1.2, 1.2], size=(12, 3))
    for _ in range(10):
        costs, error = rng.uniform(0.05, 1.15, size=2), rng.uniform(0.0, 0.8)
        gain = _hv(np.vstack([front, [error, *costs]])) - _hv(front)
        assert expected_improvement(front, costs, error, 1e-9, REF) == pytest.approx(gain, abs=1e-9)


def test_expected_improvement_matches_sampling_and_respects_the_accuracy_constraint() -> None:
    rng = np.random.default_rng(0)
    front = rng.uniform([0.05, 0.1, 0.1], [0.5, 1.0, 1.0], size=(8, 3))
    costs, mean, std = np.array([0.3, 0.4]), 0.2, 0.1
    draws = rng.normal(mean, std, 4000)
    sampled = np.mean([_hv(np.vstack([front, [e, *costs]])) - _hv(front) if e < 1 else 0.0 for e in draws])
    assert expected_improvement(front, costs, mean, std, REF) == pytest.approx(sampled, rel=0.05)
    capped = np.mean([_hv(np.vstack([front, [e, *costs]])) - _hv(front) if e <= 0.2 else 0.0 for e in draws])
    assert expected_improvement(front, costs, mean, std, REF, max_error=0.2) == pytest.approx(capped, rel=0.05)
    assert expected_improvement(front, np.array([1.2, 0.1]), mean, std, REF) == 0.0  # costlier than the reference


@pytest.mark.parametrize("kind", ["forest", "gp"])
def test_surrogates_rank_a_smooth_function_left_out(kind) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(30, 4))
    y = np.sin(3 * x[:, 0]) + 0.5 * x[:, 1] + 0.01 * rng.normal(size=30)  # two features matter, two do not
    assert loo_rank_correlation(x, y, kind) > 0.7


def test_the_surrogate_with_the_better_leave_one_out_ranking_is_chosen() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(24, 3))
    surrogate, scores = choose_surrogate(x, 2 * x[:, 0] + x[:, 2])
    assert set(scores) == {"forest", "gp"} and surrogate.kind == max(scores, key=scores.get)
    mean, std = surrogate.predict(x[:3])
    assert mean.shape == (3,) and np.all(std >= 0.01)  # never more certain than seed noise


def test_costs_are_predicted_log_linearly() -> None:
    x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0], [4.0, 1.0]])
    y = np.exp(x[:, 0]) * np.where(x[:, 1] > 0, 0.25, 1.0)  # work x a runtime factor
    predict = fit_log_linear(x, y, alpha=1e-6)
    assert predict(np.array([[2.5, 1.0]]))[0] == pytest.approx(math.exp(2.5) * 0.25, rel=0.05)


# --- the sampler in a real study (SQLite) ----------------------------------------------------------------------

SPACE = """techniques = ["student", "prune", "finetune", "dynamic_int8", "ort_int8"]
[space.student]
model = ["custom"]            # or none: the student technique is one choice beside it
depth = [1, 2]
embed_dim = [16, 32]
heads = [2]
init = ["random", "teacher"]
epochs = 1
[space.prune]
heads = [0.0, 0.5]
mlp = [0.0, 0.5]
[space.finetune]
epochs = [0, 1]"""


@pytest.fixture(scope="module")
def proposed(tmp_path_factory):
    from vitshrink.search import run_search

    tmp = tmp_path_factory.mktemp("proposer")
    text = tiny_recipe("proposer", SPACE, trials=8, sampler="vitshrink", device="cpu:1", epochs=2)
    recipe = Recipe.from_toml_text(text)
    storage = f"sqlite:///{tmp}/s.db"
    summary = run_search(recipe, storage=storage, evaluate_test=False)
    return recipe, storage, summary


@pytest.mark.slow
def test_every_sampled_trial_stores_the_prediction_it_was_chosen_by(proposed) -> None:
    _, _, summary = proposed
    trials = summary.study.get_trials(deepcopy=False)
    assert summary.completed == 8 and trials[0].user_attrs["role"] == "teacher" and "proposal" not in trials[0].user_attrs
    sampled = [t for t in trials[1:] if t.state != TrialState.FAIL]
    props = [t.user_attrs["proposal"] for t in sampled]
    modes = [p["mode"] for p in props]
    assert modes[:3] == ["cold start"] * 3 and "model" in modes  # then the surrogate chooses
    for p in props:
        assert p["pool"] > 20 and p["proposer_s"] > 0 and set(p["costs"]) == {"latency_ms", "size_bytes"}
    for t, p in zip(sampled, props):
        if p["mode"] == "model":
            assert 0 <= p["accuracy_mean"] <= 1.5 and p["accuracy_std"] >= 0.01 and p["seconds"] > 0
            assert p["surrogate"] in ("forest", "gp") and 0 <= p["zero_shot"] <= 1
    # the study's params are the proposal's: Optuna's record is the sampler's choice
    labels = [t.user_attrs["label"] for t in sampled]
    assert len(set(labels)) == len(labels)  # no configuration proposed twice


@pytest.mark.slow
def test_a_resumed_search_proposes_what_the_first_would_have(proposed) -> None:
    """All state comes from the storage, the cold start's probe measurements included: a new sampler (a
    new process) proposes the same next trial. (Each sampler measuring its own probes through the
    latency cache, which re-measures a structure once its reference has drifted by 10 %, a re-measured
    probe under a changing load moved the cost model: seen once in a fresh-clone CI run.)"""
    from vitshrink.search import context_for
    from vitshrink.search._proposer import VitshrinkSampler

    recipe, storage, summary = proposed
    ctx = context_for(recipe)
    study = optuna.load_study(study_name="proposer", storage=storage)
    nxt = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[0.0, 1.0, 1.0])  # a frozen trial stand-in
    nxt.number = len(study.trials)
    first, second = VitshrinkSampler(recipe, seed=0), VitshrinkSampler(recipe, seed=0)
    first.attach(ctx)
    second.attach(ctx)
    a = first._propose(study, nxt)
    assert study.user_attrs["vitshrink.probes"] == first._probes  # stored, where a resumed sampler reads them
    b = second._propose(study, nxt)
    assert second._probes == first._probes
    assert a is not None and a.params == b.params and a.prediction["mode"] == "model"


def test_candidates_that_make_the_same_model_are_one_candidate() -> None:
    from vitshrink.search._proposer import _Dims, _effective, estimate

    class _Teacher:  # the shape the estimates read, as timm's ViT exposes it
        import torch.nn as _nn

        embed_dim, num_prefix_tokens, num_classes = 32, 1, 10
        patch_embed = type("P", (), {"num_patches": 16})()
        blocks = [type("B", (), {"attn": type("A", (), {"num_heads": 4, "qkv": _nn.Linear(32, 96)})(),
                                 "mlp": type("M", (), {"fc1": _nn.Linear(32, 64)})()})()] * 2

    dims = _Dims(_Teacher())
    # 4 heads less 0.2 or 0.4 of one
    a, b = CompressionConfig({"prune": {"heads": 0.05}}), CompressionConfig({"prune": {"heads": 0.1}})
    c = CompressionConfig({"prune": {"heads": 0.25}})  # one head fewer
    ea, eb, ec = (estimate(x, dims, {}) for x in (a, b, c))
    assert _effective(a, ea) == _effective(b, eb) != _effective(c, ec)
    assert ec["macs"] < ea["macs"] and ec["params"] < ea["params"]


def test_of_two_drivers_choosing_one_model_at_once_the_later_claim_yields() -> None:
    from vitshrink.search._proposer import VitshrinkSampler

    sampler = VitshrinkSampler(Recipe.from_toml_text(tiny_recipe("claims")))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    first, second = study.ask(), study.ask()
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert sampler._claim(study, frozen[second.number], "model-a")  # the later trial claims first ...
    assert not sampler._claim(study, frozen[first.number], "model-a")  # ... so the other yields it
    assert sampler._claim(study, frozen[first.number], "model-b")  # and takes its next choice
    study.tell(second, [0.9, 1.0, 1.0])  # finished: nobody makes model-a again
    third = study.ask()
    assert not sampler._claim(study, study.get_trials(deepcopy=False)[third.number], "model-a")
