"""Shared fixtures: the tiny ViT and tiny data every unit test uses."""

from __future__ import annotations

import uuid

import pytest
import torch

from vitshrink.data import DataBundle, Split, load_digits
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, create_model

torch.set_num_threads(2)


def _upsample(split: Split, size: int) -> Split:
    x = torch.nn.functional.interpolate(split.x, size=(size, size), mode="nearest")
    return Split(x, split.y)


@pytest.fixture(scope="session")
def tiny_data() -> DataBundle:
    """Digits upsampled to 16x16 (the tiny ViT's input), so patch 4 gives 16 tokens + cls."""
    d = load_digits(seed=0)
    return DataBundle("digits16", _upsample(d.train, 16), _upsample(d.val, 16), _upsample(d.test, 16), 10)


@pytest.fixture(scope="session")
def tiny_spec() -> TeacherSpec:
    return TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS))


@pytest.fixture()
def tiny_vit(tiny_spec) -> torch.nn.Module:
    """A tiny timm VisionTransformer (embed 32, 2 blocks, 2 heads, 16 px), random weights, seeded."""
    torch.manual_seed(0)
    return create_model(tiny_spec).eval()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Teachers, logits and latency caches go to a per-session temp folder, never the user's."""
    monkeypatch.setenv("VITSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture()
def unique_name():
    """A study name no other test uses, and a list to which the test appends the storage URLs it used:
    the study's PostgreSQL / Redis copies are deleted afterwards."""
    import optuna

    from vitshrink.search import open_storage

    name = f"t-{uuid.uuid4().hex[:8]}"
    urls: list[str] = []
    yield name, urls
    for url in urls:
        storage = open_storage(url)
        for s in storage.get_all_studies():
            if s.study_name.startswith(name):
                optuna.delete_study(study_name=s.study_name, storage=storage)


@pytest.fixture(scope="session")
def shared_study(tmp_path_factory):
    """One small study searched once per session (tests/support.py: CONFIGS), for the query and export tests."""
    from support import build_shared_study

    return build_shared_study(tmp_path_factory)


@pytest.fixture(scope="module")
def trained_vit(tiny_data) -> torch.nn.Module:
    """The tiny ViT (embed 32, 2 blocks) trained 300 Adam steps on 16 px digits: logits that mean something."""
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    x, y = tiny_data.train.x, tiny_data.train.y
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and immune to a busy machine's OpenMP stalls
    try:
        for _ in range(300):
            idx = torch.randint(len(x), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc = (model(tiny_data.val.x).argmax(1) == tiny_data.val.y).float().mean().item()
    assert acc > 0.6, f"the tiny ViT did not learn the digits (val accuracy {acc:.2f})"
    return model
