"""vitshrink's own overhead per trial: the time a trial spends outside building and measuring its model.

A study of a small recipe (the quickstart by default: digits, a small ViT teacher, KD, pruning, token
merging, ONNX Runtime) runs on each storage through `vitshrink.search.run_search`. Every trial
stores how long its model took to build and to measure (``user_attrs["seconds"]``: ``build``,
``measure``, ``save``, ``total``), and a callback stamps the wall clock as each trial ends, so the
wall time of trial i is the time between the ends of trials i-1 and i: sampling, Optuna's
ask / tell, the driver's budget and stale-trial checks, heartbeats, every storage write and the
artifact upload, as well as the work itself. Then

    overhead = wall - screen - build - measure,   share = sum(overhead) / sum(wall)

(``screen`` times the untrained structure's latency and size before training, so that a hopeless
candidate is dropped in seconds; ``measure`` then reads that latency from the cache. Both measure
the model: neither is overhead.)

split into ``save`` (the weights' safetensors upload), ``in_trial`` (run_trial's own bookkeeping:
suggesting parameters, user attributes) and ``outside`` (everything around run_trial). The first
trial of each study is left out (its interval includes loading the data and the teacher), and the
end-of-study test evaluation is switched off (it happens once per study, not per trial).

Usage:
    python benchmarks/overhead.py                              # SQLite and PostgreSQL, 20 trials each
    python benchmarks/overhead.py --postgres postgresql://postgres@127.0.0.1:5432/test --trials 30
    python benchmarks/overhead.py --smoke                      # a tiny teacher, 4 trials: < 60 s
    python benchmarks/overhead.py --smoke --trials 12          # short trials: the worst case for the share
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import time
import uuid
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.search import run_search  # noqa: E402
from vitshrink.spaces import Recipe, resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.overhead")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
TMP = Path("benchmarks/results/tmp")
BAR = 0.02

# --smoke: the quickstart's data and space with a 2-block teacher trained for 3 epochs, 1-epoch students
# and at most one KD epoch
SMOKE = {"teacher_kwargs": {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 2,
                            "num_heads": 2, "mlp_ratio": 2.0},
         "teacher_train": {"epochs": 3, "lr": 0.002, "batch_size": 64}}


def smoke_recipe(recipe: Recipe) -> Recipe:
    import dataclasses

    from vitshrink.spaces import SearchSpace

    doc = recipe.space.to_dict()
    space_doc = {**doc["space"], "finetune.epochs": {"low": 0, "high": 1}} if "finetune.epochs" in doc["space"] else doc["space"]
    space = SearchSpace.from_dict(space_doc, {**doc["fixed"], "student.epochs": 1})
    return dataclasses.replace(recipe, **SMOKE, space=space, latency_runs=5, latency_warmup=1)


def postgres_reachable(url: str) -> str | None:
    """None if `url` accepts a connection, else the reason in one line."""
    from vitshrink.search import open_storage

    try:
        open_storage(url)  # vitshrink's own way in: the installed driver, a connect timeout
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip this storage, say why
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]


def measure_storage(recipe: Recipe, url: str, artifact_dir: Path, label: str) -> dict:
    """Run one fresh study on `url` and return per-trial wall times against the trial's own timings."""
    import optuna

    from vitshrink.search import open_storage

    ends: list[tuple[int, float]] = []

    def on_trial(study, frozen, counts):
        ends.append((frozen.number, time.perf_counter()))

    name = f"overhead-{label}-{uuid.uuid4().hex[:8]}"
    summary = run_search(recipe, storage=url, study_name=name, artifact_dir=artifact_dir, on_trial=on_trial,
                         evaluate_test=False)
    trials = {t.number: t for t in summary.study.get_trials(deepcopy=False)}
    rows = []
    for (_, before), (number, end) in zip(ends, ends[1:]):
        sec = trials[number].user_attrs.get("seconds")
        # a failed trial has no timings, and a screened or stopped (PRUNED) one only partial ones: skip them
        if not sec or trials[number].state != optuna.trial.TrialState.COMPLETE:
            continue
        wall = end - before
        # screen: the untrained structure's latency and size, timed before training (measure then reads
        # that latency from the cache): measuring the model, not overhead
        screen = sec.get("screen", 0.0)
        work = screen + sec["build"] + sec["measure"]
        rows.append({"trial": number, "wall": wall, "screen": screen, "build": sec["build"], "measure": sec["measure"],
                     "save": sec["save"], "in_trial": sec["total"] - work - sec["save"], "outside": wall - sec["total"],
                     "overhead": wall - work})
    try:
        optuna.delete_study(study_name=name, storage=open_storage(url))  # leave a shared server as we found it
    except Exception as exc:  # noqa: BLE001
        log.warning("could not delete study %s: %s", name, exc)
    total_wall = sum(r["wall"] for r in rows)

    def mean_ms(key: str) -> float:
        return round(1000 * statistics.fmean(r[key] for r in rows), 2) if rows else float("nan")

    return {
        "storage": label, "trials_timed": len(rows), "completed": summary.completed, "failed": summary.failed,
        "wall_s_per_trial": round(total_wall / len(rows), 4) if rows else None,
        "work_s_per_trial": round(sum(r["screen"] + r["build"] + r["measure"] for r in rows) / len(rows), 4)
        if rows else None,
        "overhead_ms_per_trial": mean_ms("overhead"), "save_ms": mean_ms("save"), "in_trial_ms": mean_ms("in_trial"),
        "outside_ms": mean_ms("outside"),
        "overhead_share": round(sum(r["overhead"] for r in rows) / total_wall, 5) if rows else None,
        "median_trial_share": round(statistics.median(r["overhead"] / r["wall"] for r in rows), 5) if rows else None,
        "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    }


def run(args: argparse.Namespace) -> dict:
    import dataclasses

    torch.set_num_threads(2)
    recipe = resolve_recipe(args.recipe)
    if args.smoke:
        recipe = smoke_recipe(recipe)
    recipe = dataclasses.replace(recipe, trials=args.trials, timeout=None, sampler=args.sampler or recipe.sampler)
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    results: dict = {"settings": {"recipe": recipe.name, "trials": args.trials, "sampler": recipe.sampler,
                                  "smoke": args.smoke, "bar": BAR, "load_avg_at_start": os.getloadavg()}}
    db = tmp / "overhead.db"
    for p in (db, db.with_suffix(".artifacts"), tmp / "overhead-pg.artifacts"):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    targets = [("sqlite", f"sqlite:///{db}", db.with_suffix(".artifacts"))]
    if args.postgres:
        reason = postgres_reachable(args.postgres)
        if reason:
            print(f"postgresql skipped: {args.postgres} is not reachable ({reason})", flush=True)
            results["postgresql"] = {"skipped": reason}
        else:
            targets.append(("postgresql", args.postgres, tmp / "overhead-pg.artifacts"))
    for label, url, art in targets:
        print(f"{label}: {recipe.trials} trials of {recipe.name} ({recipe.sampler})", flush=True)
        results[label] = measure_storage(recipe, url, art, label)
    results["settings"]["load_avg_at_end"] = os.getloadavg()
    return results


def table(results: dict) -> str:
    lines = ["| storage | trials timed | wall s / trial | screen + build + measure s | overhead ms / trial | save ms | "
             "in-trial ms | outside ms | overhead share | median trial share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in ("sqlite", "postgresql"):
        r = results.get(label)
        if not r:
            continue
        if "skipped" in r:
            lines.append(f"| {label} | skipped: {r['skipped']} | | | | | | | | |")
            continue
        lines.append(f"| {label} | {r['trials_timed']} | {r['wall_s_per_trial']:.3f} | {r['work_s_per_trial']:.3f} | "
                     f"{r['overhead_ms_per_trial']:.1f} | {r['save_ms']:.1f} | {r['in_trial_ms']:.1f} | "
                     f"{r['outside_ms']:.1f} | {100 * r['overhead_share']:.2f} % | {100 * r['median_trial_share']:.2f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="quickstart", help="built-in recipe name or TOML path")
    parser.add_argument("--trials", type=int, default=None, help="completed trials per storage (20; --smoke: 4)")
    parser.add_argument("--sampler", default=None, help="override the recipe's sampler")
    parser.add_argument("--postgres", default=os.environ.get("VITSHRINK_POSTGRES", DEFAULT_POSTGRES),
                        help="PostgreSQL URL ('' to skip)")
    parser.add_argument("--tmp", default=str(TMP), help="folder of the SQLite file and the artifacts")
    parser.add_argument("--smoke", action="store_true", help="a 2-block teacher, 4 trials per storage")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/results/overhead.json)")
    args = parser.parse_args(argv)
    if args.trials is None:
        args.trials = 4 if args.smoke else 20
    out = Path(args.out or ("benchmarks/results/tmp/overhead_smoke.json" if args.smoke
                            else "benchmarks/results/overhead.json"))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=Warning, module="optuna")
    results = run(args)
    print()
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
