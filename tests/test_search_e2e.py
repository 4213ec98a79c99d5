"""End to end: a 3-trial study on digits, resumed, queried for its Pareto front, a model reloaded."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
import torch

import vitshrink
from vitshrink.search import count_states, run_search
from recipes import tiny_recipe
from vitshrink.spaces import Recipe

RECIPE = tiny_recipe("e2e", 'techniques = ["student", "prune", "nystrom", "dynamic_int8"]\n'
                     '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16, 32]\nheads = [2]\n'
                     'epochs = 2\n[space.prune]\nheads = [0.0, 0.5]\n[space.nystrom]\nlandmarks = [2, 8]',
                     trials=3, sampler="nsga2", epochs=6, device="cpu:2")


@pytest.fixture()
def recipe(tmp_path) -> Recipe:
    path = tmp_path / "e2e.toml"
    path.write_text(RECIPE)
    return Recipe.from_file(path)


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitshrink.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_three_trial_study_resumes_queries_and_reloads(recipe, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/studies.db"
    summary = run_search(recipe.with_overrides(trials=2), storage=storage)
    assert summary.completed == 2
    study = summary.study
    first = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert first[0].user_attrs["role"] == "teacher"  # the baseline is always on the table
    assert first[0].user_attrs["config"] == vitshrink.CompressionConfig().to_dict()

    # resume with a larger budget: completed trials are kept and not re-run
    summary = run_search(recipe, storage=storage)
    study = summary.study
    assert count_states(study)["COMPLETE"] == 3
    again = {t.number: t.datetime_start for t in study.trials if t.state.name == "COMPLETE"}
    assert all(again[t.number] == t.datetime_start for t in first)

    # every trial stores its config as JSON and three objectives under their names
    assert study.metric_names == ["accuracy", "latency_ms", "size_bytes"]
    for t in study.trials:
        if t.state.name == "COMPLETE":
            vitshrink.CompressionConfig.from_dict(t.user_attrs["config"])
            assert 0 <= t.values[0] <= 1 and t.values[1] > 0 and t.values[2] > 0

    # the CLI prints the Pareto front as json with the documented keys
    res = _cli("pareto", "e2e", "--storage", storage, "--format", "json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    front = json.loads(res.stdout)
    assert front and set(front[0]) >= {"trial", "accuracy", "latency_ms", "size_bytes", "config"}

    # a Pareto model reloads and gives exactly the outputs measured in its trial
    handle = vitshrink.open_study("e2e", storage=storage)
    number = front[0]["trial"]
    loaded = handle.load_trial(number)
    with torch.no_grad():
        logits = torch.cat([loaded.model(handle.data.val.x[i:i + 256]) for i in range(0, len(handle.data.val), 256)])
    assert torch.equal(logits.float(), loaded.val_logits)
    acc = float((logits.argmax(1) == handle.data.val.y).float().mean())
    assert acc == pytest.approx(study.trials[number].values[0])
    model = vitshrink.load_model("e2e", number, storage=storage)
    assert isinstance(model, torch.nn.Module)

    # the Pareto models were evaluated once on the test split
    assert f"vitshrink.test_accuracy.{number}" in optuna.load_study(study_name="e2e", storage=storage).user_attrs


@pytest.mark.slow
def test_changed_space_is_refused_unless_new_study(recipe, tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    run_search(recipe.with_overrides(trials=1), storage=storage, evaluate_test=False)
    changed = Recipe.from_toml_text(RECIPE.replace("[space.prune]\nheads = [0.0, 0.5]",
                                                   "[space.prune]\nheads = [0.0, 0.75]"))
    with pytest.raises(vitshrink.search.SearchError, match=r"prune.heads: stored .*0\.5.* -> now .*0\.75"):
        run_search(changed.with_overrides(trials=1), storage=storage)
    summary = run_search(changed.with_overrides(trials=1), storage=storage, new_study=True, evaluate_test=False)
    assert summary.study.study_name == "e2e-2"
