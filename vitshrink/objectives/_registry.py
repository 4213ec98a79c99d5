"""Objectives by name: what a study optimises, chosen in the recipe (``[study] objectives``).

An `Objective` is a name, a direction, a unit and how its value is computed from a measured
candidate; `register_objective` puts one in the table, `get_objective` resolves a name, and
`list_objectives` lists them (as timm registers models). The recipe speaks names; the search
resolves them once, when the study is created, and every reader (Pareto table, hypervolume, plots,
export) finds a value by its name in the study's metric names, never by position.

Example:
    >>> [o.name for o in list_objectives()]
    ['accuracy', 'latency_ms', 'size_bytes', 'peak_memory_bytes', 'throughput', 'macs']
    >>> get_objective("throughput").direction
    'maximize'
    >>> objectives_for(["accuracy", "macs"])[1].show(2.5e6)
    '2.50'
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from ..errors import ConfigError
from .macs import count_macs
from .memory import peak_memory_bytes

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ._protocol import LatencyResult

MAXIMIZE, MINIMIZE = "maximize", "minimize"
DEFAULT_OBJECTIVES = ("accuracy", "latency_ms", "size_bytes")  # a study's objectives unless its recipe names others


@dataclass
class Candidate:
    """A measured candidate: what every objective's value is computed from.

    `accuracy` is None for an untrained structure (screening); `macs` is filled when the build
    already counted them; `images` is one batch at the target's latency batch size."""

    model: nn.Module  # the deployed model
    float_model: nn.Module  # before quantization (what the MAC counter can trace)
    images: torch.Tensor
    latency: LatencyResult
    latency_ms: float  # the latency objective, in the study's units (search/_latency.py)
    size_bytes: int
    throughput_batch: int = 0
    accuracy: float | None = None
    macs: int | None = None


@dataclass(frozen=True)
class Objective:
    """One thing a study can optimise.

    `structural`: a property of the structure, not of the weights, so it is known from the untrained
    structure (screening compares candidates by it). `tolerance`: how far (relative) two measurements
    of one structure may differ (screening and rungs never judge within it). `fraction`: a value in
    [0, 1] (the hypervolume uses 1 - value, not a ratio to the teacher). `column` and `show`: its
    heading and cell in the plain Pareto table."""

    name: str
    direction: str
    unit: str
    description: str
    compute: Callable[[Candidate], float | None]
    column: str
    show: Callable[[float], str]
    structural: bool = True
    tolerance: float = 0.0
    fraction: bool = False
    resolution: float = 0.0

    @property
    def maximize(self) -> bool:
        return self.direction == MAXIMIZE

    def better_or_equal(self, a: float, b: float) -> bool:
        """`a` is at least as good as `b`."""
        return a >= b if self.maximize else a <= b

    def normalized(self, value: float, teacher: float) -> float:
        """`value` in the hypervolume's space, to be minimised: 1 - value for a fraction, else its
        cost relative to the teacher's (teacher / value for a maximised rate). A measurement below the
        objective's `resolution` (peak memory grows in pages: a tiny model's forward can measure 0) is
        counted as the resolution, so that two unmeasurably small values compare as equal."""
        if self.fraction:
            return 1.0 - value
        if self.resolution > 0:
            value, teacher = max(value, self.resolution), max(teacher, self.resolution)
        if teacher <= 0 or value <= 0:
            raise ValueError(f"{self.name}: the teacher's ({teacher}) and the trial's ({value}) values must be > 0")
        return teacher / value if self.maximize else value / teacher

    @property
    def hv_reference(self) -> float:
        """The hypervolume reference coordinate: zero accuracy, or 10 % costlier than the teacher."""
        return 1.0 if self.fraction else 1.1


_REGISTRY: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Add `objective` to the table (its name must be new); returns it."""
    if objective.name in _REGISTRY:
        raise ValueError(f"objective {objective.name!r} is registered already")
    if objective.direction not in (MAXIMIZE, MINIMIZE):
        raise ValueError(f"objective {objective.name!r}: direction {objective.direction!r} is not maximize or minimize")
    _REGISTRY[objective.name] = objective
    return objective


def list_objectives() -> list[Objective]:
    """Every registered objective, in registration order."""
    return list(_REGISTRY.values())


def get_objective(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown objective {name!r}; choose from {', '.join(_REGISTRY)}") from None


def check_objective_names(names: Iterable[str], where: str = "study.objectives") -> None:
    """ConfigError, in one sentence naming the allowed names, for an empty list, an unknown name or a
    duplicate."""
    names = list(names)
    allowed = ", ".join(_REGISTRY)
    if not names:
        raise ConfigError(f"{where} is empty; name one or more of {allowed} (default {list(DEFAULT_OBJECTIVES)})")
    if unknown := [n for n in names if n not in _REGISTRY]:
        raise ConfigError(f"{where} has unknown objective(s) {unknown}; choose from {allowed}")
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise ConfigError(f"{where} names {dup} more than once; each of {allowed} may be chosen once")


def objectives_for(names: Iterable[str]) -> tuple[Objective, ...]:
    """The registered objectives of `names`, checked (see `check_objective_names`)."""
    names = list(names)
    check_objective_names(names)
    return tuple(_REGISTRY[n] for n in names)


def directions_of(names: Iterable[str]) -> list[str]:
    """Optuna's directions of the objectives `names`."""
    return [o.direction for o in objectives_for(names)]


def objective_values(names: Iterable[str], candidate: Candidate) -> dict[str, float]:
    """The value of each objective in `names` for `candidate` (ValueError when one cannot be computed)."""
    values = {}
    for o in objectives_for(names):
        value = o.compute(candidate)
        if value is None:
            raise ValueError(f"objective {o.name} could not be measured for this candidate")
        values[o.name] = float(value)
    return values


def _peak_memory(c: Candidate) -> float:

    return float(peak_memory_bytes(c.model, c.images))


def _throughput(c: Candidate) -> float | None:
    if not c.throughput_batch:
        return None
    return float(c.latency.batch(c.throughput_batch).images_per_s)


def _macs(c: Candidate) -> float | None:
    if c.macs is not None:
        return float(c.macs)

    return float(count_macs(c.float_model, c.images[:1]))


register_objective(Objective(
    "accuracy", MAXIMIZE, "fraction", "top-1 accuracy on the val split", lambda c: c.accuracy,
    "val_acc", "{:.4f}".format, structural=False, fraction=True))
register_objective(Objective(
    "latency_ms", MINIMIZE, "ms", "median latency on the target at the latency batch", lambda c: c.latency_ms,
    "latency_ms", "{:.3f}".format))
register_objective(Objective(
    "size_bytes", MINIMIZE, "bytes", "bytes of the deployed artifact", lambda c: float(c.size_bytes),
    "size_kB", lambda v: f"{v / 1e3:.1f}"))
register_objective(Objective(
    "peak_memory_bytes", MINIMIZE, "bytes", "extra memory at the peak of one forward (objectives/memory.py)",
    _peak_memory, "mem_kB", lambda v: f"{v / 1e3:.1f}", tolerance=0.1, resolution=float(resource.getpagesize())))
register_objective(Objective(
    "throughput", MAXIMIZE, "images/s", "images per second at the target's throughput batch", _throughput,
    "img_per_s", "{:.1f}".format, tolerance=0.05))
register_objective(Objective(
    "macs", MINIMIZE, "MACs", "multiply-accumulates of one image's forward (float model)", _macs,
    "MMACs", lambda v: f"{v / 1e6:.2f}"))


__all__ = ["Candidate", "DEFAULT_OBJECTIVES", "MAXIMIZE", "MINIMIZE", "Objective", "check_objective_names",
           "directions_of",
           "get_objective", "list_objectives", "objective_values", "objectives_for", "register_objective"]
