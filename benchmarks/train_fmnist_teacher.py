"""Train the compute-bound Fashion-MNIST teacher that benchmarks/search_efficiency.py compresses, once.

The weights are committed (benchmarks/assets/fmnist_teacher.safetensors) with this script's log, so no
session retrains them. A 128-wide, 6-block timm ViT with patch 4 (49 patches + cls): at batch 1 its
fp32 eager forward is compute-bound on 2 CPU cores, unlike the 96-wide 4-block teacher of the
fashion-mnist recipe (0.96 ms, dominated by per-operator overhead).

    python benchmarks/train_fmnist_teacher.py --epochs 25 | tee benchmarks/results/fmnist_teacher.log
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from vitshrink.data import load_fashion_mnist
from vitshrink.models import TeacherSpec, TrainSettings, create_model, evaluate, train_classifier

HERE = Path(__file__).resolve().parent
KWARGS = {"img_size": 28, "patch_size": 4, "in_chans": 1, "num_classes": 10, "embed_dim": 128, "depth": 6,
          "num_heads": 4, "mlp_ratio": 4.0}
MODEL = "vit_small_patch16_224"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "assets" / "fmnist_teacher.safetensors"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_fashion_mnist(seed=args.seed)
    settings = TrainSettings(epochs=args.epochs, lr=2e-3, weight_decay=0.05, batch_size=256, label_smoothing=0.1,
                             augment=("flip",))
    torch.manual_seed(args.seed)
    model = create_model(TeacherSpec(MODEL, KWARGS))
    start = time.perf_counter()

    def progress(epoch: int, total: int, loss: float) -> None:
        val, _ = evaluate(model, data.val.x, data.val.y)
        model.train()
        print(f"epoch {epoch}/{total} loss {loss:.4f} val {val:.4f} {time.perf_counter() - start:.0f} s "
              f"load {os.getloadavg()[0]:.1f}", flush=True)

    train_classifier(model, data, settings, seed=args.seed, progress=progress)
    val, _ = evaluate(model, data.val.x, data.val.y)
    test, _ = evaluate(model, data.test.x, data.test.y)
    from safetensors.torch import save_file

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": MODEL, "kwargs": json.dumps(KWARGS), "data_seed": str(args.seed),
            "train": json.dumps(settings.__dict__), "val_accuracy": f"{val:.4f}", "test_accuracy": f"{test:.4f}"}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out, metadata=meta)
    print(json.dumps({"val_accuracy": round(val, 4), "test_accuracy": round(test, 4),
                      "seconds": round(time.perf_counter() - start), "out": args.out}), flush=True)


if __name__ == "__main__":
    main()
