"""How a raw image becomes a model input, written down so an export can be deployed without vitshrink.

The description mirrors the loaders of `vitshrink.data` (which must stay in step with it; the export
test feeds PNG files through this description alone and compares with the trial's own logits):

1. read: image files are opened with PIL and converted to the dataset's mode ("RGB" or "L");
   digits have no files: the raw image is scikit-learn's 8x8 array of integers 0..16;
2. resize (image folders only): ``PIL.Image.resize((W, H), Image.BICUBIC)``; no crop;
3. scale: ``v = float32(raw) / divide_by`` (255 for 8-bit pixels, 16 for digits), in channel order
   ``channels`` and layout CHW (a batch is NCHW, float32);
4. normalise per channel with the train split's statistics: ``x[c] = (v[c] - mean[c]) / std[c]``.

Example:
    >>> from vitshrink.data import load_digits
    >>> card = describe_preprocessing("digits", load_digits())
    >>> card["value_scale"]["divide_by"], card["channels"], card["resize"]
    (16.0, ['L'], None)
"""

from __future__ import annotations

import json
from typing import Any

from .data import DataBundle
from .timm_preprocessing import describe_timm_preprocessing


# what each loader in data.py reads, and how it scales raw values to [0, 1]
_RAW: dict[str, dict[str, Any]] = {
    "digits": {"source": "scikit-learn's load_digits().images: 8x8 arrays of integers 0..16 (no image files); "
                         "images[:, None] is the raw batch", "mode": "L", "divide_by": 16.0, "range": [0, 16]},
    "fashion-mnist": {"source": "28x28 8-bit grayscale images (the IDX files, or PNGs of them)", "mode": "L",
                      "divide_by": 255.0, "range": [0, 255]},
    "cifar10": {"source": "32x32 8-bit RGB images (the CIFAR-10 batches, or PNGs of them)", "mode": "RGB",
                "divide_by": 255.0, "range": [0, 255]},
    "image-folder": {"source": "image files of any size and mode, opened with PIL", "mode": "RGB",
                     "divide_by": 255.0, "range": [0, 255], "resize": True},
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "imagefolder": "image-folder"}


def describe_preprocessing(dataset: str, data: DataBundle) -> dict[str, Any]:
    """The JSON-able preprocessing of `dataset` (a recipe's dataset name) with `data`'s statistics.

    Raises:
        ValueError: a bundle without recorded mean and std (made outside `vitshrink.data`), or an unknown dataset.
    """
    kind = _ALIASES.get(dataset, dataset)
    if kind not in _RAW:
        raise ValueError(f"no preprocessing known for dataset {dataset!r}; known: {', '.join(_RAW)}")
    if not data.mean or not data.std:
        raise ValueError(f"{data.name} carries no normalisation statistics; load it with vitshrink.data")
    if timm_record := getattr(data.val, "preprocessing", ""):  # a pretrained timm model's own (timm_preprocessing.py)
        return describe_timm_preprocessing(json.loads(timm_record)["timm"])
    raw = _RAW[kind]
    size = [data.img_size, data.img_size]
    return {
        "source": raw["source"],
        "read": None if kind == "digits" else f"PIL.Image.open(path).convert({raw['mode']!r})",
        "resize": {"size": size, "interpolation": "bicubic", "call": f"image.resize(({size[1]}, {size[0]}), "
                   "PIL.Image.BICUBIC)"} if raw.get("resize") else None,
        "crop": None,
        "input_size": size,
        "channels": ["R", "G", "B"] if raw["mode"] == "RGB" else ["L"],
        "layout": "CHW (batch: NCHW), float32",
        "value_scale": {"divide_by": raw["divide_by"], "raw_range": raw["range"]},
        "mean": list(data.mean),
        "std": list(data.std),
        "formula": "x[c] = (float32(raw[c]) / divide_by - mean[c]) / std[c]",
    }


__all__ = ["describe_preprocessing"]
