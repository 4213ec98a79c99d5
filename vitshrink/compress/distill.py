"""Students and knowledge distillation: a smaller ViT trained from the teacher's soft targets
("student" stage), and a short KD recovery fine-tune of a compressed model ("finetune" stage).

Both train with Hinton et al.'s loss on the teacher's logits over the train split, which are
computed once per (teacher weights, data) and cached in memory and on disk (`teacher_logits`).

DeiT distilled models (timm's `VisionTransformerDistilled`, heads `head` and `head_dist`) are
trained as in DeiT's soft distillation: `distilled_training` is switched on while training, the
class head learns from the labels and the distillation head from the teacher; it is switched off
again afterwards, so the returned model averages the two heads, as timm does at inference.

Example:
    >>> cfg = CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 16, "heads": 2,
    ...                                      "epochs": 1}})
    >>> student = make_student(teacher, cfg)
    >>> len(student.blocks), student.embed_dim
    (1, 16)
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..data import DataBundle, Split, cache_dir
from ..digests import update_with_tensor
from ..models import ModelError, TeacherSpec, TrainSettings, copy_model, create_model, param_count, train_classifier
from ..spaces import CompressionConfig, ConfigError
from ..techniques.student import student_problem
from ..training import resolve_training
from ..techniques.student import StudentConfig
from ..techniques.finetune import DistillConfig, FinetuneConfig
from ._registry import BuildContext, register_handler
from .recovery import OnlineTeacher, augment_kinds

log = logging.getLogger(__name__)

# Students train from scratch: the usual ViT recipe of models.TrainSettings (AdamW, lr 2e-3, wd 0.05).
STUDENT_SETTINGS = TrainSettings()
# Recovery fine-tune starts from good weights that a compression step has perturbed: a 4x lower peak
# learning rate and lighter weight decay repair them without washing out what the teacher taught.
FINETUNE_SETTINGS = TrainSettings(lr=5e-4, weight_decay=0.01)

_LOGITS_MEMORY: dict[str, torch.Tensor] = {}


def kd_loss(
    student_logits: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.7,
) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch:
    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.

    A pair ``(cls_logits, dist_logits)`` (a DeiT distilled model in distilled training) takes the
    cross-entropy on the class head and the KL term on the distillation head, as in DeiT.

    Example:
        >>> s, t = torch.zeros(2, 3), torch.zeros(2, 3)
        >>> round(float(kd_loss(s, torch.tensor([0, 1]), t, 2.0, 0.5)), 4)  # 0.5 * ln 3
        0.5493
    """
    cls_logits, dist_logits = student_logits if isinstance(student_logits, tuple) else (student_logits,) * 2
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(dist_logits / t, dim=-1),
        F.log_softmax(teacher_logits.to(dist_logits.dtype) / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(cls_logits, labels)


def _forward_description(teacher: nn.Module) -> str:
    """What decides the teacher's forward besides its weights: every module's class and its plain
    settings (GELU's approximation, a pooling mode, a layer norm's eps, ...), which two models with
    one state_dict can differ in. `training` is left out: the logits are always taken in eval mode."""
    rows = []
    for path, module in teacher.named_modules():
        settings = {k: v for k, v in sorted(vars(module).items())
                    if not k.startswith("_") and k != "training" and _plain(v)}
        rows.append(f"{path}|{type(module).__module__}.{type(module).__qualname__}|{settings!r}")
    return "\n".join(rows)


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def logits_cache_key(teacher: nn.Module, data: DataBundle) -> str:
    """A short hash of everything the logits depend on: the teacher's weights, its forward (module
    classes and settings, timm's version) and the train split (its description and contents).

    Example:
        >>> len(logits_cache_key(teacher, data)), logits_cache_key(teacher, data) == logits_cache_key(teacher, data)
        (16, True)
    """
    h = hashlib.sha256()
    for name, value in sorted(teacher.state_dict().items()):
        if isinstance(value, torch.Tensor):
            h.update(name.encode())
            update_with_tensor(h, value)
    h.update(_forward_description(teacher).encode())
    h.update(f"timm {timm.__version__}".encode())
    h.update(data.describe().encode())
    # describe() names sizes, not contents: two seeds of one dataset must not share logits
    data.train.digest_into(h)  # the tensors, or a streamed split's file bytes and preprocessing
    return h.hexdigest()[:16]


def clear_logits_memory() -> None:
    """Forget the teacher logits held in this process (the disk cache stays)."""
    _LOGITS_MEMORY.clear()


def teacher_logits(
    teacher: nn.Module, data: DataBundle, cache_key: str | None = None, batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """The teacher's logits on the train split, shape (len(data.train), num_classes), float32 on the CPU.

    Computed once, on `device` (the training device; in float32 there too, whatever the training
    precision: the targets stay as good as the teacher): kept in memory for the process and on disk at
    ``cache_dir()/logits/<key>.npy`` (a float32 (N, classes) array, memory-mapped when read; key: `cache_key`, else `logits_cache_key`, plus the
    device type when it is not the CPU: a GPU's rounding differs). The returned tensor is the cached
    one: read it, never modify it in place.

    Example:
        >>> logits = teacher_logits(teacher, data)
        >>> logits.shape == (len(data.train), data.num_classes)
        True
    """
    key = cache_key or logits_cache_key(teacher, data)
    if (kind := torch.device(device).type) != "cpu":
        key = f"{key}-{kind}"
    if key in _LOGITS_MEMORY:
        return _LOGITS_MEMORY[key]
    folder = cache_dir() / "logits"
    path = folder / f"{key}.npy"
    logits = None
    if path.exists():
        try:
            logits = _open_logits(path)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed, not fatal
            log.warning("teacher logits cache %s unreadable (%s); recomputing", path, exc)
        if logits is not None and tuple(logits.shape) != (len(data.train), data.num_classes):
            log.warning("teacher logits cache %s has shape %s for %d images; recomputing",
                        path, tuple(logits.shape), len(data.train))
            logits = None
    if logits is None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per-process: parallel workers never share one
        _run_teacher(teacher, data.train, batch_size, device, tmp, data.num_classes)
        tmp.replace(path)  # atomic: readers see the old file or the whole new one
        logits = _open_logits(path)
        log.info("teacher logits: computed %s, cached at %s", tuple(logits.shape), path)
    _LOGITS_MEMORY[key] = logits
    return logits


def _open_logits(path: Path) -> torch.Tensor:
    """The cached logits, memory-mapped: KD reads the rows of its batches, never the whole file
    (copy-on-write, so the tensor is writable without touching the file)."""
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))


@torch.no_grad()
def _run_teacher(teacher: nn.Module, split: Split, batch_size: int, device: str, out: Path, classes: int) -> None:
    """The teacher's float32 logits on every image of `split`, written batch by batch into the .npy
    file `out` (a memory map: nothing grows with the split)."""
    if torch.device(device).type != "cpu":
        teacher = copy.deepcopy(teacher).to(device)  # the shared CPU teacher is left where it is
    was_training = teacher.training
    teacher.eval()
    rows = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(split), classes))
    try:
        at = 0
        for xb, _ in split.chunks(batch_size):
            block = teacher(xb.to(device)).float().cpu().numpy()
            rows[at : at + len(block)] = block
            at += len(block)
        rows.flush()
    finally:
        del rows
        teacher.train(was_training)


def _vit_geometry(teacher: nn.Module) -> dict[str, Any]:
    """The input/output setup a student must share with the teacher, read from a timm ViT."""
    embed = getattr(teacher, "patch_embed", None)
    if embed is None or not hasattr(teacher, "blocks"):
        raise ConfigError(
            f"a student needs a timm VisionTransformer teacher (with patch_embed and blocks), got {type(teacher).__name__}"
        )
    return {
        "img_size": tuple(embed.img_size),
        "patch_size": tuple(embed.patch_size),
        "in_chans": int(embed.proj.in_channels),
        "num_classes": int(teacher.num_classes),
    }


def _custom_kwargs(teacher: nn.Module, s: StudentConfig) -> dict[str, Any]:
    use_fc_norm = not isinstance(getattr(teacher, "fc_norm", nn.Identity()), nn.Identity)
    has_norm = not isinstance(getattr(teacher, "norm", nn.Identity()), nn.Identity)
    return {
        **_vit_geometry(teacher),
        "embed_dim": s.embed_dim,
        "depth": s.depth,
        "num_heads": s.heads,
        "mlp_ratio": s.mlp_ratio,
        "class_token": getattr(teacher, "cls_token", None) is not None,
        "reg_tokens": int(getattr(teacher, "num_reg_tokens", 0)),
        "no_embed_class": bool(getattr(teacher, "no_embed_class", False)),
        "global_pool": getattr(teacher, "global_pool", "token"),
        "pre_norm": not isinstance(getattr(teacher, "norm_pre", nn.Identity()), nn.Identity),
        "fc_norm": use_fc_norm,
        "final_norm": has_norm or use_fc_norm,
    }


def stage_model(teacher: nn.Module, config: CompressionConfig) -> tuple[nn.Module, str]:
    """The model the stages after the student act on, and its name for messages: the teacher, or the
    untrained student of `config` with its tensors on the meta device (structure only, no memory)."""
    s = config.get("student")
    if s is None:
        return teacher, "the teacher"
    with torch.device("meta"):
        student = make_student(teacher, config)
    depth = len(getattr(student, "blocks", ()))
    name = f"the {depth}-block custom student" if s.model == "custom" else f"the student {s.model}"
    return student, name


def make_student(teacher: nn.Module, config: CompressionConfig) -> nn.Module:
    """The untrained student of `config`, with the teacher's input size, patches, channels and classes.

    ``student="custom"`` builds a timm VisionTransformer of `student_depth` blocks, width
    `student_embed_dim`, `student_heads` heads and `student_mlp_ratio`, with the teacher's token setup
    (class / register / distillation tokens, pooling, norms). Any other value is a timm model name.

    Example:
        >>> deit = make_student(teacher, CompressionConfig({"student": {"model": "deit_tiny_patch16_224", "epochs": 1}}))
        >>> deit.patch_embed.proj.in_channels, deit.num_classes  # the teacher's input and classes
        (1, 10)
    """
    s = config.get("student")
    if s is None:
        raise ConfigError("this config chooses no student; give it a StudentConfig (model 'custom' or a timm model name)")
    if s.model != "custom":
        try:
            return create_model(TeacherSpec(s.model, _vit_geometry(teacher))).eval()
        except ModelError as exc:
            raise ConfigError(f"student={s.model!r}: {exc}") from None
    kwargs = _custom_kwargs(teacher, s)
    # a DeiT-distilled teacher gets a distilled student, so the token layout and the heads match
    cls = VisionTransformerDistilled if hasattr(teacher, "dist_token") else VisionTransformer
    try:
        return cls(**kwargs).eval()
    except (AssertionError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build the custom student {kwargs}: {exc}") from None


def select_blocks(teacher_depth: int, student_depth: int) -> list[int]:
    """Evenly spaced teacher blocks for a shallower student, starting with the first (as DistilBERT
    takes every other layer).

    Example:
        >>> select_blocks(12, 4), select_blocks(4, 2), select_blocks(4, 3), select_blocks(2, 4)
        ([0, 3, 6, 9], [0, 2], [0, 1, 2], [0, 1, 0, 1])
    """
    if student_depth <= teacher_depth:
        return [i * teacher_depth // student_depth for i in range(student_depth)]
    return [i % teacher_depth for i in range(student_depth)]  # deeper than the teacher: repeat its blocks


def _select(tensor: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    """The leading elements of `tensor` along every dimension, cut to `shape`; a fused qkv tensor is
    cut per q / k / v so each keeps its own leading channels."""
    if name.endswith(("attn.qkv.weight", "attn.qkv.bias")):
        parts = tensor.chunk(3, dim=0)
        third = torch.Size([shape[0] // 3, *shape[1:]])
        return torch.cat([_select(p, third, "") for p in parts], dim=0)
    return tensor[tuple(slice(0, n) for n in shape)].clone()


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> dict[str, Any]:
    """Weight selection (Xu et al., "Initializing Models with Larger Ones", ICLR 2024): every student
    tensor starts as the leading slice of the teacher's tensor of the same name, its blocks taken from
    evenly spaced teacher blocks (`select_blocks`). Tensors the teacher lacks, or that are larger in
    the student than in the teacher, keep the student's own initialisation.

    Returns what was copied: ``{"blocks": [...], "copied": n, "kept": [names]}``.

    Example:
        >>> cfg = CompressionConfig({"student": {"model": "custom", "depth": 2, "embed_dim": 16, "heads": 2,
        ...                                      "epochs": 1}})
        >>> init_from_teacher(make_student(teacher, cfg), teacher)["blocks"]
        [0, 1]
    """
    t_state = teacher.state_dict()
    t_depth = len(getattr(teacher, "blocks", []))
    s_depth = len(getattr(student, "blocks", []))
    blocks = select_blocks(t_depth, s_depth) if t_depth and s_depth else []
    copied, kept = 0, []
    new_state = {}
    for name, value in student.state_dict().items():
        source = name
        if name.startswith("blocks.") and blocks:
            index, rest = name.split(".", 2)[1:]
            source = f"blocks.{blocks[int(index)]}.{rest}"
        t_value = t_state.get(source)
        if (t_value is None or t_value.dim() != value.dim() or not value.is_floating_point()
                or any(s > t for s, t in zip(value.shape, t_value.shape))):
            kept.append(name)
            continue
        new_state[name] = _select(t_value, value.shape, source).to(value.dtype)
        copied += 1
    student.load_state_dict(new_state, strict=False)
    return {"blocks": blocks, "copied": copied, "kept": kept}


def student_arch(model: nn.Module) -> dict[str, Any]:
    """JSON-able description of a timm ViT: depth, width, heads, MLP ratio, tokens, distilled or not."""
    block = model.blocks[0]
    return {
        "class": type(model).__name__,
        "depth": len(model.blocks),
        "embed_dim": int(model.embed_dim),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": round(block.mlp.fc1.out_features / model.embed_dim, 4),
        "num_prefix_tokens": int(model.num_prefix_tokens),
        "distilled": hasattr(model, "dist_token"),
        "img_size": list(model.patch_embed.img_size),
        "patch_size": list(model.patch_embed.patch_size),
        "num_classes": int(model.num_classes),
    }


def distill_train(
    model: nn.Module,
    data: DataBundle,
    logits: torch.Tensor,
    settings: TrainSettings,
    temperature: float,
    alpha: float,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
    teacher: nn.Module | None = None,
    augment: str = "none",
    feature_weight: float = 0.0,
) -> float:
    """Train `model` in place by knowledge distillation from `logits` (the teacher's, on the train
    split); returns the mean loss of the last epoch.

    Stronger recovery (recovery.py), opt-in: with `augment` (a `kd_augment` setting) or
    `feature_weight` > 0, `teacher` runs on each (augmented) batch instead of `logits` being read
    (which may then be None), and `feature_weight` weighs a block-output (token feature) loss.

    Example:
        >>> student = make_student(teacher, CompressionConfig({"student": {"model": "custom", "depth": 1,
        ...     "embed_dim": 16, "heads": 2, "epochs": 1}}))
        >>> distill_train(student, data, teacher_logits(teacher, data), TrainSettings(epochs=1), 4.0, 0.7) > 0
        True
    """
    if augment != "none" or feature_weight > 0:
        return _distill_online(model, data, settings, temperature, alpha, seed, progress, teacher, augment,
                               feature_weight)
    if logits.shape != (len(data.train), data.num_classes):
        raise ValueError(
            f"teacher logits of shape {tuple(logits.shape)} do not match the train split "
            f"({len(data.train)} images, {data.num_classes} classes); recompute them with teacher_logits()"
        )
    report, last = _last_loss_reporter(progress)

    def loss_fn(out, labels, targets):
        return kd_loss(out, labels, targets, temperature, alpha)

    distilled = hasattr(model, "set_distilled_training")
    if distilled:
        model.set_distilled_training(True)  # both heads during training: CE on head, KD on head_dist
    try:
        train_classifier(model, data, settings, seed=seed, loss_fn=loss_fn, extra_targets=logits, progress=report)
    finally:
        if distilled:
            model.set_distilled_training(False)  # inference averages the heads, as timm does
    return last[0]


def _last_loss_reporter(progress: Callable[[int, int, float], None] | None):
    """A train_classifier progress callback that keeps the last epoch's loss (in the returned list) and
    forwards to `progress`."""
    last = [float("nan")]

    def report(epoch: int, total: int, loss: float) -> None:
        last[0] = loss
        if progress:
            progress(epoch, total, loss)

    return report, last


def _distill_online(model: nn.Module, data: DataBundle, settings: TrainSettings, temperature: float, alpha: float,
                    seed: int, progress: Callable[[int, int, float], None] | None, teacher: nn.Module | None,
                    augment: str, feature_weight: float) -> float:
    """`distill_train` with the teacher run on each batch the student sees (see recovery.py)."""
    if teacher is None:
        raise ValueError("distill.augment / distill.feature_weight need the teacher itself, not only its logits")
    kinds = augment_kinds(augment)
    settings = dataclasses.replace(settings, augment=tuple(dict.fromkeys((*settings.augment, *kinds))))
    where = resolve_training(settings.device, settings.precision)
    online = OnlineTeacher(teacher, model, where.device, feature_weight)
    report, last = _last_loss_reporter(progress)

    def loss_fn(out, labels, targets):
        loss = kd_loss(out, labels, targets, temperature, alpha)
        extra = online.extra_loss()
        return loss if extra is None else loss + extra

    distilled = hasattr(model, "set_distilled_training")
    if distilled:
        model.set_distilled_training(True)
    try:
        train_classifier(model, data, settings, seed=seed, loss_fn=loss_fn, progress=report,
                         online_targets=online, aux=online.projections)
    finally:
        online.close()
        if distilled:
            model.set_distilled_training(False)
    return last[0]


def _recovery_on(d: DistillConfig) -> bool:
    return d.augment != "none" or d.feature_weight > 0


def _context_logits(ctx: BuildContext) -> torch.Tensor:
    if ctx.teacher_logits is None:
        # kept on the context so a build that trains a student and fine-tunes reads them once
        ctx.teacher_logits = teacher_logits(ctx.teacher, ctx.data, device=ctx.training().device)
    return ctx.teacher_logits


def _kd_inputs(ctx: BuildContext, online: bool = False) -> tuple[DataBundle, torch.Tensor | None]:
    """The data and teacher logits KD trains on: the whole train split, or the seeded subset of
    `ctx.kd_limit` images (rows of the cached logits picked by the same indices). `online`: the
    teacher runs on each batch, so no logits are read (None)."""
    logits = None if online else _context_logits(ctx)
    idx = ctx.kd_indices()
    if idx is None:
        return ctx.data, logits
    return dataclasses.replace(ctx.data, train=ctx.data.train.subset(idx)), None if logits is None else logits[idx]


def _recovery_kwargs(d: DistillConfig, ctx: BuildContext) -> dict[str, Any]:
    return {"teacher": ctx.teacher, "augment": d.augment, "feature_weight": d.feature_weight}


def _recovery_note(d: DistillConfig) -> dict[str, Any]:
    """The recovery settings for the build notes, only when on (notes of default builds stay as they were)."""
    if not _recovery_on(d):
        return {}
    return {"kd_augment": d.augment, "kd_feature_weight": d.feature_weight, "kd_teacher": "online"}


def _stage_progress(ctx: BuildContext, stage: str, model: nn.Module) -> Callable[[int, int, float], None] | None:
    if ctx.progress is None and ctx.on_epoch is None:
        return None

    def report(epoch: int, total: int, loss: float) -> None:
        if ctx.progress is not None:
            ctx.progress(stage, epoch, total, loss)
        if ctx.on_epoch is not None:  # the model being trained, after `epoch` of `total` epochs
            ctx.on_epoch(stage, epoch, total, model)

    return report


@register_handler(StudentConfig)
def student(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """Replace the teacher by a smaller ViT trained by knowledge distillation for `student_epochs`
    (untrained when ``ctx.train`` is False: the caller loads the saved weights)."""
    s, d = config.get("student"), config.distill
    if s is None:
        return copy_model(model)
    torch.manual_seed(ctx.seed)  # the same config and seed give the same initial student
    new = make_student(model, config)
    selection = init_from_teacher(new, model) if s.init == "teacher" else None
    # a student that starts from the teacher's weights fine-tunes at the recovery learning rate
    base = FINETUNE_SETTINGS if selection else STUDENT_SETTINGS
    final_loss, kd_images = None, 0
    if ctx.train:
        settings = ctx.train_settings(base, epochs=s.epochs)
        kd_data, kd_logits = _kd_inputs(ctx, _recovery_on(d))
        kd_images = len(kd_data.train)
        final_loss = distill_train(new, kd_data, kd_logits, settings, d.temperature,
                                   d.alpha, seed=ctx.seed, progress=_stage_progress(ctx, "student", new),
                                   **_recovery_kwargs(d, ctx))
    ctx.note(
        student_params=param_count(new),
        student_arch=student_arch(new),
        kd_epochs=s.epochs if ctx.train else 0,
        kd_images=kd_images,
        final_loss=None if final_loss is None else round(final_loss, 5),
        lr=base.lr,
        **_recovery_note(d),
        **({"trained_on": dataclasses.asdict(ctx.training())} if ctx.train else {}),
        init="random" if selection is None else {"teacher_blocks": selection["blocks"], "tensors_copied": selection["copied"],
                                                 "tensors_kept": len(selection["kept"])},
    )
    return new.eval()


@register_handler(FinetuneConfig)
def finetune(model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module:
    """Recover accuracy lost to pruning, low-rank or token reduction with `kd_epochs` epochs of
    knowledge distillation from the teacher, at the lower fine-tuning learning rate (5e-4)."""
    new = copy_model(model)
    epochs, d = (config.get("finetune") or FinetuneConfig()).epochs, config.distill
    if epochs == 0 or not ctx.train:
        return new.eval()  # identity setting, or a rebuild whose weights are loaded afterwards
    settings = ctx.train_settings(FINETUNE_SETTINGS, epochs=epochs)
    kd_data, kd_logits = _kd_inputs(ctx, _recovery_on(d))
    final_loss = distill_train(new, kd_data, kd_logits, settings, d.temperature,
                               d.alpha, seed=ctx.seed, progress=_stage_progress(ctx, "finetune", new),
                               **_recovery_kwargs(d, ctx))
    ctx.note(kd_epochs=epochs, kd_images=len(kd_data.train), lr=settings.lr, final_loss=round(final_loss, 5),
             kd_temperature=d.temperature, kd_alpha=d.alpha, **_recovery_note(d),
             trained_on=dataclasses.asdict(ctx.training()))
    return new.eval()


__all__ = [
    "FINETUNE_SETTINGS",
    "STUDENT_SETTINGS",
    "clear_logits_memory",
    "distill_train",
    "finetune",
    "init_from_teacher",
    "kd_loss",
    "logits_cache_key",
    "make_student",
    "select_blocks",
    "student",
    "student_arch",
    "student_problem",
    "teacher_logits",
]
