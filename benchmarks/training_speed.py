"""Training speed: vitshrink's training steps against a plain timm + torch loop on the same model,
batch, device and precision, and what bf16 costs in accuracy.

Two steps of vitshrink are timed: the teacher fine-tuning step (`vitshrink.models.train_classifier`:
AdamW, OneCycle schedule, cross-entropy) and the knowledge-distillation step
(`vitshrink.compress.distill.distill_train`: the same loop with Hinton's loss on cached teacher
logits). Each is compared with the loop a user would write with timm and torch alone (AdamW,
`torch.autocast` for bf16, the same loss on the same precomputed teacher logits). Each measurement
is one pass over the same images (a few batches); the two loops alternate within every round (ABBA
order, after one untimed warm-up round) and the median of the per-round ratios
vitshrink / plain images per second is reported. The bar: vitshrink within 10 % (ratio >= 0.9).

The images are seeded random tensors: speed does not depend on pixel values. The accuracy cost of
bf16 is measured on real data: the quickstart's teacher (digits; 30 epochs by default, see
--accuracy-epochs) trained fp32 and bf16 with the same seed, val accuracy of each.

The machine is shared: the load average before and after is stored beside the numbers.

Usage:
    python benchmarks/training_speed.py                   # DeiT-Tiny shape at 32 px, 128-wide 6-block ViT at 28 px
    python benchmarks/training_speed.py --device cuda     # the same on a GPU (bf16 autocast there)
    python benchmarks/training_speed.py --smoke           # a tiny ViT, a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.compress.distill import distill_train  # noqa: E402
from vitshrink.data import DataBundle, Split, load_digits  # noqa: E402
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, TrainSettings, create_model, evaluate  # noqa: E402
from vitshrink.training import cpu_has_native_bf16, resolve_training  # noqa: E402

BAR = 0.9
MODELS = {
    # DeiT-Tiny's width, depth and heads at 32 px (patch 4: 64 patches + cls)
    "deit_tiny@32px": {"img_size": 32, "patch_size": 4, "in_chans": 3, "embed_dim": 192, "depth": 12,
                       "num_heads": 3, "mlp_ratio": 4.0, "num_classes": 10},
    # the 128-wide 6-block ViT at 28 px (Fashion-MNIST's size; patch 4: 49 patches + cls)
    "vit128x6@28px": {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 128, "depth": 6,
                      "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 10},
}
SMOKE_MODELS = {"tiny@16px": dict(TINY_VIT_KWARGS)}
KD_T, KD_ALPHA = 4.0, 0.7


def _bundle(kwargs: dict, n: int, seed: int = 0) -> tuple[DataBundle, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (n, kwargs["in_chans"], kwargs["img_size"], kwargs["img_size"])
    x, y = torch.randn(shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    split = Split(x, y)
    logits = torch.randn(n, 10, generator=gen) * 3  # the teacher's cached logits, as KD reads them
    return DataBundle("random", split, split, split, 10), logits


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def plain_pass(model, x, y, logits, batch: int, device: str, bf16: bool, kd: bool) -> None:
    """The loop a user writes with timm and torch: AdamW, autocast, cross-entropy or Hinton's KD loss."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    kind = torch.device(device).type
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=bf16):
            out = model(xb)
        out = out.float()
        if kd:
            t = logits[i : i + batch].to(device)
            kl = F.kl_div(F.log_softmax(out / KD_T, -1), F.log_softmax(t / KD_T, -1), reduction="batchmean",
                          log_target=True)
            loss = KD_ALPHA * KD_T**2 * kl + (1 - KD_ALPHA) * F.cross_entropy(out, yb)
        else:
            loss = F.cross_entropy(out, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)


def vitshrink_pass(model, data, logits, settings: TrainSettings, kd: bool, seed: int) -> None:
    if kd:
        distill_train(model, data, logits, settings, KD_T, KD_ALPHA, seed=seed)
    else:
        from vitshrink.models import train_classifier

        train_classifier(model, data, settings, seed=seed)
    _sync(settings.device)


def compare(name: str, kwargs: dict, precision: str, device: str, batch: int, steps: int, rounds: int) -> list[dict]:
    """Rows (fine-tune and KD) of images/s for vitshrink and the plain loop, interleaved rounds."""
    n = batch * steps
    data, logits = _bundle(kwargs, n)
    where = resolve_training(device, precision)
    settings = TrainSettings(epochs=1, batch_size=batch, lr=5e-4, weight_decay=0.01, device=where.device,
                             precision=where.precision)
    spec = TeacherSpec("vit_tiny_patch16_224", kwargs)
    rows = []
    for mode in ("finetune", "kd"):
        torch.manual_seed(0)
        models = {"vitshrink": create_model(spec), "plain": create_model(spec)}
        rates: dict[str, list[float]] = {"vitshrink": [], "plain": []}
        for r in range(rounds + 1):  # round 0 warms up (allocator, kernels, first-touch) and is not kept
            order = ("vitshrink", "plain") if r % 2 else ("plain", "vitshrink")
            for who in order + order[::-1]:  # ABBA: a drift in machine speed hits both alike
                start = time.perf_counter()
                if who == "vitshrink":
                    vitshrink_pass(models[who], data, logits, settings, mode == "kd", seed=r)
                else:
                    plain_pass(models[who], data.train.x, data.train.y, logits, batch, where.device,
                               where.precision == "bf16", mode == "kd")
                if r:
                    rates[who].append(n / (time.perf_counter() - start))
        ratios = [a / b for a, b in zip(rates["vitshrink"], rates["plain"])]  # i-th of each: the same round
        row = {"model": name, "device": where.device, "precision": where.precision, "mode": mode, "batch": batch,
               "images_per_pass": n, "vitshrink_img_s": round(statistics.median(rates["vitshrink"]), 2),
               "plain_img_s": round(statistics.median(rates["plain"]), 2),
               "ratio_median": round(statistics.median(ratios), 4), "ratios": [round(x, 4) for x in ratios]}
        row["within_bar"] = row["ratio_median"] >= BAR
        print(f"{name:>15} {where.precision:>4} {mode:>8}: vitshrink {row['vitshrink_img_s']:8.1f} img/s, "
              f"plain {row['plain_img_s']:8.1f} img/s, ratio {row['ratio_median']:.3f}", flush=True)
        rows.append(row)
    return rows


def accuracy_cost(device: str, epochs: int, smoke: bool) -> dict:
    """The quickstart's teacher on digits, trained fp32 and bf16 with the same seed: val accuracy of each."""
    from vitshrink.models import train_classifier
    from vitshrink.spaces import resolve_recipe

    recipe = resolve_recipe("quickstart")
    kwargs = dict(TINY_VIT_KWARGS, img_size=8, patch_size=2) if smoke else dict(recipe.teacher_kwargs)
    data = load_digits(seed=0)
    if smoke:  # seconds, not minutes: a quarter of the train split
        data = dataclasses.replace(data, train=data.train.head(256))
    out = {"model": kwargs, "epochs": epochs, "dataset": data.describe()}
    for precision in ("fp32", "bf16"):
        settings = dataclasses.replace(TrainSettings(**recipe.teacher_train), epochs=epochs, device=device,
                                       precision=precision)
        torch.manual_seed(0)
        model = create_model(TeacherSpec(recipe.teacher_model, {**kwargs, "num_classes": 10}))
        start = time.perf_counter()
        train_classifier(model, data, settings, seed=0)
        seconds = time.perf_counter() - start
        acc, _ = evaluate(model, data.val.x, data.val.y)
        out[precision] = {"val_accuracy": round(acc, 4), "train_seconds": round(seconds, 1)}
        print(f"accuracy cost: {precision} val accuracy {acc:.4f} in {seconds:.0f} s", flush=True)
    out["bf16_minus_fp32"] = round(out["bf16"]["val_accuracy"] - out["fp32"]["val_accuracy"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny ViT, two rounds: seconds")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="batches per timed pass")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--accuracy-epochs", type=int, default=None, help="teacher epochs for the accuracy cost")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="*", default=None, help=f"a subset of {', '.join(MODELS)}")
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--no-accuracy", action="store_true", help="skip the bf16 accuracy cost (speed only)")
    ap.add_argument("--out", default="benchmarks/results/training_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = SMOKE_MODELS if args.smoke else {k: v for k, v in MODELS.items() if not args.models or k in args.models}
    rounds, steps, batch = (2, 2, 16) if args.smoke else (args.rounds, args.steps, args.batch)
    precisions = args.precisions
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = [row for name, kwargs in models.items() for p in precisions
            for row in compare(name, kwargs, p, args.device, batch, steps, rounds)]
    epochs = args.accuracy_epochs or (1 if args.smoke else 30)
    accuracy = None if args.no_accuracy else accuracy_cost(args.device, epochs, args.smoke)
    speedup = {}
    for r in rows:
        if r["precision"] == "bf16" and "fp32" in precisions:
            fp32 = next(x for x in rows if (x["model"], x["mode"], x["precision"]) == (r["model"], r["mode"], "fp32"))
            speedup[f"{r['model']} {r['mode']}"] = round(r["vitshrink_img_s"] / fp32["vitshrink_img_s"], 3)
    result = {
        "settings": {"smoke": args.smoke, "device": args.device, "batch": batch, "steps_per_pass": steps,
                     "rounds": rounds, "threads": args.threads, "bar": BAR, "models": models},
        "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP's default, spinning)"),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "a machine shared with other jobs: absolute images/s move with the load; the "
                            "interleaved ratio is what is compared"},
        "rows": rows,
        "bf16_speedup_vitshrink": speedup,
        "accuracy_cost": accuracy,
        "all_within_bar": all(r["within_bar"] for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}; all within {BAR:.0%} of plain: {result['all_within_bar']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
