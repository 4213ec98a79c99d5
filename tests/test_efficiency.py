"""Searching smarter than random: structure first (screening), training in rungs (stopping trials
clearly behind their peers), and the hypervolume of a study against wall-clock time."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from recipes import tiny_recipe
from vitshrink.compress import build
from vitshrink.objectives import LatencyProtocol, Target, size_bytes, structural_signature
from vitshrink.search._screening import ORT_SIZE_TOLERANCE, runs_onnx, untrained_structure
from vitshrink.spaces import CompressionConfig, ConfigError, Recipe
from vitshrink.techniques import deployment_of

STUDENT = dict(model="custom", depth=2, embed_dim=16, heads=2, epochs=1)  # the student technique's settings
EVERY_TECHNIQUE = {
    "student": CompressionConfig({"student": STUDENT}),
    "student_from_teacher": CompressionConfig({"student": {**STUDENT, "init": "teacher"}}),
    "prune": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.25}, "finetune": {"epochs": 1}}),
    "nystrom": CompressionConfig({"nystrom": {"landmarks": 4}, "finetune": {"epochs": 1}}),
    "svd": CompressionConfig({"svd": {"rank": 0.5}, "finetune": {"epochs": 1}}),
    "tome": CompressionConfig({"tome": {"r": 2}, "finetune": {"epochs": 1}}),
    "patch_drop": CompressionConfig({"patch_drop": {"fraction": 0.25, "at": (1,)}, "finetune": {"epochs": 1}}),
    **{f"student_{q}": CompressionConfig({"student": STUDENT, q: {"calib_size": 32} if q == "static_int8" else {}})
       for q in ("dynamic_int8", "static_int8", "bf16", "ort_fp32", "ort_int8")},
}


@pytest.mark.parametrize("name", [n if n == "student_ort_int8" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(EVERY_TECHNIQUE)])
def test_trained_model_has_the_untrained_structures_signature_and_size(name, tiny_vit, tiny_data) -> None:
    """Screening measures the untrained structure; the trained model must find that measurement in
    the latency cache (same signature) and have the same size, whatever the technique."""
    config = EVERY_TECHNIQUE[name]
    target, protocol = Target("cpu", 1), LatencyProtocol(runs=5, warmup=1)
    shape = tuple(tiny_data.val.x.shape[1:])
    untrained = untrained_structure(tiny_vit, config, tiny_data, seed=0)
    trained = build(tiny_vit, config, tiny_data, seed=0, train=True, kd_limit=64).model
    extra = {"quant": deployment_of(config)}  # as screening keys its latency cache
    assert (structural_signature(untrained, shape, target, protocol, extra)
            == structural_signature(trained, shape, target, protocol, extra))
    if runs_onnx(trained):  # the ONNX exporter shares equal constants: sizes differ slightly
        assert abs(size_bytes(untrained) - size_bytes(trained)) <= ORT_SIZE_TOLERANCE * size_bytes(trained)
    else:
        assert size_bytes(untrained) == size_bytes(trained)


# --- screening and rungs in real studies (SQLite) --------------------------------------------------------------


def _recipe(name: str, space: str, trials: int, epochs: int = 1, extra: str = "") -> Recipe:
    return Recipe.from_toml_text(tiny_recipe(name, space, trials=trials, sampler="random", epochs=epochs,
                                             device="cpu:1") + extra)


def _teacher_size(recipe: Recipe) -> int:
    from vitshrink.models import create_model
    from vitshrink.search._trial import teacher_spec_of

    return size_bytes(create_model(teacher_spec_of(recipe), num_classes=10, load_weights=False))


def _by_number(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.number: t for t in study.get_trials(deepcopy=False)}


@pytest.mark.parametrize("screening", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_candidate_breaking_the_size_constraint_is_screened_without_training(screening, tmp_path) -> None:
    from vitshrink.search import pareto_trials, run_search
    from vitshrink.studies import list_studies

    base = _recipe("screen", 'techniques = ["finetune", "dynamic_int8"]\n[space.finetune]\nepochs = 1', trials=1)
    limit = 0.9 * _teacher_size(base) / 1e6  # the float structure breaks it, dynamic int8 meets it
    recipe = Recipe.from_dict({**_doc(base), "constraints": {"max_size_mb": limit}}).with_overrides(screening=screening)
    storage = f"sqlite:///{tmp_path}/s.db"
    study = run_search(recipe, storage=storage, evaluate_test=False).study  # the teacher (never screened)
    study.enqueue_trial({"runtime": "none"})
    study.enqueue_trial({"runtime": "dynamic_int8"})
    study = run_search(recipe.with_overrides(trials=2 if screening else 3), storage=storage, evaluate_test=False).study
    trials = _by_number(study)
    teacher, float_trial, int8 = trials[0], trials[1], trials[2]
    assert teacher.state == TrialState.COMPLETE and int8.state == TrialState.COMPLETE
    assert any(r["stage"] == "finetune" for r in int8.user_attrs["records"])  # trained
    assert int8.user_attrs["latency"]["cached"]  # the structure's measurement, reused after training
    if not screening:  # the ablation: the hopeless candidate is trained and kept as infeasible
        assert float_trial.state == TrialState.COMPLETE and float_trial.constraints["max_size_mb"] > 0
        return
    assert float_trial.state == TrialState.PRUNED
    ua = float_trial.user_attrs
    assert "max_size_mb" in ua["screened"]
    assert ua["size_bytes"] == int(teacher.values[2]) and ua["latency"]["batches"][0]["median_ms"] > 0
    assert "records" not in ua and not [k for k in ua if k.startswith("rung:")]  # never trained
    assert set(ua["seconds"]) == {"screen", "total"}  # its time is screening alone: no build, measure or save
    assert float_trial.constraints["max_size_mb"] > 0  # TPE ranks it with the infeasible trials
    assert 1 not in {t.number for t in pareto_trials(study, include_infeasible=True)}
    row = list_studies(storage).set_index("study").loc["screen"]
    assert (row["complete"], row["screened"], row["stopped"]) == (2, 1, 0)


def _doc(recipe: Recipe) -> dict:
    return recipe.to_dict()


def _completed(number: int, acc: float, lat: float, size: float, iqr: float = 0.0, feasible: bool = True):
    return create_trial(values=[acc, lat, size], params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={"latency_iqr_ms": iqr}, constraints={"max_size_mb": 0.0 if feasible else 1.0})


def _structure(lat: float, size: int, iqr: float = 0.0):
    from vitshrink.objectives import BatchLatency, LatencyResult
    from vitshrink.search._screening import Structure

    batch = BatchLatency(batch=1, median_ms=lat, iqr_ms=iqr, **_batch_rest())
    return Structure(LatencyResult((batch,), None, 1, {}, 0.0, 0.0, 0.0), False, size)


def _batch_rest() -> dict:
    import dataclasses

    from vitshrink.objectives import BatchLatency

    return {f.name: 0.0 for f in dataclasses.fields(BatchLatency) if f.name not in ("batch", "median_ms", "iqr_ms")}


def test_dominated_only_by_a_best_accuracy_trial_faster_beyond_the_noise() -> None:
    from vitshrink.search._screening import dominated_reason

    teacher = _completed(0, 0.90, 10.0, 1000, iqr=0.2)
    int8 = _completed(1, 0.91, 4.0, 300, iqr=0.2)  # the best accuracy reached, fast and small
    slow_big = _structure(6.0, 400, iqr=0.2)
    assert "trial" in dominated_reason(slow_big, [teacher, int8])
    assert dominated_reason(_structure(4.3, 400, iqr=0.2), [teacher, int8]) is None  # within the noise
    assert dominated_reason(_structure(6.0, 299), [teacher, int8]) is None  # smaller: may enter the front
    better = _completed(2, 0.95, 9.0, 900)  # someone reached more: int8 no longer bounds the accuracy
    assert dominated_reason(slow_big, [teacher, int8, better]) is None
    infeasible = _completed(1, 0.91, 4.0, 300, feasible=False)
    assert dominated_reason(slow_big, [teacher, infeasible]) is None


# a student as wide and deep as the teacher: "teacher" init copies it whole, "random" starts from scratch
RUNG_SPACE = ('techniques = ["student"]\nalways = ["student"]\n[space.student]\nmodel = "custom"\n'
              'init = ["random", "teacher"]\ndepth = 2\nembed_dim = 32\nepochs = 9\nheads = 2\nmlp_ratio = 2.0')


@pytest.fixture(scope="module")
def stopped_study(tmp_path_factory):
    """Teacher, two students initialised from it, then a random-init student of the same structure
    (near chance at student epoch 1, so not judged there; clearly behind both at epoch 3 of 9, stopped there), then
    one more from the teacher."""
    from vitshrink.search import run_search

    tmp = tmp_path_factory.mktemp("rungs")
    recipe = _recipe("rungs", RUNG_SPACE, trials=1, epochs=8)
    storage = f"sqlite:///{tmp}/s.db"
    study = run_search(recipe, storage=storage, evaluate_test=False).study
    for init in ("teacher", "teacher", "random", "teacher"):
        study.enqueue_trial({"student.init": init})
    summary = run_search(recipe.with_overrides(trials=4), storage=storage, evaluate_test=False)
    return recipe, storage, summary


@pytest.mark.slow
def test_trial_clearly_behind_its_peers_at_an_epoch_is_stopped_there(stopped_study) -> None:
    _, _, summary = stopped_study
    trials = _by_number(summary.study)
    assert [trials[n].state for n in range(5)] == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED, TrialState.COMPLETE]
    stopped = trials[3].user_attrs
    assert stopped["stopped_at"]["stage"] == "student" and stopped["stopped_at"]["epoch"] == 3
    assert "behind at student epoch 3/9" in stopped["stopped"]
    assert stopped["stopped_at"]["accuracy"] == stopped["rung:student:3/9"]
    assert "rung:student:9/9" not in stopped  # it trained no further
    # at epoch 1 it was within a few points of chance (10 classes): noise, so it was not stopped there
    assert stopped["rung:student:1/9"] <= 0.1 + 0.05
    for n in (1, 2):  # its peers recorded their rungs (1/27, 1/9, 1/3 of 9 epochs: 1 and 3) and their end
        assert {"rung:student:1/9", "rung:student:3/9", "rung:student:9/9"} <= set(trials[n].user_attrs)
        assert "rung:student:2/9" not in trials[n].user_attrs
        assert trials[n].user_attrs["rung:student:3/9"] > stopped["rung:student:3/9"] + 0.02


def test_rungs_are_geometric_fractions_of_a_stage() -> None:
    from vitshrink.search._rungs import rung_epochs

    assert rung_epochs(27) == (1, 3, 9) and rung_epochs(81) == (3, 9, 27)
    assert rung_epochs(2) == (1,) and rung_epochs(1) == ()  # the last epoch is never a rung


def _at_rung(acc: float, lat: float, size: float, key: str = "rung:student:1/9"):
    return create_trial(values=[0.5, lat, size], params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={key: acc})


def test_rung_rank_is_non_dominated_sorting_on_accuracy_and_known_costs() -> None:
    from vitshrink.search._rungs import rung_rank

    key = "rung:student:1/9"
    peers = [_at_rung(0.80, 1.0, 100), _at_rung(0.70, 0.5, 50), _at_rung(0.60, 0.4, 40)]
    for i, t in enumerate(peers):
        t.number = i + 1
    # slower and larger than all three and less accurate than the first two: behind the front of three
    assert rung_rank(key, 0.65, _structure(2.0, 200), peers, 0.02, 9) == (1, 3, 4)
    # the cheapest of all: on the front whatever its accuracy
    assert rung_rank(key, 0.30, _structure(0.1, 10), peers, 0.02, 9)[0] == 0
    # within the margin of a peer that costs the same: not dominated by it
    assert rung_rank(key, 0.79, _structure(1.0, 100), peers, 0.02, 9)[0] == 0


def test_latency_load_of_other_processes_is_measured_and_said_once() -> None:
    import subprocess
    import sys

    from vitshrink.objectives.latency import other_load
    from vitshrink.search._latency import latency_warnings

    quiet = other_load(0.3)
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
    try:
        import time

        time.sleep(0.5)
        busy = other_load(0.5)
    finally:
        spin.kill()
    assert quiet is not None and busy is not None and busy >= quiet + 0.5  # one more core kept busy by another

    def timed(number, load, noisy=False, cached=False):
        return create_trial(values=[0.9, 1.0, 1.0], user_attrs={"latency": {"other_load": load, "cached": cached},
                                                               "latency_noisy": noisy})

    trials = [timed(0, 0.0), timed(1, 1.6), timed(2, 0.9, noisy=True), timed(3, 2.0, cached=True)]
    for i, t in enumerate(trials):
        t.number = i
    lines = latency_warnings(trials)
    assert len(lines) == 2 and "trial(s) 1, 2:" in lines[0] and "1.6 cores" in lines[0] and "trial(s) 2 " in lines[1]
    assert latency_warnings(trials[:1]) == []


@pytest.mark.slow
def test_resume_never_retrains_stopped_trials_and_pareto_excludes_them(stopped_study) -> None:
    from vitshrink.search import pareto_trials, run_search
    from vitshrink.search._storage import fail_stale_trials
    from vitshrink.studies import list_studies, open_study

    recipe, storage, summary = stopped_study
    before = len(summary.study.trials)
    assert fail_stale_trials(summary.study, grace_period=1) == []
    again = run_search(recipe.with_overrides(trials=4), storage=storage, evaluate_test=False)
    assert again.new_trials == 0 and len(again.study.trials) == before
    assert _by_number(again.study)[3].state == TrialState.PRUNED
    assert 3 not in {t.number for t in pareto_trials(again.study, include_infeasible=True)}
    handle = open_study("rungs", storage)
    assert 3 not in set(handle.pareto(include_infeasible=True)["trial"])
    assert handle.trials().set_index("trial").loc[3, "fail_reason"].startswith("stopped: behind at student epoch 3/9")
    row = list_studies(storage).set_index("study").loc["rungs"]
    assert (row["complete"], row["screened"], row["stopped"]) == (4, 0, 1)


@pytest.mark.slow
def test_hypervolume_history_grows_with_the_trials(stopped_study) -> None:
    from vitshrink.studies import open_study

    _, storage, summary = stopped_study
    history = open_study("rungs", storage).hypervolume_history()
    assert list(history["trial"]) == [0, 1, 2, 3, 4] and list(history["complete"]) == [1, 2, 3, 3, 4]
    assert history["seconds"].is_monotonic_increasing and history["seconds"].iloc[0] > 0
    assert history["hypervolume"].is_monotonic_increasing and history["hypervolume"].iloc[0] > 0
    trials = summary.study.trials
    wall = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds()
    assert history["seconds"].iloc[-1] <= wall + 1e-6  # the gap between the two runs is not counted


def test_recipe_switches_default_on_and_are_checked() -> None:
    default = Recipe.from_toml_text('[study]\nname = "x"')
    assert (default.screening, default.rungs, default.rung_margin) == (True, True, 0.02)
    off = Recipe.from_toml_text('[study]\nname = "x"\nscreening = false\nrungs = false\nrung_margin = 0.05')
    assert (off.screening, off.rungs, off.rung_margin) == (False, False, 0.05)
    with pytest.raises(ConfigError, match="rung_margin"):
        Recipe.from_toml_text('[study]\nname = "x"\nrung_margin = 2')
    with pytest.raises(ConfigError, match="screening"):
        Recipe.from_toml_text('[study]\nname = "x"\nscreening = "yes"')


def test_search_stops_when_every_candidate_is_screened(tmp_path, monkeypatch) -> None:
    """An unreachable constraint: the teacher completes (infeasible), every sampled candidate is
    screened; the run stops after `max_pruned` PRUNED trials instead of sampling forever."""
    from vitshrink.search import _budget, run_search

    monkeypatch.setattr(_budget, "max_pruned", lambda recipe: 3)  # where budget_left reads it
    recipe = _recipe("unreachable", 'techniques = ["dynamic_int8"]', trials=2,
                     extra="\n[constraints]\nmax_size_mb = 0.000001\n")
    summary = run_search(recipe, storage=f"sqlite:///{tmp_path}/s.db", evaluate_test=False)
    states = [t.state for t in summary.study.trials]
    assert summary.stopped_by == "pruned" and states == [TrialState.COMPLETE] + [TrialState.PRUNED] * 3


@pytest.mark.slow
def test_plot_history_writes_a_png(stopped_study, tmp_path) -> None:
    from vitshrink.plotting import PlotError, plot_history
    from vitshrink.studies import open_study

    _, storage, _ = stopped_study
    handle = open_study("rungs", storage)
    path = plot_history([handle], tmp_path / "history.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(PlotError, match="png"):
        plot_history([handle], tmp_path / "history.html")
    from typer.testing import CliRunner

    from vitshrink.cli import app

    res = CliRunner().invoke(app, ["plot", "rungs", "--history", "--out", str(tmp_path / "h.png"), "--storage", storage])
    assert res.exit_code == 0 and (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    res = CliRunner().invoke(app, ["pareto", "rungs", "--storage", storage])
    assert res.exit_code == 0 and "0 screened (not trained), 1 stopped early" in res.output
