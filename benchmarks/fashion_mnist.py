"""Fashion-MNIST: vitshrink's search against the reference study's hand-picked set and random search.

One ViT teacher (the recipe's, trained here on the whole train split and cached) and three studies
in one SQLite storage, each run by `vitshrink.search.run_search`:

- ``reference``: the teacher plus the reference study's hand-picked set
  (`vitshrink.search.reference_configs`: dynamic int8; KD into a small student; 30 % and 50 %
  pruning; Nystrom with two landmark counts; student + dynamic int8);
- ``random``: the teacher plus random samples of the recipe's space (Optuna's RandomSampler);
- ``vitshrink``: the recipe's sampler, warm-started with the same hand-picked set
  (``seed_with = "reference"``), so those trials count in its budget.

``random`` and ``vitshrink`` get the same number of completed trials (``--trials``); ``reference``
holds the teacher and its hand-picked configs. For each study the script reports:

- ``hypervolume`` of the feasible trials in (1 - val accuracy, latency / teacher latency,
  size / teacher size), all minimised, up to the fixed reference point
  `vitshrink.search._pareto.HV_REFERENCE` = (1.0, 1.1, 1.1): zero accuracy, 10 % slower and larger
  than the teacher. The teacher's latency and size are its trial's, the same for all three studies;
  the volume is computed exactly with Optuna's WFG (`hypervolume`).
- ``best_speedup_at_1pt``: the largest teacher latency / trial latency among trials whose val accuracy
  is at most one point below the teacher's, with that trial's test accuracy (the driver evaluates the
  Pareto trials on the test split once the study ends; such a trial is always Pareto-optimal).
- ``remeasured``: that trial's model and the teacher timed again side by side, alternating rounds,
  because a loaded machine drifts between the moment the two were first measured.

Latencies are measured during this run only: the latency cache of the run lives in the results'
temp folder (teachers and teacher logits are still read from the user's cache, and the machine-wide
latency lock is shared, so no two measurements overlap).

Usage:
    python benchmarks/fashion_mnist.py --trials 30                # ~20 min on 2 quiet cores (teacher cached)
    python benchmarks/fashion_mnist.py --smoke                    # tiny teacher, 3 trials per method: < 60 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.data import cache_dir  # noqa: E402
from vitshrink.search import reference_configs, run_search  # noqa: E402
from vitshrink.search._pareto import HV_REFERENCE, hypervolume, is_feasible  # noqa: E402
from vitshrink.spaces import Recipe, resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.fashion_mnist")
METHODS = ("reference", "random", "vitshrink")
TMP = Path("benchmarks/results/tmp")

# --smoke: a tiny teacher on 1,200 images, a few KD images and quick latency, so CI stays < 60 s
SMOKE_TEACHER = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def method_recipe(recipe: Recipe, method: str, trials: int) -> Recipe:
    """The recipe each method runs: same data, teacher, target and space; its own sampler and budget
    (no timeout: the budget is the number of completed trials)."""
    if method == "reference":
        n = 1 + len(reference_configs(recipe.space))  # the teacher and the hand-picked set, all enqueued
        changes = dict(seed_with="reference", sampler="random", trials=min(n, trials))
    elif method == "random":
        changes = dict(sampler="random", seed_with=None, trials=trials)
    elif method == "vitshrink":
        changes = dict(seed_with="reference", trials=trials)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    new = dataclasses.replace(recipe, timeout=None, **changes)  # with_overrides cannot set None
    new.validate("benchmark")
    return new



def smoke_recipe(recipe: Recipe) -> Recipe:
    """The recipe's space and target on a tiny teacher, 1,200 images, 200 KD images, 1-epoch students."""
    from vitshrink.spaces import SearchSpace

    doc = recipe.space.to_dict()
    space = SearchSpace.from_dict(doc["space"], {**doc["fixed"], "student.epochs": 1})
    return dataclasses.replace(
        recipe, data_options={**recipe.data_options, "limit": 1200, "kd_limit": 200},
        teacher_kwargs={**recipe.teacher_kwargs, **SMOKE_TEACHER}, teacher_train={**recipe.teacher_train, "epochs": 2},
        latency_runs=5, latency_warmup=1, throughput_batch=0, space=space)


def isolate_latency_cache(folder: Path) -> None:
    """A fresh latency cache for this run, sharing the user's teachers, logits and latency lock."""
    user = cache_dir()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name in ("teachers", "logits"):
        (user / name).mkdir(exist_ok=True)
        (folder / name).symlink_to(user / name, target_is_directory=True)
    (user / "latency.lock").touch()
    (folder / "latency.lock").symlink_to(user / "latency.lock")  # flock on the same file: no overlap
    os.environ["VITSHRINK_CACHE"] = str(folder)


def summarise(study, teacher_lat: float, teacher_size: float, teacher_acc: float) -> dict:
    """Hypervolume, the best speed-up within one point of the teacher, and the Pareto rows."""
    from vitshrink.search import pareto_trials
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    feasible = [t for t in done if is_feasible(t)]
    within = [t for t in feasible if teacher_acc - t.values[0] <= 0.01 + 1e-9]
    best = min(within, key=lambda t: t.values[1]) if within else None
    attrs = study.user_attrs

    def row(t) -> dict:
        return {"trial": t.number, "label": t.user_attrs.get("label"), "role": t.user_attrs.get("role"),
                "val_accuracy": round(t.values[0], 4), "test_accuracy": attrs.get(f"vitshrink.test_accuracy.{t.number}"),
                "latency_ms": round(t.values[1], 4), "speedup": round(teacher_lat / t.values[1], 3),
                "size_ratio": round(t.values[2] / teacher_size, 4)}

    return {
        "hypervolume": round(hypervolume(feasible, teacher_lat, teacher_size), 5),
        "best_speedup_at_1pt": round(teacher_lat / best.values[1], 3) if best else 1.0,
        "best_at_1pt": row(best) if best else None,
        "trials": len(done),
        "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        "teacher_accuracy": round(teacher_acc, 4),
        "pareto": [row(t) for t in pareto_trials(study)],
        "labels": [t.user_attrs.get("label") for t in sorted(done, key=lambda t: t.number)],
    }


def remeasure(studies: dict, best_rows: dict, recipe: Recipe, rounds: int) -> dict:
    """Time the teacher and each method's best-at-1-point model again, interleaved round by round,
    and return each one's median speed-up over the teacher in the same rounds."""
    from vitshrink.objectives import LatencyProtocol, Target, measure_latency
    from vitshrink.search import context_for
    from vitshrink.search._artifacts import rebuild_trial

    ctx = context_for(recipe)
    models = {"teacher": ctx.teacher}
    for method, row in best_rows.items():
        if row and row["role"] != "teacher":
            study = studies[method]
            models[method] = rebuild_trial(study, study.trials[row["trial"]], ctx.teacher, ctx.data).model
    target = Target.parse(recipe.device)
    protocol = LatencyProtocol(warmup=recipe.latency_warmup, runs=recipe.latency_runs, batch_sizes=(recipe.latency_batch,),
                               threads=target.threads)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for name, model in models.items():
            times[name].append(measure_latency(model, ctx.example_shape, target, protocol).batches[0].median_ms)
    return {name: {"latency_ms": round(statistics.median(ts), 4),
                   "speedup": round(statistics.median(t / m for t, m in zip(times["teacher"], ts)), 3)}
            for name, ts in times.items()}


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(2)
    recipe = resolve_recipe(args.recipe)
    if args.smoke:
        recipe = smoke_recipe(recipe)
    if args.sampler:
        recipe = recipe.with_overrides(sampler=args.sampler)
    tmp = Path(args.tmp)
    db = tmp / ("fashion_mnist_smoke.db" if args.smoke else "fashion_mnist.db")
    if not args.resume:
        for p in (db, db.with_suffix(".artifacts")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        isolate_latency_cache(tmp / ("cache_smoke" if args.smoke else "cache"))
    else:
        os.environ["VITSHRINK_CACHE"] = str(tmp / ("cache_smoke" if args.smoke else "cache"))
    db.parent.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{db}"
    studies, seconds = {}, {}
    for method in args.methods.split(","):
        r = method_recipe(recipe, method, args.trials)
        start = time.perf_counter()

        def on_trial(study, frozen, counts, method=method):
            vals = ", ".join(f"{v:.4g}" for v in frozen.values) if frozen.values else frozen.state.name
            print(f"  [{method}] trial {frozen.number:3d} ({counts['COMPLETE']}/{r.trials}) "
                  f"{frozen.user_attrs.get('label', '')[:70]:70s} -> {vals}  "
                  f"({frozen.user_attrs.get('seconds', {}).get('total', float('nan')):.1f} s)", flush=True)

        print(f"{method}: sampler {r.sampler}, seed_with {r.seed_with}, {r.trials} trials", flush=True)
        summary = run_search(r, storage=storage, study_name=f"{recipe.name}-{method}", on_trial=on_trial,
                             on_teacher_epoch=lambda e, n, loss: print(f"  teacher epoch {e}/{n} loss {loss:.4f}",
                                                                       flush=True))
        studies[method], seconds[method] = summary.study, time.perf_counter() - start
    first = studies[next(iter(studies))]
    teacher_trial = next(t for t in first.trials if t.user_attrs.get("role") == "teacher")
    t_acc, t_lat, t_size = teacher_trial.values
    results: dict = {}
    for method, study in studies.items():
        # each study is normalised by its own teacher trial: every study times its candidates as ratios to
        # the teacher x the teacher's baseline taken when that study was created (search/_latency.py), so
        # on a busy machine two studies' milliseconds are not on one scale, their ratios are
        own = next(t for t in study.trials if t.user_attrs.get("role") == "teacher")
        results[method] = summarise(study, own.values[1], own.values[2], own.values[0]) | {"seconds": round(seconds[method], 1),
                                                                    "sampler": method_recipe(recipe, method, args.trials).sampler}
    if args.remeasure_rounds:
        again = remeasure(studies, {m: r["best_at_1pt"] for m, r in results.items()}, recipe, args.remeasure_rounds)
        for method in results:
            results[method]["remeasured"] = again.get(method)
        results["teacher_remeasured"] = again["teacher"]
    from vitshrink.search import context_for
    from vitshrink.models import evaluate

    ctx = context_for(recipe)
    results["teacher"] = {
        "val_accuracy": round(t_acc, 4), "test_accuracy": round(evaluate(ctx.teacher, ctx.data.test.x, ctx.data.test.y)[0], 4),
        "latency_ms": round(t_lat, 4), "size_bytes": int(t_size), "spec": first.user_attrs.get("vitshrink.teacher"),
        "data": first.user_attrs.get("vitshrink.data")}
    results["settings"] = {"recipe": recipe.name, "trials": args.trials, "smoke": args.smoke,
                           "hv_reference": list(HV_REFERENCE), "kd_limit": recipe.kd_limit,
                           "space": recipe.space.to_dict(), "target": recipe.device, "storage": storage,
                           "torch": torch.__version__, "load_avg_at_end": os.getloadavg()}
    return results


def table(results: dict) -> str:
    lines = ["| method | sampler | trials | hypervolume | best speed-up at <= 1 pt | its val / test acc | "
             "re-measured speed-up | seconds |", "|---|---|---:|---:|---:|---|---:|---:|"]
    for m in METHODS:
        if m not in results:
            continue
        r = results[m]
        b = r["best_at_1pt"] or {}
        again = (r.get("remeasured") or {}).get("speedup")
        lines.append(f"| {m} | {r['sampler']} | {r['trials']} | {r['hypervolume']:.4f} | {r['best_speedup_at_1pt']:.2f}x "
                     f"({b.get('label', '-')}) | {b.get('val_accuracy', '-')} / {b.get('test_accuracy', '-')} | "
                     f"{f'{again:.2f}x' if again else '-'} | {r['seconds']:.0f} |")
    t = results.get("teacher", {})
    lines.append(f"\nteacher: val {t.get('val_accuracy')}, test {t.get('test_accuracy')}, {t.get('latency_ms')} ms, "
                 f"{t.get('size_bytes', 0) / 1e6:.2f} MB; hypervolume reference {results['settings']['hv_reference']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="fashion-mnist", help="built-in recipe name or TOML path")
    parser.add_argument("--trials", type=int, default=30, help="completed trials for random and vitshrink")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--sampler", default=None, help="override the recipe's sampler for the vitshrink study")
    parser.add_argument("--remeasure-rounds", type=int, default=5, help="side-by-side re-timing rounds (0: off)")
    parser.add_argument("--tmp", default=str(TMP), help="folder of the storage, artifacts and latency cache")
    parser.add_argument("--resume", action="store_true", help="continue the studies in --tmp instead of starting anew")
    parser.add_argument("--smoke", action="store_true", help="tiny teacher, 1,200 images, 3 trials per method")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/fashion_mnist.json)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.trials, args.remeasure_rounds = 3, 1
    out = Path(args.out or ("benchmarks/results/tmp/fashion_mnist_smoke.json" if args.smoke
                            else "benchmarks/results/fashion_mnist.json"))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=Warning, module="optuna")
    results = run(args)
    print()
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
