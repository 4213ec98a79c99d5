"""The Pareto front of a vitshrink study: completed, feasible trials that no other dominates, and
its hypervolume in teacher-normalised objectives (whichever objectives the study chose)."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ._optuna import compute_hypervolume
from ..objectives import objectives_for
from ..spaces import DEFAULT_OBJECTIVES


def is_feasible(trial: FrozenTrial) -> bool:
    """Constraints follow Optuna's convention (feasible when every value <= 0); none means feasible."""
    return all(c <= 0 for c in trial.constraints.values())


def dominates(a: list[float], b: list[float], directions: list[StudyDirection]) -> bool:
    better_or_equal = all(
        (x >= y) if d == StudyDirection.MAXIMIZE else (x <= y) for x, y, d in zip(a, b, directions)
    )
    return better_or_equal and a != b


def pareto_front(trials: list[FrozenTrial], directions: list[StudyDirection]) -> list[FrozenTrial]:
    """Non-dominated trials among `trials` (ties on all values are all kept)."""
    front = []
    for t in trials:
        if not any(dominates(o.values, t.values, directions) for o in trials if o is not t):
            front.append(t)
    return sorted(front, key=lambda t: t.number)


def pareto_trials(study: optuna.Study, include_infeasible: bool = False) -> list[FrozenTrial]:
    """The Pareto-optimal trials of `study`; infeasible trials are kept in the study but not eligible."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if include_infeasible or is_feasible(t)]
    return pareto_front(done, study.directions)


# Hypervolume reference in normalised objectives (1 - accuracy, latency / teacher's, size / teacher's):
# accuracy 0, and 10 % slower / larger than the teacher. The teacher itself is inside it, so every
# study's front has a positive volume, and a model worse than the teacher by more than 10 % adds nothing.
HV_REFERENCE = (1.0, 1.1, 1.1)


def default_reference(objectives=DEFAULT_OBJECTIVES) -> tuple[float, ...]:
    """The hypervolume reference point of `objectives`: zero accuracy, 10 % costlier than the teacher.

    Example:
        >>> default_reference(["accuracy", "macs"])
        (1.0, 1.1)
    """

    return tuple(o.hv_reference for o in objectives_for(objectives))


def normalized_values(rows, teacher_values, objectives=DEFAULT_OBJECTIVES):
    """Rows of the values of `objectives` -> every value to be minimised, relative to the teacher's
    (`teacher_values`, in the same order): 1 - accuracy, cost / teacher's cost, teacher's rate / rate."""
    chosen = objectives_for(objectives)
    arr = np.asarray(rows, dtype=float).reshape(-1, len(chosen))
    return np.array([[o.normalized(v, tv) for o, v, tv in zip(chosen, row, teacher_values)] for row in arr],
                    dtype=float).reshape(-1, len(chosen))


def normalized_objectives(values, teacher_latency_ms: float, teacher_size_bytes: float):
    """(accuracy, latency ms, size bytes) rows -> (1 - accuracy, latency / teacher, size / teacher),
    all minimised: the space `hypervolume` measures in (`normalized_values` for other objectives)."""
    if teacher_latency_ms <= 0 or teacher_size_bytes <= 0:
        raise ValueError(f"teacher latency ({teacher_latency_ms}) and size ({teacher_size_bytes}) must be > 0")
    return normalized_values(values, (1.0, teacher_latency_ms, teacher_size_bytes))


def hypervolume(trials_or_values, teacher_latency_ms: float, teacher_size_bytes: float,
                ref: tuple[float, float, float] = HV_REFERENCE) -> float:
    """Hypervolume of a set of (accuracy, latency, size) points, normalised to the teacher.

    Each point becomes (1 - accuracy, latency / teacher latency, size / teacher size), all to be
    minimised, and the volume they dominate up to `ref` is computed exactly with Optuna's
    `compute_hypervolume` (WFG). Points not better than `ref` in every coordinate add nothing and
    are dropped. The normalisation makes studies with different teachers or targets comparable as
    "how much of the teacher's cost was saved at what accuracy"; the teacher alone scores
    accuracy * 0.1 * 0.1, and the largest possible volume is 1.0 * 1.1 * 1.1 = 1.21 (a perfect
    model that costs nothing).

    Args:
        trials_or_values: FrozenTrials (their `values`) or rows (accuracy, latency_ms, size_bytes).
            Dominated points may be included; they do not change the volume.
        teacher_latency_ms: The teacher's measured latency on the same target.
        teacher_size_bytes: The teacher's size.
        ref: Reference point in the normalised space (default `HV_REFERENCE` = (1.0, 1.1, 1.1)).

    Example:
        >>> round(hypervolume([(0.9, 5.0, 100.0)], teacher_latency_ms=10.0, teacher_size_bytes=100.0), 4)
        0.054
    """
    if teacher_latency_ms <= 0 or teacher_size_bytes <= 0:
        raise ValueError(f"teacher latency ({teacher_latency_ms}) and size ({teacher_size_bytes}) must be > 0")
    return front_hypervolume(trials_or_values, (1.0, teacher_latency_ms, teacher_size_bytes), DEFAULT_OBJECTIVES, ref)


def front_hypervolume(trials_or_values, teacher_values, objectives=DEFAULT_OBJECTIVES,
                      ref: tuple[float, ...] | None = None) -> float:
    """`hypervolume` over any objectives: rows (or trials) of the values of `objectives`, normalised
    by `normalized_values` against `teacher_values`, up to `ref` (default `default_reference`).

    Example:
        >>> round(front_hypervolume([(0.9, 5e6)], (0.95, 1e7), ["accuracy", "macs"]), 4)
        0.54
    """
    rows = [t.values if isinstance(t, FrozenTrial) else t for t in trials_or_values]
    if not rows:
        return 0.0
    points = normalized_values(rows, teacher_values, objectives)
    reference = np.asarray(ref if ref is not None else default_reference(objectives), dtype=float)
    points = points[np.all(points < reference, axis=1)]
    if not len(points):
        return 0.0
    return float(compute_hypervolume(points, reference))
