"""Latency of each compression technique alone and of a few combinations, on this machine's CPU.

Every variant is built by `vitshrink.compress.build` from a timm model with random weights (no
downloads; latency is a property of the structure, not of the weights) and timed with the project's
protocol (`vitshrink.objectives.measure_latency`: fixed threads, warm-up, median of timed runs,
holding the machine-wide latency lock). Speed-ups are against fp32 eager torch of the same model and
batch, measured in the same run. Static int8 calibration and data-dependent choices use random
images: fine for speed, meaningless for accuracy (this script reports no accuracy).

Usage:
    python benchmarks/latency.py --models vit_base_patch16_224,deit_small_patch16_224 --batches 1,8 \\
        --threads 2 --runs 10 --out benchmarks/results/latency.json
    python benchmarks/latency.py --smoke          # a tiny ViT, a few runs: < 60 s, for CI

With `--rounds N` every variant is built first and then timed N times round-robin (variant by
variant, round by round), and a row reports the median over rounds: a drift of the machine's speed
during the run then touches every variant alike. Each row also gives its speed-up over `ort_int8`
of the same model and batch when that variant is in the run. The result file records the command
and the load average before and after.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.compress import build  # noqa: E402
from vitshrink.data import DataBundle, Split  # noqa: E402
from vitshrink.objectives import LatencyProtocol, Target, measure_latency, size_bytes  # noqa: E402
from vitshrink.spaces import CompressionConfig  # noqa: E402
from vitshrink.techniques import get_technique  # noqa: E402

log = logging.getLogger("benchmarks.latency")
NOISY_CV = 0.25  # above this spread, other load on the machine distorted the timing

# CI's smoke run: every technique once and one combination, so it stays under a minute
SMOKE_VARIANTS = ("fp32", "dynamic_int8", "bf16", "ort_int8", "ort_fused_int8", "openvino_int8", "prune50", "svd50", "tome8", "drop30", "nystrom16",
                  "prune50+tome8+ort_int8")
SMOKE_KWARGS = {"img_size": 32, "patch_size": 4, "embed_dim": 64, "depth": 2, "num_heads": 4, "num_classes": 10}


def random_data(img_size: int, in_chans: int, num_classes: int, n: int = 32, seed: int = 0) -> DataBundle:
    """A small random DataBundle: calibration and scoring inputs for building variants (not for accuracy)."""
    gen = torch.Generator().manual_seed(seed)

    def split(k: int) -> Split:
        return Split(torch.randn(k, in_chans, img_size, img_size, generator=gen),
                     torch.randint(0, num_classes, (k,), generator=gen))

    return DataBundle("random", split(n), split(8), split(8), num_classes)


def variants(depth: int, tokens: int, smoke: bool) -> dict[str, CompressionConfig]:
    """The benchmarked configurations: the baseline, each technique alone, and a few combinations."""
    drop_at = tuple(b for b in (3, 6, 9) if b < depth) or (depth - 1,)
    landmarks = 16 if smoke else 64
    out = {
        "fp32": CompressionConfig(),
        "dynamic_int8": CompressionConfig({"dynamic_int8": {}}),
        "static_int8": CompressionConfig({"static_int8": {"calib_size": 16}}),
        "bf16": CompressionConfig({"bf16": {}}),
        "ort_fp32": CompressionConfig({"ort_fp32": {}}),
        "ort_int8": CompressionConfig({"ort_int8": {}}),
        "ort_fused_fp32": CompressionConfig({"ort_fused_fp32": {}}),
        "ort_fused_int8": CompressionConfig({"ort_fused_int8": {}}),
        "openvino_fp32": CompressionConfig({"openvino_fp32": {}}),
        "openvino_int8": CompressionConfig({"openvino_int8": {"calib_size": 16}}),
        "prune50": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}}),
        "svd50": CompressionConfig({"svd": {"rank": 0.5}}),
        "tome8": CompressionConfig({"tome": {"r": 8}}),
        "drop30": CompressionConfig({"patch_drop": {"fraction": 0.3, "at": drop_at}}),
        "prune50+ort_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "ort_int8": {}}),
        "prune50+ort_fused_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "ort_fused_int8": {}}),
        "tome8+ort_int8": CompressionConfig({"tome": {"r": 8}, "ort_int8": {}}),
        "prune50+tome8+ort_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "tome": {"r": 8},
                                                     "ort_int8": {}}),
        "prune50+drop30+ort_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5},
                                                      "patch_drop": {"fraction": 0.3, "at": drop_at}, "ort_int8": {}}),
        "prune50+tome8+dynamic_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "tome": {"r": 8},
                                                         "dynamic_int8": {}}),
        "prune50+tome8+openvino_int8": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "tome": {"r": 8},
                                                          "openvino_int8": {"calib_size": 16}}),
    }
    if tokens > landmarks:
        out["nystrom64" if not smoke else f"nystrom{landmarks}"] = CompressionConfig({"nystrom": {"landmarks": landmarks}})
    return out


def expected_stages(cfg: CompressionConfig) -> set[str]:
    return {get_technique(name).stage for name in cfg.names}


def build_variant(teacher, cfg: CompressionConfig, data: DataBundle, batch: int):
    """Build one variant and check it really applied every asked-for stage and gives finite logits."""
    result = build(teacher, cfg, data, train=False)
    missing = expected_stages(cfg) - {r["stage"] for r in result.records}
    if missing:  # an unregistered transform would silently leave the model as it was
        raise RuntimeError(f"no registered transform applied stage(s) {sorted(missing)}")
    with torch.no_grad():
        out = result.model(data.val.x[:batch] if batch <= len(data.val) else data.train.x[:batch])
    if not torch.isfinite(out.float()).all():
        raise RuntimeError("the variant produces NaN/inf logits")
    return result.model


def run(args: argparse.Namespace) -> list[dict]:
    import timm

    torch.set_num_threads(args.threads)  # before building: ORT sessions take their thread count at creation
    target = Target("cpu", threads=args.threads)
    batches = tuple(int(b) for b in args.batches.split(","))
    protocol = LatencyProtocol(warmup=args.warmup, runs=args.runs, batch_sizes=batches)
    names = ["smoke_vit"] if args.smoke else [m.strip() for m in args.models.split(",") if m.strip()]
    only = set(args.variants.split(",")) if args.variants else (set(SMOKE_VARIANTS) if args.smoke else None)
    rows: list[dict] = []
    for name in names:
        torch.manual_seed(0)
        if args.smoke:
            teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, **SMOKE_KWARGS).eval()
        else:
            teacher = timm.create_model(name, pretrained=False).eval()
        img, chans = teacher.patch_embed.img_size[0], teacher.patch_embed.proj.in_channels
        tokens = teacher.patch_embed.num_patches + teacher.num_prefix_tokens
        data = random_data(img, chans, teacher.num_classes, n=max(32, max(batches)))
        built: dict[str, tuple[CompressionConfig, torch.nn.Module, float, float]] = {}
        for label, cfg in variants(len(teacher.blocks), tokens, args.smoke).items():
            if only and label not in only and label != "fp32":
                continue
            start = time.perf_counter()
            try:
                model = build_variant(teacher, cfg, data, max(batches))
                built[label] = (cfg, model, size_bytes(model) / 1e6, time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - one failing technique must not hide the others
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                print(f"{name:28s} {label:28s} skipped ({reason})", flush=True)
                rows.append({"model": name, "variant": label, "config": cfg.summary(), "status": "skipped",
                             "error": reason})
            finally:
                gc.collect()
        timed: dict[str, list] = {label: [] for label in built}  # label -> one LatencyResult per round
        for round_ in range(args.rounds):
            for label, (cfg, model, size_mb, seconds) in built.items():
                timed[label].append(measure_latency(model, (chans, img, img), target, protocol))
                if args.rounds > 1:
                    b = timed[label][-1].batches[0]
                    print(f"{name:28s} {label:28s} round {round_ + 1}/{args.rounds} b={b.batch:<3d} "
                          f"{b.median_ms:10.2f} ms", flush=True)
        model_rows = []
        for label, (cfg, model, size_mb, seconds) in built.items():
            for i, batch in enumerate(batches):
                per_round = [r.batches[i] for r in timed[label]]
                b = sorted(per_round, key=lambda p: p.median_ms)[(len(per_round) - 1) // 2]  # the median round
                median_ms = statistics.median(p.median_ms for p in per_round)
                model_rows.append({
                    "model": name, "batch": batch, "variant": label, "config": cfg.summary(), "status": "ok",
                    "latency_ms": round(median_ms, 3), "iqr_ms": round(b.iqr_ms, 3), "cv": round(b.cv, 4),
                    "runs": b.runs, "rounds": len(per_round), "min_ms": round(min(p.min_ms for p in per_round), 3),
                    "round_medians_ms": [round(p.median_ms, 3) for p in per_round],
                    "size_mb": round(size_mb, 3), "threads": timed[label][0].threads,
                    "cpu": timed[label][0].target.get("cpu"),
                    "load_avg": round(max(r.load_avg for r in timed[label]), 2), "torch": torch.__version__,
                })
        for row in model_rows:
            same = {r["variant"]: r for r in model_rows if r["batch"] == row["batch"]}
            # min over runs is what a busy machine disturbs least; reported beside the median
            row["speedup"] = round(same["fp32"]["latency_ms"] / row["latency_ms"], 3)
            row["speedup_min"] = round(same["fp32"]["min_ms"] / row["min_ms"], 3)
            if "ort_int8" in same:
                row["vs_ort_int8"] = round(same["ort_int8"]["latency_ms"] / row["latency_ms"], 3)
                row["vs_ort_int8_per_round"] = [round(a / b, 3) for a, b in
                                                zip(same["ort_int8"]["round_medians_ms"], row["round_medians_ms"])]
            print(f"{name:28s} {row['variant']:28s} b={row['batch']:<3d} {row['latency_ms']:10.2f} ms  "
                  f"x{row['speedup']:<6.2f} {row['size_mb']:8.1f} MB  (iqr {row['iqr_ms']:.2f} ms"
                  + (f", vs ort_int8 x{row['vs_ort_int8']:.3f}" if "vs_ort_int8" in row else "") + ")", flush=True)
            if row["cv"] > NOISY_CV:
                print(f"  warning: cv {row['cv']:.2f} > {NOISY_CV}: the machine was busy, this row is noisy", flush=True)
        rows.extend(model_rows)
        del built, timed
        gc.collect()
    return rows


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = ["| model | batch | variant | latency ms (median) | speed-up | vs ort_int8 | min ms | speed-up (min) | size MB "
             "| cv |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(ok, key=lambda r: (r["model"], r["batch"], -r["speedup"])):
        vs = f"{r['vs_ort_int8']:.2f}x" if "vs_ort_int8" in r else "-"
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['latency_ms']:.1f} | {r['speedup']:.2f}x | "
                     f"{vs} | {r['min_ms']:.1f} | {r['speedup_min']:.2f}x | {r['size_mb']:.1f} | {r['cv']:.2f} |")
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | - | {r['variant']} | skipped: {r['error']} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="vit_base_patch16_224,deit_small_patch16_224",
                        help="comma-separated timm model names (random weights)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per batch (>= 5)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default="", help="comma-separated subset of variants (fp32 is always run)")
    parser.add_argument("--rounds", type=int, default=1, help="time every built variant this many times, round-robin")
    parser.add_argument("--smoke", action="store_true", help="a tiny ViT (embed 64, depth 2, 32 px) and 5 runs")
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup = 5, 1
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()[0]
    started = time.time()
    rows = run(args)
    print()
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"command": "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
              "seconds": round(time.time() - started, 1), "load_before": round(load_before, 2),
              "load_after": round(os.getloadavg()[0], 2), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "rows": rows}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {len([r for r in rows if r['status'] == 'ok'])} rows to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
