"""The accuracy cost of bf16 autocast training (issue 13.3): the same teacher trained in fp32 and in
bf16 (`[teacher.train] precision`), same data, same seeds, on this CPU (bf16 autocast runs on the
CPU where it has avx512_bf16). Prints test accuracy per seed and the median difference.

Two settings: the quickstart teacher on digits (its recipe's 80 epochs), and a 64-wide 4-block
patch-4 ViT on a class-balanced 6,000-image subset of Fashion-MNIST (15 epochs).

    python benchmarks/bf16_accuracy.py                    # 3 seeds, writes results/bf16_accuracy.json
    python benchmarks/bf16_accuracy.py --smoke            # 1 seed, 2 epochs (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "digits": {"dataset": "digits", "limit": None, "epochs": 80, "lr": 0.002, "batch": 64,
               "kwargs": {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 64, "depth": 4,
                          "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10}},
    "fashion-mnist-6k": {"dataset": "fashion-mnist", "limit": 6000, "epochs": 15, "lr": 0.002, "batch": 128,
                         "kwargs": {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 64, "depth": 4,
                                    "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10}},
}


def run(name: str, precision: str, seed: int, epochs: int) -> dict:
    import torch

    from vitshrink.data import load_dataset
    from vitshrink.models import TeacherSpec, TrainSettings, create_model, evaluate, train_classifier

    s = SETTINGS[name]
    data = load_dataset(s["dataset"], seed=0, limit=s["limit"])
    torch.manual_seed(seed)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", dict(s["kwargs"])))
    settings = TrainSettings(epochs=epochs, lr=s["lr"], batch_size=s["batch"], device="cpu", precision=precision)
    start = time.perf_counter()
    train_classifier(model, data, settings, seed=seed)
    seconds = time.perf_counter() - start
    acc, _ = evaluate(model, data.test)
    return {"setting": name, "precision": precision, "seed": seed, "epochs": epochs,
            "test_accuracy": round(float(acc), 4), "train_seconds": round(seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--smoke", action="store_true", help="one seed, 2 epochs, digits only")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_accuracy.json"))
    args = p.parse_args(argv)
    import torch

    from vitshrink.training import resolve_training

    torch.set_num_threads(2)
    if resolve_training("cpu", "bf16").precision != "bf16":
        print("this CPU does not run bf16 autocast; nothing to compare")
        return 0
    seeds = [0] if args.smoke else [int(x) for x in args.seeds.split(",")]
    names = ["digits"] if args.smoke else args.settings.split(",")
    rows = []
    for name in names:
        epochs = 2 if args.smoke else SETTINGS[name]["epochs"]
        for seed in seeds:
            for precision in ("fp32", "bf16"):  # the pair side by side, so both see the same machine load
                rows.append(run(name, precision, seed, epochs))
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for name in names:
        acc = {prec: [r["test_accuracy"] for r in rows if r["setting"] == name and r["precision"] == prec]
               for prec in ("fp32", "bf16")}
        diffs = [b - f for f, b in zip(acc["fp32"], acc["bf16"])]
        summary[name] = {"fp32_median": statistics.median(acc["fp32"]), "bf16_median": statistics.median(acc["bf16"]),
                         "median_bf16_minus_fp32": round(statistics.median(diffs), 4), "diffs": diffs}
        print(f"{name}: fp32 {acc['fp32']} bf16 {acc['bf16']} -> median bf16 - fp32 = "
              f"{summary[name]['median_bf16_minus_fp32']:+.4f}")
    result = {"benchmark": "bf16_accuracy", "rows": rows, "summary": summary, "smoke": args.smoke,
              "load_average": os.getloadavg(), "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
