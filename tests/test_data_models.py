"""Datasets and teachers: real loading paths, exercised on files the tests write."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from support import write_cifar10

from vitshrink.data import (
    DataError,
    load_cifar10,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
)
from vitshrink.models import (
    TINY_VIT_KWARGS,
    ModelError,
    TeacherSpec,
    TrainSettings,
    augment_batch,
    create_model,
    get_teacher,
    load_checkpoint,
    read_state_dict,
)


def test_digits_split_is_fixed_by_seed_and_disjoint() -> None:
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.train.x.shape[1:] == (1, 8, 8) and a.num_classes == 10
    c = load_digits(seed=1)
    assert not torch.equal(a.val.x, c.val.x)
    # normalised with train statistics
    assert abs(float(a.train.x.mean())) < 1e-4


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_reads_idx_files(tmp_path, compress) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 240), ("t10k", 40)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, compress)
    data = load_fashion_mnist(tmp_path, seed=0)
    assert data.train.x.shape[1:] == (1, 28, 28)
    assert len(data.train) + len(data.val) == 240 and len(data.test) == 40
    assert data.class_names[0] == "T-shirt/top"


def test_fashion_mnist_missing_says_where_and_how(tmp_path) -> None:
    with pytest.raises(DataError, match=r"looked in .*dataset-fashion-mnist.*--data-dir"):
        load_fashion_mnist(tmp_path / "nowhere")


def test_truncated_idx_is_refused(tmp_path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28)), False)
    raw = (tmp_path / "train-images-idx3-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Debian dataset not installed")
def test_debian_fashion_mnist_has_the_official_sizes() -> None:
    data = load_fashion_mnist(seed=0)
    assert len(data.train) + len(data.val) == 60000 and len(data.test) == 10000


def test_cifar10_reads_a_local_copy_through_torchvision(tmp_path) -> None:
    write_cifar10(tmp_path)
    data = load_cifar10(tmp_path, seed=0)
    assert data.train.x.shape[1:] == (3, 32, 32)
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20
    assert data.class_names[:2] == ("c0", "c1")


def test_cifar10_missing_says_how_to_get_it(tmp_path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_image_folder(tmp_path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((20, 20, 3), 10 * i + (100 if cls == "dog" else 0), dtype=np.uint8)).save(tmp_path / "pets" / cls / f"{i}.png")
    data = load_image_folder(tmp_path / "pets", img_size=16)
    assert data.num_classes == 2 and data.train.example_shape == (3, 16, 16)
    with pytest.raises(DataError, match="not found"):
        load_dataset("image-folder", tmp_path / "none")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


# --- teachers ---------------------------------------------------------------------------------


def test_unknown_timm_model_is_named() -> None:
    with pytest.raises(ModelError, match="unknown timm model 'vit_tiniest'"):
        create_model(TeacherSpec("vit_tiniest"))


def test_teacher_is_trained_once_and_cached(tiny_data, tiny_spec, tmp_path) -> None:
    epochs = []
    settings = TrainSettings(epochs=2)
    model, spec = get_teacher(tiny_spec, tiny_data, settings, cache=tmp_path, progress=lambda e, n, l: epochs.append(e))
    assert epochs == [1, 2] and Path(spec.checkpoint).is_file()
    again, spec2 = get_teacher(tiny_spec, tiny_data, settings, cache=tmp_path, progress=lambda e, n, l: epochs.append(e))
    assert epochs == [1, 2]  # no training the second time
    assert spec2 == spec
    x = tiny_data.val.x[:8]
    assert torch.equal(model(x), again(x))


def test_checkpoint_that_does_not_fit_is_explained(tiny_spec, tmp_path) -> None:
    wide = TeacherSpec(tiny_spec.model, {**TINY_VIT_KWARGS, "embed_dim": 64})
    path = tmp_path / "wide.safetensors"
    save_file(create_model(wide).state_dict(), str(path))
    with pytest.raises(ModelError, match=r"does not fit the model: .*shape mismatch.*embed_dim"):
        load_checkpoint(create_model(tiny_spec), path)


def test_truncated_and_pickled_checkpoints_are_refused(tiny_vit, tmp_path) -> None:
    good = tmp_path / "good.safetensors"
    save_file(tiny_vit.state_dict(), str(good))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelError, match="cannot be read safely"):
        read_state_dict(bad)

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"w": Evil()}, str(evil), _use_new_zipfile_serialization=True)
    with pytest.raises(ModelError, match="cannot be read safely"):
        read_state_dict(evil)
    assert not (tmp_path / "pwned").exists()
    # a plain torch state_dict is fine (weights_only=True)
    plain = tmp_path / "plain.pth"
    torch.save({"model": tiny_vit.state_dict()}, str(plain))
    assert set(read_state_dict(plain)) == set(tiny_vit.state_dict())


def test_pretrained_path_adapts_a_local_checkpoint(tmp_path) -> None:
    """timm's pretrained loader, fed a local file, resizes patch/position embeddings and drops the head."""
    torch.manual_seed(0)
    src = create_model(TeacherSpec("vit_tiny_patch16_224", {"depth": 2}))  # 224 px, patch 16, 1000 classes
    path = tmp_path / "pretrained.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    spec = TeacherSpec("vit_tiny_patch16_224", {"depth": 2, "img_size": 32, "patch_size": 4, "num_classes": 10},
                       checkpoint=str(path), pretrained=True)
    model = create_model(spec)
    assert model.head.out_features == 10 and model.patch_embed.patch_size == (4, 4)
    assert torch.equal(model.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_augmentation_flips_and_shifts_each_image_and_keeps_its_content() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    flipped = augment_batch(x, ("flip",), gen)
    same = (flipped == x).flatten(1).all(1)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and 10 < int(mirrored.sum()) < 54  # about half, per image
    shifted = augment_batch(x, ("shift",), gen)
    assert shifted.shape == x.shape
    # every shifted image is its original moved by at most 2 px: some offset matches its interior
    for i in range(8):
        assert any(torch.equal(shifted[i, :, 2:6, 2:6], x[i, :, 2 + dy:6 + dy, 2 + dx:6 + dx])
                   for dy in range(-2, 3) for dx in range(-2, 3))
    assert not torch.equal(shifted, x)
    with pytest.raises(ValueError, match=r"unknown augmentation\(s\) \['rotate'\]"):
        TrainSettings(augment=("rotate",))
