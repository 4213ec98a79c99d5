"""The transform registry: compression stages registered by name, applied in one fixed order."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..data import DataBundle
from ..models import TrainSettings
from ..spaces import CompressionConfig
from ..techniques import chosen_techniques
from ..training import TrainingDevice, resolve_training

# The documented order of application; build() walks it.
STAGES = ("student", "prune", "lowrank", "tokens", "finetune", "quantize")


@dataclass
class BuildContext:
    """What a transform may use besides the model and the config.

    `teacher` is the float teacher (eval mode, never modified); `teacher_logits` are its logits on
    the train split, computed once per dataset and cached (KD reads them instead of re-running the
    teacher every step). `records` collects one dict per stage.
    """

    data: DataBundle
    teacher: nn.Module
    seed: int = 0
    teacher_logits: torch.Tensor | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    progress: Callable[[str, int, int, float], None] | None = None  # (stage, step, total, loss)
    train: bool = True  # False: training stages only shape the model (rebuilding a stored trial)
    kd_limit: int | None = None  # KD / fine-tune train on this many train images (seeded subset); None: all
    notes: dict[str, Any] = field(default_factory=dict)  # what the running stage did; see note()
    # called after each training epoch with (stage, epoch, epochs, model): search/_rungs.py measures the
    # model there and may stop the build by raising (optuna.TrialPruned)
    on_epoch: Callable[[str, int, int, nn.Module], None] | None = None
    train_device: str = "auto"  # where students and KD fine-tunes train (training.py); the teacher's setting
    train_precision: str = "auto"

    def training(self) -> TrainingDevice:
        """The concrete training device and precision on this machine."""
        return resolve_training(self.train_device, self.train_precision)

    def train_settings(self, base: TrainSettings, **changes: Any) -> TrainSettings:
        """`base` with `changes`, trained on this context's device and precision."""
        where = self.training()
        return dataclasses.replace(base, device=where.device, precision=where.precision, **changes)

    def example(self, batch: int = 1) -> torch.Tensor:
        """A batch of validation images (for tracing and MAC counting)."""
        return self.data.val.images(range(min(batch, len(self.data.val))))

    def calibration(self, n: int) -> torch.Tensor:
        """`n` training images, the same ones for a given seed (for pruning scores and static quantization)."""
        gen = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(self.data.train), generator=gen)[:n]
        return self.data.train.images(idx)

    def kd_indices(self) -> torch.Tensor | None:
        """Indices of the train images that KD training uses: a subset of `kd_limit` images, the same
        for a given seed (None: the whole train split). Keeps KD affordable on a CPU; the teacher and
        its cached logits still cover the whole split.

        Example:
            >>> BuildContext(data, teacher, seed=0, kd_limit=100).kd_indices().shape
            torch.Size([100])
        """
        if not self.kd_limit or self.kd_limit >= len(self.data.train):
            return None
        gen = torch.Generator().manual_seed(self.seed + 1)  # not calibration()'s images, which use `seed`
        return torch.randperm(len(self.data.train), generator=gen)[: self.kd_limit].sort().values

    def note(self, **facts: Any) -> None:
        """Record JSON-able facts about the running stage (kept heads, tokens per block, ...)."""
        self.notes.update(facts)


class Transform(Protocol):
    def __call__(self, model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module: ...


@dataclass(frozen=True)
class RegisteredTransform:
    name: str
    stage: str
    fn: Transform
    is_active: Callable[[CompressionConfig], bool]
    doc: str


_TRANSFORMS: dict[str, RegisteredTransform] = {}


def register_transform(name: str, stage: str, is_active: Callable[[CompressionConfig], bool] | None = None):
    """Register `fn(model, config, ctx) -> new model` under `name` for `stage`.

    `is_active(config)` says whether the config asks for it; by default, whether the config chooses
    a technique whose handler is `name` (`vitshrink.techniques`). An inactive transform is skipped, so
    every transform must be exact at its identity setting anyway (a contract test checks both).
    """
    if is_active is None:
        is_active = lambda config: any(t.handler == name for t in chosen_techniques(config))  # noqa: E731
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")

    def deco(fn: Transform) -> Transform:
        if name in _TRANSFORMS:
            raise ValueError(f"transform {name!r} registered twice")
        _TRANSFORMS[name] = RegisteredTransform(name, stage, fn, is_active, (fn.__doc__ or "").strip())
        return fn

    return deco


def get_transform(name: str) -> RegisteredTransform:
    try:
        return _TRANSFORMS[name]
    except KeyError:
        raise KeyError(f"unknown transform {name!r}; registered: {', '.join(sorted(_TRANSFORMS))}") from None


def list_transforms(stage: str | None = None) -> list[str]:
    """Names of registered transforms, in application order."""
    items = sorted(_TRANSFORMS.values(), key=lambda t: (STAGES.index(t.stage), t.name))
    return [t.name for t in items if stage is None or t.stage == stage]
