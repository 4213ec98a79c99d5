"""Structure first: measure a candidate's untrained structure and skip training it when it cannot
enter the feasible Pareto front.

Latency and size are properties of the structure, not of the weights: `build(..., train=False)`
creates the structure (students untrained, fine-tune skipped, pruning / low-rank / tokens /
quantization applied) in seconds, its size is computed and its latency measured and cached by
structural signature, so the trained model later finds the same measurement in the cache.

The structural objectives the study chose (``[study] objectives``: latency_ms, size_bytes,
peak_memory_bytes, throughput, macs) are measured on the untrained structure too. A candidate is
screened (not trained; stored PRUNED with the reason) when

- it breaks a latency or size constraint (``[constraints] max_latency_ms`` / ``max_size_mb``): the
  trained model has the same structure, hence the same cached latency and the same size; or
- a feasible completed trial dominates it whatever accuracy training gives it. The candidate's
  accuracy is bounded, optimistically, by the best val accuracy any completed trial (the teacher
  included) has reached; a dominating trial must reach that bound and be no worse on every
  structural objective beyond its measurement noise: faster by more than the latency noise (the sum
  of both medians' interquartile ranges), no larger, and within each other objective's tolerance
  (`Objective.tolerance`). A study without structural objectives screens by constraints only.

Warm-start trials (the teacher, the reference set) are never screened.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ..compress import build
from ..data import DataBundle
from ..objectives import (Candidate, LatencyResult, Objective, measure_latency_cached, objective_values,
                          objectives_for, size_bytes)
from ..spaces import DEFAULT_OBJECTIVES, CompressionConfig, Recipe
from ..techniques import deployment_of, without_stage
from ._latency import latency_attrs, latency_baseline, latency_extra
from ._pareto import is_feasible
from ._schema import (LATENCY_IQR_ATTR, MACS_ATTR, PEAK_MEMORY_ATTR, PRUNED_REASON_ATTR, SCREENED_ATTR, SECONDS_ATTR,
                      SIZE_ATTR, metric, set_user_attrs)

if TYPE_CHECKING:
    from ._trial import SearchContext

# The ONNX exporter folds and shares equal-valued constants, so an ONNX Runtime artifact's size depends
# slightly on the weights (0.2 % measured on a tiny student); torch models' sizes are exact.
ORT_SIZE_TOLERANCE = 0.01


@dataclass(frozen=True)
class Structure:
    """What the untrained structure of a candidate costs: latency on the target and size."""

    latency: LatencyResult
    cached: bool
    size_bytes: int
    size_tolerance: float = 0.0  # relative: how far the trained model's size may differ (ONNX Runtime models)
    baseline_ms: float | None = None  # the study's latency reference (search/_latency.py); None: plain ms
    values: dict[str, float] = field(default_factory=dict)  # the study's other structural objectives, by name

    @property
    def latency_ms(self) -> float:
        """The latency objective of the structure, in the study's units (what completed trials hold)."""
        return float(self.latency.scaled_ms(self.baseline_ms))

    @property
    def iqr_ms(self) -> float:
        b = self.latency.batches[0]
        return float(b.iqr_ms) * self.latency_ms / b.median_ms if b.median_ms > 0 else float(b.iqr_ms)

    def value(self, name: str) -> float:
        """The structure's value of structural objective `name`."""
        if name == "latency_ms":
            return self.latency_ms
        if name == "size_bytes":
            return float(self.size_bytes)
        return self.values[name]

    def attrs(self) -> dict[str, Any]:
        """The user attrs a trial stores about its structure (`peer_costs` reads them back; throughput is
        in the latency attr's batches)."""
        extra = {key: self.values[name] for name, key in (("macs", MACS_ATTR), ("peak_memory_bytes", PEAK_MEMORY_ATTR))
                 if name in self.values}
        return latency_attrs(self.latency, self.cached, self.baseline_ms) | {SIZE_ATTR: self.size_bytes} | extra


def measure_structure(config: CompressionConfig, recipe: Recipe, ctx: SearchContext,
                      baseline_ms: float | None = None) -> Structure:
    """Build `config`'s structure without training, measure its latency (cached) and size.

    The latency call has the same arguments as the full trial's, so the trained model (same
    structure, other weights) reuses this measurement; `baseline_ms` puts its latency in the study's
    units (`search/_latency.py`)."""
    model = untrained_structure(ctx.teacher, config, ctx.data, recipe.seed, ctx.teacher_logits)
    lat, cached = measure_latency_cached(model, ctx.example_shape, ctx.target, ctx.protocol,
                                         extra=latency_extra(config))
    structure = Structure(lat, cached, int(size_bytes(model)), ORT_SIZE_TOLERANCE if runs_onnx(model) else 0.0,
                          baseline_ms)
    others = [o.name for o in objectives_for(recipe.objectives)
              if o.structural and o.name not in ("latency_ms", "size_bytes")]
    if not others:
        return structure
    float_model = model  # MACs are counted on the float structure: quantized models are not traceable
    if "macs" in others and deployment_of(config) != "none":
        float_model = untrained_structure(ctx.teacher, without_stage(config, "quantize"), ctx.data,
                                          recipe.seed, ctx.teacher_logits)
    candidate = Candidate(model, float_model, val_images(ctx), lat, structure.latency_ms, structure.size_bytes,
                          recipe.throughput_batch)
    return dataclasses.replace(structure, values=objective_values(others, candidate))


def constraint_values(recipe: Recipe, teacher_accuracy: float, acc: float, latency_ms: float, size: int
                      ) -> dict[str, float]:
    """Optuna's convention: a trial is feasible when every value is <= 0 (stored with
    `Trial.set_constraint`, which Optuna's samplers and `best_trials` read)."""
    c = recipe.constraints
    values = {}
    if "max_accuracy_drop" in c:
        values["max_accuracy_drop"] = (teacher_accuracy - acc) - c["max_accuracy_drop"]
    if "max_latency_ms" in c:
        values["max_latency_ms"] = latency_ms - c["max_latency_ms"]
    if "max_size_mb" in c:
        values["max_size_mb"] = size / 1e6 - c["max_size_mb"]
    return values


def val_images(ctx: SearchContext) -> torch.Tensor:
    """One batch of val images at the target's latency batch (what memory and MACs are measured on)."""
    n = min(ctx.recipe.latency_batch, len(ctx.data.val))
    return ctx.data.val.images(range(n))


def runs_onnx(model: nn.Module) -> bool:
    """True when the deployed model is an ONNX Runtime graph (its size is the graph's bytes)."""
    return any(isinstance(getattr(m, "model_bytes", None), (bytes, bytearray)) for m in model.modules())


def untrained_structure(teacher: nn.Module, config: CompressionConfig, data: DataBundle, seed: int = 0,
                        teacher_logits: torch.Tensor | None = None) -> nn.Module:
    """The deployed model of `config` without training: the same structural signature and size as
    the trained one (a test checks every technique)."""
    common = dict(seed=seed, teacher_logits=teacher_logits, train=False)
    result = build(teacher, without_stage(config, "quantize"), data, **common)
    if deployment_of(config) == "none":
        return result.model
    # quantize generic weights, not a fresh student's: ONNX export shares equal initializers (the
    # all-zero biases of an untrained model), which would make the untrained artifact smaller
    return build(teacher, config, data, float_state=generic_state(result.float_model, seed), **common).model


def generic_state(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """`model`'s state with every float tensor refilled with small seeded random values (no two
    tensors equal, as after training); other tensors (indices, counters) kept."""
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen, dtype=torch.float32) * 0.02).to(v.dtype) if v.is_floating_point()
            else v for k, v in model.state_dict().items()}


def constraint_reason(structure: Structure, recipe: Recipe) -> str | None:
    """Why the structure alone breaks a latency or size constraint, or None."""
    c = recipe.constraints
    if "max_latency_ms" in c and structure.latency_ms > c["max_latency_ms"]:
        return (f"latency {structure.latency_ms:.3f} ms of the untrained structure breaks "
                f"constraints.max_latency_ms = {c['max_latency_ms']}")
    if "max_size_mb" in c and structure.size_bytes * (1 - structure.size_tolerance) / 1e6 > c["max_size_mb"]:
        return f"size {structure.size_bytes / 1e6:.4f} MB breaks constraints.max_size_mb = {c['max_size_mb']}"
    return None


def dominated_reason(structure: Structure, completed: list[FrozenTrial],
                     objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> str | None:
    """Which feasible completed trial beats the candidate on every structural objective of
    `objectives` (the study's) with values the candidate cannot be expected to exceed on the others
    (the best any completed trial reached: accuracy), or None."""
    chosen = objectives_for(objectives)
    costs = [o for o in chosen if o.structural]
    if not completed or not costs:
        return None
    trained = {o.name: (max if o.maximize else min)(metric(t, o.name, objectives) for t in completed)
               for o in chosen if not o.structural}
    for t in completed:
        if not is_feasible(t) or any(metric(t, name, objectives) != best for name, best in trained.items()):
            continue
        beaten = [_beats(o, t, structure, objectives) for o in costs]
        # a tie on every objective is kept on the front (`dominates`): one must be strictly better
        strictly = any(o.name == "latency_ms" or metric(t, o.name, objectives) != structure.value(o.name)
                       for o in costs)
        if all(beaten) and strictly:
            reached = ", ".join(f"{name} {best:.4f}" for name, best in trained.items())
            return (f"dominated by trial {t.number}: " + (f"{reached} (the best reached), " if reached else "")
                    + ", ".join(beaten))
    return None


def _beats(o: Objective, t: FrozenTrial, structure: Structure, objectives: tuple[str, ...]) -> str:
    """How completed trial `t` is no worse than the structure on `o` beyond the noise ("" when it is not)."""
    theirs, mine = metric(t, o.name, objectives), structure.value(o.name)
    if o.name == "latency_ms":  # timed: faster by more than both medians' spread
        noise = float(t.user_attrs.get(LATENCY_IQR_ATTR) or 0.0) + structure.iqr_ms
        ok = theirs < mine - noise
        return f"latency {theirs:.3f} ms < {mine:.3f} ms - {noise:.3f} ms noise" if ok else ""
    slack = structure.size_tolerance if o.name == "size_bytes" else o.tolerance
    bound = mine * (1 + slack) if o.maximize else mine * (1 - slack)
    if not o.better_or_equal(theirs, bound):
        return ""
    if o.name == "size_bytes":
        return f"size {int(theirs)} <= {structure.size_bytes} B"
    return f"{o.name} {theirs:.4g} {'>=' if o.maximize else '<='} {mine:.4g}"


def screen(trial: optuna.Trial, config: CompressionConfig, recipe: Recipe, ctx: SearchContext,
           exempt: bool = False) -> Structure:
    """Measure the candidate's structure and store it on the trial; raise optuna.TrialPruned (the trial
    ends PRUNED, with the reason in the "screened" user attr) when it cannot enter the feasible front.

    With ``[study] screening = false`` the structure is still measured (rungs compare peers by it)
    but nothing is screened; nor is it for an `exempt` trial (a retry, which passed screening once)."""
    start = time.perf_counter()
    structure = measure_structure(config, recipe, ctx, latency_baseline(trial.study))
    set_user_attrs(trial, structure.attrs())
    if not recipe.screening or exempt:
        return structure
    completed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reason = constraint_reason(structure, recipe) or dominated_reason(structure, completed, recipe.objectives)
    if reason is None:
        return structure
    # the latency and size constraints are known now: TPE ranks a constraint-breaking pruned trial as infeasible
    known = constraint_values(recipe, ctx.teacher_accuracy, 0.0, structure.latency_ms, structure.size_bytes)
    for name, value in known.items():
        if name != "max_accuracy_drop":
            trial.set_constraint(name, value)
    trial.set_user_attr(SCREENED_ATTR, reason)
    trial.set_user_attr(PRUNED_REASON_ATTR, f"screened: {reason}"[:500])  # the one reason column every PRUNED trial has
    seconds = round(time.perf_counter() - start, 4)
    trial.set_user_attr(SECONDS_ATTR, {"screen": seconds, "total": seconds})
    raise optuna.TrialPruned(f"screened: {reason}")


def peer_costs(t: FrozenTrial, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> dict[str, float] | None:
    """The structural objectives of `objectives` (the study's) of a trial's structure, by name: its
    values once complete, else what screening stored; None when one is not known."""
    names = objectives if t.state == TrialState.COMPLETE and t.values else ()
    costs = {o.name: metric(t, o.name, names) for o in objectives_for(objectives) if o.structural}
    return None if any(v is None for v in costs.values()) else costs


__all__ = ["SCREENED_ATTR", "Structure", "constraint_reason", "constraint_values", "val_images", "dominated_reason", "measure_structure", "untrained_structure",
           "peer_costs", "runs_onnx",
           "screen"]
