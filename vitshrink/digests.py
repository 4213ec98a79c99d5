"""Content digests: what caches and study fingerprints are keyed by when a name or a size is not enough.

A path says where a file was, a dataset's description says how many images it had; neither says
what was in them. These SHA-256 digests do.

Example:
    >>> from vitshrink.data import load_digits
    >>> data_sha256(load_digits(seed=0)) == data_sha256(load_digits(seed=0))
    True
    >>> data_sha256(load_digits(seed=0)) == data_sha256(load_digits(seed=1))
    False
"""

from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import Any

import torch

CHUNK = 1 << 20  # files are streamed: a multi-GB checkpoint never sits in memory for its digest

# id(bundle) -> (weak reference to it, digest): a dataset is hashed once per process, however many
# caches and fingerprints ask (Fashion-MNIST's splits are ~200 MB of float32)
_DATA_DIGESTS: dict[int, tuple[weakref.ref, str]] = {}


def update_with_tensor(h: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and raw bytes (any dtype, bf16 included) to hash `h`."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    h.update(str((tensor.dtype, tuple(tensor.shape))).encode())
    h.update(flat.view(torch.uint8).numpy())


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def data_sha256(data: Any) -> str:
    """SHA-256 over x and y of the train, val and test splits of a `DataBundle`: two bundles share
    it only when every split holds the same images and labels in the same order."""
    entry = _DATA_DIGESTS.get(id(data))
    if entry is not None and entry[0]() is data:
        return entry[1]
    h = hashlib.sha256()
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        h.update(name.encode())
        split.digest_into(h)  # the tensors; a streamed split: its files' bytes, labels and preprocessing
    digest = h.hexdigest()
    key = id(data)
    _DATA_DIGESTS[key] = (weakref.ref(data, lambda _: _DATA_DIGESTS.pop(key, None)), digest)
    return digest
