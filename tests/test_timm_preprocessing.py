"""The model's own preprocessing (issue 13.2): a pretrained timm teacher on an image folder is
evaluated through timm's data config (resize / crop_pct / interpolation / mean / std), trained
through timm's training transform chosen in the recipe, and the export card says so; a model
trained from scratch keeps vitshrink's own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from support import write_cifar10
from vitshrink.spaces import ConfigError, Recipe

KW = 'img_size = 32\npatch_size = 16\nembed_dim = 32\ndepth = 1\nnum_heads = 2\nmlp_ratio = 2.0'


def _folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("ant", "bee", "fly")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def _recipe(tmp_path: Path, pretrained: bool, augment: str = '["flip"]') -> Recipe:
    import timm
    from safetensors.torch import save_file

    ckpt = tmp_path / "w.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        m = timm.create_model("vit_tiny_patch16_224", img_size=32, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(ckpt))
    folder = tmp_path / "bugs"
    if not folder.exists():
        _folder(folder)
    source = f'pretrained = true\ncheckpoint = "{ckpt}"' if pretrained else ""
    return Recipe.from_toml_text(f"""
[study]
name = "pre"
[data]
dataset = "image-folder"
data_dir = "{folder}"
[teacher]
model = "vit_tiny_patch16_224"
{source}
[teacher.kwargs]
{KW}
[teacher.train]
epochs = 1
augment = {augment}
[space]
quant = ["none"]
""")


def test_a_pretrained_teacher_reads_the_folder_through_timms_data_config(tmp_path):
    from PIL import Image
    from timm.data import create_transform

    from vitshrink.preprocessing import describe_preprocessing
    from vitshrink.search._trial import load_data

    data = load_data(_recipe(tmp_path, pretrained=True, augment='["flip", "randaugment"]'))
    # vit_tiny_patch16_224's pretrained config: mean = std = 0.5, bicubic, crop_pct 0.9 (not the train statistics)
    assert data.mean == (0.5, 0.5, 0.5) and data.std == (0.5, 0.5, 0.5)
    cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 0.9, "crop_mode": "center"}
    path = data.val.paths[0]
    expected = create_transform(**cfg)(Image.open(path).convert("RGB"))
    assert torch.allclose(data.val.images([0])[0], expected)
    assert data.val.train_transform is None and "RandAugment" in repr(data.train.train_transform)
    card = describe_preprocessing("image-folder", data)
    assert card["resize"]["shorter_side"] == int(32 / 0.9) and card["crop"] == {"center": [32, 32]}
    assert card["mean"] == [0.5, 0.5, 0.5] and card["timm_config"]["crop_pct"] == 0.9
    # the preprocessing is part of the data's digest: caches and fingerprints tell the two apart
    from vitshrink.digests import data_sha256

    plain = load_data(_recipe(tmp_path, pretrained=True, augment='["flip"]'))
    assert data_sha256(plain) != data_sha256(data)


def test_a_teacher_trained_from_scratch_keeps_vitshrinks_preprocessing(tmp_path):
    from vitshrink.preprocessing import describe_preprocessing
    from vitshrink.search._trial import load_data

    data = load_data(_recipe(tmp_path, pretrained=False))
    assert data.train.train_transform is None and data.val.preprocessing == ""
    assert data.mean != (0.5, 0.5, 0.5)  # the train split's statistics
    assert describe_preprocessing("image-folder", data)["crop"] is None


def test_timms_training_pipeline_trains_and_mixes(tmp_path):
    """flip + randaugment in the transform, mixup + cutmix on the batch (soft targets): one epoch trains."""
    from vitshrink.models import TeacherSpec, TrainSettings, create_model, train_classifier
    from vitshrink.search._trial import load_data

    data = load_data(_recipe(tmp_path, pretrained=True, augment='["flip", "randaugment", "mixup", "cutmix"]'))
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 16, "embed_dim": 32,
                                                               "depth": 1, "num_heads": 2, "num_classes": 3}))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = []
    train_classifier(model, data, TrainSettings(epochs=1, batch_size=4, augment=("flip", "randaugment", "mixup", "cutmix")),
                     progress=lambda e, n, loss: losses.append(loss))
    assert losses and np.isfinite(losses[0])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_timm_augmentations_need_a_pretrained_teacher_on_an_image_folder():
    with pytest.raises(ConfigError, match="randaugment"):
        Recipe.from_toml_text('[data]\ndataset = "digits"\n[teacher]\nmodel = "vit_tiny_patch16_224"\n'
                              '[teacher.train]\naugment = ["randaugment"]\n[space]\nquant = ["none"]\n')


def _cifar_recipe(tmp_path: Path, img_size: int) -> Recipe:
    write_cifar10(tmp_path / "c10", n=20)
    return Recipe.from_toml_text(f"""
[study]
name = "c10"
[data]
dataset = "cifar10"
data_dir = "{tmp_path / 'c10'}"
[teacher]
model = "deit_tiny_patch16_224"
pretrained = true
[teacher.kwargs]
img_size = {img_size}
embed_dim = 32
depth = 1
num_heads = 2
[teacher.train]
epochs = 1
augment = ["flip", "randaugment"]
[space]
quant = ["none"]
""")


def test_cifar10_streams_the_same_images_as_the_in_memory_reader(tmp_path):
    from vitshrink.data import load_cifar10

    write_cifar10(tmp_path, n=20)
    held, streamed = load_cifar10(tmp_path, seed=0), load_cifar10(tmp_path, seed=0, stream=True)
    for name in ("train", "val", "test"):
        a, b = getattr(held, name), getattr(streamed, name)
        assert torch.equal(a.labels, b.labels) and not hasattr(b, "x")  # same split, pixels not held
        assert torch.allclose(a.images(range(len(a))), b.images(range(len(b))), atol=1e-4)  # same normalisation (float32 sums)
    assert np.allclose(held.mean, streamed.mean, atol=1e-5) and len({p.split("#")[0] for p in streamed.train.paths}) == 1


def test_a_pretrained_teacher_reads_cifar10_at_its_own_size_and_preprocessing(tmp_path):
    """The seed study's setting: CIFAR-10 (32 px) fed to a pretrained DeiT at a larger input through timm's
    transforms of that model (resize, centre crop, ImageNet mean / std), streamed, randaugment for training."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from vitshrink.digests import data_sha256
    from vitshrink.search._trial import data_shape_of, load_data

    recipe = _cifar_recipe(tmp_path, 64)
    assert data_shape_of(recipe).img_size == 64
    data = load_data(recipe)
    assert data.train.example_shape == (3, 64, 64) and data.img_size == 64
    assert data.mean == tuple(IMAGENET_DEFAULT_MEAN) and data.std == tuple(IMAGENET_DEFAULT_STD)
    assert "RandAugment" in repr(data.train.train_transform) and '"timm"' in data.val.preprocessing
    x = data.val.images(range(4))
    assert x.shape == (4, 3, 64, 64) and torch.isfinite(x).all()
    assert data_sha256(load_data(_cifar_recipe(tmp_path / "b", 48))) != data_sha256(data)


def test_timm_augmentations_on_cifar10_need_a_pretrained_teacher(tmp_path):
    write_cifar10(tmp_path / "c", n=10)
    with pytest.raises(ConfigError, match="pretrained teacher"):
        Recipe.from_toml_text(f'[data]\ndataset = "cifar10"\ndata_dir = "{tmp_path / "c"}"\n[teacher]\n'
                              'model = "vit_tiny_patch16_224"\n[teacher.train]\naugment = ["randaugment"]\n'
                              '[space]\nquant = ["none"]\n')
