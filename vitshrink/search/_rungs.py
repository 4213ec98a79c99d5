"""Cheap fidelities first: training in geometric rungs, stopping a trial that ranks among the worst at one.

A training stage of E epochs (student KD, KD fine-tune) has rungs at `RUNG_FRACTIONS` of E (1/27,
1/9 and 1/3 of it, each at least epoch 1, repeats dropped); at each, the model's accuracy on a fixed,
seeded subset of the val split (at most `RUNG_IMAGES` images) is stored on the trial as the user
attr ``rung:<stage>:<epoch>/<epochs>`` (the schedule's length is part of the key: one-cycle learning
rates make epoch 3 of 4 and epoch 3 of 20 different points). The last epoch is recorded too.

Optuna's pruners refuse multi-objective studies and `trial.report` raises there, so the rule is
written over the storage, as MO-ASHA's (Schmucker et al., 2021): the trials that reached the same
rung are sorted by non-dominated rank on (rung accuracy, and the study's structural objectives,
known before training); a trial is stopped when at least `MIN_PEERS` others are there and it is not
in the best 1/`ETA` of them. Noise is respected twice: a peer dominates only when it is more accurate
by more than ``[study] rung_margin`` (default 0.02) and no costlier beyond `COST_SLACK`, and a trial
is never stopped on an accuracy within `CHANCE_MARGIN` of chance (an epoch-1 student is often
there, and ranking noise says nothing). A stopped trial is stored PRUNED with the user attrs
"stopped" (the reason) and "stopped_at" ({stage, epoch, epochs, accuracy}). The final epoch of the
last training stage never stops a trial (nothing is left to save), and warm starts are never stopped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from ..data import Split
from ..objectives import objectives_for
from ..spaces import DEFAULT_OBJECTIVES, CompressionConfig, Recipe
from ..techniques import training_epochs
from ._schema import PRUNED_REASON_ATTR, RUNG_PREFIX, STOPPED_AT_ATTR, STOPPED_ATTR
from ._screening import Structure, peer_costs

if TYPE_CHECKING:
    from ._trial import SearchContext

RUNG_IMAGES = 1000
MIN_PEERS = 2
COST_SLACK = 1.05
RUNG_FRACTIONS = (1 / 27, 1 / 9, 1 / 3)
ETA = 3  # MO-ASHA's reduction factor: the best 1/ETA of a rung go on
CHANCE_MARGIN = 0.05  # accuracies within this of chance (1 / classes) never stop a trial


def rung_epochs(epochs: int) -> tuple[int, ...]:
    """The epochs of a stage of `epochs` at which trials are compared (at least epoch 1, before the last).

    Example:
        >>> rung_epochs(40), rung_epochs(3), rung_epochs(1)
        ((1, 4, 13), (1,), ())
    """
    return tuple(sorted({max(1, round(epochs * f)) for f in RUNG_FRACTIONS} - {epochs}))


def rung_key(stage: str, epoch: int, epochs: int) -> str:
    """The user attr of one rung.

    Example:
        >>> rung_key("student", 3, 10)
        'rung:student:3/10'
    """
    return f"{RUNG_PREFIX}{stage}:{epoch}/{epochs}"


def rung_subset(val: Split, seed: int, n: int = RUNG_IMAGES) -> Split:
    """The same `n` val images for every trial of a study (seeded), so rungs compare like with like."""
    if len(val) <= n:
        return val
    idx = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed)).narrow(0, 0, n).sort().values
    return val.subset(idx)


@torch.no_grad()
def subset_accuracy(model: nn.Module, subset: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy on `subset`, on the model's own device; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        correct = sum(int((model(xb.to(device)).float().argmax(1).cpu() == yb).sum())
                      for xb, yb in subset.chunks(batch_size))
    finally:
        model.train(was_training)
    return correct / max(1, len(subset))


def behind_peers(key: str, accuracy: float, structure: Structure, peers: list[FrozenTrial], margin: float,
                 number: int, objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> list[tuple[int, float]]:
    """(trial, accuracy) of the peers at rung `key` that dominate this trial beyond the noise: no
    costlier on the structural objectives of `objectives` (the study's) and more accurate by > `margin`."""
    mine = {o.name: structure.value(o.name) for o in objectives_for(objectives) if o.structural}
    rows = _rung_rows(key, peers, number, objectives)
    return [(n, acc) for n, acc, costs in rows if _dominates(acc, costs, accuracy, mine, margin, objectives)]


def _rung_rows(key: str, peers: list[FrozenTrial], number: int, objectives) -> list[tuple[int, float, dict]]:
    rows = []
    for t in peers:
        if t.number == number or key not in t.user_attrs:
            continue
        theirs = peer_costs(t, objectives)
        if theirs is not None:
            rows.append((t.number, float(t.user_attrs[key]), theirs))
    return rows


def _dominates(acc_a: float, costs_a: dict, acc_b: float, costs_b: dict, margin: float, objectives) -> bool:
    """Whether a is more accurate than b by > `margin` and no costlier (within `COST_SLACK`)."""
    costs = [o for o in objectives_for(objectives) if o.structural]
    no_costlier = all(costs_a[o.name] >= costs_b[o.name] / COST_SLACK if o.maximize
                      else costs_a[o.name] <= costs_b[o.name] * COST_SLACK for o in costs)
    return no_costlier and acc_a > acc_b + margin


def rung_rank(key: str, accuracy: float, structure: Structure, peers: list[FrozenTrial], margin: float, number: int,
              objectives: tuple[str, ...] = DEFAULT_OBJECTIVES) -> tuple[int, int, int]:
    """(this trial's non-dominated rank, how many trials rank better, how many reached the rung with it)
    among the trials at rung `key`: rank 0 is the rung's front, rank 1 the front without it, ..."""
    mine = {o.name: structure.value(o.name) for o in objectives_for(objectives) if o.structural}
    rows = _rung_rows(key, peers, number, objectives) + [(number, accuracy, mine)]
    left = list(range(len(rows)))
    rank_of: dict[int, int] = {}
    rank = 0
    while left:
        front = [i for i in left if not any(_dominates(rows[j][1], rows[j][2], rows[i][1], rows[i][2], margin, objectives)
                                            for j in left if j != i)]
        for i in front:
            rank_of[i] = rank
        left = [i for i in left if i not in front]
        rank += 1
    me = len(rows) - 1
    better = sum(1 for i in range(len(rows) - 1) if rank_of[i] < rank_of[me])
    return rank_of[me], better, len(rows)


def last_training_rung(config: CompressionConfig) -> tuple[str, int] | None:
    """(stage, epochs) of the last training stage `config` runs, in build order (each technique says
    which of its settings it trains by: `Technique.trains`)."""
    return training_epochs(config)


class RungMonitor:
    """The `on_epoch` callback of one trial's build: records each rung and stops a trial behind.

    Example (not run as a doctest: it runs inside a search trial)::

        monitor = RungMonitor(trial, recipe, ctx, config, structure)
        build(teacher, config, data, on_epoch=monitor)
    """

    def __init__(self, trial: optuna.Trial, recipe: Recipe, ctx: SearchContext, config: CompressionConfig,
                 structure: Structure | None, may_stop: bool = True) -> None:
        self.trial, self.recipe, self.structure = trial, recipe, structure
        self.subset = rung_subset(ctx.data.val, recipe.seed)
        self.last = last_training_rung(config)
        self.chance = 1.0 / max(1, ctx.data.num_classes)
        self.may_stop = may_stop and structure is not None and recipe.rungs

    def __call__(self, stage: str, epoch: int, epochs: int, model: nn.Module) -> None:
        if epoch not in rung_epochs(epochs) and epoch != epochs:
            return
        key = rung_key(stage, epoch, epochs)
        acc = subset_accuracy(model, self.subset)
        self.trial.set_user_attr(key, acc)
        if not self.may_stop or (stage, epoch) == self.last or epoch == epochs:
            return
        if acc <= self.chance + CHANCE_MARGIN:  # noise, not a ranking
            return
        peers = self.trial.study.get_trials(deepcopy=False)
        rank, better, n = rung_rank(key, acc, self.structure, peers, self.recipe.rung_margin, self.trial.number,
                                    self.recipe.objectives)
        if n - 1 < MIN_PEERS or better < math.ceil(n / ETA):
            return
        ahead = behind_peers(key, acc, self.structure, peers, self.recipe.rung_margin, self.trial.number,
                             self.recipe.objectives)
        shown = ", ".join(f"#{t} {a:.3f}" for t, a in sorted(ahead, key=lambda p: -p[1])[:3])
        reason = (f"behind at {stage} epoch {epoch}/{epochs}: accuracy {acc:.3f} ranks {rank + 1} by non-dominated "
                  f"sorting among {n} trials at this rung ({better} rank better; the best 1/{ETA} go on)"
                  + (f"; more accurate by > {self.recipe.rung_margin:.2f} and no costlier: {shown}" if shown else ""))
        self.trial.set_user_attr(STOPPED_ATTR, reason)
        self.trial.set_user_attr(PRUNED_REASON_ATTR, f"stopped: {reason}"[:500])
        self.trial.set_user_attr(STOPPED_AT_ATTR, {"stage": stage, "epoch": epoch, "epochs": epochs, "accuracy": acc})
        raise optuna.TrialPruned(f"stopped: {reason}")


def rungs_of(t: FrozenTrial) -> dict[str, float]:
    """A trial's rung accuracies by key, in the order they were reached."""
    return {k: v for k, v in t.user_attrs.items() if k.startswith(RUNG_PREFIX)}


__all__ = ["CHANCE_MARGIN", "COST_SLACK", "ETA", "MIN_PEERS", "RUNG_FRACTIONS", "RUNG_IMAGES", "RungMonitor",
           "STOPPED_ATTR", "behind_peers", "rung_epochs", "rung_rank",
           "last_training_rung", "rung_key", "rung_subset", "rungs_of", "subset_accuracy"]
