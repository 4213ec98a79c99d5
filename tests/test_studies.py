"""Querying a stored study: tables, hypervolume, Optuna's own API, plots, and the CLI over them.

One small study is searched once per test session (conftest.py: `shared_study`, also used by test_export.py):
a tiny ViT on digits with enqueued configs, so the transforms that matter for export all appear
(pruning + torch dynamic int8, Nystrom + ToMe token merging, ONNX Runtime int8), plus one failed trial.
"""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from support import CONFIGS, SharedStudy, cli

torch.set_num_threads(2)

@pytest.fixture(scope="module")
def shared(shared_study) -> SharedStudy:
    return shared_study


@pytest.fixture(scope="module")
def handle(shared):
    from vitshrink.studies import open_study

    return open_study(shared.name, shared.storage)


# --- hypervolume: pure function -------------------------------------------------------------------------------


def test_hypervolume_of_known_points() -> None:
    from vitshrink.search._pareto import HV_REFERENCE, hypervolume

    # (1 - 0.9, 0.5, 1.0) against (1.0, 1.1, 1.1): 0.9 * 0.6 * 0.1
    assert hypervolume([(0.9, 5.0, 100.0)], 10.0, 100.0) == pytest.approx(0.054)
    # a dominated point adds nothing; a point worse than the reference adds nothing
    assert hypervolume([(0.9, 5.0, 100.0), (0.8, 6.0, 100.0), (0.95, 30.0, 10.0)], 10.0, 100.0) \
        == pytest.approx(0.054)
    # two boxes that overlap: union = 0.9*0.6*0.1 + 0.8*0.1*(1.1-0.5) - overlap 0.8*0.1*0.1
    assert hypervolume([(0.9, 5.0, 100.0), (0.8, 10.0, 50.0)], 10.0, 100.0) == pytest.approx(0.054 + 0.048 - 0.008)
    assert hypervolume([], 10.0, 100.0) == 0.0
    assert HV_REFERENCE == (1.0, 1.1, 1.1)
    with pytest.raises(ValueError):
        hypervolume([(0.9, 5.0, 100.0)], 0.0, 100.0)


# --- the Python API ---------------------------------------------------------------------------------------------


def test_frames_have_the_documented_columns(handle, shared) -> None:
    from vitshrink.studies import COLUMNS, CONFIG_COLUMNS

    trials = handle.trials()
    assert list(trials.columns) == COLUMNS + CONFIG_COLUMNS
    assert len(trials) == len(CONFIGS) + 1
    failed = trials.set_index("trial").loc[shared.failed]
    assert failed["state"] == "FAIL" and "out of landmarks" in failed["fail_reason"]
    done = handle.trials(states=["COMPLETE"])
    assert set(done["trial"]) == set(shared.numbers.values())
    for _, row in done.iterrows():
        t = handle.study.trials[row["trial"]]
        assert (row["accuracy"], row["latency_ms"], row["size_bytes"]) == (t.values[0], t.values[1], int(t.values[2]))
        assert row["params"] > 0 and row["latency_iqr_ms"] >= 0 and row["latency_cv"] >= 0
    assert done.set_index("trial").loc[shared.numbers["nys_tokens"], "config.nystrom.landmarks"] == 4

    front = handle.pareto()
    assert list(front.columns) == COLUMNS + CONFIG_COLUMNS and len(front) >= 1
    assert front["test_accuracy"].between(0, 1).all()  # measured once on test after the search
    assert front["state"].eq("COMPLETE").all()
    # the front is non-dominated among the completed trials
    for _, a in front.iterrows():
        for _, b in done.iterrows():
            assert not (b["accuracy"] >= a["accuracy"] and b["latency_ms"] <= a["latency_ms"]
                        and b["size_bytes"] <= a["size_bytes"]
                        and (b["accuracy"], b["latency_ms"], b["size_bytes"])
                        != (a["accuracy"], a["latency_ms"], a["size_bytes"]))


def test_describe_has_every_stage_record(handle, shared) -> None:
    info = handle.describe(shared.numbers["prune_dyn"])
    assert [r["stage"] for r in info["records"]] == ["prune", "quantize"]
    prune = info["records"][0]
    assert prune["params_after"] < prune["params_before"]
    assert list(info["config"]["techniques"]) == ["prune", "dynamic_int8"] and info["objectives"]["latency_ms"] > 0
    assert info["config"]["techniques"]["prune"]["_data"]["heads"] == 0.5  # the typed record the trial stores
    lat = info["latency"]  # at least the recipe's runs, more until the median is stable, or flagged noisy
    first = lat["batches"][0]
    spread = first["ratio_cv"] if first["ratio"] else first["median_cv"]
    assert 5 <= first["runs"] <= 200 and lat["noisy"] == (spread >= lat["target_cv"])
    failed = handle.describe(shared.failed)
    assert failed["state"] == "FAIL" and failed["fail_reason"].startswith("RuntimeError")


def test_hypervolume_of_the_study(handle) -> None:
    from vitshrink.search import pareto_trials
    from vitshrink.search._pareto import hypervolume

    teacher = handle.teacher_trial()
    hv = handle.hypervolume()
    assert 0.0 < hv <= 1.1 * 1.1
    assert hv >= teacher.values[0] * 0.1 * 0.1 - 1e-9  # the teacher alone, if it is on the front, or better
    assert hv == pytest.approx(hypervolume(pareto_trials(handle.study), teacher.values[1], teacher.values[2]))
    assert handle.hypervolume((1.0, 2.0, 2.0)) > hv  # a farther reference point encloses more
    norm = handle.normalized_front()
    assert list(norm.columns) == ["trial", "error", "latency_rel", "size_rel"]


def test_optuna_reads_the_study_directly(shared, handle) -> None:
    study = optuna.load_study(study_name=shared.name, storage=shared.storage)
    assert study.metric_names == ["accuracy", "latency_ms", "size_bytes"]
    assert {t.number for t in study.best_trials} >= set(handle.pareto()["trial"])  # no constraints: same front
    df = study.trials_dataframe()
    assert {"values_accuracy", "values_latency_ms", "values_size_bytes", "user_attrs_config", "state"} <= set(df.columns)
    assert "vitshrink.recipe" in study.user_attrs and "vitshrink.target" in study.user_attrs


def test_unknown_study_and_trial_are_clear_errors(shared, handle) -> None:
    from vitshrink.studies import StudyNotFound, TrialNotAvailable, open_study

    with pytest.raises(StudyNotFound, match="no study 'nope'.*studies there: q"):
        open_study("nope", shared.storage)
    with pytest.raises(TrialNotAvailable, match="is FAIL, not COMPLETE.*out of landmarks"):
        handle.load_model(shared.failed)
    with pytest.raises(TrialNotAvailable, match="has no trial 99"):
        handle.trial(99)


def test_plots_write_png_and_html(handle, tmp_path) -> None:
    from vitshrink.plotting import PlotError, plot_study

    png = plot_study(handle, tmp_path / "front.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    html = plot_study(handle, tmp_path / "front.html")
    assert "plotly" in html.read_text()[:100_000].lower()
    with pytest.raises(PlotError, match=".png, .svg, .pdf or .html"):
        plot_study(handle, tmp_path / "front.gif")


# --- the CLI ----------------------------------------------------------------------------------------------------


def test_cli_show(shared) -> None:
    n = shared.numbers["nys_tokens"]
    res = cli("show", "q", str(n), "--storage", shared.storage, "--format", "json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["trial"] == n and {r["stage"] for r in info["records"]} == {"lowrank", "tokens"}
    res = cli("show", "q", str(n), "--storage", shared.storage)
    assert res.exit_code == 0 and "build stages" in res.stdout and "tokens" in res.stdout
    res = cli("show", "q", str(shared.failed), "--storage", shared.storage)
    assert res.exit_code == 0 and "out of landmarks" in res.stdout  # show is where a failure is read


def test_cli_pareto_and_studies_machine_readable(shared) -> None:
    res = cli("pareto", "q", "--storage", shared.storage, "--format", "csv")
    assert res.exit_code == 0
    header = res.stdout.splitlines()[0].split(",")
    assert header[:4] == ["trial", "state", "accuracy", "test_accuracy"] and "config.runtime" in header
    res = cli("pareto", "q", "--storage", shared.storage, "--format", "json")
    rows = json.loads(res.stdout)
    assert rows and {"test_accuracy", "latency_iqr_ms", "config"} <= set(rows[0])
    res = cli("studies", "--storage", shared.storage, "--format", "json")
    assert json.loads(res.stdout)[0]["study"] == "q"


def test_cli_plot_and_compare(shared, tmp_path) -> None:
    optuna.copy_study(from_study_name="q", from_storage=shared.storage, to_storage=shared.storage,
                      to_study_name=f"q-copy-{tmp_path.name}")
    res = cli("plot", "q", "--out", str(tmp_path / "p.png"), "--storage", shared.storage)
    assert res.exit_code == 0 and (tmp_path / "p.png").stat().st_size > 10_000
    res = cli("compare", "q", f"q-copy-{tmp_path.name}", "--out", str(tmp_path / "cmp.png"),
              "--storage", shared.storage, "--format", "json")
    assert res.exit_code == 0, res.output
    table = json.loads(res.stdout)
    assert [r["study"] for r in table] == ["q", f"q-copy-{tmp_path.name}"]
    assert table[0]["hypervolume"] > 0 and table[0]["hypervolume"] == pytest.approx(table[1]["hypervolume"])
    assert (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_exit_2_with_one_sentence(shared, tmp_path) -> None:
    res = cli("show", "nope", "0", "--storage", shared.storage)
    assert res.exit_code == 2 and "no study 'nope'" in res.output and "Traceback" not in res.output
    res = cli("export", "q", "--trial", str(shared.failed), "--out", str(tmp_path / "m.onnx"),
              "--storage", shared.storage)
    assert res.exit_code == 2 and "not COMPLETE" in res.output
    res = cli("plot", "q", "--out", str(tmp_path / "p.gif"), "--storage", shared.storage)
    assert res.exit_code == 2 and ".html" in res.output
    res = cli("compare", "q", "nope", "--storage", shared.storage)
    assert res.exit_code == 2 and "no study 'nope'" in res.output
