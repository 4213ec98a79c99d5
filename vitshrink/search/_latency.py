"""What a study's latency objective means, fixed when the study is created.

A new study times the teacher alone once, when it is created, and stores that median
(``vitshrink.latency_reference``, copied into the fingerprint's target section). Every candidate is
timed interleaved with the teacher, and its latency objective is its ratio to the teacher in that
window x the stored median: milliseconds on the machine as it was when the study began, so a
machine that slows down or speeds up later moves candidate and teacher alike and the search does
not chase it. The measured milliseconds and the ratio are stored beside it on every trial.

A study created before this (it has trials and no reference) keeps plain measured milliseconds, so
its trials keep their meaning.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import optuna

from ..objectives import LatencyResult, measure_latency
from ..techniques import deployment_of
from ._schema import (FINGERPRINT_ATTR, LATENCY_ATTR, LATENCY_IQR_ATTR, LATENCY_NOISY_ATTR, LATENCY_REFERENCE_ATTR,
                      LATENCY_SPREAD_ATTR, objective_ms)  # noqa: F401 - objective_ms re-exported

if TYPE_CHECKING:
    from ._trial import SearchContext

log = logging.getLogger(__name__)

SCALED = "ratio to the teacher x the teacher's ms at creation"
PLAIN = "median ms"


def record_latency_reference(study: optuna.Study, ctx: SearchContext) -> dict[str, Any]:
    """The study's latency reference: what is stored, or, for a study without trials, the teacher
    timed alone now (stored); a study that has trials but no reference keeps plain milliseconds."""
    stored = study.user_attrs.get(LATENCY_REFERENCE_ATTR)
    if stored:
        return stored
    if study.get_trials(deepcopy=False):
        info: dict[str, Any] = {"objective": PLAIN}
    else:
        alone = dataclasses.replace(ctx.protocol, reference=None)
        lat = measure_latency(ctx.teacher, ctx.example_shape, ctx.target, alone)
        info = {"objective": SCALED, "reference": "teacher", "reference_ms": lat.median_ms,
                "spread": lat.batches[0].spread, "runs": lat.batches[0].runs, "measured_at": time.time(),
                "load_avg": lat.load_avg, "noisy": lat.noisy}
        if lat.noisy or lat.load_avg > (os.cpu_count() or 1):
            # the study's latency unit is fixed now: ratios stay right, but max_latency_ms is read in this unit
            log.warning("the study's latency reference (the teacher, %.3f ms) was timed on a busy machine (load %.1f"
                        "%s): latencies are ratios to the teacher x this value", lat.median_ms, lat.load_avg,
                        ", spread above target" if lat.noisy else "")
    study.set_user_attr(LATENCY_REFERENCE_ATTR, info)
    fingerprint = study.user_attrs.get(FINGERPRINT_ATTR)
    if fingerprint and "target" in fingerprint:  # kept by every resume: differences() compares the recipe's fields only
        fingerprint["target"] |= {"latency_objective": info["objective"], "reference_ms": info.get("reference_ms")}
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    return info


def latency_extra(config: Any) -> dict[str, str]:
    """What a latency measurement's cache key adds to the model's structure: the runtime `config`
    deploys in (keyed "quant", as every stored cache entry is)."""
    return {"quant": deployment_of(config)}


def latency_baseline(study: optuna.Study) -> float | None:
    """The teacher's milliseconds the study's latency objective is scaled to (None: plain ms)."""
    info = study.user_attrs.get(LATENCY_REFERENCE_ATTR) or {}
    return float(info["reference_ms"]) if info.get("objective") == SCALED and info.get("reference_ms") else None


def latency_attrs(lat: LatencyResult, cached: bool, baseline: float | None) -> dict[str, Any]:
    """The trial's stored latency: the measurement, whether it came from the cache, the ratio to the
    reference, the objective value, its spread and whether the protocol's cap left it noisy."""
    value = lat.scaled_ms(baseline)
    primary = lat.batches[0]
    return {LATENCY_ATTR: lat.to_dict() | {"cached": cached, "ratio_to_reference": lat.ratio_to_reference,
                                           "objective_ms": value, "baseline_ms": baseline},
            # the spread in the objective's units
            LATENCY_IQR_ATTR: float(primary.iqr_ms) * (value / primary.median_ms if primary.median_ms > 0 else 1.0),
            LATENCY_SPREAD_ATTR: float(primary.spread), LATENCY_NOISY_ATTR: bool(lat.noisy)}


BUSY_CORES = 0.5  # other processes' load during a measurement worth saying (in cores)


def latency_warnings(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What to say once about the latencies of `trials` (a run's): those timed while other processes
    kept cores busy (the search's own training is not counted: it waits while timing) and those
    whose spread stayed above the protocol's target."""
    busy, noisy = [], []
    for t in trials:
        lat = t.user_attrs.get(LATENCY_ATTR) or {}
        if lat.get("cached"):
            continue
        if (lat.get("other_load") or 0.0) >= BUSY_CORES:
            busy.append((t.number, float(lat["other_load"])))
        if t.user_attrs.get(LATENCY_NOISY_ATTR):
            noisy.append(t.number)
    out = []
    if busy:
        worst = max(load for _, load in busy)
        out.append(f"latency was measured while other processes kept up to {worst:.1f} cores busy in trial(s) "
                   f"{', '.join(str(n) for n, _ in busy)}: their latencies may be inflated (each is a ratio to the "
                   "teacher timed beside it, which corrects a steady load)")
    if noisy:
        out.append(f"latency spread stayed above the protocol's target in trial(s) {', '.join(map(str, noisy))} "
                   f"(user attr {LATENCY_NOISY_ATTR})")
    return out
