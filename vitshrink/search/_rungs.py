"""Cheap fidelities first: training in rungs (epochs), stopping a trial that falls clearly behind.

After every epoch of a training stage (student KD, KD fine-tune) the model's accuracy on a fixed,
seeded subset of the val split (at most `RUNG_IMAGES` images) is stored on the trial as the user attr
``rung:<stage>:<epoch>/<epochs>`` (the schedule's length is part of the key: one-cycle learning rates
make epoch 3 of 4 and epoch 3 of 20 different points).

Optuna's pruners refuse multi-objective studies and `trial.report` raises there, so the rule is
written over the storage: a trial is *clearly behind* at a rung when at least `MIN_PEERS` other
trials of the study reached the same rung with a structure no costlier (each of the study's
structural objectives, e.g. latency and size, at most `COST_SLACK` x this trial's, or at least
this trial's / `COST_SLACK` for a maximised one) and an accuracy higher by more than ``[study] rung_margin``
(default 0.02). Being behind cheaper-or-equal models at equal training means it is unlikely to
end on the front; it is stopped there and stored PRUNED with the user attrs "stopped" (the reason)
and "stopped_at" ({stage, epoch, epochs, accuracy}). The final epoch of the last training stage
is recorded but never stops a trial (nothing is left to save), and warm starts are never stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import FrozenTrial
from torch import nn

from ..data import Split
from ..objectives import objectives_for
from ..spaces import DEFAULT_OBJECTIVES, CompressionConfig, Recipe
from ._schema import PRUNED_REASON_ATTR, RUNG_PREFIX, STOPPED_AT_ATTR, STOPPED_ATTR
from ._screening import Structure, peer_costs

if TYPE_CHECKING:
    from ._trial import SearchContext

RUNG_IMAGES = 1000
MIN_PEERS = 2
COST_SLACK = 1.05


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
    """(trial, accuracy) of the peers at rung `key` that are no costlier on the structural objectives of
    `objectives` (the study's) and more accurate by > `margin`."""
    costs = [o for o in objectives_for(objectives) if o.structural]
    ahead = []
    for t in peers:
        if t.number == number or key not in t.user_attrs:
            continue
        theirs = peer_costs(t, objectives)
        if theirs is None:
            continue
        peer_acc = float(t.user_attrs[key])
        no_costlier = all(theirs[o.name] >= structure.value(o.name) / COST_SLACK if o.maximize
                          else theirs[o.name] <= structure.value(o.name) * COST_SLACK for o in costs)
        if no_costlier and peer_acc > accuracy + margin:
            ahead.append((t.number, peer_acc))
    return ahead


def last_training_rung(config: CompressionConfig) -> tuple[str, int] | None:
    """(stage, epochs) of the last training stage `config` runs (build order: student, then finetune)."""
    if config.kd_epochs > 0:
        return "finetune", config.kd_epochs
    if config.student != "none":
        return "student", config.student_epochs
    return None


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
        self.may_stop = may_stop and structure is not None and recipe.rungs

    def __call__(self, stage: str, epoch: int, epochs: int, model: nn.Module) -> None:
        key = rung_key(stage, epoch, epochs)
        acc = subset_accuracy(model, self.subset)
        self.trial.set_user_attr(key, acc)
        if not self.may_stop or (stage, epoch) == self.last:
            return
        peers = self.trial.study.get_trials(deepcopy=False)
        ahead = behind_peers(key, acc, self.structure, peers, self.recipe.rung_margin, self.trial.number,
                             self.recipe.objectives)
        if len(ahead) < MIN_PEERS:
            return
        shown = ", ".join(f"#{n} {a:.3f}" for n, a in sorted(ahead, key=lambda p: -p[1])[:3])
        reason = (f"behind at {stage} epoch {epoch}/{epochs}: accuracy {acc:.3f} while {len(ahead)} trials no "
                  f"costlier were above {acc + self.recipe.rung_margin:.3f} ({shown})")
        self.trial.set_user_attr(STOPPED_ATTR, reason)
        self.trial.set_user_attr(PRUNED_REASON_ATTR, f"stopped: {reason}"[:500])
        self.trial.set_user_attr(STOPPED_AT_ATTR, {"stage": stage, "epoch": epoch, "epochs": epochs, "accuracy": acc})
        raise optuna.TrialPruned(f"stopped: {reason}")


def rungs_of(t: FrozenTrial) -> dict[str, float]:
    """A trial's rung accuracies by key, in the order they were reached."""
    return {k: v for k, v in t.user_attrs.items() if k.startswith(RUNG_PREFIX)}


__all__ = ["COST_SLACK", "MIN_PEERS", "RUNG_IMAGES", "RungMonitor", "STOPPED_ATTR", "behind_peers",
           "last_training_rung", "rung_key", "rung_subset", "rungs_of", "subset_accuracy"]
