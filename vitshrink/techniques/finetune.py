"""KD fine-tune: `epochs` epochs of knowledge distillation from the teacher after the structural
stages, to recover accuracy (optionally on augmented batches, and matching block features: the
candidate's `DistillConfig`, shared with a student's training). On when epochs is above zero; the
handler is `vitshrink.compress.distill.finetune`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._base import (ABOVE_ZERO, AT_LEAST_ZERO, Bounds, Technique, TechniqueConfig, register_config_type,
                    register_technique, setting)

# augmentation of the KD batches (the teacher then runs on each augmented batch: no cached logits)
KD_AUGMENTS = ("none", "flip", "shift", "flip+shift")


@dataclass(frozen=True)
class DistillConfig(TechniqueConfig):
    """How knowledge distillation trains, shared by the techniques that distil (a student's training
    and the KD fine-tune): one per candidate (`CompressionConfig.distill`)."""

    temperature: float = setting(4.0, bounds=ABOVE_ZERO)  # softmax temperature of the KD loss, > 0
    alpha: float = setting(0.7, bounds=Bounds(0.0, 1.0))  # weight of the KD loss against the label loss, in [0, 1]
    augment: str = setting("none", choices=KD_AUGMENTS, unused=True)  # augmentation of the KD batches
    feature_weight: float = setting(0.0, bounds=AT_LEAST_ZERO, unused=True)  # weight of the cosine loss on block features; 0: off


register_config_type(DistillConfig)


@dataclass(frozen=True)
class FinetuneConfig(TechniqueConfig):
    epochs: int = setting(0, bounds=AT_LEAST_ZERO)  # KD epochs after pruning / low-rank / tokens; 0: off


def distill_extras(space: Any) -> dict[str, Any]:
    """The space's fixed stronger-recovery settings (augmentation, feature loss), which every
    reference config that distils takes."""
    fixed = dict(space.fixed)
    return {key: fixed[key] for key in ("distill.augment", "distill.feature_weight") if key in fixed}


def recovery(space: Any) -> dict[str, Any]:
    """The KD fine-tune a structural reference config (pruning, low-rank) recovers with: the space's
    fixed epochs (none fixed: no fine-tune) and its fixed recovery settings."""
    kd = int(space.fixed_value("finetune.epochs", 0))
    return {"finetune.epochs": kd, **distill_extras(space)} if kd else {}


TECHNIQUE = register_technique(Technique(
    name="finetune", stage="finetune", config=FinetuneConfig,
    switches=("epochs",), on={"finetune.epochs": 1}, identity=(FinetuneConfig(epochs=0), 0.0), trains="epochs",
    shared=DistillConfig,
    cost=lambda s, plan, named: plan.train(s.epochs), features=lambda s: (float(s.epochs),),
))
