"""Data memory: the peak memory of a short search over an image folder of 1x and 8x the images.

Image folders are streamed (vitshrink.folder_split): memory holds a few decoded batches, never the
folder, so peak memory must not grow with the number of images. Each run is a fresh process (its
RSS high-water mark, `resource.getrusage(...).ru_maxrss`, covers only that run) that runs
`vitshrink search` on a generated folder of JPEGs: the teacher (a small ViT at 224 px, patch 16:
197 tokens) trains 1 epoch, then trials (dynamic int8 / none: no further training) are measured.
Peak = max(the search process, its DataLoader workers). The bar: the 8x run's peak within 150 MB of
the 1x run's.

Usage:
    python benchmarks/data_memory.py                 # 130 and 1,040 images at 224 px (as issue 13 measured)
    python benchmarks/data_memory.py --smoke         # 60 and 480 images at 160 px: a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ROOT = Path(__file__).resolve().parents[1]
BAR_MB = 150.0
CLASSES = 10

RECIPE = """
[study]
name = "data-memory"
trials = {trials}
sampler = "random"
seed = 0

[data]
dataset = "image-folder"

[teacher]
model = "vit_tiny_patch16_224"
[teacher.kwargs]
img_size = {size}
patch_size = 16
embed_dim = 64
depth = 2
num_heads = 2
mlp_ratio = 2.0
[teacher.train]
epochs = 1
batch_size = 32

[target]
runs = 5
warmup = 1

[space]
quant = ["none", "dynamic_int8"]
"""


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """`n` JPEG images (`size` px, RGB, seeded noise over a per-class colour) in CLASSES class folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % CLASSES
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([25 * label, 255 - 25 * label, 128], dtype=np.int16)
        pixels = np.clip(base + rng.integers(-60, 60, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def child(args: argparse.Namespace) -> int:
    """One measured run, in this fresh process: the search, then our own and our workers' peaks."""
    from vitshrink.cli import app

    start = time.perf_counter()
    try:
        app(["search", args.recipe, "--data-dir", args.data_dir, "--storage", args.storage, "--new-study"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_mb": round(max(own, workers), 1), "search_process_mb": round(own, 1),
                      "loader_workers_mb": round(workers, 1), "seconds": round(time.perf_counter() - start, 1)}))
    return 0


def measure(n: int, size: int, trials: int, tmp: Path) -> dict:
    folder = make_folder(tmp / f"images{n}", n, size)
    recipe = tmp / f"recipe{n}.toml"
    recipe.write_text(RECIPE.format(trials=trials, size=size))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITSHRINK_CACHE": str(tmp / f"cache{n}")}
    cmd = [sys.executable, __file__, "--child", "--recipe", str(recipe), "--data-dir", str(folder),
           "--storage", f"sqlite:///{tmp / f'study{n}.db'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
    if res.returncode != 0:
        raise RuntimeError(f"the run over {n} images failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    row = json.loads(res.stdout.strip().splitlines()[-1])
    return {"images": n, "img_size": size, **row}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="60 and 480 images at 160 px")
    p.add_argument("--images", type=int, default=130, help="images of the 1x folder (the 8x one has 8 times as many)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_memory.json"))
    p.add_argument("--tmp", default=None, help="where the folders and studies are written (default: a temp dir)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help=argparse.SUPPRESS)
    p.add_argument("--storage", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.smoke:
        args.images, args.size, args.trials = 60, 160, 1
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        rows = [measure(n, args.size, args.trials, Path(tmp)) for n in (args.images, 8 * args.images)]
    growth = rows[1]["peak_mb"] - rows[0]["peak_mb"]
    result = {"benchmark": "data_memory", "bar_mb": BAR_MB, "rows": rows, "growth_mb": round(growth, 1),
              "within_bar": growth < BAR_MB, "smoke": args.smoke, "load_average": os.getloadavg(),
              "settings": {"teacher": "ViT 64 wide, 2 blocks, patch 16", "teacher_epochs": 1, "trials": args.trials}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['images']:>6} images at {r['img_size']} px: peak {r['peak_mb']:.0f} MB ({r['seconds']:.0f} s)")
    print(f"growth {growth:+.0f} MB (bar < {BAR_MB:.0f} MB): {'ok' if result['within_bar'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
