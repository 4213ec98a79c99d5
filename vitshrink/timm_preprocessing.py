"""A pretrained timm model's own preprocessing, for image folders and CIFAR-10.

A teacher fine-tuned from timm's pretrained weights expects what it was pretrained on: timm's data
config of the model (resize to size / crop_pct with its interpolation, centre crop, its mean and std)
rather than statistics of your train split. For such a teacher on an image folder the streamed
splits evaluate through `timm.data.create_transform(**config)`, and the train split trains through
timm's training transform chosen by `[teacher.train] augment` ("flip": hflip 0.5, "randaugment":
auto_augment "rand-m9-mstd0.5"; "mixup" / "cutmix": `timm.data.Mixup` on the batch, teacher
fine-tuning only). A model trained here from scratch keeps vitshrink's own preprocessing.

Example (not run: it needs a pretrained timm model)::

    cfg = timm_data_config(model, in_chans=3, img_size=224)
    cfg["crop_pct"], cfg["interpolation"]   # (0.9, 'bicubic') for deit_small_patch16_224
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from timm.data import Mixup, create_transform, resolve_data_config
from torch import nn

RAND_AUGMENT = "rand-m9-mstd0.5"
TIMM_ONLY = ("randaugment",)  # augmentations that need timm's PIL pipeline (a pretrained teacher on an image folder)


def timm_data_config(model: nn.Module, in_chans: int, img_size: int) -> dict[str, Any]:
    """timm's data config of `model` (`resolve_data_config`), at the input size the study uses."""
    cfg = dict(resolve_data_config({}, model=model))
    cfg["input_size"] = (in_chans, img_size, img_size)
    if in_chans == 1:  # a one-channel input: the channel means of the pretrained statistics
        cfg["mean"], cfg["std"] = (sum(cfg["mean"]) / 3,), (sum(cfg["std"]) / 3,)
    cfg["mean"], cfg["std"] = tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
    return cfg


def train_options(augment: tuple[str, ...]) -> dict[str, Any]:
    """timm `create_transform(is_training=True, ...)` options for `[teacher.train] augment`."""
    return {"hflip": 0.5 if "flip" in augment else 0.0,
            "auto_augment": RAND_AUGMENT if "randaugment" in augment else None}


def with_timm_preprocessing(data: Any, cfg: dict[str, Any], augment: tuple[str, ...]) -> Any:
    """`data` (streamed image-folder splits) read through timm's transforms of `cfg`; the bundle's
    mean / std become timm's, and each split records the preprocessing (it is part of its digest)."""
    eval_t = create_transform(**cfg)
    train_t = create_transform(**cfg, is_training=True, **train_options(augment))
    record = json.dumps({"timm": cfg, "train": train_options(augment)}, sort_keys=True, default=list)
    splits = {}
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        splits[name] = dataclasses.replace(split, eval_transform=eval_t, train_transform=train_t if name == "train" else None,
                                           preprocessing=record, mean=cfg["mean"], std=cfg["std"])
    return dataclasses.replace(data, **splits, mean=cfg["mean"], std=cfg["std"])


def mixup_of(augment: tuple[str, ...], num_classes: int, label_smoothing: float):
    """timm's Mixup / CutMix for `augment`, or None."""
    if "mixup" not in augment and "cutmix" not in augment:
        return None
    return Mixup(mixup_alpha=0.8 if "mixup" in augment else 0.0, cutmix_alpha=1.0 if "cutmix" in augment else 0.0,
                 label_smoothing=label_smoothing, num_classes=num_classes)


def soft_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with mixed (soft) targets, as timm's SoftTargetCrossEntropy."""
    return torch.sum(-soft_targets * torch.log_softmax(logits, dim=-1), dim=-1).mean()


def describe_timm_preprocessing(cfg: dict[str, Any]) -> dict[str, Any]:
    """The export card's preprocessing for timm's eval transform of `cfg`."""
    _, h, w = cfg["input_size"]
    scale = int(h / cfg["crop_pct"]) if cfg.get("crop_mode", "center") == "center" else h
    return {
        "source": "image files of any size and mode, opened with PIL; timm's eval transform of the pretrained "
                  "model (timm.data.create_transform(**config))",
        "timm_config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "read": f"PIL.Image.open(path).convert({'RGB' if cfg['input_size'][0] == 3 else 'L'!r})",
        "resize": {"shorter_side": scale, "interpolation": cfg["interpolation"],
                   "call": f"torchvision.transforms.Resize({scale}, interpolation={cfg['interpolation']})"},
        "crop": {"center": [h, w]},
        "input_size": [h, w],
        "channels": ["R", "G", "B"] if cfg["input_size"][0] == 3 else ["L"],
        "layout": "CHW (batch: NCHW), float32",
        "value_scale": {"divide_by": 255.0, "raw_range": [0, 255]},
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "formula": "x[c] = (float32(crop(resize(raw))[c]) / divide_by - mean[c]) / std[c]",
    }


__all__ = ["describe_timm_preprocessing", "mixup_of", "soft_cross_entropy", "timm_data_config", "train_options",
           "with_timm_preprocessing"]
