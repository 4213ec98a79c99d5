"""Shared fixtures: the tiny ViT and tiny data every unit test uses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from vitshrink.data import DataBundle, Split, load_digits
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, create_model

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"

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


def require_service(name: str) -> None:
    """Skip when a server is absent on a user's machine; fail instead in CI (VITSHRINK_REQUIRE_SERVICES=1)."""
    if os.environ.get("VITSHRINK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required in CI but not reachable")
    pytest.skip(f"{name} not reachable")


def storage_url(kind: str, tmp_path: Path) -> str:
    """A storage URL of `kind` (sqlite, journal: files in `tmp_path`; postgres, redis: the loopback
    servers, skipped or failed through `require_service` when absent)."""
    from vitshrink.search import open_storage

    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/studies.db"
    if kind == "journal":
        return f"journal:///{tmp_path}/studies.log"
    url = POSTGRES if kind == "postgres" else REDIS
    try:
        open_storage(url)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service(kind)
    return url
