"""Datasets as in-memory tensor splits: digits, Fashion-MNIST, CIFAR-10, image folders.

Every dataset is split into train / val / test with a fixed seed. Images are float
tensors (N, C, H, W), normalised per channel with statistics of the train split.
The val split chooses models; the test split only reports the final Pareto models.

Example:
    >>> data = load_dataset("digits", seed=0)
    >>> data.train.x.shape[1:], data.num_classes
    (torch.Size([1, 8, 8]), 10)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

log = logging.getLogger(__name__)

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


class DataError(ValueError):
    """A data set that cannot be found or read; the message says where it was looked for."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, C, H, W) float32, normalised
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int) -> Split:
        return Split(self.x[:n], self.y[:n])


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
        return int(self.train.x.shape[1])

    @property
    def img_size(self) -> int:
        return int(self.train.x.shape[-1])

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


def _split_arrays(
    x: np.ndarray, y: np.ndarray, seed: int, val_frac: float, test_frac: float
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from sklearn.model_selection import train_test_split

    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_frac, random_state=seed, stratify=y)
    rel_val = val_frac / (1.0 - test_frac)
    x_tr, x_val, y_tr, y_val = train_test_split(x_rest, y_rest, test_size=rel_val, random_state=seed, stratify=y_rest)
    return (x_tr, y_tr), (x_val, y_val), (x_test, y_test)


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
    from sklearn.datasets import load_digits as sk_digits

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
    import gzip

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


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None, seed: int = 0, val_frac: float = 1 / 12, limit: int | None = None
) -> DataBundle:
    """Fashion-MNIST (60k train + 10k test, 1x28x28). The official test set is the test split;
    `val_frac` of the official train set (stratified, seeded) is the val split."""
    from sklearn.model_selection import train_test_split

    root = _find_fashion_mnist(data_dir)
    x_tr = _read_idx(root / "train-images-idx3-ubyte")[:, None] / 255.0
    y_tr = _read_idx(root / "train-labels-idx1-ubyte")
    x_te = _read_idx(root / "t10k-images-idx3-ubyte")[:, None] / 255.0
    y_te = _read_idx(root / "t10k-labels-idx1-ubyte")
    if limit:
        x_tr, y_tr, x_te, y_te = x_tr[:limit], y_tr[:limit], x_te[: limit // 6], y_te[: limit // 6]
    x_tr, x_val, y_tr, y_val = train_test_split(x_tr, y_tr, test_size=val_frac, random_state=seed, stratify=y_tr)
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    return _bundle("fashion-mnist", ((x_tr, y_tr), (x_val, y_val), (x_te, y_te)), 10, names)


def load_cifar10(
    data_dir: str | os.PathLike | None = None, seed: int = 0, download: bool = False, val_frac: float = 0.1
) -> DataBundle:
    """CIFAR-10 through torchvision (the python-pickle batches are read by torchvision itself).

    `download=True` uses torchvision's downloader; without a network, point --data-dir at a folder
    holding ``cifar-10-batches-py``.
    """
    from sklearn.model_selection import train_test_split
    from torchvision.datasets import CIFAR10

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
    x_tr = np.asarray(train.data).transpose(0, 3, 1, 2) / 255.0
    x_te = np.asarray(test.data).transpose(0, 3, 1, 2) / 255.0
    y_tr, y_te = np.asarray(train.targets), np.asarray(test.targets)
    x_tr, x_val, y_tr, y_val = train_test_split(x_tr, y_tr, test_size=val_frac, random_state=seed, stratify=y_tr)
    return _bundle("cifar10", ((x_tr, y_tr), (x_val, y_val), (x_te, y_te)), 10, tuple(train.classes))


def load_image_folder(
    data_dir: str | os.PathLike, img_size: int = 32, seed: int = 0, val_frac: float = 0.2, test_frac: float = 0.2
) -> DataBundle:
    """A folder of class sub-folders of images (torchvision's ImageFolder layout), resized to `img_size`."""
    from torchvision.datasets import ImageFolder

    root = Path(data_dir) if data_dir else None
    if root is None or not root.is_dir():
        raise DataError(
            f"image folder {data_dir!r} not found; pass --data-dir to a folder with one sub-folder of images per class"
        )
    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from None
    xs, ys = [], []
    for path, label in ds.samples:
        img = ds.loader(path).convert("RGB").resize((img_size, img_size))
        xs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        ys.append(label)
    x, y = np.stack(xs), np.asarray(ys)
    return _bundle(root.name, _split_arrays(x, y, seed, val_frac, test_frac), len(ds.classes), tuple(ds.classes))


DATASETS = ("digits", "fashion-mnist", "cifar10", "image-folder")


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, **options: object
) -> DataBundle:
    """Load a dataset by name: one of `DATASETS`."""
    if name == "digits":
        return load_digits(seed=seed)
    if name in ("fashion-mnist", "fashion_mnist"):
        return load_fashion_mnist(data_dir, seed=seed, limit=options.get("limit"))  # type: ignore[arg-type]
    if name == "cifar10":
        return load_cifar10(data_dir, seed=seed, download=bool(options.get("download", False)))
    if name in ("image-folder", "imagefolder"):
        return load_image_folder(data_dir, img_size=int(options.get("img_size", 32)), seed=seed)  # type: ignore[arg-type]
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def cache_dir() -> Path:
    """Where teachers, teacher logits and latency measurements are cached (VITSHRINK_CACHE or ~/.cache/vitshrink)."""
    path = Path(os.environ.get("VITSHRINK_CACHE") or Path.home() / ".cache" / "vitshrink")
    path.mkdir(parents=True, exist_ok=True)
    return path
