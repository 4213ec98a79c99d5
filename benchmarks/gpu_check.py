"""GPU check: a two-trial search trained on the GPU with latency on the CPU, against the same search
trained on the CPU. Under 5 minutes on a GPU machine.

Both halves run the same recipe (digits, a small ViT teacher, latency target ``cpu:2``) and the same
two trials: the teacher, and a KD student (from the teacher's weights) that is then pruned and
fine-tuned by KD. The GPU half sets ``[teacher.train] device = "cuda"`` (precision auto: bf16).
Checked:

- the GPU half trained on the GPU (the study's and the trials' records say so) and its models came
  back to the CPU in float32 (the loaded model's parameters);
- latency was measured on the CPU in both halves: the stored target says cpu, and each trial's
  latency is within a factor 2 of the CPU half's (same structure, same CPU);
- accuracies are close: each trial's val accuracy within 5 points of the CPU half's (bf16 on a GPU
  rounds differently; both train the same steps on the same data with the same seed).

Without a GPU it stops at once with one sentence (exit 2); ``--cpu-only`` runs just the CPU half so
the script can be tried on any machine. Results: benchmarks/results/gpu_check.json.

Usage:
    python benchmarks/gpu_check.py               # on a machine with a GPU
    python benchmarks/gpu_check.py --cpu-only    # the CPU half alone
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

RECIPE = """
[study]
name = "gpu-check-{half}"
trials = 2
seed = 0
[data]
dataset = "digits"
[teacher]
model = "vit_tiny_patch16_224"
[teacher.kwargs]
img_size = 8
patch_size = 2
in_chans = 1
embed_dim = 64
depth = 4
num_heads = 4
mlp_ratio = 2.0
[teacher.train]
epochs = {epochs}
device = "{device}"
[target]
device = "cpu:2"
runs = 10
warmup = 2
[space]
prune_heads = [0.0, 0.5]
student = ["none", "custom"]
student_init = ["random", "teacher"]
kd_epochs = [0, 3]
[fixed]
student_depth = 2
student_embed_dim = 64
student_heads = 4
student_epochs = {student_epochs}
"""
ACCURACY_TOLERANCE = 0.05
LATENCY_FACTOR = 2.0


def run_half(half: str, device: str, root: Path, epochs: int, student_epochs: int) -> dict:
    """Search the two trials with training on `device`; returns what the checks need."""
    from vitshrink.compress.distill import clear_logits_memory
    from vitshrink.search import open_or_create_study, run_search
    from vitshrink.spaces import CompressionConfig, Recipe
    from vitshrink.studies import open_study

    os.environ["VITSHRINK_CACHE"] = str(root / f"cache-{half}")  # each half trains its own teacher
    clear_logits_memory()
    recipe = Recipe.from_toml_text(RECIPE.format(half=half, device=device, epochs=epochs,
                                                 student_epochs=student_epochs))
    storage = f"sqlite:///{root}/{half}.db"
    configs = {"teacher": CompressionConfig(),
               "student+prune+kd": CompressionConfig({
                   "student": {"model": "custom", "depth": 2, "embed_dim": 64, "heads": 4, "init": "teacher",
                               "epochs": student_epochs},
                   "prune": {"heads": 0.5}, "finetune": {"epochs": 3}})}
    study = open_or_create_study(recipe, storage)
    for role, cfg in configs.items():  # the same two trials in both halves, in this order
        study.enqueue_trial(recipe.space.params_for(cfg, strict=False),
                            user_attrs={"config_override": cfg.to_dict(), "role": "teacher" if role == "teacher"
                                        else "sampled"})
    start = time.perf_counter()
    summary = run_search(recipe, storage=storage, evaluate_test=False)
    seconds = time.perf_counter() - start
    handle = open_study(recipe.name, storage)
    trials = {}
    for t, role in zip(sorted(handle.study.trials, key=lambda t: t.number), configs):
        model = handle.load_model(t.number) if t.values else None
        trials[role] = {
            "state": t.state.name, "fail_reason": t.user_attrs.get("fail_reason"),
            "val_accuracy": t.values[0] if t.values else None, "latency_ms": t.values[1] if t.values else None,
            "trained_on": [r["trained_on"] for r in t.user_attrs.get("records", []) if "trained_on" in r],
            "loaded_params": sorted({f"{p.device.type}/{p.dtype}".replace("torch.", "") for p in model.parameters()})
            if model is not None else [],
        }
    return {"device_setting": device, "seconds": round(seconds, 1), "completed": summary.completed,
            "training": handle.study.user_attrs.get("vitshrink.training"), "target": handle.target,
            "teacher_accuracy": handle.teacher_accuracy, "trials": trials}


def checks(gpu: dict | None, cpu: dict) -> list[str]:
    """What went wrong, one line each (empty: all checks passed)."""
    bad = []
    for name, half in (("cpu", cpu),) + ((("gpu", gpu),) if gpu else ()):
        if half["completed"] != 2:
            bad.append(f"{name} half: {half['completed']} of 2 trials completed: "
                       f"{[t['fail_reason'] for t in half['trials'].values()]}")
        if not str(half["target"].get("target", "")).startswith("cpu"):
            bad.append(f"{name} half: latency target {half['target']} is not the CPU")
        for role, t in half["trials"].items():
            if t["loaded_params"] != ["cpu/float32"]:
                bad.append(f"{name} half, {role}: loaded model parameters are {t['loaded_params']}, not cpu/float32")
    if gpu is None:
        return bad
    if not str((gpu["training"] or {}).get("device", "")).startswith("cuda"):
        bad.append(f"gpu half: the study says it trained on {gpu['training']}")
    kd = gpu["trials"]["student+prune+kd"]["trained_on"]
    if not kd or any(not r["device"].startswith("cuda") for r in kd):
        bad.append(f"gpu half: the student and fine-tune trained on {kd}, not the GPU")
    for role in cpu["trials"]:
        g, c = gpu["trials"][role], cpu["trials"][role]
        if g["val_accuracy"] is None or c["val_accuracy"] is None:
            continue
        if abs(g["val_accuracy"] - c["val_accuracy"]) > ACCURACY_TOLERANCE:
            bad.append(f"{role}: val accuracy {g['val_accuracy']:.4f} (gpu) vs {c['val_accuracy']:.4f} (cpu) "
                       f"differ by more than {ACCURACY_TOLERANCE}")
        ratio = g["latency_ms"] / c["latency_ms"]
        if not 1 / LATENCY_FACTOR <= ratio <= LATENCY_FACTOR:
            bad.append(f"{role}: latency {g['latency_ms']:.3f} ms (gpu half) vs {c['latency_ms']:.3f} ms (cpu half): "
                       "not the same CPU measurement")
    return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-only", action="store_true", help="run only the CPU half (any machine)")
    ap.add_argument("--epochs", type=int, default=30, help="teacher epochs")
    ap.add_argument("--student-epochs", type=int, default=15)
    ap.add_argument("--out", default="benchmarks/results/gpu_check.json")
    ap.add_argument("--tmp", default=None, help="folder for the studies and caches (default: a temporary one)")
    args = ap.parse_args(argv)
    if not args.cpu_only and not torch.cuda.is_available():
        print("error: torch sees no GPU on this machine (torch.cuda.is_available() is False); run this on a "
              "machine with a GPU, or pass --cpu-only to run just the CPU half", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.tmp or tmp)
        root.mkdir(parents=True, exist_ok=True)
        gpu = None if args.cpu_only else run_half("gpu", "cuda", root, args.epochs, args.student_epochs)
        cpu = run_half("cpu", "cpu", root, args.epochs, args.student_epochs)
    problems = checks(gpu, cpu)
    result = {"cpu_only": args.cpu_only, "gpu": gpu, "cpu": cpu, "problems": problems, "passed": not problems,
              "seconds": round(time.perf_counter() - started, 1), "torch": torch.__version__,
              "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "tolerances": {"val_accuracy": ACCURACY_TOLERANCE, "latency_factor": LATENCY_FACTOR}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for line in problems:
        print(f"FAILED: {line}")
    print(f"{'passed' if not problems else 'failed'} in {result['seconds']:.0f} s; wrote {out}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
