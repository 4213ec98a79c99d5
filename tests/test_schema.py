"""The study schema: one module holds every attribute key, recipes round-trip through `Recipe.to_dict`,
and the objectives a recipe chooses are checked by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recipes import tiny_recipe
from vitshrink.search import _schema
from vitshrink.spaces import DEFAULT_OBJECTIVES, ConfigError, Recipe, SearchSpace, builtin_recipes, resolve_recipe

PACKAGE = Path(_schema.__file__).resolve().parents[1]

# --- Recipe.to_dict: the inverse of Recipe.from_dict ---------------------------------------------------------------


@pytest.mark.parametrize("name", builtin_recipes())
def test_every_builtin_recipe_round_trips(name) -> None:
    r = resolve_recipe(name)
    assert Recipe.from_dict(r.to_dict()) == r


HAND_MADE = [
    Recipe(name="bare"),
    Recipe(name="all-optional", data_dir="/data/x", teacher_checkpoint="/w/t.safetensors", timeout=5400.0,
           seed_with="reference", max_failures=3, constraints={"max_accuracy_drop": 0.02, "max_size_mb": 1.5},
           objectives=("accuracy", "throughput", "peak_memory_bytes", "macs"), throughput_batch=8, rungs=False,
           screening=False, rung_margin=0.05, latency_max_runs=50, latency_target_cv=0.1,
           teacher_train={"epochs": 3, "lr": 1e-3, "augment": ["flip"]}, teacher_kwargs={"depth": 2},
           space=SearchSpace.from_dict({"quant": ["none", "dynamic_int8"], "prune_heads": [0.0, 0.5]},
                                       {"kd_epochs": 1})),
    Recipe(name="one-objective", objectives=("accuracy",), data_options={"limit": 100, "kd_limit": 50},
           space=SearchSpace.from_dict({"student": ["none", "deit_tiny_patch16_224"], "student_epochs": 1})),
    Recipe.from_toml_text(tiny_recipe("tiny", trials=3, sampler="tpe", device="cpu:1")),
]


@pytest.mark.parametrize("recipe", HAND_MADE, ids=lambda r: r.name)
def test_hand_made_recipes_round_trip(recipe) -> None:
    doc = recipe.to_dict()
    assert Recipe.from_dict(doc, stored=True) == recipe
    assert Recipe.from_dict(doc, stored=True).to_dict() == doc


def test_a_stored_recipe_without_objectives_reads_as_the_default_three() -> None:
    doc = Recipe(name="old").to_dict()
    del doc["study"]["objectives"]  # as every study stored before objectives were chosen
    assert Recipe.from_dict(doc).objectives == DEFAULT_OBJECTIVES == ("accuracy", "latency_ms", "size_bytes")


# --- objectives chosen in the recipe: refused in one sentence naming the allowed names --------------------------


@pytest.mark.parametrize("objectives, words", [
    ('["accuracy", "speed"]', "unknown objective(s) ['speed']"),
    ('["accuracy", "macs", "accuracy"]', "more than once"),
    ("[]", "is empty"),
    ('"accuracy"', "wrong type; expected a list"),
    ('["accuracy", 3]', "must be a list of names"),
    ('["accuracy", "throughput"]', "set target.throughput_batch"),
])
def test_bad_objectives_are_refused(objectives, words) -> None:
    text = tiny_recipe("bad").replace("[data]", f"objectives = {objectives}\n[data]")
    with pytest.raises(ConfigError) as info:
        Recipe.from_toml_text(text)
    message = str(info.value)
    assert words in message and "\n" not in message
    if "throughput_batch" not in words and "type" not in words and "list of names" not in words:
        assert "accuracy, latency_ms, size_bytes, peak_memory_bytes, throughput, macs" in message


def test_cli_refuses_unknown_objective_with_exit_2(tmp_path) -> None:
    from vitshrink import cli

    recipe = tmp_path / "bad.toml"
    recipe.write_text(tiny_recipe("bad").replace("[data]", 'objectives = ["accuracy", "flops"]\n[data]'))
    result = CliRunner().invoke(cli.app, ["search", str(recipe), "--storage", f"sqlite:///{tmp_path}/s.db"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "unknown objective(s) ['flops']; choose from accuracy, latency_ms" in " ".join(result.output.split())


def test_registry_lists_each_objective_with_its_direction() -> None:
    from vitshrink.objectives import get_objective, list_objectives

    assert {o.name: o.direction for o in list_objectives()} == {
        "accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize",
        "peak_memory_bytes": "minimize", "throughput": "maximize", "macs": "minimize"}
    assert not get_objective("accuracy").structural and get_objective("macs").structural
    with pytest.raises(ConfigError, match="unknown objective 'flops'; choose from accuracy"):
        get_objective("flops")


# --- every attribute key lives in search/_schema.py ------------------------------------------------------------

_SETTERS = {"set_user_attr", "set_system_attr", "set_trial_user_attr", "set_trial_system_attr",
            "set_study_user_attr", "set_study_system_attr"}
_ATTR_DICTS = {"user_attrs", "system_attrs"}
_ALIASES = {"ua", "attrs", "user_attrs", "system_attrs", "study_attrs"}  # local names the package gives those dicts
# ONNX metadata keys of an exported file (what a deployment reads), not study attributes
_NOT_ATTRIBUTES = {("exporting.py", "vitshrink.preprocessing"), ("exporting.py", "vitshrink.classes")}


def _is_attr_dict(node: ast.AST) -> bool:
    return ((isinstance(node, ast.Attribute) and node.attr in _ATTR_DICTS)
            or (isinstance(node, ast.Name) and node.id in _ALIASES))


def _literal(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value for v in node.values if isinstance(v, ast.Constant)) + "{...}"
    return None


def attribute_key_literals(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, literal) of every string written as an attribute key: the key argument of a setter, a
    subscript / .get / `in` on an attribute dict, a key of `user_attrs={...}` / `system_attrs={...}`."""
    found = []
    for node in ast.walk(tree):
        keys: list[ast.AST] = []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _SETTERS and node.args:
                keys.append(node.args[-2] if node.func.attr.startswith("set_trial") or
                            node.func.attr.startswith("set_study") else node.args[0])
            if node.func.attr in ("get", "pop", "setdefault") and _is_attr_dict(node.func.value) and node.args:
                keys.append(node.args[0])
            for kw in node.keywords:
                if kw.arg in _ATTR_DICTS and isinstance(kw.value, ast.Dict):
                    keys += [k for k in kw.value.keys if k is not None]
        if isinstance(node, ast.Subscript) and _is_attr_dict(node.value):
            keys.append(node.slice)
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and any(_is_attr_dict(c) for c in node.comparators):
            keys.append(node.left)
        found += [(node.lineno, text) for k in keys if (text := _literal(k)) is not None]
    return found


def _module_path(text: str) -> bool:
    """`text` names a module of the package ("vitshrink.data"), not an attribute."""
    path = PACKAGE.parent / text.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def _study_keys() -> set[str]:
    return {v for k, v in vars(_schema).items() if k.endswith(("_ATTR", "_PREFIX")) and v.startswith("vitshrink.")}


def test_no_attribute_key_literal_outside_the_schema_module() -> None:
    offenders = []
    study_keys = _study_keys()
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "_schema.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(PACKAGE)
        offenders += [f"{where}:{line}: {text!r}" for line, text in attribute_key_literals(tree)]
        for node in ast.walk(tree):  # a study key's value written out anywhere ("vitshrink.recipe")
            text = _literal(node)
            if text and any(text == k or text.startswith(k) and k.endswith(".") for k in study_keys) \
                    and (path.name, text) not in _NOT_ATTRIBUTES and not _module_path(text):
                offenders.append(f"{where}:{node.lineno}: {text!r}")
    assert not offenders, "attribute keys written as literals; name them in vitshrink/search/_schema.py:\n" + \
        "\n".join(offenders)


def test_the_key_finder_finds_each_way_a_key_is_written() -> None:
    code = '''
trial.set_user_attr("a", 1)
storage.set_trial_user_attr(tid, "b", 1)
t.user_attrs.get("c")
x = t.system_attrs["d"]
"e" in t.user_attrs
study.enqueue_trial({}, user_attrs={"f": 1})
ua.get(f"g.{n}")
trial.set_user_attr(KEY, 1)
t.user_attrs.get(KEY)
'''
    assert [text for _, text in attribute_key_literals(ast.parse(code))] == ["a", "b", "c", "d", "e", "f", "g.{...}"]


def test_key_values_are_the_ones_stored_studies_hold() -> None:
    """Studies stored today are read by these strings: changing one breaks resume, rebuild and export."""
    assert (_schema.RECIPE_ATTR, _schema.TEACHER_ATTR, _schema.FINGERPRINT_ATTR, _schema.ARTIFACT_DIR_ATTR,
            _schema.LATENCY_REFERENCE_ATTR, _schema.PREPROCESSING_ATTR, _schema.key_of_test_accuracy(3)) == (
        "vitshrink.recipe", "vitshrink.teacher", "vitshrink.fingerprint", "vitshrink.artifact_dir",
        "vitshrink.latency_reference", "vitshrink.preprocessing", "vitshrink.test_accuracy.3")
    assert (_schema.CONFIG_ATTR, _schema.CONFIG_OVERRIDE_ATTR, _schema.ROLE_ATTR, _schema.ARTIFACT_ATTR,
            _schema.FAIL_REASON_ATTR, _schema.PRUNED_REASON_ATTR, _schema.SCREENED_ATTR, _schema.STOPPED_ATTR,
            _schema.RUNG_PREFIX, _schema.HEARTBEAT_ATTR, _schema.NOT_RUN_ATTR, _schema.REQUEUED_FROM_ATTR) == (
        "config", "config_override", "role", "artifact", "fail_reason", "pruned_reason", "screened", "stopped",
        "rung:", "vitshrink.heartbeat", "not_run", "requeued_from")
