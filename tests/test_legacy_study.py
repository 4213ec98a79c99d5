"""A study stored by vitshrink before techniques were modules (tests/data/legacy_study.db, made by
tests/data/make_legacy_study.py from the flat-form recipe tests/data/legacy_study.toml) still opens,
rebuilds every trial with the outputs measured in it, exports, and resumes."""

from __future__ import annotations

import dataclasses

import shutil
from pathlib import Path

import optuna
import pytest
import torch

from vitshrink.search import open_storage, run_search
from vitshrink.search._storage import ARTIFACT_DIR_ATTR
from vitshrink.spaces import CompressionConfig, Recipe
from vitshrink.studies import open_study

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture()
def stored(tmp_path) -> str:
    """A copy of the stored study (its artifact folder moved with it); its storage URL."""
    shutil.copy(DATA / "legacy_study.db", tmp_path / "legacy.db")
    shutil.copytree(DATA / "legacy_study_artifacts", tmp_path / "artifacts")
    url = f"sqlite:///{tmp_path / 'legacy.db'}"
    study = optuna.load_study(study_name="legacy", storage=open_storage(url))
    study.set_user_attr(ARTIFACT_DIR_ATTR, str(tmp_path / "artifacts"))
    return url


def test_stored_trials_keep_their_params_and_rebuild_with_the_measured_outputs(stored):
    handle = open_study("legacy", stored)
    recipe = Recipe.from_file(DATA / "legacy_study.toml")
    done = [t for t in handle.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4 and any(t.params.get("lowrank") == "nystrom" for t in done)
    val = handle.data.val.x
    for t in done:
        loaded = handle.load_trial(t.number)
        # the stored flat JSON reads into the candidate it means, and back to the same flat settings
        assert "techniques" not in t.user_attrs["config"]
        assert loaded.config == CompressionConfig.from_dict(t.user_attrs["config"])
        assert loaded.config.flat.to_dict() == t.user_attrs["config"]
        # the study's stored space maps the stored params to the stored config: it keeps the flat
        # parameter names it was created with (a recipe file read today names them by technique)
        assert handle.recipe.space.naming == "flat" and recipe.space.naming == "technique"
        assert handle.recipe.space.sample(optuna.trial.FixedTrial(t.params)) == loaded.config
        assert dataclasses.replace(recipe.space, naming="flat").sample(optuna.trial.FixedTrial(t.params)) == loaded.config
        with torch.no_grad():  # in the trial's batches of 256: dynamic int8 scales depend on the batch
            out = torch.cat([loaded.model(val[i:i + 256]) for i in range(0, len(val), 256)])
        # the stored logits came from an AVX-512 CPU; another CPU's kernels round the last bits differently
        # (6e-8 seen on an AVX2 one), so this is closeness and equal predictions: bit-identity on one
        # machine is test_search_e2e.py's
        torch.testing.assert_close(out.float(), loaded.val_logits, rtol=1e-5, atol=1e-5, msg=f"trial {t.number}")
        assert torch.equal(out.argmax(1), loaded.val_logits.argmax(1)), t.number


def test_stored_study_exports(stored, tmp_path):
    handle = open_study("legacy", stored)
    nystrom = next(t.number for t in handle.study.trials if t.params.get("lowrank") == "nystrom")
    path = handle.export(nystrom, "onnx", tmp_path / "model.onnx")
    assert path.exists() and path.stat().st_size > 0


def test_stored_study_resumes_from_its_flat_form_recipe(stored):
    recipe = Recipe.from_file(DATA / "legacy_study.toml").with_overrides(trials=5)
    summary = run_search(recipe, storage=stored)  # a changed fingerprint would be refused here
    study = optuna.load_study(study_name="legacy", storage=open_storage(stored))
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5, summary
