"""The ``vitshrink`` sampler: choose what to train from what is known before training.

Latency and size are properties of a candidate's structure, known (measured, or predicted from the
structures measured so far) before it trains; only accuracy costs a training run. For every trial
it samples, the sampler

1. draws a pool of candidates (`POOL` from the space, plus mutations and crossovers of the current
   front), drops those already tried and those whose predicted latency or size breaks a constraint;
2. describes each by cheap features: its estimated MACs, parameters and training work (analytic,
   from the config and the teacher's shape), its runtime and low-rank modes, its epochs, and, for
   the best-scored few, the zero-shot accuracy of the compressed model with inherited weights (one
   forward pass over `ZERO_SHOT_IMAGES` val images, before any training);
3. predicts each structural objective with a log-linear model fitted to the structures measured so
   far (every trial's structure is measured by screening; the cold start measures a few more), and
   the trained accuracy with a surrogate (random forest or ARD Gaussian process, whichever ranks the
   completed trials better leave-one-out) fitted on the completed trials;
4. trains the candidate with the largest expected hypervolume improvement per predicted second of
   its trial (`_surrogate.expected_improvement`: exact for one uncertain objective).

Before `COLD_TRIALS` trials have completed there is nothing to fit accuracy to: the cold start
takes, from the pool's cheap front (predicted latency and size, and the zero-shot accuracy), the
candidate farthest from everything already tried, so the first trials cover the front instead of
being drawn at random.

The choice enters the study through Optuna's sampler interface: the proposal's values are what
`sample_independent` returns, so storages, resume, several drivers, Ray and optuna-dashboard work
unchanged; the prediction is stored on the trial (``proposal``), beside the result it predicted.
All state is rebuilt from the study's trials, so a resumed search proposes as the first would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState
from scipy.optimize import nnls

from ..compress._fit import stage_model
from ..objectives import objectives_for
from ..spaces import CompressionConfig, ConfigError, Recipe, SearchSpace
from ..techniques import CostPlan, deployment_of, get_technique, list_techniques, techniques, without_stage
from ..techniques import keys as K
from ._latency import latency_baseline
from ._pareto import default_reference, is_feasible, normalized_values, pareto_front
from ._rungs import rung_subset, subset_accuracy
from ._screening import measure_structure, untrained_structure
from ._optuna import set_trial_user_attr
from ._schema import (CONFIG_ATTR, PROBES_ATTR, PROPOSAL_CLAIM_ATTR, ROLE_ATTR, SECONDS_ATTR, STOPPED_AT_ATTR,
                      metric)
from ._trial import SearchContext, context_for
from ._surrogate import MIN_FIT, choose_surrogate, expected_improvement, fit_log_linear, fit_surrogate

log = logging.getLogger(__name__)

POOL = 256  # candidates drawn from the space per proposal
MUTANTS = 96  # of which mutations and crossovers of the front (when there is a front)
ZERO_SHOT_TOP = 4  # candidates whose zero-shot accuracy is measured before the final choice
ZERO_SHOT_IMAGES = 256
COLD_TRIALS = 4  # completed trials (the teacher included) before the surrogate chooses
PROBES = 8  # structures the cold start measures so latency and size can be predicted for the pool
RESELECT = 1.5  # the surrogate is chosen again (leave-one-out) when the completed trials grow by this factor
MIN_SECONDS = 0.5
CLAIM_TRIES = 8  # candidates tried, best first, when other drivers claimed the best at the same moment


@dataclass
class Proposal:
    """One trial's chosen candidate: its Optuna params and what was predicted for it."""

    params: dict[str, Any]
    config: CompressionConfig
    prediction: dict[str, Any] = field(default_factory=dict)


class _Guided:
    """A stand-in for an Optuna trial that answers `SearchSpace.sample` from a parent's params,
    changing each with probability `rate` (conditional settings of a newly chosen technique are
    drawn fresh), and records what it answered."""

    def __init__(self, parent: dict[str, Any], rng: np.random.RandomState, rate: float) -> None:
        self.parent, self.rng, self.rate, self.params = parent, rng, rate, {}

    def _keep(self, name: str) -> bool:
        return name in self.parent and self.rng.rand() >= self.rate

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        v = self.parent[name] if self._keep(name) and self.parent[name] in choices else \
            choices[self.rng.randint(len(choices))]
        self.params[name] = v
        return v

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if self._keep(name) and low <= self.parent[name] <= high:
            v = int(self.parent[name])
        else:
            v = int(low + step * self.rng.randint((high - low) // step + 1))
        self.params[name] = v
        return v

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if name in self.parent and low <= self.parent[name] <= high:
            v = float(self.parent[name])
            if self.rng.rand() < self.rate:  # a step near the parent, not a jump anywhere
                v = float(np.clip(v + self.rng.normal(0, 0.2 * (high - low)), low, high))
        else:
            v = float(self.rng.uniform(low, high))
        if step:
            v = float(np.clip(low + round((v - low) / step) * step, low, high))
        self.params[name] = v
        return v


class _Dims:
    """The teacher's shape, as the analytic cost estimates need it."""

    def __init__(self, teacher) -> None:
        blocks = teacher.blocks
        attn = blocks[0].attn
        self.depth = len(blocks)
        self.width = int(teacher.embed_dim)
        self.heads = int(attn.num_heads)
        self.head_dim = int(attn.qkv.out_features // (3 * self.heads))
        self.mlp = int(blocks[0].mlp.fc1.out_features)
        self.prefix = int(getattr(teacher, "num_prefix_tokens", 1))
        self.tokens = int(teacher.patch_embed.num_patches) + self.prefix
        self.classes = int(getattr(teacher, "num_classes", 10))


def estimate(config: CompressionConfig, d: _Dims, named: dict[str, tuple[int, int, int, int, int]]) -> dict[str, float]:
    """Analytic estimates of a candidate: its MACs and parameters deployed, and the MAC-epochs of its
    training per training image: the teacher's numbers, changed by each chosen technique in build
    order (`Technique.cost`: a student's blocks, pruning's kept heads, Nystrom's landmarks, ...)."""
    plan = CostPlan(d.depth, d.width, d.heads, d.head_dim, d.mlp, d.tokens, d.prefix, d.classes)
    for name, own in config.parts:
        technique = get_technique(name)
        if technique.cost is not None:
            technique.cost(own, plan, named.__getitem__)
    macs, params = plan.costs()
    return {"macs": macs, "params": params, "work": plan.work(), "depth": plan.depth, "width": plan.width,
            "heads": plan.heads, "mlp": plan.mlp, "effective": plan.effective}


def _one_hot(value: str, modes: Sequence[str]) -> list[float]:
    return [float(value == m) for m in modes]


def features(config: CompressionConfig, est: dict[str, Any]) -> list[float]:
    """The surrogate's and the cost models' inputs for one candidate (its zero-shot accuracy is added
    apart): its analytic costs and shape, each technique's own `features` (of its identity config
    where the candidate does not choose it), and a one-hot of each choice with listed values (runtime,
    low-rank)."""
    row = [math.log(max(est["macs"], 1.0)), math.log(max(est["params"], 1.0)), math.log1p(est["work"]),
           float(est["depth"]), float(est["width"]), float(est["heads"]), float(est["mlp"])]
    for t in techniques():
        if t.features is not None:
            row += t.features(config.get(t.name) or t.config())
    for key in K.search_keys().values():
        if key.kind == "choice" and key.choices is not None:
            value = next((t.selector for t in key.owners if t.name in config), "none")
            row += _one_hot(value, key.choices)
    return row


def _in_distribution(value: Any, dist: BaseDistribution) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    try:
        return dist.low <= value <= dist.high  # type: ignore[attr-defined]
    except TypeError:
        return False


def _key(config: CompressionConfig) -> str:
    return config.to_json()


def _effective(config: CompressionConfig, est: dict[str, Any]) -> str:
    """What makes two candidates the same model: the config's keyed settings with those its techniques
    say they really build (`CostPlan.effective`: 4 heads less 0.05 or 0.1 of them is 4 heads either way)."""
    d = {**SearchSpace.values_in(config), **est["effective"]}
    return json.dumps(d, sort_keys=True, default=list)


class VitshrinkSampler(BaseSampler):
    """Proposes each trial's candidate by expected hypervolume improvement per training second.

    `zero_shot` and `cold_start` switch the two parts the benchmark ablates. Params the proposal
    does not cover (a warm start's, never in practice otherwise) are drawn at random.

    Example (not run as a doctest: it needs a trained teacher)::

        sampler = VitshrinkSampler(recipe, seed=0)
        sampler.attach(ctx)  # the search context: teacher, data, target
        study = optuna.create_study(directions=[...], sampler=sampler)
    """

    def __init__(self, recipe: Recipe, seed: int = 0, zero_shot: bool = True, cold_start: bool = True,
                 pool: int = POOL) -> None:
        self.recipe, self.seed, self.zero_shot, self.cold_start, self.pool = recipe, seed, zero_shot, cold_start, pool
        self._random = RandomSampler(seed=seed)
        self._reseeded: np.random.RandomState | None = None
        self._ctx: SearchContext | None = None
        self._proposals: dict[int, Proposal | None] = {}
        self._zero_shot: dict[str, float] = {}
        self._probes: dict[str, dict[str, float]] = {}  # measured by the cold start: config -> structural values
        self._named: dict[str, tuple[int, int, int, int, int]] = {}
        self._surrogate_kind: tuple[int, str, dict[str, float]] | None = None
        self._stopped: list[FrozenTrial] = []  # (n when chosen, kind, LOO rho)

    # --- Optuna's sampler interface --------------------------------------------------------------------------
    def attach(self, ctx: SearchContext) -> None:
        """Give the sampler the search context (teacher, data, target); without one it asks `context_for`."""
        self._ctx = ctx

    def reseed_rng(self) -> None:
        self._random.reseed_rng()
        self._reseeded = np.random.RandomState()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial.number not in self._proposals:
            self._proposals[trial.number] = self._propose_safely(study, trial)
        proposal = self._proposals[trial.number]
        if proposal is not None and param_name in proposal.params:
            value = proposal.params[param_name]
            if _in_distribution(value, param_distribution):
                return value
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def proposal_of(self, number: int) -> dict[str, Any] | None:
        """What was predicted for trial `number` when it was proposed (None: not proposed here)."""
        proposal = self._proposals.get(number)
        return proposal.prediction if proposal is not None else None

    # --- the proposal ----------------------------------------------------------------------------------------
    def _context(self) -> SearchContext:
        if self._ctx is None:
            self._ctx = context_for(self.recipe)
        return self._ctx

    def _rng(self, number: int) -> np.random.RandomState:
        if self._reseeded is not None:
            return self._reseeded
        return np.random.RandomState(zlib.crc32(f"{self.seed}:{number}".encode()))

    def _propose_safely(self, study: optuna.Study, trial: FrozenTrial) -> Proposal | None:
        try:
            return self._propose(study, trial)
        except Exception as exc:  # noqa: BLE001 - a proposal that fails leaves the trial to random sampling
            log.warning("trial %d: the proposer failed (%s: %s); sampling it at random", trial.number,
                        type(exc).__name__, exc)
            return None

    def _propose(self, study: optuna.Study, trial: FrozenTrial) -> Proposal | None:
        started = time.perf_counter()
        objectives = tuple(self.recipe.objectives)
        chosen = objectives_for(objectives)
        if [o.name for o in chosen if not o.structural] != ["accuracy"]:
            return None  # only accuracy is unknown before training here; other studies sample at random
        trials = study.get_trials(deepcopy=False)
        teacher = next((t for t in trials if t.user_attrs.get(ROLE_ATTR) == "teacher"
                        and t.state == TrialState.COMPLETE and t.values), None)
        if teacher is None:
            return None  # the teacher (trial 0) is the unit of every normalised objective
        ctx = self._context()
        dims = _Dims(ctx.teacher)
        rng = self._rng(trial.number)
        completed = [t for t in trials if t.state == TrialState.COMPLETE and t.values and CONFIG_ATTR in t.user_attrs]
        self._stopped = [t for t in trials if t.state == TrialState.PRUNED and CONFIG_ATTR in t.user_attrs
                         and (t.user_attrs.get(STOPPED_AT_ATTR) or {}).get("accuracy") is not None]
        tried = set()
        for t in trials:
            if CONFIG_ATTR in t.user_attrs and t.state != TrialState.FAIL:
                c = CompressionConfig.from_dict(t.user_attrs[CONFIG_ATTR])
                tried.add(_effective(c, estimate(c, dims, self._named_shapes(c))))
        pool, est, seen = [], [], set(tried)
        for p in self._pool(study, completed, rng):  # deduplicated by the model they make
            e = estimate(p.config, dims, self._named_shapes(p.config))
            if (k := _effective(p.config, e)) not in seen:
                seen.add(k)
                pool.append(p)
                est.append(e)
        if not pool:
            return None
        x = np.array([features(p.config, e) for p, e in zip(pool, est)])
        structural = [o for o in chosen if o.structural]
        measured = self._measured(trials, structural, objectives)
        if len(measured) < PROBES + 1:
            self._probe(pool, x, rng, structural, study)
            measured = self._measured(trials, structural, objectives)
        costs = self._predict_costs(pool, x, measured, dims, structural)
        feasible = self._within_constraints(costs)
        if not feasible.any():
            return None
        pool, est, x, costs = ([p for p, f in zip(pool, feasible) if f], [e for e, f in zip(est, feasible) if f],
                               x[feasible], costs[feasible])
        teacher_values = list(teacher.values)
        norm_costs = normalized_values(np.column_stack([np.ones(len(costs)), costs]), teacher_values,
                                       objectives)[:, 1:]
        reference = np.asarray(default_reference(objectives), dtype=float)
        front = normalized_values([t.values for t in completed if is_feasible(t)], teacher_values, objectives)
        max_error = None
        if "max_accuracy_drop" in self.recipe.constraints:
            max_error = 1 - (ctx.teacher_accuracy - self.recipe.constraints["max_accuracy_drop"])
        if len(completed) < COLD_TRIALS and not self.cold_start:
            return None  # the ablation: the first trials are drawn at random
        if len(completed) < COLD_TRIALS:
            order, infos = self._cold_pick(pool, norm_costs, completed, dims, teacher_values, objectives, rng)
        else:
            order, infos = self._model_pick(pool, est, x, norm_costs, completed, dims, front, reference, max_error)
        if not order:
            return None
        # drivers proposing at the same moment see the same study: each claims its choice, then yields it
        # to an earlier trial that claimed the same model
        pick = next((i for i in order[:CLAIM_TRIES] if self._claim(study, trial, _effective(pool[i].config, est[i]))),
                    order[0])
        info = dict(infos[pick])
        chosen_p = pool[pick]
        prediction = {"mode": info.pop("mode"), "pool": len(pool),
                      "costs": {o.name: float(costs[pick][i]) for i, o in enumerate(structural)},
                      "measured": _key(chosen_p.config) in self._probes, **info,
                      "proposer_s": round(time.perf_counter() - started, 4)}
        return Proposal(chosen_p.params, chosen_p.config, prediction)

    def _claim(self, study: optuna.Study, trial: FrozenTrial, effective: str) -> bool:
        """Mark `trial` as making this model, then check that no finished trial makes it and that no
        running one claimed it first (claim, then read: of two drivers choosing at once, the later
        claim yields, whichever reads first)."""
        digest = hashlib.sha256(effective.encode()).hexdigest()[:16]
        mine = (time.time(), trial.number)
        try:
            set_trial_user_attr(study, trial, PROPOSAL_CLAIM_ATTR, f"{digest}@{mine[0]:.6f}")
        except Exception:  # noqa: BLE001 - a trial outside the storage (a dry proposal) claims nothing
            return True
        for t in study.get_trials(deepcopy=False):
            theirs = str(t.user_attrs.get(PROPOSAL_CLAIM_ATTR) or "")
            if t.number == trial.number or t.state == TrialState.FAIL or not theirs.startswith(digest + "@"):
                continue
            if t.state != TrialState.RUNNING or (float(theirs.split("@")[1]), t.number) < mine:
                return False
        return True

    def _named_shapes(self, config: CompressionConfig) -> dict[str, tuple[int, int, int, int, int]]:
        student = config.get("student")
        if student is not None and student.model != "custom" and student.model not in self._named:
            model, _ = stage_model(self._context().teacher, CompressionConfig({"student": student}))
            d = _Dims(model)
            self._named[student.model] = (d.depth, d.width, d.heads, d.head_dim, d.mlp)
        return self._named

    def _pool(self, study: optuna.Study, completed: list[FrozenTrial], rng: np.random.RandomState) -> list[Proposal]:
        """`self.pool` valid candidates: mutations and crossovers of the front, the rest from the space."""
        space = self.recipe.space
        front = [t for t in completed if is_feasible(t)]
        parents = [t.params for t in pareto_front(front, study.directions)] if front else []
        out: dict[str, Proposal] = {}
        draws = _scratch_study(RandomSampler(seed=int(rng.randint(2**31))))
        mutants = MUTANTS if parents else 0
        attempts = 0
        while len(out) < self.pool and attempts < 4 * self.pool:
            attempts += 1
            if len(out) < mutants:
                parent = dict(parents[rng.randint(len(parents))])
                if len(parents) > 1 and rng.rand() < 0.5:  # crossover: each param from one of two parents
                    other = parents[rng.randint(len(parents))]
                    parent = {k: (other[k] if k in other and rng.rand() < 0.5 else v) for k, v in parent.items()}
                guided = _Guided(parent, rng, rate=0.3)
                try:
                    config, params = space.sample(guided), guided.params
                except ConfigError:
                    continue
            else:
                t = draws.ask()
                try:
                    config = space.sample(t)
                except ConfigError:
                    continue
                params = dict(t.params)
            out.setdefault(_key(config), Proposal(params, config))
        return list(out.values())

    def _measured(self, trials: list[FrozenTrial], structural, objectives) -> list[tuple[CompressionConfig, list[float]]]:
        """(config, structural values) of every structure measured so far: the study's trials, the probes."""
        rows: dict[str, tuple[CompressionConfig, list[float]]] = {}
        for t in trials:
            if CONFIG_ATTR not in t.user_attrs:
                continue
            names = objectives if t.state == TrialState.COMPLETE and t.values else ()
            values = [metric(t, o.name, names) for o in structural]
            if all(v is not None and v > 0 for v in values):
                config = CompressionConfig.from_dict(t.user_attrs[CONFIG_ATTR])
                rows[_key(config)] = (config, [float(v) for v in values])
        for k, values in self._probes.items():
            rows.setdefault(k, (CompressionConfig.from_json(k), [values[o.name] for o in structural]))
        return list(rows.values())

    def _probe(self, pool: list[Proposal], x: np.ndarray, rng, structural, study) -> None:
        """Measure a few structures of the pool (cached like every latency), spread over its runtimes and
        sizes, so the cost models have something to fit before any trial is screened."""
        ctx = self._context()
        # probes another process (a driver before a resume, or beside this one) measured: the same
        # values, so a resumed sampler's cost model is the first's even where the cache re-measures
        stored = study.user_attrs.get(PROBES_ATTR) or {}
        for k, values in stored.items():
            if len(self._probes) < PROBES:
                self._probes.setdefault(k, values)
        want = PROBES - len(self._probes)
        if want <= 0:
            return
        order = np.argsort(x[:, 0])  # by estimated MACs
        picks: list[int] = []
        for mode in ("none", *list_techniques("quantize")):  # the cheapest and the costliest of each runtime the pool holds
            idx = [i for i in order if deployment_of(pool[i].config) == mode]
            picks += [idx[0], idx[-1]] if idx else []
        picks = list(dict.fromkeys(picks))
        rng.shuffle(picks)
        baseline = latency_baseline(study)
        for i in picks[:want]:
            config = pool[i].config
            try:
                structure = measure_structure(config, self.recipe, ctx, baseline)
            except Exception as exc:  # noqa: BLE001 - a structure that cannot be built is not a probe
                log.debug("probe of %s failed: %s", config.summary(), exc)
                continue
            self._probes[_key(config)] = {o.name: structure.value(o.name) for o in structural}
        if self._probes != stored:
            study.set_user_attr(PROBES_ATTR, {**stored, **self._probes})

    def _predict_costs(self, pool, x, measured, dims, structural) -> np.ndarray:
        """Each candidate's structural objective values: measured where known, else predicted."""
        known = {_key(c): v for c, v in measured}
        mx = np.array([features(c, estimate(c, dims, self._named_shapes(c))) for c, _ in measured])
        my = np.array([v for _, v in measured], dtype=float)
        out = np.empty((len(pool), len(structural)))
        for j, o in enumerate(structural):
            values = my[:, j] if len(my) else np.ones(1)
            fit = fit_log_linear(mx if len(my) else x[:1], values)
            out[:, j] = fit(x)
        for i, p in enumerate(pool):
            if _key(p.config) in known:
                out[i] = known[_key(p.config)]
        return out

    def _within_constraints(self, costs: np.ndarray) -> np.ndarray:
        c = self.recipe.constraints
        names = [o.name for o in objectives_for(self.recipe.objectives) if o.structural]
        ok = np.ones(len(costs), dtype=bool)
        if "max_latency_ms" in c and "latency_ms" in names:
            ok &= costs[:, names.index("latency_ms")] <= c["max_latency_ms"]
        if "max_size_mb" in c and "size_bytes" in names:
            ok &= costs[:, names.index("size_bytes")] / 1e6 <= c["max_size_mb"]
        return ok

    def zero_shot_of(self, config: CompressionConfig) -> float:
        """Val accuracy (`ZERO_SHOT_IMAGES` images) of the compressed model before any training, with
        the weights it inherits from the teacher; chance for a student trained from scratch."""
        key = _key(config)
        if key not in self._zero_shot:
            ctx = self._context()
            student = config.get("student")
            if student is not None and student.init == "random":
                self._zero_shot[key] = 1.0 / ctx.data.num_classes
            else:
                model = untrained_structure(ctx.teacher, without_stage(config, "quantize"), ctx.data,
                                            self.recipe.seed, ctx.teacher_logits)
                self._zero_shot[key] = subset_accuracy(model, rung_subset(ctx.data.val, self.recipe.seed,
                                                                          ZERO_SHOT_IMAGES))
        return self._zero_shot[key]

    def _cold_pick(self, pool, norm_costs, completed, dims, teacher_values, objectives, rng):
        """The pool's cheap front (predicted costs, and zero-shot accuracy), and on it the candidate
        farthest from everything already tried (log costs, accuracy)."""
        logc = np.log(np.maximum(norm_costs, 1e-9))
        nd = _non_dominated(norm_costs)
        candidates = [i for i in range(len(pool)) if nd[i]]
        if self.zero_shot:
            shortlist = candidates[:ZERO_SHOT_TOP * 2]
            zs = np.array([self.zero_shot_of(pool[i].config) for i in shortlist])
            rows = np.column_stack([norm_costs[shortlist], 1 - zs])
            keep = _non_dominated(rows)
            candidates = [i for i, k in zip(shortlist, keep) if k]
            zero = dict(zip(shortlist, zs))
        else:
            zero = {}
        done = [normalized_values([t.values], teacher_values, objectives)[0] for t in completed]
        done_log = np.log(np.maximum(np.array([d[1:] for d in done]), 1e-9)) if done else np.empty((0, logc.shape[1]))
        done_acc = np.array([1 - d[0] for d in done])

        def distance(i: int) -> float:
            if not len(done_log):
                return float(rng.rand())
            d = np.sum((done_log - logc[i]) ** 2, axis=1)
            if i in zero:
                d = d + (done_acc - zero[i]) ** 2
            return float(np.sqrt(d.min()))

        order = sorted(candidates, key=distance, reverse=True)
        return order, {i: {"mode": "cold start", "zero_shot": zero.get(i)} for i in order}

    def _model_pick(self, pool, est, x, norm_costs, completed, dims, front, reference, max_error):
        """The candidate with the largest expected hypervolume improvement per predicted second."""
        seconds = self._seconds_model(completed, [CompressionConfig.from_dict(t.user_attrs[CONFIG_ATTR])
                                                  for t in completed], dims)
        # a trial stopped at a rung counts at the accuracy it was stopped with: else its neighbours,
        # which train the same way, would be proposed again and stopped at the same epoch
        observed = sorted(completed + self._stopped, key=lambda t: t.number)
        configs = [CompressionConfig.from_dict(t.user_attrs[CONFIG_ATTR]) for t in observed]
        cx = np.array([features(c, estimate(c, dims, self._named_shapes(c))) for c in configs])
        acc = np.array([t.values[0] if t.values else t.user_attrs[STOPPED_AT_ATTR]["accuracy"] for t in observed],
                       dtype=float)
        base = fit_surrogate(cx, acc, "forest", self.seed)  # stage 1: without zero-shot, the whole pool
        mean, std = base.predict(x)
        score = self._scores(mean, std, norm_costs, est, seconds, front, reference, max_error)
        top = list(np.argsort(-score)[:ZERO_SHOT_TOP])
        train_x, target, cand_x, offset = cx, acc, x[top], np.zeros(len(top))
        if self.zero_shot:  # stage 2: the best few again, with their zero-shot accuracy
            czs = np.array([self.zero_shot_of(c) for c in configs])
            offset = np.array([self.zero_shot_of(pool[i].config) for i in top])
            # what training adds to the inherited accuracy (nothing, for a candidate that does not train)
            train_x, target, cand_x = np.column_stack([cx, czs]), acc - czs, np.column_stack([x[top], offset])
        surrogate, rho = self._surrogate(train_x, target)
        m2, s2 = surrogate.predict(cand_x)
        m2 = m2 + offset
        sub = self._scores(m2, s2, norm_costs[top], [est[i] for i in top], seconds, front, reference, max_error)
        info = {top[j]: {"accuracy_mean": float(m2[j]), "accuracy_std": float(s2[j]), "acquisition": float(sub[j]),
                         "surrogate": surrogate.kind, "loo_rho": rho}
                | ({"zero_shot": float(offset[j])} if self.zero_shot else {}) for j in range(len(top))}
        order = [top[j] for j in np.argsort(-sub)]
        for i in order:
            info[i] |= {"seconds": float(seconds(est[i])), "mode": "model"}
        return order, info

    def _surrogate(self, x: np.ndarray, y: np.ndarray):
        """The accuracy surrogate, of the kind that ranked best leave-one-out on the first m trials, m the
        last of the schedule 4, 6, 9, 14, ... (x `RESELECT`) reached: a function of the stored trials
        (rows in trial order), so a resumed search chooses as the uninterrupted one did."""
        n = len(y)
        if n < MIN_FIT:
            return fit_surrogate(x, y, "forest", self.seed), {}
        m = MIN_FIT
        while math.ceil(m * RESELECT) <= n:
            m = math.ceil(m * RESELECT)
        if self._surrogate_kind is None or self._surrogate_kind[0] != m:
            _, scores = choose_surrogate(x[:m], y[:m], self.seed)
            kind = max(scores, key=lambda k: (scores[k], k == "forest"))
            self._surrogate_kind = (m, kind, {k: round(v, 4) for k, v in scores.items()})
        return fit_surrogate(x, y, self._surrogate_kind[1], self.seed), self._surrogate_kind[2]

    def _seconds_model(self, completed, configs, dims):
        """Predicted seconds of a trial: a + b x its training MAC-epochs x train images (least squares,
        non-negative), fitted on the completed trials' own times."""
        n_train = len(self._context().data.train)
        rows, secs = [], []
        for t, c in zip(completed, configs):
            total = (t.user_attrs.get(SECONDS_ATTR) or {}).get("total")
            if total:
                rows.append([1.0, estimate(c, dims, self._named)["work"] * n_train])
                secs.append(float(total))
        a, b = 2.0, 1e-9
        if len(rows) >= 2 and np.ptp(np.array(rows)[:, 1]) > 0:
            (a, b), _ = nnls(np.array(rows), np.array(secs))
            b = b if b > 0 else 1e-9
        elif rows:
            a = float(np.median(secs))
        return lambda e: max(MIN_SECONDS, a + b * e["work"] * n_train)

    def _scores(self, mean, std, norm_costs, est, seconds, front, reference, max_error) -> np.ndarray:
        return np.array([expected_improvement(front, norm_costs[i], 1 - mean[i], std[i], reference, max_error)
                         / seconds(est[i]) for i in range(len(mean))])


def _scratch_study(sampler: BaseSampler) -> optuna.Study:
    """An in-memory study to draw candidates from the space with (quietly: one per proposal)."""
    quiet = logging.getLogger("optuna.storages._in_memory")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        return optuna.create_study(sampler=sampler)
    finally:
        quiet.setLevel(level)


def _non_dominated(points: np.ndarray) -> np.ndarray:
    """Which rows no other row dominates (all minimised)."""
    n = len(points)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        better = np.all(points <= points[i], axis=1) & np.any(points < points[i], axis=1)
        keep[i] = not better.any()
    return keep


__all__ = ["POOL", "Proposal", "VitshrinkSampler", "estimate", "features"]
