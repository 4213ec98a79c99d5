"""Property-based tests: random recipes are refused with ConfigError or round-trip exactly; random
compression configs keep the model's output shape, finite outputs and (mostly) its parameter budget;
passwords never survive masking."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitshrink.compress import build
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, create_model, param_count
from vitshrink.search._storage import mask_url
from vitshrink.spaces import CompressionConfig, ConfigError, FlatConfig, Recipe, SearchSpace

torch.set_num_threads(2)

# --- recipes: refused with ConfigError, or round-trip through Recipe.to_dict ----------------------------------------

_FIELDS = list(FlatConfig().to_dict())
_names = st.one_of(st.sampled_from(_FIELDS), st.sampled_from([f[:-1] for f in _FIELDS]), st.text(max_size=6))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(-1.0, 2.0, allow_nan=False),
                     st.sampled_from(["none", "nystrom", "svd", "dynamic_int8", "custom", "magnitude", "x"]))
_dim_specs = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=4),
    st.lists(st.lists(st.integers(-1, 4), max_size=3), max_size=3),
    st.dictionaries(st.sampled_from(["low", "high", "step", "log", "choices", "lo"]),
                    st.one_of(_scalars, st.lists(_scalars, max_size=3)), max_size=4),
)
_tables = {
    "study": {"name": st.text(max_size=8), "trials": st.integers(-1, 50), "timeout": st.sampled_from(["10m", "1h30m", 90, "soon", 0]),
              "sampler": st.sampled_from(["nsga2", "tpe", "gp", "random", "cmaes"]), "seed": st.integers(0, 9),
              "seed_with": st.sampled_from(["reference", "all"]), "max_failures": st.integers(0, 9), "trails": st.integers()},
    "data": {"dataset": st.sampled_from(["digits", "cifar10"]), "data_dir": st.text(max_size=5), "seed": st.integers(0, 3),
             "limit": st.integers(1, 100), "download": st.booleans(), "img_size": st.integers(8, 32)},
    "teacher": {"model": st.sampled_from(["vit_tiny_patch16_224", "deit_small_patch16_224"]),
                "checkpoint": st.text(max_size=5), "pretrained": st.booleans(),
                "kwargs": st.fixed_dictionaries({"depth": st.integers(1, 4)}),
                "train": st.dictionaries(st.sampled_from(["epochs", "lr", "epoch"]), st.integers(1, 5), max_size=2)},
    "target": {"device": st.sampled_from(["cpu:2", "cpu:1"]), "runs": st.integers(1, 30), "warmup": st.integers(0, 5),
               "batch": st.integers(1, 8), "throughput_batch": st.integers(0, 16)},
    "constraints": {"max_accuracy_drop": st.floats(-0.5, 1.5, allow_nan=False), "max_latency_ms": st.integers(1, 99),
                    "max_size_mb": st.floats(0.1, 9.0)},
}


@st.composite
def recipe_docs(draw) -> dict:
    doc: dict = {}
    for table, keys in _tables.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(sorted(keys)), unique=True, max_size=3))
            doc[table] = {k: draw(keys[k]) for k in chosen}
    if draw(st.booleans()):
        doc["space"] = draw(st.dictionaries(_names, _dim_specs, max_size=4))
    if draw(st.booleans()):
        doc["fixed"] = draw(st.dictionaries(_names, _scalars, max_size=2))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.sampled_from(["stduy", "spaces"]))] = {}
    return doc


@given(recipe_docs())
@settings(max_examples=300, deadline=None)
def test_random_recipe_is_refused_by_config_error_or_round_trips(doc) -> None:
    try:
        recipe = Recipe.from_dict(copy.deepcopy(doc))
    except ConfigError as exc:
        assert str(exc)  # refused with a message; anything but ConfigError escapes and fails the test
        return
    again = Recipe.from_dict(recipe.to_dict())
    assert again == recipe
    assert again.to_dict() == recipe.to_dict()


def _valid_space_specs():
    """Dimension specs a recipe may hold, for the space's own JSON round trip."""
    return st.fixed_dictionaries({}, optional={
        "quant": st.lists(st.sampled_from(["none", "dynamic_int8", "bf16"]), min_size=1, max_size=3, unique=True),
        "prune_heads": st.tuples(st.floats(0, 0.4), st.floats(0.5, 0.9)).map(list),
        "lowrank": st.sampled_from([["none", "nystrom"], ["none", "svd"], "svd"]),
        "token_merge_r": st.tuples(st.integers(0, 2), st.integers(3, 8)).map(list),
    })


@given(_valid_space_specs())
@settings(max_examples=60, deadline=None)
def test_space_round_trips_through_its_json_dict(spec) -> None:
    try:
        space = SearchSpace.from_dict(spec)
    except ConfigError:
        return
    assert SearchSpace.from_json_dict(space.to_dict()) == space


# --- transforms: shape, finiteness and parameter budget --------------------------------------------------------


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS))).eval()  # 17 tokens, 2 blocks


TOKENS, DEPTH = 17, 2


@st.composite
def small_configs(draw) -> CompressionConfig:
    lowrank = draw(st.sampled_from(["none", "nystrom", "svd"]))
    drop = draw(st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    pruning = draw(st.booleans())
    return CompressionConfig(
        prune_heads=draw(st.sampled_from([0.0, 0.5])) if pruning else 0.0,
        prune_mlp=draw(st.floats(0.0, 0.9)) if pruning else 0.0,
        prune_score=draw(st.sampled_from(["magnitude", "taylor", "activation"])),
        lowrank=lowrank,
        landmarks=draw(st.integers(1, TOKENS)) if lowrank == "nystrom" else 0,
        nystrom_conv=draw(st.sampled_from([0, 0, 3])) if lowrank == "nystrom" else 0,
        lowrank_blocks=tuple(draw(st.lists(st.integers(0, DEPTH - 1), unique=True, max_size=DEPTH)))
        if lowrank != "none" else (),
        svd_rank=draw(st.floats(0.05, 1.0)) if lowrank == "svd" else 1.0,
        token_merge_r=draw(st.integers(0, (TOKENS - 1) // 2)),
        token_drop=drop,
        token_drop_at=tuple(draw(st.lists(st.integers(0, DEPTH - 1), min_size=1, unique=True, max_size=DEPTH)))
        if drop else (),
    )


@given(small_configs(), st.integers(1, 5))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_transforms_keep_shape_finiteness_and_parameter_budget(vit, tiny_data, config, batch) -> None:
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    result = build(vit, config, tiny_data, seed=0, train=False)
    x = tiny_data.val.x[:batch]
    with torch.no_grad():
        out = result.model(x)
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()
    # no transform adds parameters, except Nystrom's optional depthwise-conv skip on the values
    if "nystrom" not in config or config["nystrom"].conv == 0:
        assert param_count(result.model) <= param_count(vit)
    if "prune" in config and (config["prune"].heads > 0 or config["prune"].mlp >= 0.1):
        assert param_count(result.model) < param_count(vit)  # structured pruning really shrinks tensors
    # the teacher is never modified
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())
    # what the space check allows, build accepts: this config passes check_model for the tiny ViT
    SearchSpace.from_dict({}, {k: v for k, v in config.flat.to_dict().items()
                               if v != FlatConfig().to_dict()[k]}).check_model(TOKENS, DEPTH)


# --- passwords ---------------------------------------------------------------------------------------------------

_url_text = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N"), include_characters="-_.~"),
                    min_size=1, max_size=10)
_passwords = st.text(alphabet=st.characters(codec="ascii", categories=("L", "N", "P", "S"),
                                            exclude_characters="/ \t\n#?"), min_size=1, max_size=16)


@given(st.sampled_from(["postgresql", "postgresql+psycopg2", "mysql+pymysql", "redis"]), _url_text, _passwords,
       _url_text, _url_text)
@settings(max_examples=200, deadline=None)
def test_mask_url_hides_any_password(scheme, user, password, host, db) -> None:
    url = f"{scheme}://{user}:{password}@{host}:5432/{db}"
    assert mask_url(url) == f"{scheme}://{user}:***@{host}:5432/{db}"
    assert mask_url(f"cannot open storage {url}: refused") == f"cannot open storage {scheme}://{user}:***@{host}:5432/{db}: refused"
    assert mask_url(f"{scheme}://:{password}@{host}/0") == f"{scheme}://:***@{host}/0"
