"""Which accuracy surrogate ranks best: leave-one-out Spearman correlation on stored studies.

For every study given (SQLite files of `benchmarks/search_efficiency.py` runs by default), the
trained trials (completed, and stopped at a rung at the accuracy they stopped with) are the data:
the vitshrink sampler's features of each config (`search/_proposer.py`), with and without the
zero-shot accuracy of its inherited weights, and the val accuracy it reached. Each surrogate
(random forest, ARD Gaussian process) predicts each trial fitted on the others; the table gives
the rank correlation of those predictions with the truth, per study and pooled by median.

    python benchmarks/surrogate_loo.py                       # every run under benchmarks/results/tmp/search_efficiency
    python benchmarks/surrogate_loo.py path/to/study.db ...  # given studies
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.search import context_for  # noqa: E402
from vitshrink.search._proposer import VitshrinkSampler, _Dims, estimate, features  # noqa: E402
from vitshrink.search._schema import CONFIG_ATTR, RECIPE_ATTR, STOPPED_AT_ATTR  # noqa: E402
from vitshrink.search._surrogate import SURROGATES, loo_rank_correlation, spearman  # noqa: E402
from vitshrink.spaces import CompressionConfig, Recipe  # noqa: E402

DEFAULT_GLOB = "benchmarks/results/tmp/search_efficiency/*/study.db"
MIN_TRIALS = 8


def study_rows(url: str) -> dict | None:
    """One study's LOO correlations, or None when it has too few trained trials."""
    name = optuna.get_all_study_names(url)[0]
    study = optuna.load_study(study_name=name, storage=url)
    recipe = Recipe.from_dict(study.user_attrs[RECIPE_ATTR])
    trials = [t for t in study.get_trials(deepcopy=False) if CONFIG_ATTR in t.user_attrs and (
        (t.state == optuna.trial.TrialState.COMPLETE and t.values)
        or (t.user_attrs.get(STOPPED_AT_ATTR) or {}).get("accuracy") is not None)]
    if len(trials) < MIN_TRIALS:
        return None
    ctx = context_for(recipe)
    sampler = VitshrinkSampler(recipe)
    sampler.attach(ctx)
    dims = _Dims(ctx.teacher)
    configs = [CompressionConfig.from_dict(t.user_attrs[CONFIG_ATTR]) for t in trials]
    acc = np.array([t.values[0] if t.values else t.user_attrs[STOPPED_AT_ATTR]["accuracy"] for t in trials])
    zs = np.array([sampler.zero_shot_of(c) for c in configs])
    x = np.array([features(c, estimate(c, dims, sampler._named_shapes(c))) for c in configs])
    row = {"study": name, "trials": len(trials)}
    for kind in SURROGATES:
        row[f"{kind}"] = round(loo_rank_correlation(x, acc, kind), 4)
        row[f"{kind}+zero_shot"] = round(loo_rank_correlation(np.column_stack([x, zs]), acc - zs, kind), 4)
    row["zero_shot_alone"] = round(spearman(zs, acc), 4)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", help=f"SQLite study files (default: {DEFAULT_GLOB})")
    parser.add_argument("--out", default="benchmarks/results/surrogate_loo.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    files = args.studies or sorted(glob.glob(DEFAULT_GLOB))
    if not files:
        print(f"error: no studies found ({DEFAULT_GLOB}); run benchmarks/search_efficiency.py first", file=sys.stderr)
        return 2
    load = os.getloadavg()[0]
    started = time.time()
    rows = [r for f in files if (r := study_rows(f"sqlite:///{Path(f).resolve()}")) is not None]
    kinds = [k for k in rows[0] if k not in ("study", "trials")] if rows else []
    medians = {k: round(statistics.median(r[k] for r in rows), 4) for k in kinds}
    result = {"rows": rows, "median": medians, "seconds": round(time.time() - started, 1),
              "load_avg": [round(load, 2), round(os.getloadavg()[0], 2)]}
    print("| study | trials | " + " | ".join(kinds) + " |")
    print("|---|---:|" + "---:|" * len(kinds))
    for r in rows:
        print(f"| {r['study']} | {r['trials']} | " + " | ".join(f"{r[k]:.3f}" for k in kinds) + " |")
    print("| median | | " + " | ".join(f"{medians[k]:.3f}" for k in kinds) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
