"""Studies that never mix, misread or overshoot: a resumed study is the same study (its fingerprint
is compared before anything runs), caches are keyed by every input of their content, and Optuna's
own tools open a PostgreSQL study with the URL the user gave."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from support import require_service
from recipes import tiny_recipe
from vitshrink import cli
from vitshrink.compress import distill
from vitshrink.data import DataBundle, Split
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, TrainSettings, create_model, get_teacher
from vitshrink.objectives import LatencyCache, LatencyProtocol, Target, measure_latency_cached
from vitshrink.search import SearchError, open_or_create_study, open_storage, run_search
from vitshrink.search._driver import ARTIFACT_DIR_ATTR, RECIPE_ATTR
from vitshrink.search._fingerprint import FINGERPRINT_ATTR
from vitshrink.search._trial import METRIC_NAMES
from vitshrink.spaces import Recipe

KWARGS = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10)


def _save_weights(path: Path, seed: int) -> None:
    """A checkpoint of the recipes' tiny teacher architecture, with weights drawn from `seed`."""
    torch.manual_seed(seed)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", dict(KWARGS)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _base_text(checkpoint: Path) -> str:
    """A teacher fine-tuned for one epoch from a local checkpoint: every part of the fingerprint is in play."""
    return tiny_recipe("integrity", 'techniques = ["dynamic_int8"]', trials=1, sampler="random", device="cpu:1",
                       teacher_extra=f'pretrained = true\ncheckpoint = "{checkpoint}"\n')


def _search(args: list[str], cache: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, ["-q", "search", *args], env={"VITSHRINK_CACHE": str(cache), "COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A one-trial study created through the driver: (folder, storage URL, recipe path, checkpoint)."""
    root = tmp_path_factory.mktemp("integrity")
    checkpoint = root / "teacher.safetensors"
    _save_weights(checkpoint, seed=1)
    recipe = root / "integrity.toml"
    recipe.write_text(_base_text(checkpoint))
    url = f"sqlite:///{root}/studies.db"
    with pytest.MonkeyPatch.context() as mp:  # module scope: the per-test cache fixture is not active yet
        mp.setenv("VITSHRINK_CACHE", str(root / "cache"))
        summary = run_search(Recipe.from_file(recipe), storage=url, evaluate_test=False)
    assert summary.completed == 1
    return root, url, recipe, checkpoint


def _edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


# name -> (how the recipe text changes, CLI options, words the refusal must list)
CHANGES = {
    "teacher model": (None, ["--model", "deit_tiny_distilled_patch16_224"],
                      ["different teacher", "teacher.model: stored 'vit_tiny_patch16_224' -> now "
                       "'deit_tiny_distilled_patch16_224'"]),
    # a kwarg that keeps every tensor's shape: one that does not (mlp_ratio) is refused earlier, as a checkpoint
    # that does not fit the teacher
    "teacher kwargs": (("mlp_ratio = 2.0", "mlp_ratio = 2.0\ndrop_path_rate = 0.1"), [],
                       ["teacher.kwargs", "'drop_path_rate': 0.1"]),
    "teacher train settings": (("epochs = 1", "epochs = 2"), [], ["teacher.train", "'epochs': 2"]),
    "study seed": (('seed = 0\n', 'seed = 3\n'), [], ["different seed", "seed.study: stored 0 -> now 3"]),
    "data seed": (('dataset = "digits"', 'dataset = "digits"\nseed = 1'), [], ["different data", "data.seed: stored 0 -> now 1"]),
    "dataset options": (('dataset = "digits"', 'dataset = "digits"\nlimit = 500'), [],
                        ["data.options: stored {} -> now {'limit': 500}"]),
    "target device": (('device = "cpu:1"', 'device = "cpu:2"'), [], ["different latency target",
                                                                     "target.device: stored 'cpu:1' -> now 'cpu:2'"]),
    "latency runs": (("runs = 5", "runs = 7"), [], ["target.runs: stored 5 -> now 7"]),
    "constraints": (("[space]", "[constraints]\nmax_accuracy_drop = 0.05\n\n[space]"), [],
                    ["different constraints", "constraints.limits: stored {} -> now {'max_accuracy_drop': 0.05}"]),
    "space": (('techniques = ["dynamic_int8"]', 'techniques = ["ort_int8"]'), [],
              ["different search space", "space.runtime"]),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_changed_meaning_is_refused_before_anything_runs(change, stored, tmp_path) -> None:
    root, url, recipe, _ = stored
    edit, options, words = CHANGES[change]
    changed = tmp_path / "integrity.toml"
    changed.write_text(_edit(recipe.read_text(), *edit) if edit else recipe.read_text())
    cache = tmp_path / "cache"  # empty: a teacher trained or logits computed would show up here
    before = len(optuna.load_study(study_name="integrity", storage=url).trials)
    code, output = _search([str(changed), "--storage", url, *options], cache)
    assert code == 2, output
    text = " ".join(output.split())
    for w in words:
        assert w in text, (w, output)
    assert "--new-study" in text and "'integrity-2'" in text and "Traceback" not in output
    assert not (cache / "teachers").exists() or not any((cache / "teachers").iterdir())
    assert not (cache / "logits").exists()
    study = optuna.load_study(study_name="integrity", storage=url)
    assert len(study.trials) == before and "integrity-2" not in set(optuna.get_all_study_names(url))


def test_a_rewritten_teacher_checkpoint_is_refused(stored, tmp_path) -> None:
    root, url, recipe, checkpoint = stored
    original = checkpoint.read_bytes()
    try:
        _save_weights(checkpoint, seed=2)  # same path, other weights
        code, output = _search([str(recipe), "--storage", url], tmp_path / "cache")
    finally:
        checkpoint.write_bytes(original)
    assert code == 2, output
    assert "different teacher" in output and "teacher.checkpoint_sha256: stored" in " ".join(output.split())
    assert not (tmp_path / "cache" / "teachers").exists() or not any((tmp_path / "cache" / "teachers").iterdir())


@pytest.mark.slow
def test_budget_and_sampler_settings_may_change(stored) -> None:
    """trials, timeout, sampler and max_failures do not change what a stored trial means."""
    root, url, recipe, _ = stored
    changed = root / "budget.toml"
    changed.write_text(_edit(recipe.read_text(), "[data]", "max_failures = 9\ntimeout = 600\n[data]"))
    code, output = _search([str(changed), "--storage", url, "--trials", "2", "--sampler", "tpe", "--timeout", "10m"],
                           root / "cache-budget")
    assert code == 0, output
    study = optuna.load_study(study_name="integrity", storage=url)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
    assert "integrity-2" not in set(optuna.get_all_study_names(url))


def test_new_study_starts_a_new_study_when_the_meaning_changed(stored, tmp_path) -> None:
    root, url, recipe, _ = stored
    copy = tmp_path / "copy.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    study = open_or_create_study(Recipe.from_file(recipe).with_overrides(teacher_model="deit_tiny_patch16_224"),
                                 f"sqlite:///{copy}", new_study=True)
    assert study.study_name == "integrity-2"
    assert study.user_attrs[FINGERPRINT_ATTR]["teacher"]["model"] == "deit_tiny_patch16_224"


def _legacy_study(recipe: Recipe, url: str, artifacts: Path) -> None:
    """A study exactly as vitshrink stored it before fingerprints: the recipe (without objectives, chosen
    in recipes since), no fingerprint."""
    study = optuna.create_study(study_name=recipe.name, storage=url, directions=["maximize", "minimize", "minimize"])
    study.set_metric_names(list(METRIC_NAMES))
    doc = recipe.to_dict()
    del doc["study"]["objectives"]
    study.set_user_attr(RECIPE_ATTR, doc)
    study.set_user_attr("vitshrink.version", "0.1.0")
    study.set_user_attr(ARTIFACT_DIR_ATTR, str(artifacts))


@pytest.mark.slow
def test_a_study_stored_before_fingerprints_resumes_and_is_then_fingerprinted(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    recipe = Recipe.from_toml_text(tiny_recipe("old", trials=1, sampler="random", device="cpu:1"))
    _legacy_study(recipe, url, tmp_path / "old.artifacts")

    with pytest.raises(SearchError, match=r"different teacher:\n  teacher.model: stored 'vit_tiny_patch16_224'"):
        open_or_create_study(recipe.with_overrides(teacher_model="deit_tiny_patch16_224"), url)
    with pytest.raises(SearchError, match=r"data.seed: stored 0 -> now 2"):
        open_or_create_study(recipe.with_overrides(data_seed=2), url)

    summary = run_search(recipe, storage=url, evaluate_test=False)
    assert summary.completed == 1 and summary.study.study_name == "old"
    fingerprint = summary.study.user_attrs[FINGERPRINT_ATTR]
    assert fingerprint["teacher"]["model"] == "vit_tiny_patch16_224" and len(fingerprint["data"]["sha256"]) == 64


def _image_folder(root: Path) -> Path:
    """Ten classes of five 8x8 RGB images: an image-folder dataset whose files can be changed."""
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(5):
            pixels = np.clip(rng.normal(25 * c, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_changed_data_contents_are_refused_before_the_teacher_trains(tmp_path) -> None:
    folder = _image_folder(tmp_path / "images")
    text = _edit(_edit(tiny_recipe("folder", trials=1, sampler="random", device="cpu:1"),
                       'dataset = "digits"', f'dataset = "image-folder"\ndata_dir = "{folder}"\nimg_size = 8'),
                 "in_chans = 1", "in_chans = 3")
    recipe = tmp_path / "folder.toml"
    recipe.write_text(text)
    url = f"sqlite:///{tmp_path}/s.db"
    assert run_search(Recipe.from_file(recipe), storage=url, evaluate_test=False).completed == 1

    image = folder / "class3" / "2.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)  # one image of the same split, new contents
    code, output = _search([str(recipe), "--storage", url], tmp_path / "cache")
    assert code == 2, output
    assert "different data" in output and "data.sha256: stored" in " ".join(output.split())
    assert not (tmp_path / "cache" / "teachers").exists()


def test_postgresql_url_as_given_opens_in_optuna(tmp_path) -> None:
    """The study vitshrink writes opens in Optuna (and so optuna-dashboard) with the plain URL."""
    url = "postgresql://postgres@127.0.0.1:5432/test"
    try:
        open_storage(url)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service("postgres")
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    recipe = Recipe.from_toml_text(tiny_recipe(name))
    open_or_create_study(recipe, url, artifact_dir=tmp_path)
    try:
        study = optuna.load_study(study_name=name, storage=url)  # a plain string: SQLAlchemy picks the driver
        assert study.user_attrs[RECIPE_ATTR]["study"]["name"] == name and FINGERPRINT_ATTR in study.user_attrs
        assert study.metric_names == list(METRIC_NAMES)
    finally:
        optuna.delete_study(study_name=name, storage=url)


# --- caches ------------------------------------------------------------------------------------


def _with(split: Split, i: int = 0) -> Split:
    x = split.x.clone()
    x[i, 0, 0, 0] += 1.0
    return Split(x, split.y)


def _teacher_inputs(tiny_data, tiny_spec, tmp_path) -> dict:
    return dict(spec=tiny_spec, data=tiny_data, settings=TrainSettings(epochs=1), seed=0, cache=tmp_path,
                data_seed=0)


def _checkpoint_spec(tmp_path: Path, seed: int) -> TeacherSpec:
    path = tmp_path / "start.safetensors"
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in create_model(TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS)))
               .state_dict().items()}, str(path))
    return TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS), str(path), pretrained=True)


TEACHER_CHANGES = {
    "data split seed": lambda d, tmp: {**d, "data_seed": 1},
    "train images": lambda d, tmp: {**d, "data": DataBundle("digits16", _with(d["data"].train), d["data"].val,
                                                            d["data"].test, 10)},
    "val images": lambda d, tmp: {**d, "data": DataBundle("digits16", d["data"].train, _with(d["data"].val),
                                                          d["data"].test, 10)},
    "test images": lambda d, tmp: {**d, "data": DataBundle("digits16", d["data"].train, d["data"].val,
                                                           _with(d["data"].test), 10)},
    "test labels": lambda d, tmp: {**d, "data": DataBundle("digits16", d["data"].train, d["data"].val,
                                                           Split(d["data"].test.x, d["data"].test.y.roll(1)), 10)},
    "checkpoint contents": "checkpoint",
    "train settings": lambda d, tmp: {**d, "settings": TrainSettings(epochs=1, lr=1e-3)},
    "seed": lambda d, tmp: {**d, "seed": 1},
    "kwargs": lambda d, tmp: {**d, "spec": TeacherSpec(d["spec"].model, {**d["spec"].kwargs, "mlp_ratio": 1.0})},
}


@pytest.mark.parametrize("change", list(TEACHER_CHANGES))
def test_teacher_cache_misses_when_an_input_changes_and_hits_when_none_does(change, tiny_data, tiny_spec,
                                                                            tmp_path) -> None:
    epochs: list[int] = []

    def teacher(inputs: dict) -> None:
        get_teacher(**inputs, progress=lambda e, n, loss: epochs.append(e))

    base = _teacher_inputs(tiny_data, tiny_spec, tmp_path)
    if TEACHER_CHANGES[change] == "checkpoint":
        base = {**base, "spec": _checkpoint_spec(tmp_path, seed=1)}
        teacher(base)
        _checkpoint_spec(tmp_path, seed=2)  # the same path, rewritten
        changed = base
    else:
        teacher(base)
        changed = TEACHER_CHANGES[change](base, tmp_path)
    assert epochs == [1]
    teacher(changed)
    assert epochs == [1, 1], "a changed input reused the cached teacher"
    teacher(changed)
    assert epochs == [1, 1], "the same inputs trained the teacher again"


def _arch(**extra) -> torch.nn.Module:
    torch.manual_seed(4321)
    return create_model(TeacherSpec("vit_tiny_patch16_224", {**TINY_VIT_KWARGS, **extra}))


def _weights_changed(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        model.head.bias.add_(1.0)
    return model


LOGITS_CHANGES = {
    "weights": lambda m, d: (_weights_changed(m), d),
    "activation (same state_dict)": lambda m, d: (_arch(act_layer="gelu_tanh"), d),
    "pooling (same state_dict)": lambda m, d: (_arch(global_pool="avg", fc_norm=False), d),
    "train images": lambda m, d: (m, DataBundle(d.name, _with(d.train, 5), d.val, d.test, 10)),
    "train labels": lambda m, d: (m, DataBundle(d.name, Split(d.train.x, d.train.y.roll(1)), d.val, d.test, 10)),
}


@pytest.mark.parametrize("change", list(LOGITS_CHANGES))
def test_teacher_logits_cache_misses_when_an_input_changes_and_hits_when_none_does(change, tiny_data) -> None:
    data = DataBundle(tiny_data.name, tiny_data.train.head(200), tiny_data.val, tiny_data.test, 10)
    model = _arch()
    assert model.state_dict().keys() == _arch(act_layer="gelu_tanh").state_dict().keys()
    first = distill.teacher_logits(model, data)
    distill.clear_logits_memory()
    assert distill.teacher_logits(model, data).equal(first)
    other_model, other_data = LOGITS_CHANGES[change](_arch(), data)
    forwards: list[int] = []
    other_model.register_forward_hook(lambda *_: forwards.append(1))
    distill.clear_logits_memory()
    changed = distill.teacher_logits(other_model, other_data)
    assert forwards, "a changed input reused the cached logits"
    with torch.no_grad():
        assert torch.allclose(changed, other_model(other_data.train.x), atol=1e-5)
    ran = len(forwards)
    distill.clear_logits_memory()
    assert distill.teacher_logits(other_model, other_data).equal(changed) and len(forwards) == ran  # from disk


SHAPE = (1, 4, 4)
LATENCY_CHANGES = {
    "structure": lambda a: {**a, "model": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8))},
    "extra": lambda a: {**a, "extra": {"quant": "dynamic_int8"}},
    "input shape": lambda a: {**a, "example_shape": (1, 4, 8), "model": torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(32, 4))},
    "threads": lambda a: {**a, "target": Target("cpu", threads=2)},
    "warm-up": lambda a: {**a, "protocol": LatencyProtocol(warmup=2, runs=5)},
    "runs": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=6)},
    "batch sizes": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=5, batch_sizes=(2,))},
    "throughput batch": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=5, throughput_batch=4)},
    "runs cap": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=5, max_runs=50)},
    "target CV": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=5, target_cv=0.05)},
    "reference": lambda a: {**a, "protocol": LatencyProtocol(warmup=1, runs=5, reference=torch.nn.Flatten())},
    "host": "host",
    "cpu model": "cpu",
}


@pytest.mark.parametrize("change", list(LATENCY_CHANGES))
def test_latency_cache_misses_when_an_input_changes_and_hits_when_none_does(change, tmp_path, monkeypatch) -> None:
    from vitshrink.objectives import _target, latency

    torch.manual_seed(0)
    base = dict(model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)), example_shape=SHAPE,
                target=Target("cpu", threads=1), protocol=LatencyProtocol(warmup=1, runs=5), extra={"quant": "none"},
                cache=LatencyCache(tmp_path / "latency.json"))
    assert measure_latency_cached(**base)[1] is False
    assert measure_latency_cached(**base)[1] is True
    how = LATENCY_CHANGES[change]
    if how == "host":  # the same measurement asked for on another machine
        monkeypatch.setattr(latency.socket, "gethostname", lambda: "another-host")
        changed = base
    elif how == "cpu":
        monkeypatch.setattr(_target, "cpu_model", lambda: "Another CPU @ 1.0GHz")
        changed = base
    else:
        changed = how(base)
    assert measure_latency_cached(**changed)[1] is False, "a changed input reused a cached latency"
    assert measure_latency_cached(**changed)[1] is True
