"""What the proposer knows before training: cheap features of a candidate, a surrogate of its trained
accuracy, and the expected hypervolume improvement of training it.

Everything here is numbers in, numbers out (numpy and scikit-learn); `search/_proposer.py` reads the
study and the models. The hypervolume is the study's own (`search/_pareto.py`): every objective
normalised to the teacher and minimised, up to the reference point. Accuracy is the one objective
known only after training; the structural ones (latency, size, ...) are known before it, measured
or predicted, so the improvement has a closed form (`expected_improvement`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.linear_model import Ridge

# below this many completed trials a surrogate is not fitted (the cold start chooses instead)
MIN_FIT = 4
SIGMA_FLOOR = 0.01  # accuracy noise between seeds of one configuration: never claim more certainty


def spearman(a, b) -> float:
    """Spearman's rank correlation (0 for constant input)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = spearmanr(a, b).statistic
    return 0.0 if not np.isfinite(rho) else float(rho)


class _Scaled:
    """Standardised columns (constant columns dropped), fitted on the training rows."""

    def __init__(self, x: np.ndarray) -> None:
        self.keep = np.ptp(x, axis=0) > 0
        self.mean = x[:, self.keep].mean(axis=0)
        self.std = x[:, self.keep].std(axis=0) + 1e-12

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x[:, self.keep] - self.mean) / self.std


@dataclass
class Surrogate:
    """A fitted model of trained accuracy: `predict(x)` -> (mean, std) per row."""

    kind: str
    model: object
    scale: _Scaled

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = self.scale(np.atleast_2d(x))
        if z.shape[1] == 0:
            z = np.zeros((len(x), 1))
        if self.kind == "forest":
            per_tree = np.stack([t.predict(z) for t in self.model.estimators_])
            mean, std = per_tree.mean(axis=0), per_tree.std(axis=0)
        else:
            mean, std = self.model.predict(z, return_std=True)
        return np.asarray(mean, dtype=float), np.maximum(np.asarray(std, dtype=float), SIGMA_FLOOR)


def fit_surrogate(x: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> Surrogate:
    """A random forest (uncertainty: the spread of its trees) or a Gaussian process with one length
    scale per feature (ARD) and a noise term, on standardised features."""
    scale = _Scaled(x)
    z = scale(x)
    if z.shape[1] == 0:
        z = np.zeros((len(x), 1))
    if kind == "forest":
        model = RandomForestRegressor(n_estimators=32, min_samples_leaf=2, max_features=0.6, random_state=seed)
    elif kind == "gp":
        kernel = (ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(z.shape[1]), (1e-2, 1e3), nu=2.5)
                  + WhiteKernel(1e-2, (1e-5, 1.0)))
        model = GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed, n_restarts_optimizer=0)
    else:
        raise ValueError(f"unknown surrogate {kind!r}; choose forest or gp")
    with warnings.catch_warnings():  # a length scale at its bound is a fact about the data, not an error
        warnings.simplefilter("ignore")
        model.fit(z, y)
    return Surrogate(kind, model, scale)


SURROGATES = ("forest", "gp")


def loo_rank_correlation(x: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> float:
    """Leave-one-out Spearman correlation between each row's prediction (fitted without it) and its value."""
    n = len(y)
    if n < MIN_FIT:
        return 0.0
    preds = np.empty(n)
    for i in range(n):
        keep = np.arange(n) != i
        preds[i] = fit_surrogate(x[keep], y[keep], kind, seed).predict(x[i:i + 1])[0][0]
    return spearman(preds, y)


def choose_surrogate(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[Surrogate, dict[str, float]]:
    """Fit the surrogate with the best leave-one-out rank correlation on these trials, and every
    candidate's correlation (ties go to the forest: cheaper, no kernel to fail)."""
    scores = {k: loo_rank_correlation(x, y, k, seed) for k in SURROGATES}
    best = max(SURROGATES, key=lambda k: (scores[k], k == "forest"))
    return fit_surrogate(x, y, best, seed), scores


def fit_log_linear(x: np.ndarray, y: np.ndarray, alpha: float = 0.3):
    """A ridge regression of log(y) on the features: structural costs (latency, size) are products
    of runtime factors and work, so they are linear in logs. Returns predict(x) -> y."""
    scale = _Scaled(x)
    z = scale(x)
    logs = np.log(np.maximum(y, 1e-12))
    if z.shape[1] == 0 or len(y) < 2:
        mean = float(logs.mean())
        return lambda q: np.full(len(np.atleast_2d(q)), math.exp(mean))
    model = Ridge(alpha=alpha).fit(z, logs)
    return lambda q: np.exp(model.predict(scale(np.atleast_2d(q))))


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return ndtr(z)


def _normal_pdf(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def expected_improvement(front: np.ndarray, costs: np.ndarray, mean_error: float, std_error: float,
                         reference: np.ndarray, max_error: float | None = None) -> float:
    """Expected hypervolume improvement of one candidate whose costs are known and whose error
    (column 0, e.g. 1 - accuracy) is normal(`mean_error`, `std_error`), all minimised.

    `front`: rows (error, cost_1, ..., cost_k) of the points already reached; `costs`: the
    candidate's k costs; `reference`: the (k + 1) reference point. `max_error`: a point above it is
    infeasible and adds nothing (the accuracy constraint).

    The region the candidate can add lies in the box between its costs and the reference; cut into
    cells at the front's cost coordinates, each cell has one error level g the front already
    reaches there, and the candidate adds area x (g - e) where e < g. The expectation of that is
    (g - mu) Phi(z) + sigma phi(z), z = (u - mu) / sigma, u = min(g, max_error): exact.

    Example:
        >>> ref = np.array([1.0, 1.1, 1.1])
        >>> round(expected_improvement(np.empty((0, 3)), np.array([0.1, 0.1]), 0.2, 1e-9, ref), 4)  # 0.8 x 1 x 1
        0.8
    """
    k = len(costs)
    if np.any(costs >= reference[1:]):
        return 0.0
    top = reference[0] if max_error is None else min(reference[0], max_error)
    inside = front[np.all(front[:, 1:] < reference[1:], axis=1)] if len(front) else front
    edges = []
    for j in range(k):
        c = costs[j]
        cuts = inside[:, 1 + j][inside[:, 1 + j] > c] if len(inside) else np.empty(0)
        edges.append(np.unique(np.concatenate([[c], cuts, [reference[1 + j]]])))
    lows = np.stack(np.meshgrid(*[e[:-1] for e in edges], indexing="ij"), axis=-1).reshape(-1, k)
    widths = np.stack(np.meshgrid(*[np.diff(e) for e in edges], indexing="ij"), axis=-1).reshape(-1, k)
    area = widths.prod(axis=1)
    level = np.full(len(lows), reference[0])
    if len(inside):
        reached = np.all(inside[None, :, 1:] <= lows[:, None, :] + 1e-15, axis=2)  # cells x front
        errors = np.where(reached, inside[None, :, 0], np.inf).min(axis=1)
        level = np.minimum(level, errors)
    sigma = max(std_error, 1e-9)
    upper = np.minimum(level, top)
    z = (upper - mean_error) / sigma
    gain = (level - mean_error) * _normal_cdf(z) + sigma * _normal_pdf(z)
    return float(np.sum(area * np.maximum(gain, 0.0)))


__all__ = ["MIN_FIT", "SURROGATES", "Surrogate", "choose_surrogate", "expected_improvement", "fit_log_linear",
           "fit_surrogate", "loo_rank_correlation", "spearman"]
