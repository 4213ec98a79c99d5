"""Techniques as modules: the registry, settings that exist only where their technique is chosen, the
shared block walker, and the technique form of a recipe's [space]."""

from __future__ import annotations

import dataclasses
import tomllib

import optuna
import pytest
import torch

from vitshrink.compress import handler_of, planned_handlers
from vitshrink.compress.lowrank import NystromAttention, nystrom
from vitshrink.spaces import CompressionConfig, ConfigError, FlatConfig, Recipe, SearchSpace
from vitshrink.spaces import _legacy
from vitshrink.spaces._space_form import keyed_tables, technique_form_toml
from vitshrink.techniques import (at_blocks, blocks, chosen_indices, get_technique, list_techniques, selector_choices,
                                  techniques)

optuna.logging.set_verbosity(optuna.logging.WARNING)

# one technique-form [space] per technique with conditional settings: each setting searched
SPACES = {
    "student": {"model": ["custom"], "depth": [1, 2], "embed_dim": [16, 32], "heads": [2], "epochs": 1,
                "init": ["random", "teacher"], "augment": ["none", "flip"]},
    "prune": {"heads": {"low": 0.1, "high": 0.5, "optional": True}, "score": ["magnitude", "taylor"]},
    "nystrom": {"landmarks": [2, 8], "conv": [0, 3], "blocks": [[0], [1]]},
    "svd": {"rank": [0.3, 0.9], "blocks": [[0], [1]]},
    "patch_drop": {"fraction": {"low": 0.1, "high": 0.5, "optional": True}, "at": [[0], [1]]},
    "finetune": {"epochs": [0, 2], "augment": ["none", "flip"], "alpha": [0.5, 0.9]},
    "static_int8": {"calib_size": [8, 32]},
    "openvino_int8": {"calib_size": [8, 32]},
}


def _space(*names: str, **tables: dict) -> SearchSpace:
    doc = {"techniques": list(names), **{n: SPACES[n] for n in names if n in SPACES}, **tables}
    return SearchSpace.from_dict(*keyed_tables(doc, {}, "<test>"))


def _sampled(space: SearchSpace, n: int = 40) -> list[tuple[dict, CompressionConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space.sample(trial)
        study.tell(trial, 0.0)
        out.append((trial.params, config))
    return out


@pytest.mark.parametrize("name", sorted(SPACES))
def test_a_techniques_settings_are_sampled_only_where_it_is_chosen(name):
    technique = get_technique(name)
    seen = {True: 0, False: 0}
    for params, config in _sampled(_space(name)):
        chosen = name in config
        seen[chosen] += 1
        # its parameters are named by it (the shared distillation settings by distill), its switch aside
        switch = {f"{name}.{s}" for s in technique.switches}
        own = {p for p in params if "." in p and p.split(".")[0] in (name, "distill") and p.removesuffix("_on") not in switch}
        assert bool(own) == chosen, (params, config)
    assert seen[True] and seen[False]  # both sides were sampled


def test_settings_of_one_selector_technique_never_appear_with_another():
    for params, config in _sampled(_space("nystrom", "svd")):
        assert ("nystrom.landmarks" in params) == ("nystrom.blocks" in params) == ("nystrom" in config)
        assert ("svd.rank" in params) == ("svd.blocks" in params) == ("svd" in config)
        assert params["lowrank"] == config.flat.lowrank


def test_custom_student_settings_only_for_a_custom_student():
    space = _space("student", student={**SPACES["student"], "model": ["custom", "deit_tiny_patch16_224"]})
    for params, config in _sampled(space):
        assert ("student.embed_dim" in params) == (config.flat.student == "custom")
        assert ("student.depth" in params) == ("student" in config)


def test_registry_agrees_with_config_and_transforms():
    defaults = CompressionConfig()
    for t in techniques():
        own = t.settings(defaults)
        for f in dataclasses.fields(t.config):  # a technique's defaults are the identity setting
            if t.key_of(f.name) in _legacy.FLAT_NAMES:  # the flat form's identity is the same
                assert getattr(own, f.name) == getattr(defaults.flat, _legacy.field_of(t, f.name)), (t.name, f.name)
        assert callable(handler_of(t.name)), t.name
    choices = selector_choices()
    assert {t.selector for t in techniques() if t.choice == "runtime"} == set(choices["runtime"]) - {"none"}
    assert list_techniques("lowrank") == list(choices["lowrank"][1:])


def test_the_mode_tuples_of_earlier_versions_still_read_live_with_a_deprecation_warning():
    import vitshrink.spaces as spaces

    with pytest.warns(DeprecationWarning, match=r"selector_choices\(\)\['runtime'\]"):
        assert spaces.QUANT_MODES == selector_choices()["runtime"] and "ort_fused_int8" in spaces.QUANT_MODES
    with pytest.warns(DeprecationWarning, match="LOWRANK_MODES is deprecated"):
        assert spaces.LOWRANK_MODES == ("none", "nystrom", "svd")


def _rules():
    """(technique, setting, its metadata) for every setting that declares a rule, from the registry."""
    own = [(t, f) for t in techniques() for f in dataclasses.fields(t.config)]
    shared = [(t, f) for t in techniques() if t.shared for f in dataclasses.fields(t.shared)]  # the distillation settings
    return [(t, f.name, f.metadata) for t, f in own + shared
            if f.metadata["bounds"] or f.metadata["needs"] or f.metadata["unused"]]


@pytest.mark.parametrize("technique, name, meta", _rules(), ids=[f"{t.name}.{n}" for t, n, _ in _rules()])
def test_each_declared_rule_is_enforced_by_the_config(technique, name, meta):
    """What a technique module declares on a setting, CompressionConfig refuses, naming the field."""
    flat = _legacy.field_of(technique, name)
    chosen = SearchSpace.config_of(technique.switch_on({}))
    assert _legacy.chosen(technique, chosen.flat.to_dict())
    kind = type(getattr(FlatConfig(), flat))
    if (b := meta["bounds"]) is not None:  # each end of the interval, or a step past it where it is closed
        for edge, is_open, step in ((b.low, b.low_open, -1), (b.high, b.high_open, 1)):
            if edge is not None:
                bad = kind(edge if is_open else edge + step * (1 if kind is int else 0.5))
                with pytest.raises(ConfigError, match=f"{flat}={bad!r} must be"):
                    chosen.replace(**{flat: bad})
    if meta["needs"] is not None:
        with pytest.raises(ConfigError, match=f"needs {flat} >= {meta['needs']}"):
            chosen.replace(**{flat: meta["needs"] - 1})
    if meta["unused"]:  # a value set on a config where no technique owning it is chosen
        value = {str: lambda: next(c for c in meta["choices"] if c != getattr(FlatConfig(), flat)),
                 int: lambda: 3, float: lambda: 0.5}[kind]()
        with pytest.raises(ConfigError, match=f"{flat}={value!r} is only used with .*{_legacy.how_chosen(technique)}"):
            CompressionConfig(**{flat: value})
        assert getattr(chosen.replace(**{flat: value}).flat, flat) == value  # where it is chosen, it is kept


@pytest.mark.parametrize("config", [
    CompressionConfig(), CompressionConfig({"prune": {"mlp": 0.5}}), CompressionConfig({"svd": {"rank": 0.5}}),
    CompressionConfig({"patch_drop": {"fraction": 0.3, "at": (1,)}}), CompressionConfig({"openvino_fp32": {}}),
    CompressionConfig({"static_int8": {"calib_size": 4}}), CompressionConfig({"finetune": {"epochs": 1}}),
    CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 16, "heads": 2, "epochs": 1}}),
])
def test_handlers_are_applied_exactly_where_their_technique_is_chosen(config):
    chosen = {"student": config.flat.student != "none", "prune": config.flat.prune_heads > 0 or config.flat.prune_mlp > 0,
              "nystrom": config.flat.lowrank == "nystrom", "svd": config.flat.lowrank == "svd", "tome": config.flat.token_merge_r > 0,
              "patch_drop": config.flat.token_drop > 0, "finetune": config.flat.kd_epochs > 0, config.flat.quant: config.flat.quant != "none"}
    assert [t.name for _, ts in planned_handlers(config) for t in ts] == [n for n in list_techniques() if chosen.get(n)]


def test_walker_and_its_filter(tiny_vit):
    assert [fqn for fqn, _ in blocks(tiny_vit)] == ["blocks.0", "blocks.1"]
    assert [fqn for fqn, _ in blocks(tiny_vit, at_blocks([1]))] == ["blocks.1"]
    assert [fqn for fqn, _ in blocks(tiny_vit, at_blocks([]))] == ["blocks.0", "blocks.1"]
    assert blocks(torch.nn.Linear(2, 2)) == []
    only_attn = lambda block, fqn: hasattr(block, "attn")  # noqa: E731 - any predicate on (module, fqn)
    assert len(blocks(tiny_vit, only_attn)) == 2
    assert chosen_indices(tiny_vit, (1, 1, 0), "lowrank_blocks") == [0, 1]
    with pytest.raises(ConfigError, match=r"lowrank_blocks=\[2\] names block\(s\) \[2\] but the model has 2 blocks"):
        chosen_indices(tiny_vit, (2,), "lowrank_blocks")


def test_a_technique_picks_its_blocks_through_the_walker(tiny_vit):
    new = nystrom(tiny_vit, CompressionConfig({"nystrom": {"landmarks": 4, "blocks": (1,)}}), _Ctx())
    assert [isinstance(b.attn, NystromAttention) for _, b in blocks(new)] == [False, True]


class _Ctx:
    def note(self, **_):
        pass


# --- the technique form of [space], and the flat form read as before --------------------------------

def test_technique_form_reads_as_the_flat_form():
    form = {"techniques": ["prune", "nystrom", "dynamic_int8"], "prune": {"heads": [0.0, 0.5]},
            "nystrom": {"landmarks": [4, 16]}}
    flat = {"prune_heads": [0.0, 0.5], "lowrank": ["none", "nystrom"], "landmarks": [4, 16],
            "quant": ["none", "dynamic_int8"]}
    assert SearchSpace.from_dict(*keyed_tables(form, {}, "<t>")).to_dict() == SearchSpace.from_dict(flat).to_dict()
    always = {"techniques": ["dynamic_int8", "ort_int8"], "always": ["quant"]}
    assert keyed_tables(always, {}, "<t>")[0] == {"runtime": ["dynamic_int8", "ort_int8"]}


@pytest.mark.parametrize("name", ["legacy_quickstart", "legacy_cifar10-deit"])
def test_flat_form_recipes_read_as_before_with_one_warning(name, caplog):
    with caplog.at_level("WARNING"):
        old = Recipe.from_file(f"tests/data/{name}.toml")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "techniques = [" in warnings[0].getMessage()
    builtin = Recipe.from_file(f"vitshrink/recipes/{name.removeprefix('legacy_')}.toml")
    assert old.space.to_dict() == builtin.space.to_dict()  # same space: same fingerprint, studies resume
    suggested = warnings[0].getMessage().split("reads:\n", 1)[1]
    assert Recipe.from_toml_text(suggested).space.to_dict() == old.space.to_dict()
    caplog.clear()
    with caplog.at_level("WARNING"):  # recipes stored on studies, rebuilt in workers: flat dicts, no warning
        Recipe.from_dict({"space": old.space.to_dict()["space"], "fixed": old.space.to_dict()["fixed"]})
        Recipe.from_dict({"space": {"quant": ["none", "dynamic_int8"]}}, stored=True)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_suggested_form_round_trips_every_builtin_space():
    for name in ("quickstart", "fashion-mnist", "folder-deit", "cifar10-deit"):
        space = Recipe.from_file(f"vitshrink/recipes/{name}.toml").space
        text = technique_form_toml(space)
        assert Recipe.from_toml_text(text).space.to_dict() == space.to_dict(), name


@pytest.mark.parametrize(("space", "message"), [
    ({"techniques": ["nystorm"]}, "unknown technique 'nystorm'; did you mean 'nystrom'"),
    ({"techniques": ["prune"], "nystrom": {"landmarks": 4}, "prune": {"heads": [0.0, 0.5]}},
     r"\[space.nystrom\] is given but nystrom is not in space.techniques"),
    ({"techniques": ["prune"], "prune": {"head": [0.0, 0.5]}}, "unknown setting space.prune.head; did you mean 'heads'"),
    ({"techniques": ["prune"], "quant": ["none"]}, "flat-form setting: the two forms do not mix"),
    ({"techniques": ["prune"]}, r"\[space.prune\] searches none of heads, mlp"),
    ({"techniques": ["student"]}, r"\[space.student\] needs model"),
    ({"techniques": ["dynamic_int8"], "always": ["lowrank"]}, "space.always names lowrank"),
])
def test_technique_form_mistakes_are_refused_by_name(space, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict({"space": space})


def test_fixed_table_belongs_to_the_flat_form():
    with pytest.raises(ConfigError, match=r"\[fixed\] belongs to the flat form"):
        Recipe.from_dict({"space": {"techniques": ["dynamic_int8"]}, "fixed": {"kd_epochs": 1}})


def test_a_technique_the_space_can_choose_without_its_needed_settings_is_refused():
    """Patch dropping searched without the blocks to drop at: every trial turning it on would be
    invalid, so the recipe is refused before the study exists (the folder-deit recipe once was)."""
    from vitshrink.spaces import ConfigError, Recipe

    with pytest.raises(ConfigError, match=r"can choose patch_drop \(patch_drop.fraction=0.5\) but does not set what it needs"
                                          r".*patch_drop.at.*\[space.patch_drop\]"):
        Recipe.from_toml_text('[space]\ntechniques = ["patch_drop"]\n[space.patch_drop]\nfraction = [0.0, 0.5]\n')
    ok = Recipe.from_toml_text('[space]\ntechniques = ["patch_drop"]\n[space.patch_drop]\nfraction = [0.0, 0.5]\n'
                               'at = [[1]]\n')
    assert ok.space.values_of("patch_drop.at") == [(1,)]


@pytest.mark.parametrize("space, refused", [
    ('landmarks = 8\nquant = ["none", "dynamic_int8"]', "fixes nystrom.landmarks = 8 but never chooses what uses it "
                                                        "(lowrank='nystrom')"),
    ('calib_size = 8\nquant = ["none", "ort_int8"]', "fixes static_int8.calib_size = 8 but never chooses"),
    ('kd_augment = "flip"\nquant = ["none", "bf16"]', "(student other than 'none' or finetune.epochs > 0)"),
    ('student_heads = 4\nstudent = ["none", "deit_tiny_patch16_224"]\nstudent_epochs = 1', "(student='custom')"),
    ('landmarks = 8\nlowrank = ["none", "nystrom"]', None),  # used where Nystrom is sampled
    ('kd_augment = "flip"\nkd_epochs = [0, 2]', None),
    ('kd_epochs = 0\nquant = ["none", "dynamic_int8"]', None),  # a default fixes nothing away: harmless
])
def test_a_fixed_setting_of_a_technique_the_space_never_chooses_is_refused(space, refused):
    """A recipe's fixed setting must mean something: one the space's techniques never use is refused by
    name (it would be stored and do nothing); a study's stored recipe is not asked again."""
    from recipes import tiny_recipe

    text = tiny_recipe("fixed", space)
    if refused is None:
        assert dict(Recipe.from_toml_text(text).space.fixed)
        return
    with pytest.raises(ConfigError, match="so it would do nothing; let the space choose") as info:
        Recipe.from_toml_text(text, "x.toml")
    assert refused in str(info.value) and str(info.value).startswith("x.toml: the space fixes")
    # the same recipe stored on a study (written before this check) still opens, its setting kept
    stored = Recipe.from_dict(tomllib.loads(text), "stored recipe", stored=True)
    assert any(k in dict(stored.space.fixed) for k in _legacy.keys_of_flat(space.split(" = ")[0]))  # kept, by its key
