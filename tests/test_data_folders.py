"""The user's data, read as it is laid out, and a teacher that fits it.

Image folders in both layouts (ROOT/CLASS/* and ROOT/{train,val,test}/CLASS/*), each bad folder
refused with one sentence, `[data] limit` on every dataset, every recipe key that would mean
nothing refused by name, and the teacher's in_chans / img_size / num_classes following the data.
Folders are small PNGs written with PIL.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from recipes import tiny_recipe
from support import run_cli
from vitshrink.data import DataError, load_dataset, load_image_folder
from vitshrink.models import ModelError
from vitshrink.spaces import ConfigError, Recipe
from vitshrink.search._trial import check_space_fits_teacher, data_shape_of, load_data, teacher_spec_of

CLASSES = ("cat", "dog", "fox")


def _images(folder: Path, n: int, label: int, mode: str = "RGB", size: int = 12) -> None:
    """`n` PNGs whose brightness says their class (so a teacher can learn it) and index."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(label * 100 + n)
    for i in range(n):
        base = 40 + 80 * label + rng.integers(0, 30, (size, size, 3))
        img = Image.fromarray(base.astype(np.uint8), "RGB")
        img.convert(mode).save(folder / f"{i:03d}.png")


def make_folder(root: Path, counts: dict[str | None, int], classes=CLASSES, mode: str = "RGB") -> Path:
    """split (None: the flat layout) -> images per class."""
    for split, n in counts.items():
        for label, name in enumerate(classes):
            _images(root / split / name if split else root / name, n, label, mode)
    return root


def test_train_and_val_folders_are_splits_not_classes(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", {"train": 10, "val": 4})
    data = load_image_folder(root, img_size=8, seed=0)
    assert data.class_names == CLASSES and data.num_classes == 3
    assert len(data.val) == 12  # the given val split, as it is
    assert len(data.train) + len(data.test) == 30 and len(data.test) == 6  # test split off train
    for split in (data.train, data.val, data.test):
        assert sorted(set(split.y.tolist())) == [0, 1, 2]  # stratified: every class in every split


def test_all_three_splits_are_used_as_given_and_validation_is_val(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", {"train": 5, "validation": 3, "test": 2})
    data = load_image_folder(root, img_size=8)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 9, 6)
    assert data.class_names == CLASSES


def test_missing_split_is_split_off_train_with_the_seed(tmp_path) -> None:
    from vitshrink.image_folder import scan_folder, split_off

    root = make_folder(tmp_path / "pets", {"train": 10, "test": 2})
    layout = scan_folder(root)
    a, b, c = (split_off(layout, seed=s) for s in (0, 0, 1))
    assert len(a["val"][0]) == 6 and len(a["test"][0]) == 6 and len(a["train"][0]) == 24
    assert a["val"][0] == b["val"][0] and a["val"][0] != c["val"][0]
    assert a["test"][0] == c["test"][0]  # the given split does not depend on the seed
    assert not set(a["val"][0]) & set(a["train"][0])
    assert len(load_image_folder(root, img_size=8, seed=1).val) == 6


def test_flat_layout_still_splits_three_ways(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", {None: 10})
    data = load_image_folder(root, img_size=8)
    assert data.class_names == CLASSES and (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)


def test_channels_follow_the_images_or_the_teacher(tmp_path) -> None:
    gray = make_folder(tmp_path / "gray", {None: 4}, mode="L")
    rgb = make_folder(tmp_path / "rgb", {None: 4})
    assert load_image_folder(gray, img_size=8).in_chans == 1
    assert load_image_folder(rgb, img_size=8).in_chans == 3
    assert load_image_folder(rgb, img_size=8, in_chans=1).in_chans == 1  # the teacher's channels
    assert load_image_folder(gray, img_size=16, in_chans=3).train.example_shape == (3, 16, 16)


def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


def _no_class_folders(root: Path) -> None:
    _images(root, 2, 0)


def _one_image_class(root: Path) -> None:
    make_folder(root, {None: 5})
    for p in sorted((root / "dog").iterdir())[1:]:
        p.unlink()


def _val_classes_differ(root: Path) -> None:
    make_folder(root, {"train": 5})
    make_folder(root, {"val": 2}, classes=("cat", "dog", "owl"))


def _truncated(root: Path) -> None:
    make_folder(root, {None: 5})
    for p in (root / "cat" / "001.png", root / "fox" / "003.png", root / "fox" / "004.png"):
        _truncate(p)


def _not_an_image(root: Path) -> None:
    make_folder(root, {None: 5})
    (root / "dog" / "002.png").write_text("not a png")


def _val_without_train(root: Path) -> None:
    make_folder(root, {"val": 3, "test": 3})


def _splits_mixed_with_classes(root: Path) -> None:
    make_folder(root, {"train": 3})
    _images(root / "owl", 3, 0)


@pytest.mark.parametrize("build, words", [
    (_no_class_folders, ["has no class folders", "2 image file(s) lie directly in it", "CLASS/"]),
    (_one_image_class, ["class 'dog'", "has 1 image(s) but needs at least 3"]),
    (_val_classes_differ, ["val's classes differ from train's", "lacks fox", "has extra owl"]),
    (_truncated, ["cat/001.png cannot be read", "and 2 more file(s)", "remove or replace"]),
    (_not_an_image, ["dog/002.png cannot be read", "UnidentifiedImageError"]),
    (_val_without_train, ["no train folder"]),
    (_splits_mixed_with_classes, ["mixes split folders (train) with other folders (owl)"]),
])
def test_bad_folders_get_one_sentence(tmp_path, build, words) -> None:
    root = tmp_path / "pets"
    build(root)
    with pytest.raises(DataError) as info:
        load_image_folder(root, img_size=8)
    text = str(info.value)
    assert "\n" not in text
    for w in words:
        assert w in text, (w, text)


def test_truncation_is_found_by_decoding(tmp_path) -> None:
    """A PNG cut short still opens (its header is intact); only decoding every byte finds it."""
    root = make_folder(tmp_path / "pets", {None: 5})
    _truncate(root / "dog" / "000.png", keep=0.8)
    with Image.open(root / "dog" / "000.png") as img:
        assert img.size == (12, 12)  # the header reads fine
    with pytest.raises(DataError, match="dog/000.png cannot be read"):
        load_image_folder(root, img_size=8)


# --- [data] limit, on every dataset ---------------------------------------------------------------------------


def test_limit_cuts_digits_train_and_shrinks_val_and_test() -> None:
    full = load_dataset("digits", seed=0)
    data = load_dataset("digits", seed=0, limit=100)
    assert len(data.train) == 100
    factor = 100 / len(full.train)
    assert abs(len(data.val) - factor * len(full.val)) <= 1 and abs(len(data.test) - factor * len(full.test)) <= 1
    assert sorted(set(data.train.y.tolist())) == list(range(10))  # class-balanced: 10 of each class
    assert np.bincount(data.train.y.numpy()).tolist() == [10] * 10
    again = load_dataset("digits", seed=0, limit=100)
    assert data.train.x.equal(again.train.x)


def test_recipe_limit_is_used_on_digits_and_on_folders(tmp_path) -> None:
    recipe = Recipe.from_toml_text('[study]\nname = "x"\n[data]\ndataset = "digits"\nlimit = 100\n')
    assert len(load_data(recipe).train) == 100
    root = make_folder(tmp_path / "pets", {None: 10})
    folder = recipe.with_overrides(dataset="image-folder", data_dir=str(root))
    assert len(load_data(folder).train) == 18  # fewer images than the limit: all are kept
    small = Recipe.from_toml_text(f'[study]\nname = "x"\n[data]\ndataset = "image-folder"\ndata_dir = "{root}"\n'
                                  "limit = 6\nimg_size = 8\n")
    data = load_data(small)
    assert len(data.train) == 6 and np.bincount(data.train.y.numpy()).tolist() == [2, 2, 2]
    assert len(data.val) == 3 and len(data.test) == 3  # at least one image of every class


# --- every recipe key means something ------------------------------------------------------------------------------


def _recipe(data: str = "", teacher: str = "", rest: str = "") -> str:
    return f'[study]\nname = "x"\n[data]\n{data}\n[teacher]\n{teacher}\n{rest}'


@pytest.mark.parametrize("text, words", [
    (_recipe('data_dir = "/data"'), ["data.data_dir = '/data' does not apply to digits", "remove it"]),
    (_recipe("download = true"), ["data.download = True does not apply to digits", "only cifar10"]),
    (_recipe('dataset = "fashion-mnist"\ndownload = false'), ["data.download = False does not apply to fashion-mnist"]),
    (_recipe("img_size = 16"), ["data.img_size = 16 does not apply to digits", "8x8 px"]),
    (_recipe('dataset = "cifar10"\nimg_size = 64'), ["does not apply to cifar10", "32x32 px"]),
    (_recipe("kd_limit = 100", rest='[space]\nquant = ["none", "dynamic_int8"]'),
     ["data.kd_limit = 100 has nothing to limit", "never chooses a technique that trains: student"]),
    (_recipe("limit = 0"), ["data.limit = 0 must be >= 1"]),
    (_recipe('dataset = "mnist"'), ["unknown dataset 'mnist'", "digits, fashion-mnist, cifar10, image-folder"]),
    (_recipe(teacher='checkpoint = "t.safetensors"\n[teacher.train]\nepochs = 3'),
     ["[teacher.train] does not apply to a teacher read as it is from teacher.checkpoint", "pretrained = true"]),
    (_recipe(rest="[target]\nbatch = 4\nthroughput_batch = 4"), ["throughput_batch = 4 equals target.batch"]),
    (_recipe(rest="[target]\nwarmup = -1"), ["target.warmup = -1 must be >= 0"]),
    (_recipe(rest="[constraints]\nmax_latency_ms = 0"), ["max_latency_ms = 0.0 rules out every model"]),
    (_recipe(teacher="[teacher.train]\nepochs = 0"), ["teacher.train.epochs = 0 must be >= 1"]),
    (_recipe(teacher="[teacher.kwargs]\nnum_classes = 5"), ["teacher.kwargs.num_classes = 5", "(digits) has 10 classes"]),
    (_recipe(teacher="[teacher.kwargs]\nin_chans = 3"), ["teacher.kwargs.in_chans = 3", "(digits) has 1-channel images"]),
    (_recipe(teacher="[teacher.kwargs]\nimg_size = 16"), ["teacher.kwargs.img_size = 16", "has 8x8 px images"]),
    (_recipe('dataset = "image-folder"\ndata_dir = "d"\nimg_size = 16', "[teacher.kwargs]\nimg_size = 8"),
     ["teacher.kwargs.img_size = 8", "has 16x16 px images"]),
    (_recipe('dataset = "image-folder"\ndata_dir = "d"', "[teacher.kwargs]\nin_chans = 4"),
     ["in_chans = 4 cannot be read from an image folder", "1 (grayscale) or 3 (RGB)"]),
])
def test_a_key_that_would_mean_nothing_is_refused_by_name(text, words) -> None:
    with pytest.raises(ConfigError) as info:
        Recipe.from_toml_text(text)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_keys_that_apply_are_accepted() -> None:
    Recipe.from_toml_text(_recipe('dataset = "cifar10"\ndata_dir = "/c"\ndownload = true\nlimit = 50'))
    Recipe.from_toml_text(_recipe('dataset = "image-folder"\ndata_dir = "d"\nimg_size = 16',
                                  "[teacher.kwargs]\nimg_size = 16\nin_chans = 1"))
    Recipe.from_toml_text(_recipe("kd_limit = 100", rest="[space]\nkd_epochs = [0, 2]"))
    Recipe.from_toml_text(_recipe(teacher='checkpoint = "t.safetensors"\npretrained = true\n[teacher.train]\nepochs = 3'))


def test_stored_recipes_of_older_studies_still_open() -> None:
    """A study an older vitshrink created with a key that meant nothing can still be queried."""
    doc = {"study": {"name": "old"}, "data": {"dataset": "digits", "data_dir": "/x", "download": False}}
    assert Recipe.from_dict(doc, stored=True).data_dir == "/x"
    with pytest.raises(ConfigError):
        Recipe.from_dict(doc)


def test_data_dir_on_the_command_line_for_digits_is_refused(tmp_path) -> None:
    res = run_cli(["search", "--data-dir", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/s.db"], tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    flat = " ".join(res.stderr.split())
    assert "command line: data.data_dir" in flat and "does not apply to digits" in flat and "--data-dir" in flat
    assert "Traceback" not in res.stderr and not (tmp_path / "s.db").exists()  # refused before any study exists


def test_pretrained_without_timm_weights_is_refused_before_the_study() -> None:
    recipe = Recipe.from_toml_text(_recipe(teacher='model = "vit_base_patch16_gap_224"\npretrained = true'))
    with pytest.raises(ModelError, match="timm has no pretrained weights for 'vit_base_patch16_gap_224'"):
        check_space_fits_teacher(recipe)


# --- the teacher fits the data -----------------------------------------------------------------------------------


def test_teacher_follows_an_image_folder_when_the_recipe_leaves_its_shape_out(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", {"train": 4, "val": 2}, mode="L")
    text = tiny_recipe("f").replace('dataset = "digits"', f'dataset = "image-folder"\ndata_dir = "{root}"')
    text = text.replace("img_size = 8\n", "").replace("in_chans = 1\n", "")
    recipe = Recipe.from_toml_text(text)
    shape = data_shape_of(recipe)  # listed, not decoded
    assert (shape.num_classes, shape.img_size, shape.class_names) == (3, 32, CLASSES)
    spec = teacher_spec_of(recipe, shape)
    assert spec.kwargs["num_classes"] == 3 and spec.kwargs["img_size"] == 32
    check_space_fits_teacher(recipe)  # the architecture is built for the folder
    data = load_data(recipe)
    assert data.in_chans == 1 and teacher_spec_of(recipe, shape_of(data)).kwargs["in_chans"] == 1


def shape_of(data):
    from vitshrink.data import DataShape

    return DataShape(data.in_chans, data.img_size, data.num_classes)


def test_a_recipe_fixing_num_classes_the_folder_contradicts_is_refused_before_the_study(tmp_path) -> None:
    root = make_folder(tmp_path / "pets", {None: 3})
    text = tiny_recipe("f").replace('dataset = "digits"', f'dataset = "image-folder"\ndata_dir = "{root}"')
    recipe = Recipe.from_toml_text(text.replace("in_chans = 1\n", "in_chans = 1\nnum_classes = 5\n"))
    with pytest.raises(ConfigError, match=r"num_classes = 5 but the data \(image-folder\) has 3 classes"):
        check_space_fits_teacher(recipe)


def test_dataset_from_the_command_line_replaces_the_recipes_data_shaped_settings(tmp_path) -> None:
    from vitshrink.spaces import resolve_recipe

    root = make_folder(tmp_path / "pets", {"train": 4, "val": 2})
    quick = resolve_recipe("quickstart")
    assert quick.teacher_kwargs["img_size"] == 8 and quick.teacher_kwargs["in_chans"] == 1
    recipe = quick.with_overrides(dataset="image-folder", data_dir=str(root))
    assert "img_size" not in recipe.teacher_kwargs and "in_chans" not in recipe.teacher_kwargs
    assert recipe.teacher_kwargs["patch_size"] == 2  # the architecture itself is kept
    check_space_fits_teacher(recipe)
    spec = teacher_spec_of(recipe, data_shape_of(recipe))
    assert spec.kwargs["num_classes"] == 3 and spec.kwargs["img_size"] == 32
    # the same dataset named again changes nothing
    assert quick.with_overrides(dataset="digits").teacher_kwargs == quick.teacher_kwargs


def test_classes_are_stored_on_the_study_and_logged(tmp_path, caplog) -> None:
    from vitshrink.search import run_search

    root = make_folder(tmp_path / "pets", {"train": 6, "val": 2})
    recipe = Recipe.from_toml_text(tiny_recipe("classes", trials=1)).with_overrides(
        dataset="image-folder", data_dir=str(root))
    with caplog.at_level("INFO", logger="vitshrink"):
        summary = run_search(recipe, storage=f"sqlite:///{tmp_path}/s.db", evaluate_test=False)
    assert summary.completed == 1
    assert summary.study.user_attrs["vitshrink.classes"] == list(CLASSES)
    assert summary.study.user_attrs["vitshrink.teacher"]["kwargs"]["num_classes"] == 3
    assert any("classes: cat, dog, fox" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_quickstart_like_recipe_runs_on_an_image_folder_from_the_command_line(tmp_path) -> None:
    """`vitshrink search RECIPE --dataset image-folder --data-dir DIR`: a digits recipe (8 px, 1 channel)
    runs on a train/val folder of 16 px RGB images of 3 classes."""
    root = make_folder(tmp_path / "pets", {"train": 12, "val": 4})
    (tmp_path / "quick.toml").write_text(tiny_recipe("folder-e2e", trials=2))
    storage = f"sqlite:///{tmp_path}/s.db"
    res = run_cli(["search", "quick.toml", "--dataset", "image-folder", "--data-dir", str(root), "--storage", storage],
                  tmp_path, {"VITSHRINK_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "cat, dog, fox" in " ".join(res.stderr.split())
    study = optuna.load_study(study_name="folder-e2e", storage=storage)
    assert study.user_attrs["vitshrink.classes"] == ["cat", "dog", "fox"]
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 2
    kwargs = study.user_attrs["vitshrink.teacher"]["kwargs"]
    assert (kwargs["num_classes"], kwargs["in_chans"], kwargs["img_size"]) == (3, 3, 32)
