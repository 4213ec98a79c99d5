"""Search efficiency at equal wall-clock time: vitshrink against its ablation, random search and the reference set.

Every run gets the same wall-clock budget (``--budget`` seconds: the recipe's ``timeout``, with a
trial count too large to bind) and its own SQLite storage, study and latency cache; the teacher and
its logits are shared (cached). Methods, each run once per ``--seeds`` seed, seeds interleaved so
a machine that drifts affects every method alike:

- ``vitshrink``: the vitshrink sampler (search/_proposer.py), the recipe's warm start, structure-first
  screening and geometric rungs on;
- ``nsga2``: the same with Optuna's NSGA-II (the default before the vitshrink sampler);
- ``no-zero-shot`` / ``no-cold-start``: the vitshrink sampler without its zero-shot feature / its
  cold start (random first trials);
- ``ablation``: the vitshrink sampler with screening and rungs off;
- ``random``: Optuna's RandomSampler, no warm start, screening and rungs off;
- ``reference``: the teacher and the hand-picked reference set only (``seed_with = "reference"``,
  `vitshrink.search.reference_configs`), within the same budget.

Per run: ``hypervolume`` of the completed feasible trials at most 5 points (val accuracy) below the
teacher, in (1 - accuracy, latency / teacher latency, size / teacher size) up to
`vitshrink.search._pareto.HV_REFERENCE`, normalised by the run's own teacher trial (latency is timed
beside the teacher, so a drifting machine cancels out); ``best_speedup_at_1pt``: the largest teacher
latency / trial latency among Pareto trials whose test accuracy (evaluated by `run_search` once the
run ends) is within one point of the teacher's test accuracy (1.0: only the teacher); ``trained``
(completed + stopped in training), ``screened`` (skipped before training), ``stopped`` (stopped at a
rung), ``seconds`` (the search's wall clock). The PNG shows the hypervolume against seconds since the
run began, one line per run, a colour per method.

The default recipe is compute-bound: Fashion-MNIST with a 128-wide, 6-block timm ViT (patch 4), read
from ``--teacher-checkpoint`` (trained once by benchmarks/train_fmnist_teacher.py). It needs about
2 hours of CPU at the defaults (4 methods x 3 seeds x 10 min). Reduced forms:

    python benchmarks/search_efficiency.py                                   # compute-bound F-MNIST, 600 s x 4 x 3
    python benchmarks/search_efficiency.py --recipe quickstart --budget 180 --seeds 0,1,2
    python benchmarks/search_efficiency.py --smoke                            # digits, tiny teacher, 20 s each: CI
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.data import cache_dir  # noqa: E402
from vitshrink.objectives.latency import cpu_model  # noqa: E402
from vitshrink.search import reference_configs, run_search  # noqa: E402
from vitshrink.search._pareto import HV_REFERENCE, hypervolume, is_feasible, pareto_trials  # noqa: E402
from vitshrink.spaces import ConfigError, Recipe, SearchSpace, resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.search_efficiency")
HERE = Path(__file__).resolve().parent
METHODS = ("vitshrink", "random", "reference", "nsga2", "no-zero-shot", "no-cold-start", "ablation")
DEFAULT_METHODS = ("vitshrink", "random", "reference")
DEFAULT_RECIPE = "fmnist-compute"
DEFAULT_CHECKPOINT = HERE / "assets" / "fmnist_teacher.safetensors"
# the teacher benchmarks/train_fmnist_teacher.py trains: compute-bound at batch 1 on 2 CPU cores
COMPUTE_TEACHER = ("vit_small_patch16_224", {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10,
                                             "embed_dim": 128, "depth": 6, "num_heads": 4, "mlp_ratio": 4.0})
FEASIBLE_DROP = 0.05  # trials more than 5 points (val) below the teacher add no hypervolume
WITHIN = 0.01  # best speed-up among trials within one point (test) of the teacher
BIG_TRIALS = 100_000  # time is the binding budget
SMOKE_TEACHER = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


class Refused(RuntimeError):
    """The benchmark cannot run as asked; the message says how to fix it."""


def compute_bound_recipe(checkpoint: Path) -> Recipe:
    """The built-in fashion-mnist recipe with the compute-bound teacher read as it is from `checkpoint`."""
    if not checkpoint.is_file():
        raise Refused(f"the compute-bound teacher {checkpoint} is missing; train it once with "
                      f"`python benchmarks/train_fmnist_teacher.py --epochs 25 --out {checkpoint}` (about 1.5 h on "
                      "2 cores), or run a reduced form such as `--recipe quickstart --budget 180`")
    model, kwargs = COMPUTE_TEACHER
    base = resolve_recipe("fashion-mnist")
    recipe = dataclasses.replace(base, name="fmnist-compute", teacher_model=model, teacher_kwargs=dict(kwargs),
                                 teacher_checkpoint=str(checkpoint), teacher_pretrained=False, teacher_train={})
    recipe.validate("benchmark")
    return recipe


def smoke_recipe() -> Recipe:
    """Quickstart's digits and space on a tiny teacher, 1-epoch students, quick latency: seconds per trial."""
    base = resolve_recipe("quickstart")
    doc = base.space.to_dict()
    space = SearchSpace.from_dict(doc["space"], {**doc["fixed"], "student.epochs": 1})
    return dataclasses.replace(base, name="smoke", teacher_kwargs={**base.teacher_kwargs, **SMOKE_TEACHER},
                               teacher_train={**base.teacher_train, "epochs": 30}, latency_runs=5, latency_warmup=1,
                               latency_max_runs=20, space=space)


def method_recipe(recipe: Recipe, method: str, seed: int, budget: float) -> Recipe:
    """What `method` runs: same data, teacher, target and space, the wall-clock budget as the timeout."""
    common = dict(timeout=float(budget), seed=seed, trials=BIG_TRIALS)
    if method == "vitshrink":
        changes = dict(sampler="vitshrink", screening=True, rungs=True)
    elif method == "nsga2":  # the default before the vitshrink sampler
        changes = dict(sampler="nsga2", screening=True, rungs=True)
    elif method in ("no-zero-shot", "no-cold-start"):
        changes = dict(sampler=f"vitshrink-{method}", screening=True, rungs=True)
    elif method == "ablation":
        changes = dict(sampler="vitshrink", screening=False, rungs=False)
    elif method == "random":
        changes = dict(sampler="random", seed_with=None, screening=False, rungs=False)
    elif method == "reference":
        changes = dict(sampler="random", seed_with="reference", screening=False, rungs=False,
                       trials=1 + len(reference_configs(recipe.space)))  # the teacher and the hand-picked set
    else:
        raise Refused(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    new = dataclasses.replace(recipe, **(common | changes))  # with_overrides cannot set None
    new.validate("benchmark")
    return new


def isolate_latency_cache(folder: Path) -> None:
    """A fresh latency cache for one run, sharing the user's teachers, logits and latency lock."""
    user = cache_dir()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("teachers", "logits"):
        (user / name).mkdir(parents=True, exist_ok=True)
        (folder / name).symlink_to(user / name, target_is_directory=True)
    (user / "latency.lock").touch()
    (folder / "latency.lock").symlink_to(user / "latency.lock")  # flock on the same file: no overlap
    os.environ["VITSHRINK_CACHE"] = str(folder)


def _teacher_trial(study):
    return next(t for t in study.trials if t.user_attrs.get("role") == "teacher" and t.values)


def summarise(study, teacher_test: float, started: float, seconds: float, budget: float) -> dict:
    """One run's row: hypervolume, best speed-up within a point (test), trial counts, history.

    Optuna checks its timeout between trials, so the last trial may end after the budget: the
    hypervolume and the best speed-up count the trials completed within the budget only
    (``hypervolume_all`` counts them all)."""
    from optuna.trial import TrialState

    teacher = _teacher_trial(study)
    t_acc, t_lat, t_size = teacher.values
    everything = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in everything if t.datetime_complete.timestamp() - started <= budget]
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))

    def counts(t) -> bool:  # feasible, and at most 5 points (val) below the teacher
        return is_feasible(t) and t_acc - t.values[0] <= FEASIBLE_DROP + 1e-9

    eligible = [t for t in done if counts(t)]
    attrs = study.user_attrs
    test = {t.number: attrs.get(f"vitshrink.test_accuracy.{t.number}") for t in pareto_trials(study)}
    within = [t for t in done if test.get(t.number) is not None and test[t.number] >= teacher_test - WITHIN - 1e-9]
    best = min(within, key=lambda t: t.values[1], default=None)
    screened = sum(1 for t in pruned if t.user_attrs.get("screened"))
    stopped = sum(1 for t in pruned if t.user_attrs.get("stopped"))
    history, so_far = [], []
    for t in sorted(everything, key=lambda t: t.datetime_complete):
        if counts(t):
            so_far.append(t)
        history.append([round(t.datetime_complete.timestamp() - started, 2),
                        round(hypervolume(so_far, t_lat, t_size), 5)])
    return {
        "hypervolume": round(hypervolume(eligible, t_lat, t_size), 5),
        "hypervolume_all": history[-1][1] if history else 0.0,
        "best_speedup_at_1pt": round(t_lat / best.values[1], 3) if best else 1.0,
        "best_at_1pt": {"trial": best.number, "label": best.user_attrs.get("label"),
                        "test_accuracy": attrs.get(f"vitshrink.test_accuracy.{best.number}"),
                        "latency_ms": round(best.values[1], 4)} if best else None,
        "trained": len(everything) + stopped, "screened": screened, "stopped": stopped, "seconds": round(seconds, 1),
        "completed": len(done), "completed_after_budget": len(everything) - len(done),
        "failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        "teacher_val_accuracy": round(t_acc, 4), "teacher_latency_ms": round(t_lat, 4),
        "noisy_latency": sum(1 for t in done if t.user_attrs.get("latency_noisy")),
        "history": history,
        **proposer_stats(study, budget),
    }


def proposer_stats(study, budget: float) -> dict:
    """The vitshrink sampler's record in one run: its time (share of the budget), the surrogate's last
    leave-one-out rank correlations, and how well its predictions ranked the trials it chose."""
    from optuna.trial import TrialState

    from vitshrink.search._surrogate import spearman

    props = [(t, t.user_attrs["proposal"]) for t in study.get_trials(deepcopy=False) if t.user_attrs.get("proposal")]
    if not props:
        return {}
    seconds = sum(p.get("proposer_s", 0.0) for _, p in props)
    modelled = [(t.values[0], p["accuracy_mean"]) for t, p in props
                if t.state == TrialState.COMPLETE and p.get("accuracy_mean") is not None]
    last_loo = next((p["loo_rho"] for _, p in reversed(props) if p.get("loo_rho")), None)
    return {"proposer_s": round(seconds, 2), "proposer_share": round(seconds / budget, 4),
            "cold_start_trials": sum(1 for _, p in props if p.get("mode") == "cold start"),
            "loo_rho": last_loo,
            "prediction_rho": round(spearman([m for _, m in modelled], [a for a, _ in modelled]), 3) if modelled else None,
            "prediction_mae": round(statistics.median(abs(a - m) for a, m in modelled), 4) if modelled else None}


def shared_teacher(recipe: Recipe) -> tuple[Recipe, float]:
    """The recipe reading one teacher as it is (trained here once and cached when the recipe trains
    it: the study seed would otherwise give each seed its own teacher), and its test accuracy."""
    from vitshrink.models import evaluate
    from vitshrink.search import context_for

    ctx = context_for(recipe)
    if not recipe.teacher_checkpoint or recipe.teacher_pretrained:
        recipe = recipe.with_overrides(teacher_checkpoint=ctx.teacher_spec.checkpoint, teacher_pretrained=False)
    return recipe, float(evaluate(ctx.teacher, ctx.data.test.x, ctx.data.test.y)[0])


def one_run(recipe: Recipe, method: str, seed: int, budget: float, tmp: Path, teacher_test: float) -> dict:
    r = method_recipe(recipe, method, seed, budget)
    folder = tmp / f"{method}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    isolate_latency_cache(folder / "cache")
    storage = f"sqlite:///{folder / 'study.db'}"
    load_before = os.getloadavg()[0]

    def on_trial(study, frozen, counts):
        vals = ", ".join(f"{v:.4g}" for v in frozen.values) if frozen.values else frozen.state.name
        print(f"  [{method} s{seed}] trial {frozen.number:3d} {frozen.user_attrs.get('label', '')[:60]:60s} -> {vals}",
              flush=True)

    print(f"{method} seed {seed}: sampler {r.sampler}, seed_with {r.seed_with}, screening {r.screening}, "
          f"rungs {r.rungs}, budget {budget:.0f} s", flush=True)
    started = time.time()
    summary = run_search(r, storage=storage, study_name=f"{r.name}-{method}-s{seed}", on_trial=on_trial)
    wall = time.time() - started
    row = summarise(summary.study, teacher_test, started, summary.seconds, budget)
    row |= {"seed": seed, "stopped_by": summary.stopped_by, "wall_s": round(wall, 1),
            "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    return row


def medians(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in ("hypervolume", "best_speedup_at_1pt", "trained",
                                                                "screened", "stopped", "seconds")} if rows else {}


def hv_at(history: list, t: float) -> float:
    """A run's hypervolume at `t` seconds since it began (a step function of its history)."""
    value = 0.0
    for when, hv in history:
        if when > t:
            break
        value = hv
    return value


def reached_at(history: list, target: float, budget: float) -> float | None:
    """Seconds until a run's hypervolume first reached `target` within the budget (None: never)."""
    return next((when for when, hv in history if hv >= target - 1e-12 and when <= budget), None)


def area_under(history: list, budget: float) -> float:
    """The area under a run's hypervolume-time curve over the budget, divided by the budget."""
    points = [(w, hv) for w, hv in history if w <= budget]
    area, last_t, last_hv = 0.0, 0.0, 0.0
    for when, hv in points:
        area += (when - last_t) * last_hv
        last_t, last_hv = when, hv
    return (area + (budget - last_t) * last_hv) / budget


def compare_methods(methods: dict[str, list[dict]], budget: float) -> dict:
    """Per method: median hypervolume, per-seed ratio to random, area under the curve, and
    `time_to_random_final` (median over seeds of the seconds to reach random's median final
    hypervolume; a run that never does counts as never, null when the median run never does)."""
    random_rows = {r["seed"]: r for r in methods.get("random", [])}
    target = statistics.median(r["hypervolume"] for r in random_rows.values()) if random_rows else None
    out = {}
    for name, rows in methods.items():
        if not rows:
            continue
        ratios = {r["seed"]: round(r["hypervolume"] / random_rows[r["seed"]]["hypervolume"], 3)
                  for r in rows if r["seed"] in random_rows and random_rows[r["seed"]]["hypervolume"] > 0}
        times = None
        if target is not None:  # a run that never reaches it counts as never (inf): so may the median
            times = statistics.median(math.inf if (v := reached_at(r["history"], target, budget)) is None else v
                                      for r in rows)
            times = None if math.isinf(times) else times
        out[name] = {"median_hypervolume": round(statistics.median(r["hypervolume"] for r in rows), 5),
                     "ratio_to_random": ratios,
                     "median_ratio_to_random": round(statistics.median(ratios.values()), 3) if ratios else None,
                     "seeds_above_random": sum(1 for v in ratios.values() if v > 1.0),
                     "median_area_under_curve": round(statistics.median(area_under(r["history"], budget)
                                                                         for r in rows), 5),
                     "time_to_random_final": round(times, 1) if times is not None else None,
                     "median_proposer_share": (round(statistics.median(r["proposer_share"] for r in rows), 4)
                                               if all("proposer_share" in r for r in rows) else None)}
    return {"random_median_final_hypervolume": target, "methods": out}


def run(args: argparse.Namespace) -> dict:
    load_at_start = os.getloadavg()
    torch.set_num_threads(2)
    if args.smoke:
        recipe = smoke_recipe()
    elif args.recipe == DEFAULT_RECIPE:
        recipe = compute_bound_recipe(Path(args.teacher_checkpoint))
    else:
        recipe = resolve_recipe(args.recipe)
    seeds = [int(s) for s in str(args.seeds).split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        method_recipe(recipe, m, 0, args.budget)  # an unknown method is refused before anything runs
    tmp = Path(args.tmp)
    user_cache = str(cache_dir())
    results: dict = {"methods": {m: [] for m in methods}}
    print(f"teacher: {recipe.teacher_model} {recipe.teacher_kwargs}", flush=True)
    recipe, teacher_test = shared_teacher(recipe)  # before any run's clock starts
    try:
        for seed in seeds:
            for method in methods:
                row = one_run(recipe, method, seed, args.budget, tmp, teacher_test)
                results["methods"][method].append(row)
                os.environ["VITSHRINK_CACHE"] = user_cache
    finally:
        os.environ["VITSHRINK_CACHE"] = user_cache
    rows = [r for rs in results["methods"].values() for r in rs]
    teacher_ms = statistics.median(r["teacher_latency_ms"] for r in rows) if rows else None  # each run's teacher trial
    results["teacher"] = {"test_accuracy": round(teacher_test, 4),
                          "latency_ms": round(teacher_ms, 4) if teacher_ms else None,
                          "val_accuracy": rows[0]["teacher_val_accuracy"] if rows else None}
    results["budget_s"] = float(args.budget)
    med = {m: medians(rs) for m, rs in results["methods"].items()}
    results["medians"] = med
    results["comparison"] = compare_methods(results["methods"], float(args.budget))
    if med.get("vitshrink") and med.get("random"):
        results["vitshrink_over_random"] = {
            k: round(med["vitshrink"][k] / med["random"][k], 3) if med["random"][k] else None
            for k in ("hypervolume", "best_speedup_at_1pt")}
    results["settings"] = {
        "recipe": recipe.name, "seeds": seeds, "smoke": args.smoke, "sampler": recipe.sampler,
        "seed_with": recipe.seed_with, "hv_reference": list(HV_REFERENCE), "feasible_drop": FEASIBLE_DROP,
        "within": WITHIN, "teacher": {"model": recipe.teacher_model, "kwargs": recipe.teacher_kwargs,
                                      "checkpoint": recipe.teacher_checkpoint},
        "target": recipe.device, "latency": {"runs": recipe.latency_runs, "max_runs": recipe.latency_max_runs,
                                             "target_cv": recipe.latency_target_cv},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "host": platform.node(), "torch": torch.__version__},
        "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg(),
    }
    return results


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:gray", "tab:green", "tab:red", "tab:purple",
                                   "tab:brown")))
    for method, rows in results["methods"].items():
        for i, row in enumerate(rows):
            pts = [[0.0, 0.0]] + row["history"]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.step(xs + [results["budget_s"]], ys + [ys[-1]], where="post", color=colours.get(method),
                    alpha=0.8, label=method if i == 0 else None)
    ax.set_xlabel("seconds since the run began")
    ax.set_ylabel(f"hypervolume (feasible, <= {FEASIBLE_DROP * 100:.0f} pt below the teacher)")
    ax.set_title(f"{results['settings']['recipe']}: {results['budget_s']:.0f} s per run, "
                 f"seeds {','.join(map(str, results['settings']['seeds']))}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(results: dict) -> str:
    lines = ["| method | seed | hypervolume | best speed-up at <= 1 pt (test) | trained | screened | stopped "
             "| seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for method, rows in results["methods"].items():
        for r in rows:
            lines.append(f"| {method} | {r['seed']} | {r['hypervolume']:.4f} | {r['best_speedup_at_1pt']:.2f}x | "
                         f"{r['trained']} | {r['screened']} | {r['stopped']} | {r['seconds']:.0f} |")
    t = results["teacher"]
    for name, c in (results.get("comparison") or {}).get("methods", {}).items():
        lines.append(f"{name}: median HV {c['median_hypervolume']}, per-seed ratio to random {c['ratio_to_random']} "
                     f"(median {c['median_ratio_to_random']}), AUC {c['median_area_under_curve']}, time to random's "
                     f"median final {c['time_to_random_final']} s, proposer share {c['median_proposer_share']}")
    lines.append(f"\nteacher: test {t['test_accuracy']}, {t['latency_ms']} ms; budget {results['budget_s']:.0f} s; "
                 f"vitshrink / random (medians): {results.get('vitshrink_over_random')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help=f"{DEFAULT_RECIPE} (the compute-bound teacher), a built-in recipe name or a TOML path")
    parser.add_argument("--teacher-checkpoint", default=str(DEFAULT_CHECKPOINT),
                        help=f"the {DEFAULT_RECIPE} teacher's weights (benchmarks/train_fmnist_teacher.py)")
    parser.add_argument("--budget", type=float, default=600.0, help="wall-clock seconds per run")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"some of {', '.join(METHODS)}")
    parser.add_argument("--tmp", default="benchmarks/results/tmp/search_efficiency",
                        help="folder of each run's storage, artifacts and latency cache")
    parser.add_argument("--smoke", action="store_true", help="digits, a tiny teacher, 20 s per run, seed 0")
    parser.add_argument("--out", default=None, help="JSON (default benchmarks/results/search_efficiency.json); "
                                                    "the PNG is written beside it")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds = "0" if args.seeds == parser.get_default("seeds") else args.seeds
        args.budget = 20.0 if args.budget == parser.get_default("budget") else args.budget
    out = Path(args.out or ("benchmarks/results/tmp/search_efficiency_smoke.json" if args.smoke
                            else "benchmarks/results/search_efficiency.json"))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=Warning, module="optuna")
    try:
        results = run(args)
    except (Refused, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    png = plot(results, out.with_suffix(".png"))
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
