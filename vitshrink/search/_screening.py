"""Structure first: measure a candidate's untrained structure and skip training it when it cannot
enter the feasible Pareto front.

Latency and size are properties of the structure, not of the weights: `build(..., train=False)`
creates the structure (students untrained, fine-tune skipped, pruning / low-rank / tokens /
quantization applied) in seconds, its size is computed and its latency measured and cached by
structural signature, so the trained model later finds the same measurement in the cache.

A candidate is screened (not trained; stored PRUNED with the reason) when

- it breaks a latency or size constraint (``[constraints] max_latency_ms`` / ``max_size_mb``): the
  trained model has the same structure, hence the same cached latency and the same size; or
- a feasible completed trial dominates it whatever accuracy training gives it. The candidate's
  accuracy is bounded, optimistically, by the best val accuracy any completed trial (the teacher
  included) has reached; a dominating trial must reach that bound, be no larger, and be faster by
  more than the latency noise (the sum of both medians' interquartile ranges).

Warm-start trials (the teacher, the reference set) are never screened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from ..compress import build
from ..data import DataBundle
from ..objectives import LatencyResult, measure_latency_cached, size_bytes
from ..spaces import CompressionConfig, Recipe
from ._latency import latency_attrs, latency_baseline, objective_ms
from ._pareto import is_feasible

if TYPE_CHECKING:
    from ._trial import SearchContext

SCREENED_ATTR = "screened"
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

    @property
    def latency_ms(self) -> float:
        """The latency objective of the structure, in the study's units (what completed trials hold)."""
        return float(self.latency.scaled_ms(self.baseline_ms))

    @property
    def iqr_ms(self) -> float:
        b = self.latency.batches[0]
        return float(b.iqr_ms) * self.latency_ms / b.median_ms if b.median_ms > 0 else float(b.iqr_ms)

    def attrs(self) -> dict[str, Any]:
        """The user attrs a trial stores about its structure (`peer_costs` reads them back)."""
        return latency_attrs(self.latency, self.cached, self.baseline_ms) | {"size_bytes": self.size_bytes}


def measure_structure(config: CompressionConfig, recipe: Recipe, ctx: SearchContext,
                      baseline_ms: float | None = None) -> Structure:
    """Build `config`'s structure without training, measure its latency (cached) and size.

    The latency call has the same arguments as the full trial's, so the trained model (same
    structure, other weights) reuses this measurement; `baseline_ms` puts its latency in the study's
    units (`search/_latency.py`)."""
    model = untrained_structure(ctx.teacher, config, ctx.data, recipe.seed, ctx.teacher_logits)
    lat, cached = measure_latency_cached(model, ctx.example_shape, ctx.target, ctx.protocol,
                                         extra={"quant": config.quant})
    return Structure(lat, cached, int(size_bytes(model)), ORT_SIZE_TOLERANCE if runs_onnx(model) else 0.0,
                     baseline_ms)


def runs_onnx(model: nn.Module) -> bool:
    """True when the deployed model is an ONNX Runtime graph (its size is the graph's bytes)."""
    return any(isinstance(getattr(m, "model_bytes", None), (bytes, bytearray)) for m in model.modules())


def untrained_structure(teacher: nn.Module, config: CompressionConfig, data: DataBundle, seed: int = 0,
                        teacher_logits: torch.Tensor | None = None) -> nn.Module:
    """The deployed model of `config` without training: the same structural signature and size as
    the trained one (a test checks every technique)."""
    common = dict(seed=seed, teacher_logits=teacher_logits, train=False)
    result = build(teacher, config.replace(quant="none", calib_size=0), data, **common)
    if config.quant == "none":
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


def dominated_reason(structure: Structure, completed: list[FrozenTrial]) -> str | None:
    """Which feasible completed trial beats the candidate on latency and size with an accuracy the
    candidate cannot be expected to exceed (the best any completed trial reached), or None."""
    if not completed:
        return None
    best = max(t.values[0] for t in completed)
    for t in completed:
        acc, lat, size = t.values
        noise = float(t.user_attrs.get("latency_iqr_ms") or 0.0) + structure.iqr_ms
        if (is_feasible(t) and acc >= best and size <= structure.size_bytes * (1 - structure.size_tolerance)
                and lat < structure.latency_ms - noise):
            return (f"dominated by trial {t.number}: accuracy {acc:.4f} (the best reached), latency {lat:.3f} ms < "
                    f"{structure.latency_ms:.3f} ms - {noise:.3f} ms noise, size {int(size)} <= {structure.size_bytes} B")
    return None


def screen(trial: optuna.Trial, config: CompressionConfig, recipe: Recipe, ctx: SearchContext,
           exempt: bool = False) -> Structure:
    """Measure the candidate's structure and store it on the trial; raise optuna.TrialPruned (the trial
    ends PRUNED, with the reason in the "screened" user attr) when it cannot enter the feasible front.

    With ``[study] screening = false`` the structure is still measured (rungs compare peers by it)
    but nothing is screened; nor is it for an `exempt` trial (a retry, which passed screening once)."""
    start = time.perf_counter()
    structure = measure_structure(config, recipe, ctx, latency_baseline(trial.study))
    for key, value in structure.attrs().items():
        trial.set_user_attr(key, value)
    if not recipe.screening or exempt:
        return structure
    completed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    reason = constraint_reason(structure, recipe) or dominated_reason(structure, completed)
    if reason is None:
        return structure
    # the latency and size constraints are known now: TPE ranks a constraint-breaking pruned trial as infeasible
    from ._trial import constraint_values

    known = constraint_values(recipe, ctx.teacher_accuracy, 0.0, structure.latency_ms, structure.size_bytes)
    for name, value in known.items():
        if name != "max_accuracy_drop":
            trial.set_constraint(name, value)
    trial.set_user_attr(SCREENED_ATTR, reason)
    trial.set_user_attr("pruned_reason", f"screened: {reason}"[:500])  # the one reason column every PRUNED trial has
    seconds = round(time.perf_counter() - start, 4)
    trial.set_user_attr("seconds", {"screen": seconds, "total": seconds})
    raise optuna.TrialPruned(f"screened: {reason}")


def peer_costs(t: FrozenTrial) -> tuple[float, float] | None:
    """(latency ms, size bytes) of a trial's structure: its objectives once complete, else what
    screening stored; None when neither is known."""
    if t.state == TrialState.COMPLETE and t.values:
        return float(t.values[1]), float(t.values[2])
    lat, size = t.user_attrs.get("latency"), t.user_attrs.get("size_bytes")
    if not lat or size is None:
        return None
    return objective_ms(lat), float(size)


__all__ = ["SCREENED_ATTR", "Structure", "constraint_reason", "dominated_reason", "measure_structure", "untrained_structure",
           "peer_costs", "runs_onnx",
           "screen"]
