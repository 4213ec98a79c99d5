"""What the docstring examples of `vitshrink` (run by ``python -m pytest``, see pyproject) may use
without building it themselves, and a temporary cache so they never write to the user's.

Names in every doctest's namespace, built fresh for each doctest:

- ``tiny_vit``, ``vit``, ``model``, ``teacher``: one tiny timm ViT (16 px, 1 channel, patch 4: 16
  patches + cls = 17 tokens, embed 32, 2 blocks, 2 heads, 10 classes), random weights, eval mode;
- ``data``: the digits upsampled to 16 px (`vitshrink.data.DataBundle`);
- ``ctx``: a `BuildContext` over ``data`` and ``teacher`` (seed 0);
- ``example`` and ``x``: 4 validation images.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait make torch 10-40x slower when the 2 cores are shared with
# other work (measured here: one training epoch of the quickstart teacher 83 s with 2 spinning threads
# under load 13, 2.2 s with passive waits, 5.5 s with 1 thread). Set before anything imports torch;
# the CLI processes the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def _doctest_data():
    import torch

    from vitshrink.data import DataBundle, Split, load_digits

    def up(split: Split) -> Split:
        return Split(torch.nn.functional.interpolate(split.x, size=(16, 16), mode="nearest"), split.y)

    d = load_digits(seed=0)
    return DataBundle("digits16", up(d.train), up(d.val), up(d.test), 10)


@pytest.fixture(autouse=True)
def _doctest_objects(request, tmp_path_factory, monkeypatch):
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        return
    if "openvino_runtime" in request.node.name:
        pytest.importorskip("openvino")  # the optional extra vitshrink[openvino]
    import torch

    from vitshrink.compress import BuildContext
    from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, create_model

    monkeypatch.setenv("VITSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "doctest-cache"))
    torch.manual_seed(0)
    vit = create_model(TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS))).eval()
    data = request.getfixturevalue("_doctest_data")
    names = request.getfixturevalue("doctest_namespace")
    names.update(tiny_vit=vit, vit=vit, model=vit, teacher=vit, data=data,
                 ctx=BuildContext(data=data, teacher=vit, seed=0), example=data.val.x[:4], x=data.val.x[:4])
