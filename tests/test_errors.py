"""Bad input through the real command line: one clear sentence naming the problem and the fix,
exit code 2, no traceback unless --debug, and never a password.

Every case runs the command line in this process (tests/support.py: run_cli), as a user would type
it; the tests below it check the model-dependent space checks number by number.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState, create_trial
from safetensors.torch import save_file

from recipes import tiny_recipe
from support import CliResult, run_cli
from vitshrink.models import TeacherSpec, create_model
from vitshrink.spaces import ConfigError, Recipe, SearchSpace

SECRET = "s3cret"
PG_URL = f"postgresql://user:{SECRET}@127.0.0.1:1/db"  # port 1: nothing listens, refused at once
REDIS_URL = f"redis://:{SECRET}@127.0.0.1:1/0"

def _files(root: Path) -> dict[str, str]:
    """Write the recipes and checkpoints the cases use; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    texts = {
        "key": '[study]\nname = "x"\ntrails = 3\n',
        "dim": '[study]\nname = "x"\n[space]\nprune_head = [0.0, 0.5]\n',
        "inverted": '[study]\nname = "x"\n[space]\nlandmarks = [8, 2]\n',
        "empty": '[study]\nname = "x"\n[space]\nprune_heads = [0.25, 0.25]\n',
        "landmarks": tiny_recipe("lm", 'techniques = ["nystrom"]\n[space.nystrom]\nlandmarks = [2, 32]'),
        "blocks": tiny_recipe("bl", 'techniques = ["svd"]\n[space.svd]\nblocks = [[0], [5]]'),
        "merge": tiny_recipe("mg", 'techniques = ["tome"]\n[space.tome]\nr = [0, 12]'),
        "misfit": tiny_recipe("ck", teacher_extra='checkpoint = "{root}/wide.safetensors"', epochs=None),
        "tiny": tiny_recipe(),
    }
    paths = {}
    for name, text in texts.items():
        path = root / f"{name}.toml"
        path.write_text(text.replace("{root}", str(root)))
        paths[name] = str(path)
    # a checkpoint of a wider model (embed 64) than the recipe's teacher (embed 32)
    wide = TeacherSpec("vit_tiny_patch16_224", {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64,
                                                "depth": 2, "num_heads": 2, "mlp_ratio": 2.0, "num_classes": 10})
    save_file({k: v.contiguous() for k, v in create_model(wide).state_dict().items()}, str(root / "wide.safetensors"))
    return paths


def _study_with_failed_trial(root: Path) -> str:
    """A real vitshrink study (created by the search driver) holding one FAIL trial."""
    from vitshrink.search import open_or_create_study

    url = f"sqlite:///{root}/failed.db"
    study = open_or_create_study(Recipe.from_toml_text(tiny_recipe("failed")), url)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "RuntimeError: boom"}))
    return url


# name -> (CLI arguments, words the error must contain, exit code). `{x}` is filled from the files above.
CASES: dict[str, tuple[list[str], list[str], int]] = {
    "unknown recipe key": (["search", "{key}"], ["unknown key study.trails", "did you mean 'trials'"], 2),
    "misspelt dimension": (["search", "{dim}"], ["unknown search dimension 'prune_head'",
                                                 "did you mean 'prune_heads'"], 2),
    "inverted range": (["search", "{inverted}"], ["range [8, 2] is inverted", "write [2, 8]"], 2),
    "empty range": (["search", "{empty}"], ["range [0.25, 0.25] is empty", "give low < high or a fixed value"], 2),
    "landmarks > tokens": (["search", "{landmarks}", "--storage", "sqlite:///{root}/lm.db"],
                           ["landmarks reaches 32", "has 17 tokens", "keep nystrom.landmarks <= 17"], 2),
    "block index >= depth": (["search", "{blocks}", "--storage", "sqlite:///{root}/bl.db"],
                             ["svd.blocks names block(s) [5]", "has 2 blocks", "use indices 0..1"], 2),
    "merging too many tokens": (["search", "{merge}", "--storage", "sqlite:///{root}/mg.db"],
                                ["tome.r reaches 12", "16 patch tokens", "keep tome.r <= 8"], 2),
    "unknown timm model": (["search", "{tiny}", "--model", "vit_tiniest", "--storage", "sqlite:///{root}/m.db"],
                           ["unknown timm model 'vit_tiniest'", "timm.list_models"], 2),
    "checkpoint does not fit": (["search", "{misfit}", "--storage", "sqlite:///{root}/ck.db"],
                                ["does not fit the model", "shape mismatch", "cls_token: checkpoint (1, 1, 64) vs "
                                 "model (1, 1, 32)", "check --model and its arguments"], 2),
    "dataset not found": (["search", "{tiny}", "--dataset", "fashion-mnist", "--data-dir", "{root}/nowhere",
                           "--storage", "sqlite:///{root}/d.db"],
                          ["Fashion-MNIST not found (looked in {root}/nowhere)", "dataset-fashion-mnist",
                           "--data-dir", "torchvision"], 2),
    "unknown dataset": (["search", "{tiny}", "--dataset", "mnist", "--storage", "sqlite:///{root}/d2.db"],
                        ["unknown dataset 'mnist'", "digits, fashion-mnist, cifar10, image-folder"], 2),
    "bad duration": (["search", "{tiny}", "--timeout", "soon"], ["cannot read duration 'soon'", "90s, 10m, 2h"], 2),
    "storage not a URL": (["search", "{tiny}", "--storage", "vitshrink.db"],
                          ["storage 'vitshrink.db' is not a URL", "sqlite:///file.db"], 2),
    "postgres unreachable": (["search", "{tiny}", "--storage", PG_URL],
                             ["cannot open storage postgresql://user:***@127.0.0.1:1/db", "server is running"], 2),
    "postgres unreachable --debug": (["--debug", "search", "{tiny}", "--storage", PG_URL],
                                     ["cannot open storage postgresql://user:***@127.0.0.1:1/db"], 2),
    "redis unreachable": (["studies", "--storage", REDIS_URL], ["cannot open storage redis://:***@127.0.0.1:1/0"], 2),
    "pareto of a missing study": (["pareto", "nosuch", "--storage", "{failed_db}"],
                                  ["no study 'nosuch'", "studies there: failed", "vitshrink studies"], 2),
    "export of a missing study": (["export", "nosuch", "--trial", "0", "--out", "{root}/m.onnx",
                                   "--storage", "{failed_db}"], ["no study 'nosuch'"], 2),
    "export of a failed trial": (["export", "failed", "--trial", "0", "--out", "{root}/m.onnx",
                                  "--storage", "{failed_db}"],
                                 ["trial 0 of 'failed' is FAIL, not COMPLETE", "RuntimeError: boom",
                                  "pick a completed trial"], 2),
    "export of a missing trial": (["export", "failed", "--trial", "7", "--out", "{root}/m.onnx",
                                   "--storage", "{failed_db}"], ["has no trial 7", "vitshrink pareto failed"], 2),
    "show of a missing trial": (["show", "failed", "7", "--storage", "{failed_db}"], ["has no trial 7"], 2),
    "option of the wrong type": (["search", "--trials", "many"], ["Invalid value for '--trials'"],
                                 2),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[CliResult, dict[str, str]]]:
    """Every case through the CLI, in this process."""
    root = tmp_path_factory.mktemp("errors")
    fill = {**_files(root), "root": str(root), "failed_db": _study_with_failed_trial(root)}
    env = {"VITSHRINK_CACHE": str(root / "cache"), "COLUMNS": "200"}
    return {name: (run_cli([a.format(**fill) for a in args], root, env), fill) for name, (args, _, _) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_one_clear_message(case, results) -> None:
    _check(case, *results[case])


def _check(case: str, res: CliResult, fill: dict[str, str]) -> None:
    _, words, code = CASES[case]
    err = res.stderr
    assert res.returncode == code, (res.returncode, err[-2000:])
    flat = " ".join(err.split())  # rich wraps long lines
    for w in words:
        assert " ".join(w.format(**fill).split()) in flat, (w, err[-2000:])
    if "--debug" not in CASES[case][0]:
        assert "Traceback" not in err + res.stdout
    assert SECRET not in err + res.stdout


def test_debug_shows_the_traceback_but_still_masks_the_password(results) -> None:
    res, _ = results["postgres unreachable --debug"]
    assert "Traceback" in res.stderr and "StorageError" in res.stderr
    assert SECRET not in res.stderr + res.stdout


# --- recipes, in process ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ('[space]\nprune_heads = "half"', "prune_heads='half' must be a number"),
        ("[space]\ntoken_drop_at = [['a']]", r"token_drop_at=\['a'\] must be a list of block indices"),
        ("[fixed]\nlandmarks = true", "landmarks=True must be an integer"),
        ('[space]\nquant = {low = 1, high = 2}', "takes a list of choices, not a range"),
        ("[space]\nlandmarks = {low = 2, high = 8, log = 'yes'}", "log = 'yes' must be true or false"),
        ("[space]\nlandmarks = {choices = 4}", "choices = 4 must be a list"),
        ('[teacher]\ncheckpoint = ""', "teacher.checkpoint is empty"),
        ("[space]\nprune_heads = [0.0, 1.0]", r"invalid config \(prune.heads=1.0\).*1.0 would remove everything"),
    ],
)
def test_recipe_values_of_the_wrong_kind_are_refused_by_name(text, words) -> None:
    with pytest.raises(ConfigError, match=words):
        Recipe.from_toml_text(text)


# --- the space against the model, in process --------------------------------------------------------------------


@pytest.mark.parametrize(
    "space, words",
    [
        ({"lowrank": ["nystrom"], "landmarks": [2, 18]}, "landmarks reaches 18 but the teacher has 17 tokens"),
        ({"lowrank": "nystrom", "landmarks": 20}, "keep nystrom.landmarks <= 17"),
        ({"lowrank": ["none", "svd"], "lowrank_blocks": [[0, 1], [2]]}, r"svd.blocks names block\(s\) \[2\]"),
        ({"token_drop": [0.0, 0.5], "token_drop_at": [3]}, r"patch_drop.at names block\(s\) \[3\] .* 2 blocks"),
        ({"token_merge_r": [0, 9]}, "tome.r reaches 9 .* 16 patch tokens"),
    ],
)
def test_space_is_checked_against_the_model(space, words) -> None:
    parsed = SearchSpace.from_dict(space)  # valid without a model
    with pytest.raises(ConfigError, match=words):
        parsed.check_model(num_tokens=17, depth=2)


def test_space_within_the_model_passes() -> None:
    ok = SearchSpace.from_dict({"lowrank": ["none", "nystrom"], "landmarks": [2, 17], "token_merge_r": [0, 8],
                                "token_drop": [0.0, 0.5], "token_drop_at": [[0], [1]]})
    ok.check_model(num_tokens=17, depth=2)
    # inactive settings are not checked: block indices only matter when their technique can be chosen
    SearchSpace.from_dict({"lowrank": "none", "lowrank_blocks": [7]}).check_model(num_tokens=17, depth=2)


def test_builtin_recipes_fit_their_teachers(tmp_path) -> None:
    from PIL import Image

    from vitshrink.search._trial import check_space_fits_teacher
    from vitshrink.spaces import builtin_recipes, resolve_recipe

    for name in ("a", "b"):  # folder-deit reads the user's image folder (--data-dir)
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / name / f"{i}.png")
    torch.set_num_threads(2)
    for name in builtin_recipes():
        recipe = resolve_recipe(name)
        if recipe.canonical_dataset == "image-folder":
            recipe = recipe.with_overrides(data_dir=str(tmp_path))
        check_space_fits_teacher(recipe)
