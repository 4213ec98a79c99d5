"""Handlers: the function that applies a technique, registered for the technique's config type (as
torchao's `register_quantize_module_handler`), or its name; `build` applies the handlers of a
candidate's configs in stage order.
A technique's stage, example and identity live in its record (`vitshrink.techniques`), not here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..data import DataBundle
from ..models import TrainSettings
from ..spaces import CompressionConfig
from ..techniques import Technique, get_technique, list_techniques, techniques
from ..training import TrainingDevice, resolve_training


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


class Handler(Protocol):
    def __call__(self, model: nn.Module, config: CompressionConfig, ctx: BuildContext) -> nn.Module: ...


_HANDLERS: dict[type, Handler] = {}  # a technique's config type -> the function that applies it


def register_handler(*targets: str | type) -> Callable[[Handler], Handler]:
    """Register `fn(model, config, ctx) -> new model` as the handler of the techniques whose config
    types (or names) are `targets` (one function may apply several: ToMe and patch dropping share the
    token-reduction pass). `build` calls it once per candidate holding any of their configs, at their
    stage, with the whole candidate (`config[name]` is a technique's own config); it must return a new
    model and leave its input alone, and be exact at each technique's identity setting (the contract test).

    Example:
        >>> from vitshrink.techniques.prune import PruneConfig
        >>> handler_of(PruneConfig).__name__, handler_of("prune").__name__
        ('prune_vit', 'prune_vit')
    """
    techniques = [_technique_of(t) for t in targets]  # an unknown name or type is refused with the registered ones
    names = [t.name for t in techniques]
    if len({t.stage for t in techniques}) > 1:
        raise ValueError(f"one handler for techniques of different stages: {names}")

    def deco(fn: Handler) -> Handler:
        for technique in techniques:
            if technique.config in _HANDLERS:
                raise ValueError(f"technique {technique.name!r} has a handler already "
                                 f"({_HANDLERS[technique.config].__name__})")
            _HANDLERS[technique.config] = fn
        return fn

    return deco


def _technique_of(target: str | type) -> Technique:
    if isinstance(target, str):
        return get_technique(target)
    found = next((t for t in techniques() if t.config is target), None)
    if found is None:
        raise KeyError(f"{getattr(target, '__name__', target)!r} is the config type of no registered technique")
    return found


def handler_of(target: str | type) -> Handler:
    """The handler registered for a technique's config type, or its name."""
    technique = _technique_of(target)
    try:
        return _HANDLERS[technique.config]
    except KeyError:
        raise KeyError(f"technique {technique.name!r} has no handler; register one with "
                       f"@register_handler({technique.config.__name__})") from None


def handled_techniques() -> list[str]:
    """The techniques with a handler, in the order `build` applies them."""
    return [name for name in list_techniques() if get_technique(name).config in _HANDLERS]


@dataclass(frozen=True)
class Export:
    """How `vitshrink.exporting` writes a trial deployed by one technique (a runtime), registered with
    its handler. A deployed module that holds its ONNX graph (`model_bytes`) is written as it is;
    otherwise the float model is exported to ONNX, then `onnx` converts it.

    Attributes:
        onnx: The float ONNX graph's bytes -> the file's (None: the float graph as it is).
        onnx_what: What the ONNX file holds, for the model card.
        checked_against: "deployed": the file is compared with the trial's deployed model (a
            conversion that approximates it); "float": with the float torch model (exact up to rounding).
        torchscript: None: trace the deployed model; else trace the float model, described so.
        refuse: Format -> why this deployment has no file of that format and what to do instead.
    """

    onnx: Callable[[bytes], bytes] | None = None
    onnx_what: str = "the float32 model"
    checked_against: str = "float"
    torchscript: str | None = None
    refuse: dict[str, str] = field(default_factory=dict)


_EXPORTS: dict[str, Export] = {}


def register_export(name: str, export: Export) -> None:
    """How the trials technique `name` deploys are exported (see `Export`)."""
    get_technique(name)
    _EXPORTS[name] = export


def export_of(name: str) -> Export:
    """How a trial deployed by technique `name` ("none": a torch float model) is exported."""
    return _EXPORTS.get(name, Export())


def planned_handlers(config: CompressionConfig) -> list[tuple[Handler, list[Technique]]]:
    """The handlers `build` applies for `config`, in order, each with the chosen techniques it applies.

    Example:
        >>> [(fn.__name__, [t.name for t in ts]) for fn, ts in planned_handlers(
        ...     CompressionConfig({"prune": {"heads": 0.5}, "tome": {"r": 2}, "patch_drop": {"fraction": 0.1, "at": [1]}}))]
        [('prune_vit', ['prune']), ('reduce_tokens', ['patch_drop', 'tome'])]
    """
    plan: dict[Handler, list[Technique]] = {}
    for name, own in config.parts:
        plan.setdefault(handler_of(type(own)), []).append(get_technique(name))
    return list(plan.items())
