"""Streamed data (issue 13.1, 13.6): image folders are read batch by batch through a DataLoader, the
in-memory splits train exactly as before, teacher logits are a memory-mapped file read by index."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitshrink.data import Split, load_digits, load_image_folder
from vitshrink.digests import data_sha256
from vitshrink.models import TeacherSpec, TrainSettings, create_model, train_classifier

ROOT = Path(__file__).resolve().parents[1]
KW = {"img_size": 8, "patch_size": 2, "in_chans": 1, "num_classes": 10, "embed_dim": 16, "depth": 1,
      "num_heads": 2, "mlp_ratio": 2.0}
def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _train_digits(teacher_seed: int) -> dict[str, str]:
    from vitshrink.compress.distill import distill_train, teacher_logits

    data = load_digits(seed=0)
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", KW))
    train_classifier(model, data, TrainSettings(epochs=2, batch_size=64, augment=("flip", "shift")),
                     seed=teacher_seed)
    logits = teacher_logits(model, data)
    torch.manual_seed(1)
    student = create_model(TeacherSpec("vit_tiny_patch16_224", KW))
    distill_train(student, data, logits, TrainSettings(epochs=2, batch_size=50), 4.0, 0.7, seed=5)
    return {"ce_aug": _digest(model), "logits": hashlib.sha256(logits.numpy().tobytes()).hexdigest()[:16],
            "kd": _digest(student)}


def test_in_memory_training_is_reproducible_from_its_seeds():
    """Digits (an in-memory Split) through the streaming loop: the same seeds give bit-identical
    weights, logits and KD student (augmentation draws included); another training seed does not.
    (Weights are compared within one run: float kernels differ between CPUs, so digests recorded on
    another machine are no reference.)"""
    torch.set_num_threads(1)
    try:
        first, again, other = _train_digits(3), _train_digits(3), _train_digits(4)
    finally:
        torch.set_num_threads(2)
    assert first == again
    assert other["ce_aug"] != first["ce_aug"] and other["kd"] != first["kd"]


def _folder(root: Path, per_class: int = 12, size: int = 20, classes=("cat", "dog", "fox")) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(40 * c + rng.integers(0, 120, (size, size + 3, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


def test_a_folder_is_streamed_and_decodes_what_the_in_memory_reader_did(tmp_path):
    from vitshrink.image_folder import read_images

    data = load_image_folder(_folder(tmp_path / "pets"), img_size=16, seed=0)
    train = data.train
    assert not hasattr(train, "x") and len(train.paths) == len(train) == 21  # file paths, no pixel tensor
    raw, _ = read_images([Path(p) for p in train.paths], 16, None)  # the old reader: the whole split in memory
    mean = raw.mean(axis=(0, 2, 3))
    std = raw.std(axis=(0, 2, 3)) + 1e-6
    assert np.allclose(data.mean, mean, atol=1e-5) and np.allclose(data.std, std, atol=1e-5)  # one streaming pass
    expected = (raw - np.asarray(data.mean, np.float32)[:, None, None]) / np.asarray(data.std, np.float32)[:, None, None]
    assert torch.allclose(train.images(range(len(train))), torch.from_numpy(expected), atol=1e-6)
    batches = list(train.batches([torch.tensor([3, 1]), torch.tensor([20])]))
    assert [b[1].tolist() for b in batches] == [[int(train.labels[3]), int(train.labels[1])], [int(train.labels[20])]]
    assert torch.equal(batches[0][0], train.images([3, 1]))


def test_loader_workers_train_the_same_weights_as_in_process_and_in_memory(tmp_path, monkeypatch):
    """The same seed gives the same weights whether the folder is decoded in worker processes, in
    the training process, or held in memory: the loader delivers exactly the batches of the seed."""
    data = load_image_folder(_folder(tmp_path / "pets"), img_size=16, seed=0)
    spec = TeacherSpec("vit_tiny_patch16_224", {**KW, "img_size": 16, "patch_size": 4, "in_chans": 3, "num_classes": 3})
    settings = TrainSettings(epochs=2, batch_size=8, augment=("flip",))

    def train(bundle) -> str:
        torch.manual_seed(0)
        model = create_model(spec)
        return _digest(train_classifier(model, bundle, settings, seed=7))

    monkeypatch.setenv("VITSHRINK_LOADER_WORKERS", "2")
    with_workers = train(data)
    monkeypatch.setenv("VITSHRINK_LOADER_WORKERS", "0")
    in_process = train(data)
    t = data.train
    in_memory = Split(t.images(range(len(t))), t.labels)
    import dataclasses

    assert with_workers == in_process == train(dataclasses.replace(data, train=in_memory))


def test_teacher_logits_of_a_folder_are_a_memory_map_read_by_index(tmp_path):
    from vitshrink.compress.distill import clear_logits_memory, logits_cache_key, teacher_logits
    from vitshrink.data import cache_dir
    from vitshrink.models import evaluate

    data = load_image_folder(_folder(tmp_path / "pets"), img_size=16, seed=0)
    spec = TeacherSpec("vit_tiny_patch16_224", {**KW, "img_size": 16, "patch_size": 4, "in_chans": 3, "num_classes": 3})
    torch.manual_seed(0)
    teacher = create_model(spec)
    logits = teacher_logits(teacher, data)
    path = cache_dir() / "logits" / f"{logits_cache_key(teacher, data)}.npy"
    stored = np.load(path, mmap_mode="r")
    assert isinstance(stored, np.memmap) and stored.shape == (21, 3) and stored.dtype == np.float32
    _, direct = evaluate(teacher, data.train)
    assert torch.allclose(logits, direct, atol=1e-5)
    clear_logits_memory()
    again = teacher_logits(teacher, data)
    assert again is not logits and torch.equal(again[torch.tensor([5, 2])], logits[[5, 2]])  # rows read from disk


def test_the_digest_of_a_streamed_folder_follows_file_contents(tmp_path):
    """Caches and fingerprints key on what the files hold: one rewritten image (same name, same
    size) is another dataset."""
    from PIL import Image

    root = _folder(tmp_path / "pets")
    before = data_sha256(load_image_folder(root, img_size=16, seed=0))
    assert data_sha256(load_image_folder(root, img_size=16, seed=0)) == before
    assert data_sha256(load_image_folder(root, img_size=12, seed=0)) != before  # other preprocessing
    target = root / "dog" / "004.png"
    pixels = np.asarray(Image.open(target)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(target)
    assert data_sha256(load_image_folder(root, img_size=16, seed=0)) != before


@pytest.mark.slow
def test_data_memory_smoke_does_not_grow_with_the_images(tmp_path):
    """benchmarks/data_memory.py --smoke: a search over 60 and 480 images at 160 px in fresh
    processes; the peak grows by less than the bar (on main it grew with the decoded folder)."""
    spec = importlib.util.spec_from_file_location("bench_data_memory", ROOT / "benchmarks" / "data_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "mem.json"
    assert bench.main(["--smoke", "--out", str(out), "--tmp", str(tmp_path)]) == 0
    res = json.loads(out.read_text())
    assert [r["images"] for r in res["rows"]] == [60, 480] and all(r["peak_mb"] > 100 for r in res["rows"])
    assert res["growth_mb"] == pytest.approx(res["rows"][1]["peak_mb"] - res["rows"][0]["peak_mb"], abs=0.2)
    assert res["within_bar"] and res["growth_mb"] < bench.BAR_MB
