"""Datasets as splits: digits, Fashion-MNIST, CIFAR-10 in memory; image folders streamed from disk.

Every dataset is split into train / val / test with a fixed seed. Images are float
tensors (N, C, H, W), normalised per channel with statistics of the train split. Every consumer
reads a split through one protocol (`len`, `labels`, `example_shape`, `images(indices)`,
`subset(indices)`, `batches(index_batches)`, `chunks(batch_size)`, `digest_into(hash)`): `Split`
holds the tensors (the fast path for the small built-in sets); `folder_split.FolderSplit` holds file
paths and decodes batches in a DataLoader, so memory does not grow with the number of images.
The val split chooses models; the test split only reports the final Pareto models.
`limit` cuts any of them (train to at most `limit` images, val and test by the same factor).

Example:
    >>> data = load_dataset("digits", seed=0)
    >>> data.train.x.shape[1:], data.num_classes
    (torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from sklearn.datasets import load_digits as sk_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import CIFAR10

from .data_shape import DATASETS, DEFAULT_IMG_SIZE, FIXED_SHAPES, DataShape
from .data_shape import canonical_name as _canonical
from .digests import update_with_tensor
from .folder_split import FolderSplit, pixel_rows
from .image_folder import scan_folder, scan_images, split_off
from .splits import DataError
from .splits import stratified_split as _split_arrays

log = logging.getLogger(__name__)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass(frozen=True)
class Split:
    """An in-memory split (see the module docstring for the protocol it shares with FolderSplit)."""

    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def images(self, indices: Any) -> torch.Tensor:
        return self.x[_index(indices)]

    def subset(self, indices: Any) -> Split:
        idx = _index(indices)
        return Split(self.x[idx], self.y[idx])

    def batches(self, index_batches: Sequence[Any], train: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) of each index batch, in order (indexing the tensors: no loader needed)."""
        for idx in index_batches:
            yield self.x[idx], self.y[idx]

    def chunks(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.x[i : i + batch_size], self.y[i : i + batch_size]

    def digest_into(self, h: Any) -> None:

        update_with_tensor(h, self.x)
        update_with_tensor(h, self.y)


TensorSplit = Split


def _index(indices: Any) -> Any:
    if isinstance(indices, (slice, torch.Tensor)):
        return indices
    return torch.as_tensor(list(indices), dtype=torch.int64)


@dataclass(frozen=True)
class DataBundle:
    """Train / val / test splits of one dataset."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()  # per channel, of the train split scaled to [0, 1]: x = (v - mean) / std
    std: tuple[float, ...] = ()

    @property
    def in_chans(self) -> int:
        return int(self.train.example_shape[0])

    @property
    def img_size(self) -> int:
        return int(self.train.example_shape[-1])

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)

    def loader(self, split: str, batch_size: int = 128, shuffle: bool = False, seed: int = 0) -> DataLoader:
        s = self.split(split)
        gen = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(s.x, s.y), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.train)} train / {len(self.val)} val / {len(self.test)} test, "
            f"{self.in_chans}x{self.img_size}x{self.img_size}, {self.num_classes} classes"
        )


def _bundle(
    name: str, parts: tuple[tuple[np.ndarray, np.ndarray], ...], num_classes: int, class_names: tuple[str, ...] = ()
) -> DataBundle:
    """Normalise with train statistics and wrap as tensors; x arrays are (N, C, H, W)."""
    x_train = parts[0][0].astype(np.float32)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True) + 1e-6

    def to_split(xy: tuple[np.ndarray, np.ndarray]) -> Split:
        x = (xy[0].astype(np.float32) - mean) / std
        return Split(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(xy[1].astype(np.int64)))

    return DataBundle(name, *(to_split(p) for p in parts), num_classes=num_classes, class_names=class_names,
                      mean=tuple(map(float, mean.ravel())), std=tuple(map(float, std.ravel())))


def load_digits(seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.2) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits, as 1x8x8 images scaled to [0, 1]."""
    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return _bundle("digits", _split_arrays(x, d.target, seed, val_frac, test_frac), 10, tuple(map(str, range(10))))


def _find_fashion_mnist(data_dir: str | os.PathLike | None) -> Path:
    candidates = [Path(data_dir)] if data_dir else [Path(p) for p in FASHION_MNIST_DIRS]
    for base in candidates:
        for sub in (base, base / "FashionMNIST" / "raw", base / "raw"):
            if (sub / "train-images-idx3-ubyte").exists() or (sub / "train-images-idx3-ubyte.gz").exists():
                return sub
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {looked}); install Debian's package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), or pass --data-dir to a folder "
        "holding the IDX files train-images-idx3-ubyte[.gz] etc. (torchvision's FashionMNIST(download=True) writes them)"
    )


def _read_idx(path: Path) -> np.ndarray:
    candidates = [path, path.with_name(path.name + ".gz")]
    for p in candidates:
        if p.exists():
            opener = gzip.open if p.suffix == ".gz" else open
            with opener(p, "rb") as f:
                raw = f.read()
            break
    else:
        raise DataError(f"IDX file {path} not found")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {data.size} values")
    return data.reshape(dims)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, seed: int = 0, val_frac: float = 1 / 12) -> DataBundle:
    """Fashion-MNIST (60k train + 10k test, 1x28x28). The official test set is the test split;
    `val_frac` of the official train set (stratified, seeded) is the val split."""
    root = _find_fashion_mnist(data_dir)
    x_tr = _read_idx(root / "train-images-idx3-ubyte")[:, None] / 255.0
    y_tr = _read_idx(root / "train-labels-idx1-ubyte")
    x_te = _read_idx(root / "t10k-images-idx3-ubyte")[:, None] / 255.0
    y_te = _read_idx(root / "t10k-labels-idx1-ubyte")
    x_tr, x_val, y_tr, y_val = train_test_split(x_tr, y_tr, test_size=val_frac, random_state=seed, stratify=y_tr)
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    return _bundle("fashion-mnist", ((x_tr, y_tr), (x_val, y_val), (x_te, y_te)), 10, names)


def load_cifar10(
    data_dir: str | os.PathLike | None = None, seed: int = 0, download: bool = False, val_frac: float = 0.1,
    stream: bool = False,
) -> DataBundle:
    """CIFAR-10 through torchvision (the python-pickle batches are read by torchvision itself).

    `download=True` uses torchvision's downloader; without a network, point --data-dir at a folder
    holding ``cifar-10-batches-py``. `stream=True` keeps the images as uint8 pixels in a memory-mapped
    .npy file of the cache and gives streamed splits (`folder_split.FolderSplit`) with the same train /
    val / test images, which a pretrained teacher then reads through its own preprocessing at its own
    input size (`vitshrink.timm_preprocessing`); the default holds 32x32 float tensors normalised with
    the train split's statistics.
    """
    train, test = _read_cifar10(data_dir, download)
    if stream:
        return _stream_cifar10(train, test, seed, val_frac)
    x_tr = np.asarray(train.data).transpose(0, 3, 1, 2) / 255.0
    x_te = np.asarray(test.data).transpose(0, 3, 1, 2) / 255.0
    y_tr, y_te = np.asarray(train.targets), np.asarray(test.targets)
    x_tr, x_val, y_tr, y_val = train_test_split(x_tr, y_tr, test_size=val_frac, random_state=seed, stratify=y_tr)
    return _bundle("cifar10", ((x_tr, y_tr), (x_val, y_val), (x_te, y_te)), 10, tuple(train.classes))


def _stream_cifar10(train: Any, test: Any, seed: int, val_frac: float) -> DataBundle:
    """Streamed CIFAR-10 splits over one uint8 pixel file (train rows, then test rows); the same split
    of train into train / val as the in-memory form (one stratified split of the row numbers)."""
    pixels = np.concatenate([np.asarray(train.data), np.asarray(test.data)])  # (60000, 32, 32, 3) uint8
    labels = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)]).astype(np.int64)
    digest = hashlib.sha256(pixels.tobytes() + labels.tobytes()).hexdigest()
    folder = cache_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    npy = folder / f"cifar10-{digest[:16]}.npy"
    if not npy.exists():
        tmp = npy.with_name(f"{npy.name}.{os.getpid()}.tmp.npy")
        np.save(tmp, pixels)
        tmp.replace(npy)  # atomic: readers see the whole file or none
    n_train = len(train.targets)
    rows = pixel_rows(str(npy), len(labels))
    idx_tr, idx_val = train_test_split(np.arange(n_train), test_size=val_frac, random_state=seed,
                                       stratify=labels[:n_train])
    # the train split's per-channel statistics (as _bundle), summed in chunks: no float copy of the split
    total, squares, count, train_rows = np.zeros(3), np.zeros(3), 0, np.sort(idx_tr)
    for start in range(0, len(train_rows), 4096):
        chunk = pixels[train_rows[start:start + 4096]].reshape(-1, 3).astype(np.float64) / 255.0
        total, squares, count = total + chunk.sum(0), squares + (chunk * chunk).sum(0), count + len(chunk)
    mean = tuple(float(v) for v in total / count)
    std = tuple(float(np.sqrt(max(q / count - m * m, 0.0))) + 1e-6 for q, m in zip(squares, total / count))
    splits = []
    for name, idx in (("train", idx_tr), ("val", idx_val), ("test", np.arange(n_train, len(labels)))):
        h = hashlib.sha256(f"cifar10 {name} {digest}".encode())
        h.update(np.ascontiguousarray(idx).astype(np.int64).tobytes())
        splits.append(FolderSplit(tuple(rows[i] for i in idx), torch.from_numpy(labels[idx]), 32, "RGB", mean, std,
                                  h.hexdigest()))
    return DataBundle("cifar10", *splits, num_classes=10, class_names=tuple(train.classes), mean=mean, std=std)


def _read_cifar10(data_dir: str | os.PathLike | None, download: bool) -> tuple[Any, Any]:
    """torchvision's CIFAR-10 train and test sets from `data_dir` (or the cache), DataError if absent."""
    class _CIFAR10(CIFAR10):
        # torchvision compares each batch file's MD5 with the official release; a local copy in the
        # same format (a subset, a re-pack) is accepted when every file is present
        def _check_integrity(self) -> bool:
            if download:
                return super()._check_integrity()
            base = Path(self.root) / self.base_folder
            return all((base / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            if download:
                return super()._load_meta()
            meta = self.meta
            self.meta = {**meta, "md5": None}  # check_integrity(path, None) only checks the file exists
            try:
                super()._load_meta()
            finally:
                self.meta = meta

    root = Path(data_dir or Path(cache_dir()) / "data")
    try:
        train = _CIFAR10(str(root), train=True, download=download)
        test = _CIFAR10(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(
            f"CIFAR-10 not found under {root} ({exc}); pass --data-dir to a folder holding cifar-10-batches-py, "
            "or allow torchvision to download it (download = true in the recipe's [data] table)"
        ) from None
    return train, test


def load_image_folder(
    data_dir: str | os.PathLike, img_size: int | None = None, seed: int = 0, val_frac: float = 0.2,
    test_frac: float = 0.2, in_chans: int | None = None, limit: int | None = None,
) -> DataBundle:
    """An image folder, `ROOT/CLASS/*` or `ROOT/{train,val,test}/CLASS/*` (see `vitshrink.image_folder`):
    given splits are used as they are, missing ones are split off train; images are resized to
    `img_size` (default 32) and converted to `in_chans` channels (None: as the images are)."""
    layout = scan_folder(data_dir)
    files = split_off(layout, seed, val_frac, test_frac)
    if limit:  # cut the file lists, so only the images kept are read
        files = dict(zip(("train", "val", "test"), _limit_parts(
            tuple((np.arange(len(files[s][0])), files[s][1]) for s in ("train", "val", "test")), limit, seed,
            keep=lambda s, idx: [files[s][0][i] for i in idx])))
    files = {s: files[s] for s in ("train", "val", "test")}
    size = img_size or DEFAULT_IMG_SIZE
    # one pass over every file, so a broken file is reported with all the others, whatever its split;
    # the pixels are not kept: each split decodes its batches when they are read
    scan = scan_images(files, size, in_chans)
    splits = [FolderSplit(tuple(map(str, files[s][0])), torch.as_tensor(np.asarray(files[s][1], dtype=np.int64)),
                          size, scan.mode, scan.mean, scan.std, scan.digests[s]) for s in files]
    return DataBundle(layout.root.name, *splits, num_classes=len(layout.classes), class_names=layout.classes,
                      mean=scan.mean, std=scan.std)


def canonical_name(name: str) -> str:
    """The dataset's name in `DATASETS` (aliases resolved); DataError for an unknown one."""
    known = _canonical(name)
    if known is None:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return known


def peek_shape(name: str, data_dir: str | os.PathLike | None = None, img_size: int | None = None,
               in_chans: int | None = None) -> DataShape:
    """The shape of a dataset without loading it (an image folder is listed, not decoded)."""
    name = canonical_name(name)
    if name in FIXED_SHAPES:
        return DataShape(*FIXED_SHAPES[name])
    classes = scan_folder(data_dir).classes
    return DataShape(in_chans, img_size or DEFAULT_IMG_SIZE, len(classes), classes)


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, *, limit: int | None = None,
    download: bool = False, img_size: int | None = None, in_chans: int | None = None, stream: bool = False,
) -> DataBundle:
    """Load a dataset by name (one of `DATASETS`).

    `limit`: the train split keeps a seeded, class-balanced subset of at most `limit` images and val
    and test shrink by the same factor (any dataset). `download` (cifar10 only) lets torchvision
    download it. `img_size` and `in_chans` (image folders only) resize and convert the images.
    `stream` (cifar10 only) reads CIFAR-10 as streamed uint8 images (`load_cifar10`).
    """
    name = canonical_name(name)
    if name == "image-folder":
        return load_image_folder(data_dir, img_size=img_size, seed=seed, in_chans=in_chans, limit=limit)  # type: ignore[arg-type]
    if name == "digits":
        data = load_digits(seed=seed)
    elif name == "fashion-mnist":
        data = load_fashion_mnist(data_dir, seed=seed)
    else:
        data = load_cifar10(data_dir, seed=seed, download=download, stream=stream)
    return limit_bundle(data, limit, seed) if limit else data


def _take_balanced(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of `n` items of `y`, drawn class by class in turn (seeded), so every class
    keeps about the same share."""
    order = rng.permutation(len(y))
    rank = np.empty(len(y), dtype=np.int64)  # position of each item within its class, in shuffled order
    for c in np.unique(y):
        members = order[y[order] == c]
        rank[members] = np.arange(len(members))
    return np.sort(order[np.argsort(rank[order], kind="stable")][:n])


def _limit_parts(parts, limit: int, seed: int, keep=None):
    """Cut (x, y) splits (train first) so train holds at most `limit` items and the others shrink by
    the same factor, never below one item per class they have. `keep(split, idx)` maps kept indices."""
    factor = min(1.0, limit / max(1, len(parts[0][1])))
    rng = np.random.default_rng(seed)
    out = []
    for name, (x, y) in zip(("train", "val", "test"), parts):
        n = limit if name == "train" else max(len(np.unique(y)), round(factor * len(y)))
        idx = _take_balanced(np.asarray(y), min(n, len(y)), rng)
        out.append((keep(name, idx) if keep else x[idx], np.asarray(y)[idx]))
    return out


def limit_bundle(data: DataBundle, limit: int, seed: int = 0) -> DataBundle:
    """`data` with train cut to at most `limit` images and val and test by the same factor (seeded)."""
    parts = _limit_parts(tuple((None, s.labels.numpy()) for s in (data.train, data.val, data.test)), limit, seed,
                         keep=lambda _, idx: idx)
    splits = [s.subset(torch.from_numpy(idx)) for s, (idx, _) in zip((data.train, data.val, data.test), parts)]
    # a limited bundle keeps what describes the whole (names, the train statistics it was normalised with)
    return dataclasses.replace(data, train=splits[0], val=splits[1], test=splits[2])


def cache_dir() -> Path:
    """Where teachers, teacher logits and latency measurements are cached (VITSHRINK_CACHE or ~/.cache/vitshrink)."""
    path = Path(os.environ.get("VITSHRINK_CACHE") or Path.home() / ".cache" / "vitshrink")
    path.mkdir(parents=True, exist_ok=True)
    return path
