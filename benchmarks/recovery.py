"""Stronger recovery (issue 12.3): the reference configurations built with plain KD and with the
opt-in recovery settings (distill ``augment``, ``feature_weight``), the same epochs, side by side.

On the quickstart recipe's data and teacher (trained once, cached), each configuration of
`vitshrink.search.reference_configs` (dynamic int8; a 2-block 32-wide student; 30 % / 50 % pruning
and Nystrom at two landmark counts with a KD fine-tune; student + dynamic int8) is built twice with
the same seed: ``plain`` (KD from the teacher's cached logits) and ``recovery`` (the teacher run on
each augmented batch, plus the block-output feature loss). Per configuration: val accuracy and the
seconds its training stages took, for both; dynamic int8 alone trains nothing, so it is built once.

    python benchmarks/recovery.py                       # quickstart: kd_epochs 3, student_epochs 10
    python benchmarks/recovery.py --augment flip+shift --feature-weight 0.5
    python benchmarks/recovery.py --smoke               # tiny teacher, 1 epoch: CI (tests/test_benchmarks.py)

Writes benchmarks/results/recovery.json (``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.compress import build  # noqa: E402
from vitshrink.models import evaluate  # noqa: E402
from vitshrink.search import reference_configs  # noqa: E402
from vitshrink.search._trial import make_context  # noqa: E402
from vitshrink.spaces import CompressionConfig, Recipe, SearchSpace, resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.recovery")
HERE = Path(__file__).resolve().parent
SMOKE_TEACHER = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}
TRAINING_STAGES = ("student", "finetune")


def bench_recipe(smoke: bool, kd_epochs: int, student_epochs: int) -> Recipe:
    """Quickstart with the reference set's epochs fixed (the smoke form on a tiny, briefly trained teacher)."""
    base = resolve_recipe("quickstart")
    doc = base.space.to_dict()
    space = SearchSpace.from_dict(doc["space"], {**doc["fixed"], "student.epochs": student_epochs})
    recipe = dataclasses.replace(base, space=space)
    if smoke:
        recipe = dataclasses.replace(recipe, name="recovery-smoke", teacher_kwargs={**base.teacher_kwargs, **SMOKE_TEACHER},
                                     teacher_train={**base.teacher_train, "epochs": 10})
    return recipe


def variants(space: SearchSpace, kd_epochs: int, augment: str, weight: float) -> list[tuple[str, CompressionConfig, CompressionConfig | None]]:
    """(label, plain config, recovery config or None when nothing is distilled) per reference config."""
    out = []
    for cfg in reference_configs(space):
        plain = cfg
        # a KD fine-tune, pruning of heads or low-rank attention: fine-tuned for kd_epochs
        if "finetune" in cfg or getattr(cfg.get("prune"), "heads", 0.0) or "nystrom" in cfg or "svd" in cfg:
            plain = CompressionConfig({**dict(cfg.parts), "finetune": {"epochs": kd_epochs}}, distill=cfg.distill)
        distils = "finetune" in plain or "student" in plain
        recovered = CompressionConfig(dict(plain.parts), distill=dataclasses.replace(
            plain.distill, augment=augment, feature_weight=weight)) if distils else None
        out.append((plain.summary(), plain, recovered))
    return out


def measure(ctx, cfg: CompressionConfig) -> dict:
    """Build `cfg` (seed 0) and return its val accuracy and training seconds."""
    start = time.perf_counter()
    result = build(ctx.teacher, cfg, ctx.data, seed=0, teacher_logits=ctx.teacher_logits, kd_limit=ctx.recipe.kd_limit,
                   train_device=ctx.training.device, train_precision=ctx.training.precision)
    train_s = sum(r["seconds"] for r in result.records if r["stage"] in TRAINING_STAGES)
    acc, _ = evaluate(result.model, ctx.data.val)
    return {"val_accuracy": round(acc, 4), "train_seconds": round(train_s, 2),
            "build_seconds": round(time.perf_counter() - start, 2),
            "final_loss": [r.get("final_loss") for r in result.records if r["stage"] in TRAINING_STAGES],
            "kd_teacher": [r.get("kd_teacher", "cached") for r in result.records if r["stage"] in TRAINING_STAGES]}


def run(args: argparse.Namespace) -> dict:
    recipe = bench_recipe(args.smoke, args.kd_epochs, args.student_epochs)
    ctx = make_context(recipe)
    rows: list[dict] = []
    for label, plain, recovered in variants(recipe.space, args.kd_epochs, args.augment, args.feature_weight):
        row = {"config": label, "plain": measure(ctx, plain)}
        row["recovery"] = measure(ctx, recovered) if recovered is not None else None
        if recovered is not None:
            row["gain"] = round(row["recovery"]["val_accuracy"] - row["plain"]["val_accuracy"], 4)
            row["time_ratio"] = round(row["recovery"]["train_seconds"] / max(row["plain"]["train_seconds"], 1e-9), 2)
        log.info("%s", json.dumps(row))
        print(json.dumps(row), flush=True)
        rows.append(row)
        write(args.out, summary(args, recipe, ctx, rows, done=False))  # a slow run keeps what it measured
    return summary(args, recipe, ctx, rows, done=True)


def write(path: Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")


def summary(args: argparse.Namespace, recipe: Recipe, ctx, rows: list[dict], done: bool) -> dict:
    gains = [r["gain"] for r in rows if "gain" in r]
    return {
        "complete": done,
        "recipe": recipe.name, "teacher_val_accuracy": round(ctx.teacher_accuracy, 4),
        "settings": {"kd_epochs": args.kd_epochs, "student_epochs": args.student_epochs, "kd_augment": args.augment,
                     "kd_feature_weight": args.feature_weight, "seed": 0, "smoke": args.smoke,
                     "training": dataclasses.asdict(ctx.training)},
        "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
                    # training seconds are wall clock: a shared, loaded machine makes them noisy
                    "load_average": [round(v, 2) for v in os.getloadavg()]},
        "rows": rows,
        "mean_gain": round(sum(gains) / len(gains), 4) if gains else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny teacher, 1 epoch each: seconds, for CI")
    p.add_argument("--kd-epochs", type=int, default=None, help="KD fine-tune epochs (default 3; smoke 1)")
    p.add_argument("--student-epochs", type=int, default=None, help="student epochs (default 10; smoke 1)")
    p.add_argument("--augment", default="shift", help="distill augment of the recovery builds (default shift: digits are not mirror-symmetric)")
    p.add_argument("--feature-weight", type=float, default=1.0, help="distill feature_weight of the recovery builds")
    p.add_argument("--out", type=Path, default=HERE / "results" / "recovery.json")
    args = p.parse_args(argv)
    args.kd_epochs = args.kd_epochs if args.kd_epochs is not None else (1 if args.smoke else 3)
    args.student_epochs = args.student_epochs if args.student_epochs is not None else (1 if args.smoke else 10)
    logging.basicConfig(level=logging.WARNING)
    res = run(args)
    write(args.out, res)
    print(f"mean val-accuracy gain {res['mean_gain']}; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
