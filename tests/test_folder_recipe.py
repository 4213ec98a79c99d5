"""The built-in folder-deit recipe (issue 13.5): a pretrained timm DeiT on your image folder, with
--model / --checkpoint / --data-dir, and the bad inputs it refuses before anything trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support import CliResult, run_cli
from vitshrink.data import DataError, load_image_folder
from vitshrink.spaces import resolve_recipe

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, per_class: int = 8, size: int = 40) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "fly")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(60 * c + rng.integers(0, 100, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.jpg")
    return root


def _cli(args: list[str], cwd: Path) -> CliResult:
    env = {"VITSHRINK_CACHE": str(cwd / "cache"), "HF_HUB_OFFLINE": "1"}
    return run_cli(["search", *args, "--storage", f"sqlite:///{cwd / 'st.db'}"], cwd, env)


def _save_random(name: str, path: Path) -> Path:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _refused(res: CliResult, cwd: Path) -> str:
    """The one error sentence, after checking the exit and that nothing was trained or stored."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    assert not (cwd / "cache" / "teachers").exists() or not list((cwd / "cache" / "teachers").iterdir())
    return errors[0]


def test_the_recipe_is_built_in_and_suits_197_tokens():
    r = resolve_recipe("folder-deit")
    assert (r.teacher_model, r.teacher_pretrained, r.canonical_dataset) == ("deit_small_patch16_224", True, "image-folder")
    assert r.teacher_kwargs["img_size"] == 224 and 0 < r.teacher_train["epochs"] <= 5
    assert {"dynamic_int8", "static_int8", "ort_int8"} <= set(r.space.values_of("runtime"))
    assert max(r.space.values_of("tome.r")) > 0 and max(r.space.values_of("patch_drop.fraction")) > 0
    assert max(r.space.values_of("prune.heads")) > 0 and max(r.space.values_of("finetune.epochs")) <= 3


def test_a_checkpoint_of_another_width_is_refused_naming_both(tmp_path):
    """DeiT-Tiny weights (192 wide) for the recipe's DeiT-Small (384 wide): one sentence, exit 2."""
    ckpt = _save_random("deit_tiny_patch16_224", tmp_path / "tiny.safetensors")
    res = _cli(["folder-deit", "--data-dir", str(_folder(tmp_path / "bugs")), "--checkpoint", str(ckpt)], tmp_path)
    line = _refused(res, tmp_path)
    assert "192 wide" in line and "384 wide" in line and "--model" in line


def test_an_image_size_the_patches_do_not_tile_is_refused(tmp_path):
    text = (ROOT / "vitshrink" / "recipes" / "folder-deit.toml").read_text().replace("img_size = 224", "img_size = 200")
    (tmp_path / "r.toml").write_text(text)
    ckpt = _save_random("deit_small_patch16_224", tmp_path / "small.safetensors")
    res = _cli(["r.toml", "--data-dir", str(_folder(tmp_path / "bugs")), "--checkpoint", str(ckpt)], tmp_path)
    line = _refused(res, tmp_path)
    assert "200 px" in line and "patch size 16" in line and "208" in line


@pytest.mark.parametrize("kind", ["lab", "16-bit"])
def test_images_pil_cannot_convert_to_8_bit_are_refused(tmp_path, kind):
    """A CIELab TIFF in a folder read as one channel (PIL has no LAB -> L conversion) and a 16-bit PNG
    (converting to 8 bits would clip it to white)."""
    from PIL import Image

    root = _folder(tmp_path / "bugs", size=12)
    bad = root / "bee" / ("odd.tif" if kind == "lab" else "odd.png")
    if kind == "lab":
        Image.new("LAB", (12, 12), (50, 10, 10)).save(bad)
    else:
        Image.fromarray(np.full((12, 12), 40000, np.uint16)).save(bad)
    with pytest.raises(DataError) as err:
        load_image_folder(root, img_size=16, in_chans=1 if kind == "lab" else None)
    msg = str(err.value)
    assert str(bad) in msg and ("LAB" in msg if kind == "lab" else "clip" in msg) and "8-bit" in msg


@pytest.mark.slow
def test_folder_deit_runs_offline_with_a_local_checkpoint_and_another_model(tmp_path):
    """--model deit_tiny_patch16_224 --checkpoint (timm's pretrained path reading a local file) on a
    small folder at 224 px: the teacher fine-tunes, a trial completes."""
    ckpt = _save_random("deit_tiny_patch16_224", tmp_path / "tiny.safetensors")
    res = _cli(["folder-deit", "--data-dir", str(_folder(tmp_path / "bugs", per_class=6)), "--model",
                "deit_tiny_patch16_224", "--checkpoint", str(ckpt), "--trials", "1"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name="folder-deit", storage=f"sqlite:///{tmp_path / 'st.db'}")
    assert [t.state.name for t in study.trials].count("COMPLETE") >= 1
    assert list((tmp_path / "cache" / "teachers").glob("deit_tiny_patch16_224-*.safetensors"))
