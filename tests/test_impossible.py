"""Impossible work is refused before the study exists, or, when only some samples are impossible,
pruned in the trial that samples it (before anything trains) without counting as a failure."""

from __future__ import annotations

import pytest
import torch

from tests.recipes import tiny_recipe
from vitshrink.compress import build, impossible_reason
from vitshrink.search import run_search
from vitshrink.search._storage import open_storage, study_names
from vitshrink.search._trial import check_space_fits_teacher
from vitshrink.spaces import CompressionConfig, ConfigError, Recipe, SearchSpace


def _recipe(space: str, kwargs: str = "", max_failures: int | None = None, **kw) -> Recipe:
    text = tiny_recipe("imp", space, **kw)
    if max_failures is not None:
        text = text.replace("[data]", f"max_failures = {max_failures}\n[data]", 1)
    if kwargs:
        text = text.replace("mlp_ratio = 2.0\n", f"mlp_ratio = 2.0\n{kwargs}\n", 1)
    return Recipe.from_toml_text(text)


NO_CLS = 'global_pool = "avg"\nclass_token = false'

# (space, teacher kwargs, extra recipe arguments, words of the one-sentence refusal)
REFUSED = {
    "patch dropping without a cls token": (
        'techniques = ["patch_drop"]\n[space.patch_drop]\nfraction = [0.0, 0.5]\nat = [[0], [1]]', NO_CLS, {},
        r"impossible combination: patch_drop ranks patches by the cls token's attention but the teacher "
        r"vit_tiny_patch16_224 has no cls token .*; search tome instead"),
    "patch dropping without a cls token, custom students copy the teacher's tokens": (
        'techniques = ["student", "patch_drop"]\nalways = ["student"]\n'
        '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16]\nheads = [2]\nepochs = 1\n'
        '[space.patch_drop]\nfraction = [0.1, 0.5]\nat = [[0]]', NO_CLS, {},
        "custom student .*has no cls token"),
    "drop block beyond every student's depth": (
        'techniques = ["student", "patch_drop"]\nalways = ["student"]\n'
        '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16]\nheads = [2]\nepochs = 1\n'
        '[space.patch_drop]\nfraction = [0.1, 0.5]\nat = [[3]]', "", {},
        r"patch_drop.at names block\(s\) \[3\] but the deepest custom student \(2 blocks\) has 2 blocks; use indices 0..1"),
    "low-rank block beyond the teacher": (
        'techniques = ["svd"]\n[space.svd]\nblocks = [[0], [4]]', "", {},
        r"svd.blocks names block\(s\) \[4\] but the teacher vit_tiny_patch16_224 has 2 blocks"),
    "pruning heads mixed by a norm": (
        'techniques = ["prune"]\n[space.prune]\nheads = [0.0, 0.5]', "scale_attn_norm = true", {},
        r"prune.heads=0.5 removes heads but block 0's attention normalises over all heads \(scale_attn_norm\)"),
    "pruning MLP units normalised together": (
        'techniques = ["prune"]\n[space.prune]\nmlp = [0.0, 0.5]', "scale_mlp_norm = true", {},
        r"prune.mlp=0.5 removes MLP units but block 0's MLP normalises its hidden layer"),
    "a timm student that is not a ViT": (
        'techniques = ["student"]\n[space.student]\nmodel = ["resnet18"]\nepochs = 1', "", {},
        "student='resnet18': cannot create timm model 'resnet18'"),
    "landmarks beyond every model's tokens": (
        'techniques = ["student", "nystrom"]\nalways = ["lowrank"]\n'
        '[space.student]\nmodel = ["deit_tiny_distilled_patch16_224"]\nepochs = 1\n[space.nystrom]\nlandmarks = [2, 19]', "", {},
        "landmarks reaches 19 but the student deit_tiny_distilled_patch16_224 has 18 tokens"),
    "CPU-only quantization on a CUDA target": (
        'techniques = ["ort_int8"]', "", {"device": "cuda:0"},
        "runtime='ort_int8' runs on the CPU only .* the latency target is a CUDA device"),
    "student width no head count divides": (
        'techniques = ["student"]\nalways = ["student"]\n'
        '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16, 20]\nheads = [3, 6]\nepochs = 1', "", {},
        r"student.embed_dim=16 is not divisible by any of student.heads=\[3, 6\]"),
    "a student MLP without hidden units": (
        'techniques = ["student"]\nalways = ["student"]\n'
        '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16]\nheads = [2]\nepochs = 1\n'
        'mlp_ratio = [0.0, 2.0]', "", {},
        r"\(student.mlp_ratio=0.0\).*mlp_ratio=0.0 must be > 0"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_impossible_space_is_refused_before_the_study_exists(case, tmp_path) -> None:
    space, kwargs, extra, words = REFUSED[case]
    url = f"sqlite:///{tmp_path / 'imp.db'}"
    with pytest.raises(ConfigError, match=words):
        run_search(_recipe(space, kwargs, **extra), storage=url, artifact_dir=tmp_path / "art")
    assert study_names(open_storage(url)) == []  # nothing was created, nothing trained


def test_impossible_space_exits_2_with_one_sentence_from_the_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from vitshrink.cli import app

    path = tmp_path / "nocls.toml"
    path.write_text(tiny_recipe("imp", 'techniques = ["patch_drop"]\n[space.patch_drop]\nfraction = [0.0, 0.5]\n'
                                'at = [[0]]')
                    .replace("mlp_ratio = 2.0\n", f"mlp_ratio = 2.0\n{NO_CLS}\n", 1))
    url = f"sqlite:///{tmp_path / 'imp.db'}"
    res = CliRunner().invoke(app, ["search", str(path), "--storage", url])
    assert res.exit_code == 2, res.output
    assert "error: impossible combination: patch_drop ranks patches" in " ".join(res.output.split())
    assert study_names(open_storage(url)) == []


@pytest.mark.parametrize("space", [
    # teacher depth 2, but custom students of 4 blocks honour block 3
    'techniques = ["student", "patch_drop"]\n'
    '[space.student]\nmodel = ["custom"]\ndepth = [1, 4]\nembed_dim = [16]\nheads = [2]\nepochs = 1\n'
    '[space.patch_drop]\nfraction = [0.1, 0.5]\nat = [[3]]',
    # the teacher has 17 tokens, the distilled student 18: 18 landmarks fit it
    'techniques = ["student", "nystrom"]\nalways = ["lowrank"]\n'
    '[space.student]\nmodel = ["deit_tiny_distilled_patch16_224"]\nepochs = 1\n[space.nystrom]\nlandmarks = [2, 18]',
    # 16 is divisible by 2 only, 24 by both: the mismatched pair is pruned per sample, not refused
    'techniques = ["student"]\nalways = ["student"]\n'
    '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16, 24]\nheads = [2, 3]\nepochs = 1',
])
def test_values_some_model_honours_are_accepted(space) -> None:
    check_space_fits_teacher(_recipe(space))


def test_a_teacher_without_cls_token_still_merges_tokens() -> None:
    check_space_fits_teacher(_recipe('techniques = ["tome"]\n[space.tome]\nr = [0, 8]', NO_CLS))


def test_build_refuses_an_impossible_config_before_distilling(tiny_vit, tiny_data) -> None:
    cfg = CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 16, "heads": 2, "epochs": 50},
                             "patch_drop": {"fraction": 0.5, "at": (1,)}})
    assert "the 1-block custom student has 1 blocks" in impossible_reason(tiny_vit, cfg)
    before = {k: v.clone() for k, v in tiny_vit.state_dict().items()}
    with pytest.raises(ConfigError, match="impossible combination: patch_drop.at names block"):
        build(tiny_vit, cfg, tiny_data)  # 50 KD epochs would take minutes: it refuses at once
    assert all(torch.equal(before[k], v) for k, v in tiny_vit.state_dict().items())


def test_tome_never_merges_below_one_patch_over_any_depth() -> None:
    from vitshrink.compress.tokens import token_plan

    # the largest r check_model allows, over 24 blocks, with and without a cls token, with dropping too
    for prefix in (0, 1, 2):
        for patches in (4, 16, 49, 196):
            plan = token_plan(patches + prefix, prefix, 24, r=patches // 2, drop=0.9, drop_at={0, 5})
            assert min(plan) >= prefix + 1


@pytest.mark.slow
def test_sample_dependent_impossibility_is_pruned_not_failed_and_the_budget_is_reached(tmp_path) -> None:
    from optuna.trial import TrialState

    from vitshrink.studies import list_studies, open_study

    # depth-1 students cannot drop at block 1; 16 wide students cannot have 3 heads: both only for some samples
    space = ('techniques = ["student", "patch_drop"]\nalways = ["student"]\n'
             '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16, 24]\nheads = [2, 3]\nepochs = 1\n'
             '[space.patch_drop]\nfraction = [0.1, 0.5]\nat = [[1]]')
    recipe = _recipe(space, max_failures=1, trials=4, sampler="random")  # a pruned trial counted as FAIL would stop it
    url = f"sqlite:///{tmp_path / 'imp.db'}"
    summary = run_search(recipe, storage=url, artifact_dir=tmp_path / "art", evaluate_test=False)
    trials = summary.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert summary.stopped_by == "trials" and summary.completed == 4 and summary.failed == 0
    assert pruned and summary.pruned == len(pruned)
    reasons = {t.user_attrs["pruned_reason"] for t in pruned}
    assert reasons <= {"impossible combination: patch_drop.at names block(s) [1] but the 1-block custom student "
                       "has 1 blocks; use indices 0..0",
                       "invalid compression config: student.embed_dim=16 is not divisible by student.heads=3"}
    for t in pruned:  # pruned before training: no artifact, no build record; the sampler sees the params
        assert "artifact" not in t.user_attrs and "records" not in t.user_attrs and t.params
    # tables that read the study still work and show the pruned trials
    row = list_studies(url).set_index("study").loc["imp"]
    assert (row["complete"], row["failed"], row["pruned"]) == (4, 0, len(pruned))
    handle = open_study("imp", url)
    assert len(handle.pareto()) >= 1
    table = handle.trials()
    assert set(table[table.state == "PRUNED"].fail_reason) == reasons


@pytest.mark.slow
def test_a_space_of_only_impossible_combinations_stops_instead_of_looping(tmp_path) -> None:
    # each value fits some model (the 4-block teacher drops at block 3; custom students can be pruned), but
    # never together: the teacher's heads are mixed by a norm, the students have at most 2 blocks
    space = ('techniques = ["student", "prune", "patch_drop"]\n'
             '[space.student]\nmodel = ["custom"]\ndepth = [1, 2]\nembed_dim = [16]\nheads = [2]\nepochs = 1\n'
             '[space.prune]\nheads = 0.5\n[space.patch_drop]\nfraction = 0.3\nat = [3]')
    text = tiny_recipe("imp", space, trials=2).replace("depth = 2\n", "depth = 4\nscale_attn_norm = true\n", 1)
    url = f"sqlite:///{tmp_path / 'imp.db'}"
    summary = run_search(Recipe.from_toml_text(text), storage=url, artifact_dir=tmp_path / "art", evaluate_test=False)
    assert summary.stopped_by == "pruned" and summary.pruned == 50 and summary.failed == 0


def test_check_model_names_the_closest_model() -> None:
    space = SearchSpace.from_dict({"student": ["none", "custom"], "student_depth": [1, 3], "student_embed_dim": [16],
                                   "student_heads": [2], "lowrank": ["svd"], "lowrank_blocks": [[5]]},
                                  {"student_epochs": 1})
    with pytest.raises(ConfigError, match=r"the deepest custom student \(3 blocks\) has 3 blocks"):
        space.check_model(num_tokens=17, depth=2)
