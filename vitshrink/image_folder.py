"""Image folders as users keep them: `ROOT/CLASS/*` or `ROOT/{train,val,test}/CLASS/*`.

Reading is in three steps, each usable on its own (a streaming Dataset can reuse the first and
the last): `scan_folder` lists the files of each split and checks the layout without opening an
image; `split_off` carves the missing splits off train (seeded, stratified); `read_images` decodes
the chosen files (every one fully, so a truncated file is found here, not in the middle of training).

Split folder names (train, val/valid/validation, test) are never classes.

Example (not run as a doctest: it needs a folder of images)::

    layout = scan_folder("pets")
    layout.classes, sorted(layout.splits)  # -> (('cat', 'dog'), ['train', 'val'])
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split

from .splits import DataError, stratified_split

# torchvision's ImageFolder extensions; other files (README, Thumbs.db) are not images and are skipped
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# PIL modes without colour: a folder of only these is read as one channel
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class FolderLayout:
    """The files of each split found on disk (`splits`: split name -> (paths, labels)), all
    labelled by the same sorted `classes`; `root` is what the user pointed at."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[list[Path], np.ndarray]]


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_under(folder: Path) -> list[Path]:
    """Image files below `folder`, in torchvision ImageFolder's order (sorted walk, sorted names)."""
    found = []
    for base, _, names in sorted(os.walk(folder, followlinks=True)):
        found += [Path(base) / n for n in sorted(names) if n.lower().endswith(IMG_EXTENSIONS) and not n.startswith(".")]
    return found


def _split_folders(root: Path) -> dict[str, Path]:
    """split name -> folder when ROOT holds split folders; {} for the flat ROOT/CLASS layout."""
    dirs = _subdirs(root)
    named = [d for d in dirs if d.name.lower() in SPLIT_NAMES]
    if not named:
        return {}
    splits: dict[str, Path] = {}
    for d in named:
        split = SPLIT_NAMES[d.name.lower()]
        if split in splits:
            raise DataError(f"{root} has two folders for the {split} split ({splits[split].name} and {d.name}); "
                            "keep one")
        splits[split] = d
    others = [d.name for d in dirs if d not in named]
    if "train" not in splits:
        raise DataError(f"{root} has split folder(s) {', '.join(d.name for d in named)} but no train folder; "
                        "add ROOT/train/CLASS/ folders, or put the class folders directly in ROOT")
    if others:
        raise DataError(f"{root} mixes split folders ({', '.join(d.name for d in named)}) with other folders "
                        f"({', '.join(others)}); move class folders into {root}/train/ (split names are never classes)")
    return splits


def _read_split(folder: Path, classes: tuple[str, ...] | None, need: int) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """The classes, files and labels of one split folder; `classes` (train's) must match its own."""
    own = tuple(d.name for d in _subdirs(folder))
    if not own:
        loose = len(_images_under(folder))
        detail = f" ({loose} image file(s) lie directly in it)" if loose else ""
        raise DataError(f"{folder} has no class folders{detail}; put each class's images in {folder}/CLASS/")
    if classes is not None and own != classes:
        lacks, extra = sorted(set(classes) - set(own)), sorted(set(own) - set(classes))
        parts = ([f"lacks {', '.join(lacks)}"] if lacks else []) + ([f"has extra {', '.join(extra)}"] if extra else [])
        raise DataError(f"{folder}'s classes differ from train's: it {' and '.join(parts)}; "
                        "give every split the same class folders")
    paths, labels = [], []
    for label, name in enumerate(own):
        files = _images_under(folder / name)
        if len(files) < need:
            raise DataError(f"class {name!r} in {folder} has {len(files)} image(s) but needs at least {need}; "
                            "add images or remove the folder")
        paths += files
        labels += [label] * len(files)
    return own, paths, np.asarray(labels, dtype=np.int64)


def scan_folder(data_dir: str | os.PathLike | None) -> FolderLayout:
    """List the images of an image folder and check its layout (no image is opened).

    Raises:
        DataError: one sentence naming the folder and what is wrong with it.
    """
    root = Path(data_dir) if data_dir else None
    if root is None or not root.is_dir():
        raise DataError(f"image folder {str(data_dir) if data_dir else None!r} not found; pass --data-dir to a folder "
                        "with one sub-folder of images per class (ROOT/CLASS/*), or ROOT/train/CLASS/* and "
                        "ROOT/val/CLASS/*")
    folders = _split_folders(root) or {"train": root}
    # each class needs one train image plus one for every split carved off train
    need = max(2, 1 + sum(s not in folders for s in ("val", "test")))
    classes, paths, labels = _read_split(folders["train"], None, need)
    splits = {"train": (paths, labels)}
    for split in ("val", "test"):
        if split in folders:
            _, p, y = _read_split(folders[split], classes, 1)
            splits[split] = (p, y)
    return FolderLayout(root, classes, splits)


def split_off(layout: FolderLayout, seed: int, val_frac: float = 0.2, test_frac: float = 0.2
              ) -> dict[str, tuple[list[Path], np.ndarray]]:
    """train / val / test file lists: the given splits as they are, the missing ones carved off train
    (stratified, seeded; the flat layout is split exactly as before split folders were read)."""
    splits = dict(layout.splits)
    paths, y = splits["train"]
    idx = np.arange(len(paths))
    try:
        if "val" not in splits and "test" not in splits:
            (tr, y_tr), (va, y_va), (te, y_te) = stratified_split(idx, y, seed, val_frac, test_frac)
            splits["val"], splits["test"] = ([paths[i] for i in va], y_va), ([paths[i] for i in te], y_te)
        else:
            missing = "val" if "val" not in splits else "test" if "test" not in splits else None
            if missing is None:
                return splits
            tr, cut, y_tr, y_cut = train_test_split(idx, y, test_size=val_frac, random_state=seed, stratify=y)
            splits[missing] = ([paths[i] for i in cut], y_cut)
    except ValueError as exc:  # sklearn: too few images per class, or fewer split images than classes
        raise DataError(f"{layout.root}: {len(paths)} train images in {len(layout.classes)} classes are too few to "
                        f"split off stratified val/test splits ({exc}); add images, or give ROOT/val and ROOT/test "
                        "folders") from None
    splits["train"] = ([paths[i] for i in tr], y_tr)
    return splits


def _decode(path: Path):
    """The fully decoded image, or the reason it cannot be read."""
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: a truncated file fails here
            return img.copy()
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return f"{type(exc).__name__}: {exc}"


def read_images(paths: list[Path], img_size: int, in_chans: int | None) -> tuple[np.ndarray, int]:
    """Decode, convert and resize `paths` into an (N, C, img_size, img_size) float array in [0, 1].

    `in_chans` 1 or 3 converts every image to grayscale or RGB; None follows the data: one channel
    when every image is grayscale, else RGB. Returns the array and its channel count.

    Raises:
        DataError: naming the first unreadable file and counting the rest.
    """
    if in_chans not in (None, 1, 3):
        raise DataError(f"in_chans = {in_chans} cannot be read from an image folder; use 1 (grayscale) or 3 (RGB)")
    mode = {1: "L", 3: "RGB", None: "RGB"}[in_chans]
    xs, bad, gray = [], [], True
    for path in paths:
        img = _decode(path)
        if isinstance(img, str):
            bad.append((path, img))
            continue
        gray = gray and img.mode in GRAY_MODES
        arr = np.asarray(img.convert(mode).resize((img_size, img_size)), dtype=np.float32) / 255.0
        xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    if bad:
        more = f", and {len(bad) - 1} more file(s) cannot be read either" if len(bad) > 1 else ""
        bad.sort()
        raise DataError(f"image {bad[0][0]} cannot be read ({bad[0][1]}){more}; remove or replace the broken file(s)")
    x = np.stack(xs) if xs else np.zeros((0, 3 if mode == "RGB" else 1, img_size, img_size), np.float32)
    if in_chans is None and gray:
        x = x[:, :1]  # grayscale converted to RGB has three equal channels
    return x, int(x.shape[1])


@dataclass(frozen=True)
class FolderScan:
    """What one pass over every file found: the channel mode to read them in, the train split's
    per-channel mean and std (of images resized to `img_size`, scaled to [0, 1]) and a SHA-256 of
    each split's file bytes and labels."""

    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    digests: dict[str, str]


def _open_bytes(path: Path) -> tuple[bytes, object]:
    """The file's bytes and its fully decoded image, or the reason it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return b"", f"{type(exc).__name__}: {exc}"
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # decodes every byte: a truncated file fails here
            return raw, img.copy()
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad files
        return raw, f"{type(exc).__name__}: {exc}"


def scan_images(files: dict[str, tuple[list[Path], np.ndarray]], img_size: int, in_chans: int | None) -> FolderScan:
    """Decode every file once (one at a time: memory does not grow with the folder), so a broken file
    is reported before anything trains; meanwhile hash the bytes and take the train statistics.

    Raises:
        DataError: naming the first unreadable file and counting the rest.
    """
    if in_chans not in (None, 1, 3):
        raise DataError(f"in_chans = {in_chans} cannot be read from an image folder; use 1 (grayscale) or 3 (RGB)")
    mode = {1: "L", 3: "RGB", None: "RGB"}[in_chans]
    bad, unconvertible, gray, digests = [], [], True, {}
    total = np.zeros(3 if mode == "RGB" else 1)
    squares, count = np.zeros_like(total), 0
    for split, (paths, labels) in files.items():
        h = hashlib.sha256()
        for path, label in zip(paths, labels):
            raw, img = _open_bytes(path)
            h.update(f"{label}:{len(raw)}:".encode())
            h.update(raw)
            if isinstance(img, str):
                bad.append((path, img))
                continue
            gray = gray and img.mode in GRAY_MODES
            converted = _convert(img, mode)
            if isinstance(converted, str):
                unconvertible.append((path, converted))
                continue
            if split != "train":
                continue
            arr = np.asarray(converted.resize((img_size, img_size)), dtype=np.float32) / 255.0
            arr = arr.reshape(img_size * img_size, -1).astype(np.float64)
            total += arr.sum(0)
            squares += (arr * arr).sum(0)
            count += len(arr)
        digests[split] = h.hexdigest()
    if bad:
        more = f", and {len(bad) - 1} more file(s) cannot be read either" if len(bad) > 1 else ""
        bad.sort()
        raise DataError(f"image {bad[0][0]} cannot be read ({bad[0][1]}){more}; remove or replace the broken file(s)")
    if unconvertible:
        more = f" ({len(unconvertible) - 1} more file(s) too)" if len(unconvertible) > 1 else ""
        unconvertible.sort()
        raise DataError(f"image {unconvertible[0][0]} {unconvertible[0][1]}{more}; save such images as 8-bit RGB or "
                        "grayscale (PNG or JPEG), or remove them")
    mean = total / max(1, count)
    std = np.sqrt(np.maximum(squares / max(1, count) - mean * mean, 0.0)) + 1e-6
    if in_chans is None and gray:  # grayscale converted to RGB has three equal channels
        mode, mean, std = "L", mean[:1], std[:1]
    return FolderScan(mode, tuple(map(float, mean)), tuple(map(float, std)), digests)


# PIL converts these to 8-bit modes by clipping every value above 255: a 16-bit or float image would
# silently become mostly white, so it counts as an image that cannot be converted
WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _convert(img, mode: str):
    """`img` converted to `mode` ("RGB" or "L"), or why it cannot be (without losing its values)."""
    if img.mode in WIDE_MODES:
        return (f"has {'floating-point' if img.mode == 'F' else 'more than 8-bit'} pixels (PIL mode {img.mode}), "
                f"which converting to 8-bit {mode} would clip")
    try:
        return img.convert(mode)
    except (ValueError, OSError) as exc:
        return f"has PIL mode {img.mode}, which cannot be converted to {mode} ({exc})"
