"""A streamed split of an image folder: file paths and labels in memory, pixels decoded per batch.

Every consumer reads a split through the same small protocol (`vitshrink.data.Split` is the
in-memory form of it): `len`, `labels`, `example_shape`, `images(indices)`, `subset(indices)`,
`batches(index_batches)` and `chunks(batch_size)`. Here the images are decoded with PIL inside a
torch `DataLoader` (worker processes for large splits, pinned memory when a GPU is present), so
memory holds a few batches, never the whole folder.

A "path" is an image file, or a row of a uint8 pixel array saved as .npy (``cifar10-<digest>.npy#17``:
`pixel_rows`), so data sets that come as arrays (CIFAR-10 for a pretrained teacher at its own input
size) stream through the same transforms; the array is memory-mapped, never copied per worker.

`transform` decides how a PIL image becomes a tensor: by default the way `read_images` always did
it (convert to the folder's mode, resize bicubic, scale to [0, 1], normalise with the train split's
mean and std); a timm data config gives timm's eval or training transform instead
(`vitshrink.timm_preprocessing`).

Example (not run: it needs image files)::

    split = FolderSplit(("a.png",), torch.tensor([0]), img_size=32, mode="RGB",
                        mean=(0.5,) * 3, std=(0.25,) * 3, digest="0")
    split.example_shape   # (3, 32, 32)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

# a split this small is decoded in the training process: starting workers would cost more than they save
IN_PROCESS_IMAGES = 256
# evaluation reads at most this many images per batch: at 224 px a batch of 256 is 154 MB of pixels
# (times the batches in flight) plus the attention maps of 256 images, which would make peak memory
# depend on how many images a split has up to 256; 32 keeps it small and the same for every split size
EVAL_BATCH = 32


def loader_workers(n_images: int) -> int:
    """Worker processes for a loader over `n_images` (VITSHRINK_LOADER_WORKERS overrides)."""
    if (env := os.environ.get("VITSHRINK_LOADER_WORKERS")) is not None:
        return max(0, int(env))
    return 0 if n_images <= IN_PROCESS_IMAGES else max(1, min(4, (os.cpu_count() or 2) - 1))


_PIXEL_FILES: dict[str, np.ndarray] = {}  # .npy pixel files, memory-mapped once per process


def pixel_rows(npy: str, n: int) -> tuple[str, ...]:
    """The image "paths" of the `n` rows of the uint8 pixel array in `npy` ((N, H, W) or (N, H, W, C))."""
    return tuple(f"{npy}#{i}" for i in range(n))


def open_image(path: str) -> Any:
    """The PIL image at `path`: an image file, or row `i` of a pixel array written as ``FILE.npy#i``."""
    npy, sep, row = path.rpartition("#")
    if sep and npy.endswith(".npy") and row.isdigit():
        if npy not in _PIXEL_FILES:
            _PIXEL_FILES[npy] = np.load(npy, mmap_mode="r", allow_pickle=False)
        return Image.fromarray(np.ascontiguousarray(_PIXEL_FILES[npy][int(row)]))
    return Image.open(path)


def decode_for_model(path: str, mode: str, img_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """One image as the model sees it: PIL convert to `mode`, bicubic resize (PIL's default), /255,
    then (v - mean) / std per channel, all in float32 (as `image_folder.read_images` + `data._bundle`)."""
    with open_image(path) as img:
        arr = np.asarray(img.convert(mode).resize((img_size, img_size)), dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    m = np.asarray(mean, np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, np.float32).reshape(-1, 1, 1)
    return torch.from_numpy(np.ascontiguousarray((arr - m) / s))


class _Images(Dataset):
    """Item i of a FolderSplit: (image tensor, label)."""

    def __init__(self, split: FolderSplit, train: bool) -> None:
        self.split, self.train = split, train

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.split.image(int(i), train=self.train), int(self.split.labels[i])


@dataclass(frozen=True, eq=False)
class FolderSplit:
    """Image files and their labels; pixels are read when asked for (see the module docstring).

    `digest` is the SHA-256 of the files' bytes and labels (computed in the one pass that checks
    every file), so caches and fingerprints key on content without decoding again.
    """

    paths: tuple[str, ...]
    labels: torch.Tensor  # (N,) int64
    img_size: int
    mode: str  # PIL mode every image is converted to: "RGB" or "L"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digest: str
    # timm's preprocessing (a callable PIL image -> tensor) for evaluation and for training; None: as above
    eval_transform: Callable[[Any], torch.Tensor] | None = None
    train_transform: Callable[[Any], torch.Tensor] | None = None
    preprocessing: str = ""  # JSON of the timm config and training options behind the transforms ("" : none)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def y(self) -> torch.Tensor:  # the name the in-memory Split gives its labels
        return self.labels

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.image(0).shape)

    def image(self, i: int, train: bool = False) -> torch.Tensor:
        transform = self.train_transform if train and self.train_transform is not None else self.eval_transform
        if transform is None:
            return decode_for_model(self.paths[i], self.mode, self.img_size, self.mean, self.std)
        with open_image(self.paths[i]) as img:
            return transform(img.convert(self.mode))

    def images(self, indices: Any) -> torch.Tensor:
        """The images at `indices` (a tensor, list or range) as one batch, decoded here."""
        return torch.stack([self.image(int(i)) for i in _as_list(indices, len(self))])

    def subset(self, indices: Any) -> FolderSplit:
        idx = _as_list(indices, len(self))
        digest = hashlib.sha256(f"{self.digest}:{idx}".encode()).hexdigest()
        return replace(self, paths=tuple(self.paths[i] for i in idx), labels=self.labels[idx], digest=digest)

    def batches(self, index_batches: Sequence[Any], train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of each index batch, in order, decoded by a DataLoader (training
        transform when `train`)."""
        n = sum(len(b) for b in index_batches)
        workers = loader_workers(n)
        # workers start from a fork server, not a fork of this process: forking a process whose OpenMP,
        # ONNX Runtime or OpenVINO threads are running crashed (SIGSEGV) in the full test suite
        loader = DataLoader(_Images(self, train), batch_sampler=[[int(i) for i in b] for b in index_batches],
                            num_workers=workers, pin_memory=torch.cuda.is_available(),
                            prefetch_factor=2 if workers else None,
                            multiprocessing_context="forkserver" if workers else None)
        yield from loader

    def chunks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every image in order, `batch_size` (at most EVAL_BATCH) at a time (evaluation)."""
        batch_size = min(batch_size, EVAL_BATCH)
        return self.batches([range(i, min(i + batch_size, len(self))) for i in range(0, len(self), batch_size)])

    def digest_into(self, h: Any) -> None:
        h.update(f"folder {self.mode} {self.img_size} {self.mean} {self.std} {self.digest}".encode())
        if self.preprocessing:
            h.update(self.preprocessing.encode())


def _as_list(indices: Any, n: int) -> list[int]:
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.tolist()]
    if isinstance(indices, slice):
        return list(range(n))[indices]
    return [int(i) for i in indices]


__all__ = ["FolderSplit", "IN_PROCESS_IMAGES", "decode_for_model", "loader_workers", "open_image", "pixel_rows"]
