"""The search space as data: configs and recipes round-trip, bad input is refused by name."""

from __future__ import annotations

import dataclasses
import json
import re

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.trial import FixedTrial

from vitshrink.spaces import (
    CompressionConfig,
    ConfigError,
    Recipe,
    SearchSpace,
    builtin_recipes,
    parse_duration,
    resolve_recipe,
)
from vitshrink.techniques import deployment_of, get_technique, selector_choices

QUANT_MODES = selector_choices()["runtime"]

# --- CompressionConfig ------------------------------------------------------------------------


@st.composite
def configs(draw) -> CompressionConfig:
    quant = draw(st.sampled_from(QUANT_MODES))
    lowrank = draw(st.sampled_from(["none", "nystrom", "svd"]))
    student = draw(st.sampled_from(["none", "custom", "deit_tiny_patch16_224"]))
    heads = draw(st.integers(1, 4))
    drop = draw(st.sampled_from([0.0, 0.25, 0.5]))
    custom = student == "custom"
    student_config = {"model": student, "depth": draw(st.integers(1, 4)) if custom else 0,
                      "embed_dim": heads * draw(st.integers(1, 16)) if custom else 0, "heads": heads if custom else 0,
                      "epochs": draw(st.integers(1, 5)) if student != "none" else 0}
    prune = {"heads": draw(st.floats(0, 0.99)), "mlp": draw(st.floats(0, 0.99)),
             "score": draw(st.sampled_from(["magnitude", "taylor", "activation"]))}
    landmarks = draw(st.integers(1, 64)) if lowrank == "nystrom" else 0
    blocks = tuple(draw(st.lists(st.integers(0, 11), max_size=3)))
    lowrank_config = {"nystrom": {"landmarks": landmarks, "blocks": blocks},
                      "svd": {"rank": draw(st.floats(0.01, 1.0)), "blocks": blocks}}
    techniques = {"student": student_config, "prune": prune, "tome": {"r": draw(st.integers(0, 8))},
                  "finetune": {"epochs": draw(st.integers(0, 3))}}  # a config of no effect (0 epochs) is left out
    if lowrank != "none":
        techniques[lowrank] = lowrank_config[lowrank]
    if drop:
        techniques["patch_drop"] = {"fraction": drop, "at": (1, 2)}
    if quant != "none":
        calibrated = quant in ("static_int8", "openvino_int8")
        techniques[quant] = {"calib_size": draw(st.integers(1, 64))} if calibrated else {}
    return CompressionConfig(techniques)


def _setting(cfg: CompressionConfig, technique: str, name: str):
    """Setting `name` of `technique` in `cfg`: its default where `cfg` does not choose the technique."""
    return getattr(cfg.get(technique, get_technique(technique).config()), name)


@given(configs())
@settings(max_examples=200, deadline=None)
def test_config_round_trips_through_json(cfg: CompressionConfig) -> None:
    text = cfg.to_json()
    assert CompressionConfig.from_json(text) == cfg
    assert json.loads(text) == cfg.to_dict()


def test_identity_config_is_the_teacher() -> None:
    assert CompressionConfig().is_identity
    assert CompressionConfig().summary() == "teacher"
    assert not CompressionConfig({"bf16": {}}).is_identity


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: CompressionConfig({"int4": {}}), "unknown technique 'int4'"),
        (lambda: CompressionConfig({"prune": {"heads": 1.0}}), "heads=1.0 must be in [0, 1)"),
        (lambda: CompressionConfig({"nystrom": {}}), "nystrom needs landmarks >= 1"),
        (lambda: CompressionConfig({"student": {"model": "custom", "depth": 2, "embed_dim": 30, "heads": 4, "epochs": 1}}),
         "not divisible"),
        (lambda: CompressionConfig({"static_int8": {}}), "static_int8 needs calib_size >= 1"),
        (lambda: CompressionConfig({"patch_drop": {"fraction": 0.3}}), "needs patch_drop.at"),
        (lambda: CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 8, "heads": 2}}),
         "student needs epochs >= 1"),
        (lambda: CompressionConfig({"student": {"init": "teacher"}}),
         "student init='teacher' is only used where student is chosen (student other than 'none')"),
        # the flat form, still read: its fields named in its refusals (a setting of a technique not chosen
        # is only expressible there)
        (lambda: CompressionConfig(prune_heads=1.0), "prune_heads=1.0"),
        (lambda: CompressionConfig(landmarks=4), "set lowrank='nystrom'"),
    ],
    ids=["unknown runtime", "bounds", "landmarks needed", "not divisible", "calibration needed", "drop blocks needed",
         "student epochs needed", "setting of a technique not chosen", "flat bounds", "flat unused setting"],
)
def test_invalid_configs_are_refused_by_name(make, words) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        make()


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown compression setting.*prune_head\\b"):
        CompressionConfig.from_dict({"prune_head": 0.5})


# --- SearchSpace ------------------------------------------------------------------------------


def test_space_samples_conditional_dimensions_only_when_active() -> None:
    space = SearchSpace.from_dict({"lowrank": ["none", "nystrom"], "nystrom.landmarks": [2, 8],
                                   "runtime": ["none", "static_int8"], "static_int8.calib_size": [8, 32]})
    cfg = space.sample(FixedTrial({"lowrank": "none", "runtime": "none"}))  # FixedTrial raises on unknown params
    assert cfg == CompressionConfig()
    cfg = space.sample(FixedTrial({"lowrank": "nystrom", "nystrom.landmarks": 5, "runtime": "static_int8",
                                   "static_int8.calib_size": 16}))
    assert (cfg["nystrom"].landmarks, cfg["static_int8"].calib_size) == (5, 16)


def test_space_with_optuna_study_produces_valid_configs() -> None:
    space = resolve_recipe("quickstart").space
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        cfg = space.sample(trial)  # validates in __post_init__
        seen.add(deployment_of(cfg))
        # the params recorded are exactly the ones that reproduce the config
        assert space.sample(FixedTrial(trial.params)) == cfg
        assert space.params_for(cfg) == trial.params
        study.tell(trial, [0.0, 0.0])
    assert len(seen) > 1


@given(configs())
@settings(max_examples=50, deadline=None)
def test_params_for_round_trips_for_configs_inside_a_wide_space(cfg: CompressionConfig) -> None:
    space = SearchSpace.from_dict({
        "runtime": list(QUANT_MODES), "lowrank": ["none", "nystrom", "svd"], "nystrom.landmarks": [1, 64],
        "prune.heads": [0.0, 0.99], "tome.r": [0, 8], "static_int8.calib_size": [1, 64], "openvino_int8.calib_size": [1, 64],
    })
    # cfg with what the space does not search taken away: no student, pruning of heads only (by magnitude),
    # low-rank on every block (SVD at full rank), no patch dropping, no KD fine-tune
    inside = {"prune": {"heads": _setting(cfg, "prune", "heads")}, "tome": {"r": _setting(cfg, "tome", "r")}}
    if "nystrom" in cfg:
        inside["nystrom"] = dataclasses.replace(cfg["nystrom"], blocks=())
    if "svd" in cfg:
        inside["svd"] = {}
    if (runtime := deployment_of(cfg)) != "none":
        inside[runtime] = cfg[runtime]
    inside = CompressionConfig(inside, distill=cfg.distill)
    assert space.sample(FixedTrial(space.params_for(inside))) == inside


def test_space_round_trips_through_json_dict() -> None:
    space = resolve_recipe("quickstart").space
    again = SearchSpace.from_json_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space
    assert again.diff(space) == []


@pytest.mark.parametrize(
    "space, words",
    [
        ({"prune_head": [0.0, 0.5]}, "did you mean 'prune_heads'"),
        ({"landmarks": [8, 2]}, "inverted"),
        ({"landmarks": [4, 4]}, "empty"),
        ({"quant": []}, "no choices"),
        ({"quant": ["none", "int4"]}, "'int4' is not one of"),
        ({"prune_heads": [0.0, 1.0]}, r"\(prune.heads=1.0\).*heads=1.0 must be in \[0, 1\): 1.0 would remove everything"),
        ({"student_embed_dim": [48, 64], "student_heads": [5]}, "impossible combination"),
        ({"landmarks": {"low": 2}}, "needs both low and high"),
        ({"landmarks": [2.5, 8]}, "integer setting"),
    ],
)
def test_bad_spaces_are_refused_by_name(space, words) -> None:
    with pytest.raises(ConfigError, match=words):
        SearchSpace.from_dict(space)


def test_space_diff_names_the_changed_dimension() -> None:
    a = SearchSpace.from_dict({"prune_heads": [0.0, 0.5]})
    b = SearchSpace.from_dict({"prune_heads": [0.0, 0.75]})
    (line,) = a.diff(b)
    assert "prune.heads" in line and "0.5" in line and "0.75" in line


# --- Recipes ----------------------------------------------------------------------------------


def test_builtin_recipes_load() -> None:
    names = builtin_recipes()
    assert "quickstart" in names
    for name in names:
        recipe = resolve_recipe(name)
        assert recipe.name and recipe.trials >= 1 and recipe.space.dimensions


def test_quickstart_covers_the_four_families() -> None:
    dims = {d.name for d in resolve_recipe("quickstart").space.dimensions}
    assert {"runtime", "lowrank", "nystrom.landmarks", "prune.heads", "prune.mlp", "student"} <= dims


@pytest.mark.parametrize(
    "text, words",
    [
        ("[stduy]\nname='x'", r"unknown table \[stduy\]; did you mean 'study'"),
        ("[study]\ntrails = 3", "unknown key study.trails; did you mean 'trials'"),
        ("[study]\ntrials = 'many'", "wrong type"),
        ("[study]\ntrials = 0", "at least 1"),
        ("[study]\nsampler = 'cmaes'", "not one of"),
        ("[study]\ntimeout = 'soon'", "cannot read duration"),
        ("[target]\nruns = 2", "too few"),
        ("[space]\nquant = ['fp8']", "'fp8' is not one of"),
        ("[teacher.train]\nepoch = 3", "did you mean 'epochs'"),
        ("[teacher.train]\nepochs = 'ten'", "teacher.train.epochs = 'ten' has the wrong type"),
        ("[teacher.train]\naugment = ['rotate']", r"unknown augmentation\(s\) \['rotate'\]; choose from"),
        ("this is = not toml =", "not valid TOML"),
    ],
)
def test_bad_recipes_are_refused_by_name(text, words) -> None:
    with pytest.raises(ConfigError, match=words):
        Recipe.from_toml_text(text)


def test_recipe_overrides_and_durations() -> None:
    r = resolve_recipe("quickstart").with_overrides(trials=3, dataset=None)
    assert r.trials == 3 and r.dataset == "digits"
    assert parse_duration("1h30m") == 5400 and parse_duration("90s") == 90 and parse_duration(12) == 12
    with pytest.raises(ConfigError, match="no recipe 'nope'"):
        resolve_recipe("nope")


def test_fixed_student_settings_apply_only_to_students() -> None:
    import optuna

    space = SearchSpace.from_dict(
        {"student": ["none", "custom"], "student.depth": [1, 2], "student.embed_dim": [16], "student.heads": [2]},
        {"student.epochs": 2, "student.init": "teacher"})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [space.sample(study.ask()) for _ in range(12)]
    assert {_setting(c, "student", "model") for c in configs} == {"none", "custom"}
    for c in configs:
        assert _setting(c, "student", "init") == ("teacher" if _setting(c, "student", "model") == "custom" else "random")


def test_optional_ranges_are_switched_off_half_the_time_and_replay_exactly() -> None:
    import optuna

    space = SearchSpace.from_dict({"tome.r": {"low": 1, "high": 8, "optional": True},
                                   "prune.heads": {"low": 0.1, "high": 0.5, "optional": True}})
    assert space.dimension("tome.r").to_dict() == {"low": 1, "high": 8, "optional": True}
    assert SearchSpace.from_json_dict(space.to_dict()) == space  # stored with the study, read back on resume
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [space.sample(study.ask()) for _ in range(40)]
    merges = [_setting(c, "tome", "r") for c in configs]
    assert 10 < merges.count(0) < 30 and all(r == 0 or 1 <= r <= 8 for r in merges)
    assert {_setting(c, "prune", "score") for c in configs
            if _setting(c, "prune", "heads") == 0} == {"magnitude"}  # off: the identity
    # a configuration is replayed exactly (warm starts, retries), switched off or on
    for cfg in (CompressionConfig(), CompressionConfig({"prune": {"heads": 0.25}, "tome": {"r": 3}})):
        params = space.params_for(cfg)
        assert params["tome.r_on"] == (_setting(cfg, "tome", "r") > 0)
        study.enqueue_trial(params)
        assert space.sample(study.ask()) == cfg
    with pytest.raises(ConfigError, match="outside the search space"):
        space.params_for(CompressionConfig({"tome": {"r": 12}}))


@pytest.mark.parametrize("spec, words", [
    ({"low": 1, "high": 8, "optional": "yes"}, "optional = 'yes' must be true or false"),
    ({"choices": [1, 2], "optional": True}, "optional applies to ranges"),
])
def test_bad_optional_dimensions_are_refused(spec, words) -> None:
    with pytest.raises(ConfigError, match=words):
        SearchSpace.from_dict({"token_merge_r": spec})


@pytest.mark.parametrize("make, words", [
    (lambda: CompressionConfig(prune={"heads": 0.5}), "give technique configs as a mapping"),
    (lambda: CompressionConfig({"prune": {"heads": 0.5, "bogus": 1}}), "unknown prune setting(s) bogus; prune takes heads"),
    (lambda: CompressionConfig({"prun": {}}), "unknown technique 'prun'; registered: student, prune"),
    (lambda: CompressionConfig({"prune": {"heads": 1.5}}), "invalid PruneConfig: heads=1.5 must be in [0, 1)"),
    (lambda: CompressionConfig({"nystrom": {"landmarks": 4}, "svd": {}}), "nystrom and svd are both a lowrank choice"),
    (lambda: CompressionConfig({"dynamic_int8": {}}, distill={"augment": "flip"}), "only used by a technique that distils"),
    (lambda: CompressionConfig.from_dict({"techniques": {"prune": {"_type": "PruneConfig", "_version": 9, "_data": {}}}}),
     "written by a newer vitshrink"),
    (lambda: CompressionConfig({"prune": {"_type": "TomeConfig", "_version": 1, "_data": {"r": 2}}}),
     "technique 'prune' takes a PruneConfig, not TomeConfig"),
], ids=["kwargs", "setting", "technique", "bounds", "one choice", "distill unused", "newer record", "wrong type"])
def test_a_technique_form_config_refuses_bad_input_with_one_message(make, words) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        make()
