"""Latency you can trust (issue 12.4): timed beside a fixed reference with the ratio kept, enough runs
for a stable median (or a flag saying so), cached values re-measured when the reference drifts, and
a study's latency objective scaled to the teacher as it was when the study was created."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from torch import nn

from recipes import tiny_recipe
from vitshrink.objectives import LatencyCache, LatencyProtocol, Target, measure_latency, measure_latency_cached
from vitshrink.objectives import _protocol, _reference
from vitshrink.objectives.latency import _time_batch
from vitshrink.spaces import ConfigError, Recipe

torch.set_num_threads(1)
SHAPE = (1, 8, 8)
TARGET = Target("cpu", 1)


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16))


def _big() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.GELU(), nn.Linear(1024, 1024), nn.Linear(1024, 10))


# --- the ratio to a reference timed in the same window --------------------------------------------------------


def test_candidate_and_reference_alternate_and_the_ratio_is_stored() -> None:
    big = _big()
    protocol = LatencyProtocol(warmup=2, runs=20, max_runs=60, reference=big)
    result = measure_latency(_small(), SHAPE, TARGET, protocol)
    b = result.batches[0]
    assert b.reference_ms is not None and b.ratio == pytest.approx(b.median_ms / b.reference_ms)
    assert result.ratio_to_reference == b.ratio and b.ratio < 1  # a 64x16 layer beside a 1024-wide MLP
    assert b.ratio_cv >= b.median_cv and b.spread == b.ratio_cv  # the ratio carries both medians' spread
    assert result.scaled_ms(10.0) == pytest.approx(b.ratio * 10.0) and result.scaled_ms(None) == b.median_ms
    assert big.training  # the reference is left as it was found
    # JSON round trip (the cache and the trial attrs hold this dict)
    again = _protocol.LatencyResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_without_a_reference_nothing_pretends_to_be_a_ratio() -> None:
    result = measure_latency(_small(), SHAPE, TARGET, LatencyProtocol(warmup=1, runs=5, max_runs=5))
    assert result.ratio_to_reference is None and result.batches[0].reference_ms is None
    assert result.batches[0].runs == 5 and not result.noisy  # a fixed count is never "noisy"


# --- enough runs: the CV of the median estimate under the target, or the trial says so --------------------------


def test_runs_are_added_until_the_median_is_stable() -> None:
    """Synthetic timings (the rule, exactly): runs stop at the first count >= runs whose median CV is
    under the target."""
    values = [10.0 + (i * 7919 % 13) / 10 for i in range(1000)]  # a spread of about 13 %
    it = iter(values)
    protocol = LatencyProtocol(runs=5, max_runs=1000, target_cv=0.01, max_seconds=60)
    times, ref = _time_batch(lambda: next(it), None, protocol)
    n = len(times)
    assert ref == [] and 5 < n < 1000
    assert _protocol.median_cv(values[:n]) < 0.01
    assert all(_protocol.median_cv(values[:k]) >= 0.01 for k in range(5, n))


def test_the_cap_stops_the_runs_and_the_result_says_it_is_noisy(caplog) -> None:
    protocol = LatencyProtocol(warmup=1, runs=5, max_runs=25, target_cv=1e-9)  # no real timing is that stable
    with caplog.at_level("DEBUG", logger="vitshrink.objectives.latency"):  # a search says it once a run
        result = measure_latency(_small(), SHAPE, TARGET, protocol)
    b = result.batches[0]
    assert b.runs == 25 and result.noisy and b.spread >= 1e-9 and result.target_cv == 1e-9
    assert "noisy" in caplog.text


def test_the_time_cap_stops_the_runs_too() -> None:
    protocol = LatencyProtocol(warmup=0, runs=5, max_runs=100_000, target_cv=1e-9, max_seconds=0.2)
    result = measure_latency(_big(), SHAPE, TARGET, protocol)
    assert 5 <= result.batches[0].runs < 100_000 and result.noisy
    assert result.finished_at - result.started_at < 5


@pytest.mark.parametrize("kwargs", [{"runs": 10, "max_runs": 9}, {"target_cv": 0.0}, {"target_cv": 1.5},
                                    {"max_seconds": 0}])
def test_protocol_refuses_meaningless_caps(kwargs) -> None:
    with pytest.raises(ValueError, match="max_runs|target_cv|max_seconds"):
        LatencyProtocol(**kwargs)


@pytest.mark.parametrize("target, message", [("runs = 5\nmax_runs = 4", "target.max_runs = 4 is below target.runs"),
                                             ("target_cv = 0", "target.target_cv = 0.0 is a fraction"),
                                             ("target_cv = 3", "target.target_cv = 3.0 is a fraction")])
def test_recipe_refuses_meaningless_caps(target, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Recipe.from_toml_text(f'[study]\nname = "x"\n[target]\n{target}\n')
    r = Recipe.from_toml_text('[study]\nname = "x"\n')
    assert (r.latency_max_runs, r.latency_target_cv) == (200, 0.03)


# --- a cached value is re-measured when the reference has drifted ----------------------------------------------


def _rewrite_reference(cache: LatencyCache, factor: float) -> float:
    """The cache file as a machine twice as fast (or slow) would have left it: every entry's reference
    median multiplied by `factor`. Returns the new stored median."""
    entries = json.loads(cache.path.read_text())
    (sig, entry), = entries.items()
    entry["batches"][0]["reference_ms"] *= factor
    cache.path.write_text(json.dumps(entries))
    return entry["batches"][0]["reference_ms"]


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_a_drifted_reference_gets_the_candidate_measured_again(factor, tmp_path) -> None:
    cache = LatencyCache(tmp_path / "latency.json")
    protocol = LatencyProtocol(warmup=1, runs=10, max_runs=30, reference=_big())
    first, cached = measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)
    assert not cached and first.reference_ms
    again, cached = measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)
    assert cached and again == first  # the reference has not moved: the entry is reused
    stale = _rewrite_reference(cache, factor)
    third, cached = measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)
    assert not cached, "a cached latency was reused although the reference moved by 2x"
    assert third.stale_reference_ms == pytest.approx(stale) and third.reference_ms != pytest.approx(stale)
    stored = LatencyCache(cache.path)._read()
    assert len(stored) == 1 and next(iter(stored.values()))["batches"][0]["reference_ms"] == third.reference_ms


def test_the_reference_is_timed_once_per_interval_not_per_candidate(tmp_path, monkeypatch) -> None:
    """Reuses within RECHECK_S rely on this process's last timing of the reference; past it, a reuse
    times the reference again (the real function, counted)."""
    from vitshrink.objectives import latency

    cache = LatencyCache(tmp_path / "latency.json")
    protocol = LatencyProtocol(warmup=1, runs=10, max_runs=30, reference=_big())
    measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)
    alone = []
    real = latency.measure_latency

    def counted(model, *args, **kwargs):
        alone.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(latency, "measure_latency", counted)
    for _ in range(3):
        assert measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)[1]
    assert alone == []  # the window's own reference timing is still fresh
    monkeypatch.setattr(_reference, "RECHECK_S", 0.0)
    measure_latency_cached(_small(), SHAPE, TARGET, protocol, cache=cache)
    assert alone and alone[0] is protocol.reference


# --- the study: the latency objective scaled to the teacher at creation; old studies keep plain ms --------------


def test_a_study_created_before_references_keeps_plain_milliseconds() -> None:
    from vitshrink.search._latency import LATENCY_REFERENCE_ATTR, PLAIN, latency_baseline, record_latency_reference

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.9, 1.0, 100.0]))
    info = record_latency_reference(study, ctx=None)  # never times anything for an old study
    assert info == {"objective": PLAIN} and study.user_attrs[LATENCY_REFERENCE_ATTR] == info
    assert latency_baseline(study) is None


def test_a_new_study_scales_latency_to_the_teacher_and_stores_the_ratio(tmp_path) -> None:
    from vitshrink.search import run_search
    from vitshrink.search._fingerprint import FINGERPRINT_ATTR
    from vitshrink.search._latency import LATENCY_REFERENCE_ATTR, SCALED

    text = tiny_recipe("trust", trials=2, sampler="random", device="cpu:1")
    recipe = Recipe.from_toml_text(text.replace("runs = 5\n", "runs = 5\nmax_runs = 8\ntarget_cv = 0.000001\n"))
    study = run_search(recipe, storage=f"sqlite:///{tmp_path}/s.db", evaluate_test=False).study
    ref = study.user_attrs[LATENCY_REFERENCE_ATTR]
    assert ref["objective"] == SCALED and ref["reference_ms"] > 0
    target = study.user_attrs[FINGERPRINT_ATTR]["target"]
    assert target["latency_objective"] == SCALED and target["reference_ms"] == ref["reference_ms"]
    assert (target["max_runs"], target["target_cv"]) == (8, 0.000001)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 2
    for t in done:
        lat = t.user_attrs["latency"]
        assert lat["ratio_to_reference"] == lat["batches"][0]["ratio"] > 0
        # the objective is the ratio x the teacher's ms at creation, the measured ms stay beside it
        assert t.values[1] == pytest.approx(lat["ratio_to_reference"] * ref["reference_ms"])
        assert lat["objective_ms"] == t.values[1] and lat["baseline_ms"] == ref["reference_ms"]
        assert lat["batches"][0]["median_ms"] > 0 and lat["batches"][0]["runs"] == 8
        # no real timing reaches a CV of 1e-6 in 8 runs: the trial says so
        assert t.user_attrs["latency_noisy"] is True and t.user_attrs["latency_spread"] >= 0.000001
    # resuming keeps the reference and the fingerprint (the resume is not refused)
    again = run_search(recipe.with_overrides(trials=3), storage=f"sqlite:///{tmp_path}/s.db", evaluate_test=False)
    assert again.study.user_attrs[LATENCY_REFERENCE_ATTR] == ref
    assert again.study.user_attrs[FINGERPRINT_ATTR]["target"]["latency_objective"] == SCALED
