"""What a dataset's images are, and what a teacher must be to fit them (no torch: recipes are
checked with this before anything heavy is imported).

A teacher's `in_chans`, `img_size` and `num_classes` follow the data when the recipe leaves them
out; a recipe that fixes one the data contradicts is refused with both values.

Example:
    >>> fit_teacher_kwargs({"embed_dim": 32}, "digits", *FIXED_SHAPES["digits"])
    {'embed_dim': 32, 'in_chans': 1, 'img_size': 8, 'num_classes': 10}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

DATASETS = ("digits", "fashion-mnist", "cifar10", "image-folder")
ALIASES = {"fashion_mnist": "fashion-mnist", "imagefolder": "image-folder"}
# (in_chans, img_size, num_classes) of the datasets whose images have one size
FIXED_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 10), "fashion-mnist": (1, 28, 10),
                                                 "cifar10": (3, 32, 10)}
DEFAULT_IMG_SIZE = 32  # image folders, when neither the recipe's data nor its teacher sets img_size
DATA_SHAPED = ("in_chans", "img_size", "num_classes")  # the teacher kwargs the data decides
# data sets a pretrained timm teacher reads streamed, through its own preprocessing (timm_preprocessing.py)
TIMM_PREPROCESSED = ("image-folder", "cifar10")


@dataclass(frozen=True)
class DataShape:
    """What a model must fit, known before the images are read: channels (None: an image folder's,
    known once its images are read), image side and number of classes."""

    in_chans: int | None
    img_size: int
    num_classes: int
    class_names: tuple[str, ...] = ()


def canonical_name(name: str) -> str | None:
    """The dataset's name in `DATASETS` with aliases resolved; None for an unknown name."""
    name = ALIASES.get(name, name)
    return name if name in DATASETS else None


def side(value: Any, what: str = "img_size") -> int:
    """An image side from timm's img_size (an int, or a square [h, w])."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(f"{what} = {list(value)} is not square; vitshrink reads square images: give one number")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} = {value!r} must be a positive integer (pixels)")
    return value


def fit_teacher_kwargs(kwargs: dict[str, Any], dataset: str, in_chans: int | None, img_size: int | None,
                       num_classes: int | None) -> dict[str, Any]:
    """`kwargs` with each data-shaped argument the recipe leaves out taken from the data (None: not
    known yet, left as it is).

    Raises:
        ConfigError: the recipe fixes one the data contradicts, with both values.
    """
    data = {"in_chans": in_chans, "img_size": img_size, "num_classes": num_classes}
    what = {"in_chans": "has {}-channel images", "img_size": "has {0}x{0} px images", "num_classes": "has {} classes"}
    out = dict(kwargs)
    for key, value in data.items():
        if value is None:
            continue
        if key not in out:
            out[key] = value
            continue
        mine = side(out[key], "teacher.kwargs.img_size") if key == "img_size" else out[key]
        if mine != value:
            raise ConfigError(f"teacher.kwargs.{key} = {out[key]!r} but the data ({dataset}) {what[key].format(value)}; "
                              f"remove {key} from [teacher.kwargs] (it then follows the data) or set it to {value}")
    return out
