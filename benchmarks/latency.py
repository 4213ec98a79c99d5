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
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vitshrink.compress import build  # noqa: E402
from vitshrink.data import DataBundle, Split  # noqa: E402
from vitshrink.objectives import LatencyProtocol, Target, measure_latency, size_bytes  # noqa: E402
from vitshrink.spaces import CompressionConfig  # noqa: E402

log = logging.getLogger("benchmarks.latency")
NOISY_CV = 0.25  # above this spread, other load on the machine distorted the timing

# CI's smoke run: every technique once and one combination, so it stays under a minute
SMOKE_VARIANTS = ("fp32", "dynamic_int8", "bf16", "ort_int8", "openvino_int8", "prune50", "svd50", "tome8", "drop30", "nystrom16",
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
        "dynamic_int8": CompressionConfig(quant="dynamic_int8"),
        "static_int8": CompressionConfig(quant="static_int8", calib_size=16),
        "bf16": CompressionConfig(quant="bf16"),
        "ort_fp32": CompressionConfig(quant="ort_fp32"),
        "ort_int8": CompressionConfig(quant="ort_int8"),
        "openvino_fp32": CompressionConfig(quant="openvino_fp32"),
        "openvino_int8": CompressionConfig(quant="openvino_int8", calib_size=16),
        "prune50": CompressionConfig(prune_heads=0.5, prune_mlp=0.5),
        "svd50": CompressionConfig(lowrank="svd", svd_rank=0.5),
        "tome8": CompressionConfig(token_merge_r=8),
        "drop30": CompressionConfig(token_drop=0.3, token_drop_at=drop_at),
        "prune50+ort_int8": CompressionConfig(prune_heads=0.5, prune_mlp=0.5, quant="ort_int8"),
        "tome8+ort_int8": CompressionConfig(token_merge_r=8, quant="ort_int8"),
        "prune50+tome8+ort_int8": CompressionConfig(prune_heads=0.5, prune_mlp=0.5, token_merge_r=8, quant="ort_int8"),
        "prune50+drop30+ort_int8": CompressionConfig(prune_heads=0.5, prune_mlp=0.5, token_drop=0.3,
                                                     token_drop_at=drop_at, quant="ort_int8"),
        "prune50+tome8+dynamic_int8": CompressionConfig(prune_heads=0.5, prune_mlp=0.5, token_merge_r=8,
                                                        quant="dynamic_int8"),
        "prune50+tome8+openvino_int8": CompressionConfig(prune_heads=0.5, prune_mlp=0.5, token_merge_r=8,
                                                         quant="openvino_int8", calib_size=16),
    }
    if tokens > landmarks:
        out["nystrom64" if not smoke else f"nystrom{landmarks}"] = CompressionConfig(lowrank="nystrom",
                                                                                      landmarks=landmarks)
    return out


def expected_stages(cfg: CompressionConfig) -> set[str]:
    stages = set()
    if cfg.prune_heads or cfg.prune_mlp:
        stages.add("prune")
    if cfg.lowrank != "none":
        stages.add("lowrank")
    if cfg.token_merge_r or cfg.token_drop:
        stages.add("tokens")
    if cfg.quant != "none":
        stages.add("quantize")
    return stages


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
        baseline: dict[int, tuple[float, float]] = {}  # batch -> (median, min) of fp32 eager
        for label, cfg in variants(len(teacher.blocks), tokens, args.smoke).items():
            if only and label not in only and label != "fp32":
                continue
            start = time.perf_counter()
            try:
                model = build_variant(teacher, cfg, data, max(batches))
                size_mb = size_bytes(model) / 1e6
                result = measure_latency(model, (chans, img, img), target, protocol)
            except Exception as exc:  # noqa: BLE001 - one failing technique must not hide the others
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                print(f"{name:28s} {label:28s} skipped ({reason})", flush=True)
                rows.append({"model": name, "variant": label, "config": cfg.summary(), "status": "skipped",
                             "error": reason})
                continue
            finally:
                gc.collect()
            for b in result.batches:
                if label == "fp32":
                    baseline[b.batch] = (b.median_ms, b.min_ms)
                row = {
                    "model": name, "batch": b.batch, "variant": label, "config": cfg.summary(), "status": "ok",
                    "latency_ms": round(b.median_ms, 3), "iqr_ms": round(b.iqr_ms, 3), "cv": round(b.cv, 4),
                    "runs": b.runs, "min_ms": round(b.min_ms, 3),
                    "speedup": round(baseline[b.batch][0] / b.median_ms, 3),
                    # min over runs is what a busy machine disturbs least; reported beside the median
                    "speedup_min": round(baseline[b.batch][1] / b.min_ms, 3),
                    "size_mb": round(size_mb, 3), "threads": result.threads, "cpu": result.target.get("cpu"),
                    "load_avg": round(result.load_avg, 2),
                    "torch": torch.__version__,
                }
                rows.append(row)
                print(f"{name:28s} {label:28s} b={b.batch:<3d} {b.median_ms:10.2f} ms  x{row['speedup']:<6.2f} "
                      f"{size_mb:8.1f} MB  (iqr {b.iqr_ms:.2f} ms, built+timed in "
                      f"{time.perf_counter() - start:.0f} s)", flush=True)
                if b.cv > NOISY_CV:
                    print(f"  warning: cv {b.cv:.2f} > {NOISY_CV}: the machine was busy, this row is noisy", flush=True)
            del model
    return rows


def table(rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = ["| model | batch | variant | latency ms (median) | speed-up | min ms | speed-up (min) | size MB | cv |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(ok, key=lambda r: (r["model"], r["batch"], -r["speedup"])):
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['latency_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['min_ms']:.1f} | {r['speedup_min']:.2f}x | {r['size_mb']:.1f} | {r['cv']:.2f} |")
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
    parser.add_argument("--smoke", action="store_true", help="a tiny ViT (embed 64, depth 2, 32 px) and 5 runs")
    parser.add_argument("--out", default="benchmarks/results/latency.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.runs, args.warmup = 5, 1
    logging.basicConfig(level=logging.WARNING)
    rows = run(args)
    print()
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nwrote {len([r for r in rows if r['status'] == 'ok'])} rows to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
