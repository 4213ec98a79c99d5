"""Objectives chosen in the recipe: two tiny studies, ["accuracy", "macs"] and ["accuracy", "latency_ms",
"peak_memory_bytes"], searched once per module; the Pareto table, hypervolume, plots, compare and
export read their values by name, and a resume with other objectives is refused."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from recipes import tiny_recipe
from vitshrink.spaces import CompressionConfig, Recipe

torch.set_num_threads(2)

SPACE = 'techniques = ["prune", "dynamic_int8"]\n[space.prune]\nheads = [0.0, 0.5]'
STUDIES = {"macs": ["accuracy", "macs"], "mem": ["accuracy", "latency_ms", "peak_memory_bytes"]}
CONFIGS = {"teacher": CompressionConfig(), "pruned": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}})}


def _recipe(name: str) -> Recipe:
    text = tiny_recipe(name, SPACE, trials=2, sampler="random", device="cpu:1")
    return Recipe.from_toml_text(text.replace("[data]", f"objectives = {json.dumps(STUDIES[name])}\n[data]"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Both studies in one storage: the teacher, then a pruned model (fewer MACs, less memory)."""
    from vitshrink.search import open_or_create_study, run_search

    root = tmp_path_factory.mktemp("objectives")
    url = f"sqlite:///{root}/s.db"
    with pytest.MonkeyPatch.context() as mp:  # module fixtures miss conftest's function-scoped cache
        mp.setenv("VITSHRINK_CACHE", str(root / "cache"))
        for name in STUDIES:
            recipe = _recipe(name)
            study = open_or_create_study(recipe, url)
            for role, cfg in CONFIGS.items():
                study.enqueue_trial(recipe.space.params_for(cfg, strict=False),
                                    user_attrs={"config_override": cfg.to_dict(), "role": role})
            summary = run_search(recipe, storage=url)
            assert summary.completed == 2, [t.user_attrs for t in summary.study.trials]
    return url, root


def _open(url: str, name: str):
    from vitshrink.studies import open_study

    return open_study(name, url)


def cli(*args: str):
    from vitshrink.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "300"})


@pytest.mark.parametrize("name", list(STUDIES))
def test_study_values_are_the_chosen_objectives(stored, name) -> None:
    from optuna.study import StudyDirection

    handle = _open(stored[0], name)
    assert handle.study.metric_names == STUDIES[name] and handle.objectives == tuple(STUDIES[name])
    assert handle.study.directions[0] == StudyDirection.MAXIMIZE
    assert all(d == StudyDirection.MINIMIZE for d in handle.study.directions[1:])
    assert handle.study.user_attrs["vitshrink.recipe"]["study"]["objectives"] == STUDIES[name]
    assert handle.study.user_attrs["vitshrink.fingerprint"]["objectives"]["names"] == STUDIES[name]
    teacher, pruned = (handle.trial(n) for n in (0, 1))
    # each column of the table holds the trial's value of that objective, read by name
    table = handle.trials(states=["COMPLETE"]).set_index("trial")
    for t in (teacher, pruned):
        for objective, value in zip(STUDIES[name], t.values):
            assert table.loc[t.number, objective] == pytest.approx(value)
        # the metrics that are not objectives are measured too
        assert table.loc[t.number, "latency_ms"] > 0 and table.loc[t.number, "size_bytes"] > 0
    if name == "macs":  # pruning halves the heads and MLP units: fewer MACs
        assert table.loc[1, "macs"] < table.loc[0, "macs"] and pruned.values[1] == pruned.user_attrs["macs"]


@pytest.mark.parametrize("name", list(STUDIES))
def test_hypervolume_normalises_each_objective_by_the_teachers(stored, name) -> None:
    from vitshrink.search import pareto_trials
    from vitshrink.search._pareto import front_hypervolume

    handle = _open(stored[0], name)
    teacher = handle.teacher_trial()
    front = pareto_trials(handle.study)
    assert handle.teacher_values() == tuple(teacher.values)
    assert handle.hypervolume() == pytest.approx(front_hypervolume(front, teacher.values, STUDIES[name]))
    assert handle.hypervolume() >= teacher.values[0] * 0.1 ** (len(STUDIES[name]) - 1) - 1e-9
    norm = handle.normalized_front()
    expected = {"macs": ["trial", "error", "macs_rel"], "mem": ["trial", "error", "latency_rel", "memory_rel"]}[name]
    assert list(norm.columns) == expected
    history = handle.hypervolume_history()
    assert history["hypervolume"].iloc[-1] == pytest.approx(handle.hypervolume())


def test_cli_pareto_reads_the_columns_by_name(stored) -> None:
    url, _ = stored
    res = cli("pareto", "macs", "--storage", url, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {r["trial"]: r for r in json.loads(res.stdout)}
    handle = _open(url, "macs")
    for number, row in rows.items():
        t = handle.trial(number)
        assert (row["accuracy"], row["macs"]) == (t.values[0], t.values[1]) and row["latency_ms"] > 0
    res = cli("pareto", "mem", "--storage", url)  # plain text: the chosen objectives are the columns
    assert res.exit_code == 0, res.output
    header = res.stdout.splitlines()[0].split()
    assert header[:4] == ["trial", "val_acc", "test_acc", "latency_ms"] and "mem_kB" in header
    assert "size_kB" not in header
    res = cli("pareto", "macs", "--storage", url)
    assert "MMACs" in res.stdout.splitlines()[0]
    res = cli("pareto", "mem", "--storage", url, "--format", "csv")
    assert "peak_memory_bytes" in res.stdout.splitlines()[0].split(",")
    res = cli("show", "mem", "1", "--storage", url, "--format", "json")
    info = json.loads(res.stdout)
    assert list(info["objectives"]) == STUDIES["mem"] and info["metrics"]["macs"] > 0


def test_plot_and_compare_read_the_objectives_by_name(stored, tmp_path) -> None:
    from vitshrink.plotting import axes_of

    url, _ = stored
    assert axes_of(("accuracy", "macs")) == ("macs", "accuracy", "size_bytes")
    assert axes_of(("accuracy", "latency_ms", "peak_memory_bytes")) == ("latency_ms", "accuracy", "peak_memory_bytes")
    for name in STUDIES:
        res = cli("plot", name, "--out", str(tmp_path / f"{name}.png"), "--storage", url)
        assert res.exit_code == 0, res.output
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    res = cli("compare", "macs", "mem", "--storage", url, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {r["study"]: r for r in json.loads(res.stdout)}
    assert rows["macs"]["objectives"] == "accuracy, macs" and rows["macs"]["best_macs"] > 0
    # the least memory on the front (a tiny model's forward may need less than a page more: 0 is valid)
    from vitshrink.search import pareto_trials

    front_memory = [t.values[2] for t in pareto_trials(_open(url, "mem").study)]
    assert rows["mem"]["best_peak_memory_bytes"] == min(front_memory) and rows["mem"]["hypervolume"] > 0
    res = cli("compare", "macs", "mem", "--storage", url, "--out", str(tmp_path / "cmp.png"))
    assert res.exit_code == 2 and "different objectives" in res.output


def test_export_card_carries_the_objectives_by_name(stored, tmp_path) -> None:
    url, _ = stored
    res = cli("export", "macs", "--trial", "1", "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"),
              "--storage", url)
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "m.safetensors.card.json").read_text())
    t = _open(url, "macs").trial(1)
    assert card["objectives"] == {"accuracy": t.values[0], "macs": t.values[1]}
    assert card["latency"]["median_ms"] > 0
    assert card["latency"]["median_ms"] == pytest.approx(card["metrics"]["latency_ms"])


def test_resume_with_other_objectives_is_refused(stored) -> None:
    from vitshrink.search import SearchError, open_or_create_study

    url, _ = stored
    recipe = _recipe("macs").with_overrides(objectives=("accuracy", "latency_ms", "size_bytes"))
    with pytest.raises(SearchError, match=r"different objectives:\n  objectives.names: stored \['accuracy', 'macs'\]"):
        open_or_create_study(recipe, url)
    assert open_or_create_study(_recipe("macs"), url).study_name == "macs"  # the same objectives resume


# --- screening and rungs compare on the study's structural objectives ------------------------------------------


def _done(number: int, values: list[float], **attrs):
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    trial = create_trial(values=values, params={"x": 0.0}, distributions={"x": FloatDistribution(0, 1)},
                         user_attrs=attrs)
    trial.number = number
    return trial


def _structure(lat: float, size: int, **values: float):
    import dataclasses

    from vitshrink.objectives import BatchLatency, LatencyResult
    from vitshrink.search._screening import Structure

    rest = {f.name: 0.0 for f in dataclasses.fields(BatchLatency) if f.name not in ("batch", "median_ms", "iqr_ms")}
    batch = BatchLatency(batch=1, median_ms=lat, iqr_ms=0.0, **rest)
    return Structure(LatencyResult((batch,), None, 1, {}, 0.0, 0.0, 0.0), False, size, values=values)


def test_screening_without_latency_compares_the_chosen_objectives() -> None:
    from vitshrink.search._screening import dominated_reason

    names = ("accuracy", "macs")
    best = _done(1, [0.9, 1e6])
    assert "macs 1e+06 <= 2e+06" in dominated_reason(_structure(9.0, 10, macs=2e6), [best], names)
    assert dominated_reason(_structure(0.1, 10, macs=1e6), [best], names) is None  # a tie may join the front
    assert dominated_reason(_structure(0.1, 10, macs=5e5), [best], names) is None  # fewer MACs: may enter
    # latency is measured but not an objective: a faster candidate with more MACs is still beaten
    assert dominated_reason(_structure(0.1, 10, macs=2e6), [best], names) is not None
    assert dominated_reason(_structure(9.0, 10), [_done(1, [0.9])], ("accuracy",)) is None  # nothing structural


def test_rung_peers_are_no_costlier_on_each_structural_objective() -> None:
    from vitshrink.search._rungs import behind_peers

    names = ("accuracy", "latency_ms", "peak_memory_bytes")
    key = "rung:student:1/3"
    me = _structure(10.0, 999, peak_memory_bytes=1000.0)
    cheap = _done(1, [0.9, 9.0, 900.0], **{key: 0.9})
    hungry = _done(2, [0.9, 9.0, 5000.0], **{key: 0.9})  # faster but needs 5x the memory: not a peer
    assert behind_peers(key, 0.5, me, [cheap, hungry], 0.02, 0, names) == [(1, 0.9)]
    throughput = ("accuracy", "throughput")
    fast = _done(3, [0.9, 200.0], **{key: 0.9})
    slow = _done(4, [0.9, 50.0], **{key: 0.9})
    assert behind_peers(key, 0.5, _structure(1.0, 1, throughput=100.0), [fast, slow], 0.02, 0, throughput) == [(3, 0.9)]


def test_unmeasurably_small_memory_is_normalised_at_one_page() -> None:
    """Peak memory grows in pages: a tiny model's forward can measure 0 bytes (CI saw it). The
    hypervolume counts a value below one page as one page instead of refusing it."""
    import resource

    from vitshrink.objectives import get_objective

    memory, page = get_objective("peak_memory_bytes"), resource.getpagesize()
    assert memory.normalized(0.0, float(page)) == 1.0 and memory.normalized(0.0, 0.0) == 1.0
    assert memory.normalized(4.0 * page, 2.0 * page) == 2.0
    with pytest.raises(ValueError, match="must be > 0"):  # latency has no such floor: 0 ms is a bug
        get_objective("latency_ms").normalized(0.0, 1.0)
