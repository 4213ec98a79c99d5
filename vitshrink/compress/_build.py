"""`build`: apply the registered transforms of a config to a teacher, in the documented order."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import DataBundle
from ..models import copy_model, param_count
from ..spaces import CompressionConfig
from ..objectives.macs import count_macs
from ._fit import check_fits
from ._registry import BuildContext, planned_handlers

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """The compressed model, its float form before quantization (what is saved), and one record per stage."""

    model: nn.Module
    float_model: nn.Module
    records: list[dict[str, Any]]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(
    teacher: nn.Module,
    config: CompressionConfig,
    data: DataBundle,
    seed: int = 0,
    teacher_logits: torch.Tensor | None = None,
    train: bool = True,
    float_state: dict[str, torch.Tensor] | None = None,
    progress=None,
    kd_limit: int | None = None,
    on_epoch=None,
    train_device: str = "auto",
    train_precision: str = "auto",
) -> BuildResult:
    """Apply `config` to a copy of `teacher`: student -> prune -> low-rank -> tokens -> fine-tune -> quantize.

    Deterministic in (teacher, config, data, seed). With `train=False` the training stages only
    shape the model (students are created but not trained, fine-tuning is skipped); together with
    `float_state` (the saved float weights of a trial) this rebuilds a stored trial exactly.
    `kd_limit` restricts student / fine-tune training to a seeded subset of that many train images.
    `on_epoch(stage, epoch, epochs, model)` is called after each training epoch (see BuildContext).
    `train_device` / `train_precision` say where students and fine-tunes train (see vitshrink.training);
    the model comes back on the CPU in float32 either way.

    Example:
        >>> result = build(teacher, CompressionConfig({"prune": {"heads": 0.5}}), data)
        >>> [r["stage"] for r in result.records]
        ['prune']
    """
    check_fits(teacher, config)  # an impossible config fails here, before a student is distilled
    seed_everything(seed)
    ctx = BuildContext(data=data, teacher=teacher.eval(), seed=seed, teacher_logits=teacher_logits,
                       progress=progress, train=train, kd_limit=kd_limit, on_epoch=on_epoch,
                       train_device=train_device, train_precision=train_precision)
    model = copy_model(teacher).eval()
    float_model: nn.Module | None = None  # the model before quantization: what is saved, and re-loaded

    def at_float_point(m: nn.Module) -> nn.Module:
        if float_state is not None:
            m.load_state_dict(float_state)
        return m

    for handler, chosen in planned_handlers(config):
        stage = chosen[0].stage
        if stage == "quantize" and float_model is None:
            model = float_model = at_float_point(model)
        if stage == "finetune" and not train:
            continue
        before = {"params": param_count(model), "macs": _safe_macs(count_macs, model, ctx)}
        start = time.perf_counter()
        seed_everything(seed)
        ctx.notes = {}
        model = handler(model, config, ctx).eval()
        record = {
            "stage": stage,
            "transform": "+".join(t.name for t in chosen),  # the techniques this handler applied
            "seconds": round(time.perf_counter() - start, 3),
            "params_before": before["params"],
            "params_after": param_count(model) if stage != "quantize" else before["params"],
            "macs_before": before["macs"],
            "macs_after": _safe_macs(count_macs, model, ctx) if stage != "quantize" else before["macs"],
        }
        record.update(ctx.notes)
        ctx.records.append(record)
        log.debug("stage %s/%s: %s", stage, record["transform"], record)
    if float_model is None:  # nothing quantized: the float model is the result
        model = float_model = at_float_point(model)
    return BuildResult(model=model, float_model=float_model, records=ctx.records)


def _safe_macs(count_macs, model: nn.Module, ctx: BuildContext) -> int | None:
    try:
        return int(count_macs(model, ctx.example(1)))
    except Exception:  # noqa: BLE001 - MACs are informative; a model the counter cannot trace still builds
        return None
