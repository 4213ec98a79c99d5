"""Teachers: timm vision transformers, created by name, loaded from a checkpoint or trained here and cached.

Example:
    >>> spec = TeacherSpec("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 4, "in_chans": 1,
    ...                    "num_classes": 10, "embed_dim": 32, "depth": 2, "num_heads": 2})
    >>> model = create_model(spec)
    >>> sum(p.numel() for p in model.parameters()) > 0
    True
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .data import DataBundle, cache_dir
from .data import Split
from .digests import data_sha256, file_sha256
from .timm_preprocessing import mixup_of, soft_cross_entropy
from .data_shape import fit_teacher_kwargs
from .spaces._recipe import AUGMENTATIONS
from .training import check_training_keys, resolve_training

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model name, checkpoint or architecture that cannot be used."""


# Arguments of the tiny ViT used by tests: embed dim 32, 2 blocks, 16 px.
TINY_VIT_KWARGS: dict[str, Any] = {
    "img_size": 16,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": 10,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 2,
    "mlp_ratio": 2.0,
}


@dataclass(frozen=True)
class TeacherSpec:
    """A timm architecture and its keyword arguments, plus where its weights come from.

    `pretrained` asks timm for its pretrained weights (needs a network or a populated HF cache);
    `checkpoint` is a local file (safetensors, or a torch file read with weights_only=True).
    """

    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kwargs": dict(self.kwargs), "checkpoint": self.checkpoint, "pretrained": self.pretrained}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherSpec:
        return cls(d["model"], dict(d.get("kwargs") or {}), d.get("checkpoint"), bool(d.get("pretrained", False)))


def create_model(spec: TeacherSpec, num_classes: int | None = None, load_weights: bool = True) -> nn.Module:
    """Build the timm model of `spec` (random weights unless `load_weights` and a checkpoint/pretrained)."""
    kwargs = dict(spec.kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if not timm.is_model(spec.model):
        close = timm.list_models(f"*{spec.model.split('_')[0]}*")[:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ModelError(f"unknown timm model {spec.model!r}{hint}; see timm.list_models('vit_*')")
    if spec.pretrained and not spec.checkpoint and not timm.models.is_model_pretrained(spec.model):
        raise ModelError(f"timm has no pretrained weights for {spec.model!r}; set pretrained = false to train it "
                         "from scratch, or give teacher.checkpoint (--checkpoint) a local weights file")
    pretrained = spec.pretrained and load_weights
    if pretrained and spec.checkpoint:
        # timm's own pretrained path, reading a local file: it adapts the classifier, the position
        # embedding and the patch embedding to the requested num_classes / img_size / patch_size
        if not Path(spec.checkpoint).is_file():
            raise ModelError(f"pretrained checkpoint {spec.checkpoint} not found; pass --checkpoint to an existing file")
        kwargs["pretrained_cfg_overlay"] = {"file": str(spec.checkpoint)}
    try:
        model = timm.create_model(spec.model, pretrained=pretrained, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise ModelError(f"cannot create timm model {spec.model!r} with {kwargs}: {exc}") from None
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise ModelError(f"cannot load timm's pretrained weights for {spec.model!r} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); without a network pass --checkpoint "
                             "to a local weights file") from None
        raise
    if load_weights and spec.checkpoint and not pretrained:
        load_checkpoint(model, spec.checkpoint)
    return model.eval()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights without unpickling: safetensors, or torch files with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} not found; pass --checkpoint to an existing .safetensors or .pth file")
    try:
        if p.suffix == ".safetensors":
            return load_file(str(p))
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decode failure means the same thing to the user
        raise ModelError(f"checkpoint {p} cannot be read safely ({type(exc).__name__}: {exc}); it may be truncated "
                         "or not a weights file: use a safetensors file or a torch state_dict") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"checkpoint {p} does not hold a state_dict of tensors")
    return obj


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a local checkpoint into `model`; a shape or key mismatch is one clear error."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if strict and (missing or unexpected or wrong):
        details = []
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} shape mismatch(es), e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            details.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise ModelError(
            f"checkpoint {path} does not fit the model: {'; '.join(details)}; check --model and its arguments "
            "(img_size, patch_size, embed_dim, depth, num_heads, num_classes) match the checkpoint"
        )
    model.load_state_dict(state, strict=strict)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 0.05
    batch_size: int = 64
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ()  # "flip" (random horizontal flip), "shift" (random translation <= 2 px)
    device: str = "auto"  # where to train: auto (a GPU when there is one), cpu, cuda, cuda:N (see training.py)
    precision: str = "auto"  # auto (bf16 on a GPU, fp32 on a CPU), fp32 or bf16 (autocast)

    def __post_init__(self) -> None:
        object.__setattr__(self, "augment", tuple(self.augment))
        if bad := [a for a in self.augment if a not in AUGMENTATIONS]:
            raise ValueError(f"unknown augmentation(s) {bad}; choose from {list(AUGMENTATIONS)}")
        check_training_keys(self.device, self.precision)


def augment_batch(x: torch.Tensor, kinds: tuple[str, ...], gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Per-image random horizontal flips and/or translations of up to `max_shift` pixels (borders
    replicated) of an image batch (B, C, H, W); the identity when `kinds` is empty.

        >>> x = torch.arange(16.).view(1, 1, 4, 4)
        >>> augment_batch(x, (), torch.Generator()).equal(x)
        True
    """
    if "flip" in kinds:
        flip = torch.rand(len(x), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if "shift" in kinds:
        b, _, h, w = x.shape
        s = max_shift
        padded = F.pad(x, (s, s, s, s), mode="replicate")
        dy, dx = (torch.randint(0, 2 * s + 1, (b,), generator=gen) for _ in range(2))
        rows = (torch.arange(h)[None] + dy[:, None])[:, :, None]  # (B, H, 1)
        cols = (torch.arange(w)[None] + dx[:, None])[:, None, :]  # (B, 1, W)
        x = padded[torch.arange(b)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
    return x


@torch.no_grad()
def evaluate(model: nn.Module, x: Any, y: torch.Tensor | None = None, batch_size: int = 256) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy and the logits (float32, on the CPU) of `model` on a split (or on tensors x, y),
    on the model's device; a streamed split is read batch by batch."""

    split = Split(x, y) if y is not None else x
    model.eval()
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    logits = torch.cat([model(xb.to(dev)).float().cpu() for xb, _ in split.chunks(batch_size)])
    return float((logits.argmax(1) == split.labels).float().mean()), logits


def _float_logits(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Logits in float32 (bf16 under autocast), so losses are computed in float32; a no-op in fp32."""
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def train_classifier(
    model: nn.Module,
    data: DataBundle,
    settings: TrainSettings,
    seed: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    extra_targets: torch.Tensor | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    online_targets: Callable[[torch.Tensor], torch.Tensor] | None = None,
    aux: nn.Module | None = None,
) -> nn.Module:
    """Train `model` in place with AdamW + cosine schedule on the train split.

    `loss_fn(logits, labels, extra)` replaces cross-entropy (knowledge distillation passes
    the teacher's cached logits as `extra_targets`, indexed like the train split). With
    `online_targets`, `extra` is instead `online_targets(x)` of the batch `x` the model sees (after
    augmentation, on the device): the teacher run on each batch. `aux`: a module whose parameters
    train with the model (feature-distillation projections); it stays on the training device.

    Trains on `settings.device` in `settings.precision` (bf16 autocast: the weights and the
    optimizer stay float32; the loss is taken in float32), batches moved there one at a time; the
    model comes back on the CPU. Same seed and device: the same weights.
    """
    where = resolve_training(settings.device, settings.precision)
    torch.manual_seed(seed)
    train = data.train
    model.to(where.device)
    params = list(model.parameters()) + (list(aux.to(where.device).parameters()) if aux is not None else [])
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    n = len(train)
    steps_per_epoch = max(1, (n + settings.batch_size - 1) // settings.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=settings.lr, total_steps=settings.epochs * steps_per_epoch, pct_start=0.15
    )
    gen = torch.Generator().manual_seed(seed)
    # a split read through timm's training transform flips (and RandAugments) each image itself
    timm_pipeline = getattr(train, "train_transform", None) is not None
    tensor_aug = tuple(a for a in settings.augment if a == "shift" or (a == "flip" and not timm_pipeline))
    mix = None
    if loss_fn is None and ("mixup" in settings.augment or "cutmix" in settings.augment):
        np.random.seed(seed)  # timm's Mixup draws from numpy's global generator
        mix = mixup_of(settings.augment, data.num_classes, settings.label_smoothing)
    for epoch in range(settings.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        # summed on the device in float64: no host sync per step, the same sum as Python floats
        total = torch.zeros((), dtype=torch.float64, device=where.device)
        index_batches = [perm[i : i + settings.batch_size] for i in range(0, n, settings.batch_size)]
        # a streamed split decodes these batches in a DataLoader; sampling and augmentation stay on the CPU generator
        for idx, (xb, yb) in zip(index_batches, train.batches(index_batches, train=True)):
            xb = augment_batch(xb, tensor_aug, gen) if tensor_aug else xb
            soft = None
            if mix is not None and len(xb) % 2 == 0:  # timm's Mixup pairs images within the batch
                xb, soft = mix(xb, yb)
                soft = soft.to(where.device, non_blocking=True)
            yb = yb.to(where.device, non_blocking=True)
            xb = xb.to(where.device, non_blocking=True)
            with where.autocast():
                online = online_targets(xb) if online_targets is not None else None
                logits = _float_logits(model(xb))
            if soft is not None:

                loss = soft_cross_entropy(logits, soft)
            elif loss_fn is None:
                loss = F.cross_entropy(logits, yb, label_smoothing=settings.label_smoothing)
            else:
                extra = extra_targets[idx].to(where.device, non_blocking=True) if extra_targets is not None else online
                loss = loss_fn(logits, yb, extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().double() * len(idx)
        if progress:
            progress(epoch + 1, settings.epochs, float(total) / n)
    return model.to("cpu").eval()  # the rest of the pipeline (accuracy, latency, export) runs on the CPU


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of a checkpoint file's contents (streamed): the same path rewritten is another teacher."""

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint {p} not found; pass --checkpoint to an existing .safetensors or .pth file")
    return file_sha256(p)


def _teacher_key(spec: TeacherSpec, data: DataBundle, settings: TrainSettings, seed: int,
                 data_seed: int | None = None) -> str:
    """What a trained teacher depends on: architecture, starting weights (by content), the data split
    (its seed and the images and labels of every split: a teacher must never have seen today's val or
    test images), training settings, seed and timm's version."""

    # no augmentation is left out of the key, so teachers cached before `augment` existed stay valid;
    # the training device counts as it resolves here (cuda/bf16), and not at all on the CPU in fp32
    train = {k: v for k, v in settings.__dict__.items()
             if not (k == "augment" and not v) and k not in ("device", "precision")}
    tag = resolve_training(settings.device, settings.precision).cache_tag()
    blob = json.dumps(
        {"spec": spec.to_dict(), "data": data.describe(), "seed": seed, "train": train,
         "timm": __import__("timm").__version__, **({"trained_on": tag} if tag else {}),
         "data_seed": data_seed, "data_sha256": data_sha256(data),
         "checkpoint_sha256": checkpoint_sha256(spec.checkpoint) if spec.checkpoint else None},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def get_teacher(
    spec: TeacherSpec,
    data: DataBundle,
    settings: TrainSettings | None = None,
    seed: int = 0,
    cache: Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    data_seed: int | None = None,
) -> tuple[nn.Module, TeacherSpec]:
    """The teacher for `data`: exactly `spec.checkpoint` if given (and not `pretrained`); otherwise
    trained here once (from scratch, or fine-tuned from timm's pretrained weights, which may come
    from a local `checkpoint`) and cached as safetensors.

    Returns the model and a spec whose checkpoint points at the weights actually used, so the
    teacher can be rebuilt exactly later (e.g. by `load_model`). `data_seed` (the seed that split
    `data`) is part of the cache key, with the contents of every split.
    """
    settings = settings or TrainSettings()
    cache = Path(cache or cache_dir()) / "teachers"
    cache.mkdir(parents=True, exist_ok=True)
    # the teacher fits the data: in_chans, img_size, num_classes follow it unless the spec fixes them
    kwargs = fit_teacher_kwargs(spec.kwargs, data.name, data.in_chans, data.img_size, data.num_classes)
    spec = TeacherSpec(spec.model, kwargs, spec.checkpoint, spec.pretrained)
    if spec.checkpoint and not spec.pretrained:
        model = create_model(spec)
        return model, spec
    key = _teacher_key(spec, data, settings, seed, data_seed)
    path = cache / f"{spec.model}-{data.name}-{key}.safetensors"
    cached = TeacherSpec(spec.model, kwargs, str(path), False)
    if path.exists():
        log.info("teacher: reusing cached %s", path)
        return create_model(cached), cached
    torch.manual_seed(seed)
    model = create_model(spec)  # random init, or timm pretrained weights to fine-tune
    log.info("teacher: training %s on %s for %d epochs", spec.model, data.name, settings.epochs)
    start = time.perf_counter()
    train_classifier(model, data, settings, seed=seed, progress=progress)
    acc, _ = evaluate(model, data.val)
    log.info("teacher: val accuracy %.4f after %.0f s", acc, time.perf_counter() - start)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)  # atomic: a crash never leaves a half-written cached teacher
    return model, cached


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy; transforms return new models and leave their input alone."""
    return copy.deepcopy(model)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
