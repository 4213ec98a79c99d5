"""Smoke runs of the Fashion-MNIST comparison, the search-efficiency, overhead and recovery benchmarks
(what CI runs of them)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from support import require_service
from vitshrink.data import FASHION_MNIST_DIRS

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_fashion_mnist_smoke(tmp_path):
    if not any(Path(d).is_dir() for d in FASHION_MNIST_DIRS):
        pytest.skip("Fashion-MNIST (Debian's dataset-fashion-mnist) is not installed")
    bench = _load("fashion_mnist")
    out = tmp_path / "fm.json"
    assert bench.main(["--smoke", "--tmp", str(tmp_path / "tmp"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    teacher = res["teacher"]
    for method in ("reference", "random", "vitshrink"):
        r = res[method]
        assert r["trials"] == 3 and r["failed"] == 0
        assert r["teacher_accuracy"] == teacher["val_accuracy"]
        # the teacher trial lies inside the reference box, so every front has a positive volume
        assert 0 < r["hypervolume"] <= 1.0 * 1.1 * 1.1
        assert r["best_speedup_at_1pt"] > 0
        assert r["best_at_1pt"]["val_accuracy"] >= teacher["val_accuracy"] - 0.01 - 1e-9
        assert r["pareto"], "a study with completed trials has a Pareto front"
    # the warm start really is the hand-picked set: reference and vitshrink begin with the same configs
    assert res["vitshrink"]["labels"] == res["reference"]["labels"]
    assert res["random"]["labels"][0] == "teacher"
    assert res["settings"]["hv_reference"] == [1.0, 1.1, 1.1]


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path):
    """The default methods at one wall-clock budget: the JSON has the documented schema (per run, per
    method and the comparison with random), each run kept to its own storage, and the PNG beside it."""
    bench = _load("search_efficiency")
    out = tmp_path / "se.json"
    # 10 s a method (the smoke's default is 20): every run still starts with the teacher trial
    assert bench.main(["--smoke", "--budget", "10", "--tmp", str(tmp_path / "tmp"), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) >= {"teacher", "budget_s", "methods"} and res["budget_s"] == 10.0
    assert set(res["teacher"]) >= {"test_accuracy", "latency_ms"} and res["teacher"]["latency_ms"] > 0
    assert list(res["methods"]) == ["vitshrink", "random", "reference"]
    comparison = res["comparison"]["methods"]
    assert set(comparison) == set(res["methods"]) and comparison["random"]["median_ratio_to_random"] == 1.0
    for c in comparison.values():
        assert set(c) >= {"median_hypervolume", "ratio_to_random", "median_area_under_curve", "time_to_random_final"}
    assert 0 < res["methods"]["vitshrink"][0]["proposer_share"] < 1  # the proposer's time, out of the budget
    for method, rows in res["methods"].items():
        assert [r["seed"] for r in rows] == [0]
        r = rows[0]
        assert set(r) >= {"seed", "hypervolume", "best_speedup_at_1pt", "trained", "screened", "stopped", "seconds"}
        # the teacher trial lies inside the reference box, so every run has a positive volume
        assert 0 < r["hypervolume"] <= 1.0 * 1.1 * 1.1 and r["best_speedup_at_1pt"] > 0
        assert r["trained"] >= 1 and r["screened"] >= 0 and r["stopped"] >= 0 and r["seconds"] > 0
        if method != "vitshrink":  # only vitshrink screens and stops
            assert r["screened"] == r["stopped"] == 0
        assert (tmp_path / "tmp" / f"{method}-s0" / "study.db").is_file()
    assert out.with_suffix(".png").stat().st_size > 0
    # the default recipe needs the compute-bound teacher: refused in one sentence when it is missing
    missing = tmp_path / "no-teacher.safetensors"
    assert bench.main(["--teacher-checkpoint", str(missing), "--out", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_overhead_smoke(tmp_path):
    bench = _load("overhead")
    url = bench.DEFAULT_POSTGRES
    reachable = bench.postgres_reachable(url) is None
    out = tmp_path / "overhead.json"
    args = ["--smoke", "--tmp", str(tmp_path / "tmp"), "--out", str(out)]
    if not reachable:
        args += ["--postgres", ""]
    assert bench.main(args) == 0
    res = json.loads(out.read_text())
    for label in ("sqlite",) + (("postgresql",) if reachable else ()):
        r = res[label]
        assert r["completed"] == 4 and r["trials_timed"] >= 2
        for row in r["rows"]:
            # the parts add up: wall = screen + build + measure + save + in-trial bookkeeping + outside run_trial
            parts = row["screen"] + row["build"] + row["measure"] + row["save"] + row["in_trial"] + row["outside"]
            assert parts == pytest.approx(row["wall"], abs=2e-3)
            assert row["overhead"] == pytest.approx(row["wall"] - row["screen"] - row["build"] - row["measure"], abs=2e-3)
            assert row["screen"] >= 0 and row["build"] >= 0 and row["measure"] > 0 and row["save"] > 0
            assert row["outside"] > 0
        assert 0 < r["overhead_share"] < 1
    if not reachable:
        require_service("PostgreSQL at " + url)


def test_kd_limit_trains_on_a_seeded_subset(tiny_vit, tiny_data):
    """`[data] kd_limit` (what keeps the benchmark's KD affordable): KD sees exactly that many train
    images, the same ones for a seed, while the teacher logits still cover the whole split."""
    import torch

    from vitshrink.compress import build
    from vitshrink.compress._registry import BuildContext
    from vitshrink.spaces import CompressionConfig, ConfigError, Recipe

    torch.set_num_threads(2)
    ctx = BuildContext(data=tiny_data, teacher=tiny_vit, seed=3, kd_limit=50)
    idx = ctx.kd_indices()
    assert len(idx) == 50 and len(set(idx.tolist())) == 50 and int(idx.max()) < len(tiny_data.train)
    assert torch.equal(idx, BuildContext(data=tiny_data, teacher=tiny_vit, seed=3, kd_limit=50).kd_indices())
    assert not torch.equal(idx, BuildContext(data=tiny_data, teacher=tiny_vit, seed=4, kd_limit=50).kd_indices())
    assert BuildContext(data=tiny_data, teacher=tiny_vit, kd_limit=len(tiny_data.train)).kd_indices() is None

    cfg = CompressionConfig({"prune": {"heads": 0.5}, "finetune": {"epochs": 1}})
    limited = build(tiny_vit, cfg, tiny_data, kd_limit=50)
    full = build(tiny_vit, cfg, tiny_data)
    kd = {r["stage"]: r for r in limited.records}["finetune"]
    assert kd["kd_images"] == 50
    assert {r["stage"]: r for r in full.records}["finetune"]["kd_images"] == len(tiny_data.train)
    # same seed and limit: the same subset, so the same weights
    again = build(tiny_vit, cfg, tiny_data, kd_limit=50)
    for a, b in zip(limited.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)

    recipe = Recipe.from_toml_text('[study]\nname = "x"\n[data]\nkd_limit = 500\n[space]\nkd_epochs = [0, 2]\n')
    assert recipe.kd_limit == 500 and Recipe.from_toml_text('[study]\nname = "x"\n').kd_limit is None
    with pytest.raises(ConfigError, match="kd_limit"):
        Recipe.from_toml_text('[study]\nname = "x"\n[data]\nkd_limit = 0\n')


@pytest.mark.slow
def test_training_speed_smoke(tmp_path):
    """vitshrink's fine-tune and KD steps timed against a plain timm + torch loop, fp32 and bf16,
    interleaved; the bf16 accuracy cost on digits."""
    import statistics

    bench = _load("training_speed")
    out = tmp_path / "speed.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {(r["precision"], r["mode"]) for r in res["rows"]} == {
        ("fp32", "finetune"), ("fp32", "kd"), ("bf16", "finetune"), ("bf16", "kd")}
    for r in res["rows"]:
        assert r["device"] == "cpu" and r["vitshrink_img_s"] > 0 and r["plain_img_s"] > 0
        assert len(r["ratios"]) == 2 * res["settings"]["rounds"]  # two ABBA pairs per kept round
        assert r["ratio_median"] == pytest.approx(statistics.median(r["ratios"]), abs=1e-3)
        assert r["within_bar"] == (r["ratio_median"] >= 0.9)
    acc = res["accuracy_cost"]
    assert 0 <= acc["fp32"]["val_accuracy"] <= 1 and 0 <= acc["bf16"]["val_accuracy"] <= 1
    assert acc["bf16_minus_fp32"] == pytest.approx(acc["bf16"]["val_accuracy"] - acc["fp32"]["val_accuracy"], abs=1e-4)
    assert len(res["machine"]["load_average_before"]) == 3 and "shared" in res["machine"]["note"]


def test_gpu_check_without_a_gpu_says_so(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: benchmarks/gpu_check.py runs in full there")
    bench = _load("gpu_check")
    assert bench.main(["--out", str(tmp_path / "gpu.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: torch sees no GPU") and "--cpu-only" in err[0]
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_gpu_check_cpu_half(tmp_path):
    """The CPU half of the GPU check: two trials trained and timed on the CPU, models back as float32."""
    bench = _load("gpu_check")
    out = tmp_path / "gpu.json"
    assert bench.main(["--cpu-only", "--epochs", "3", "--student-epochs", "1", "--out", str(out),
                       "--tmp", str(tmp_path / "tmp")]) == 0
    res = json.loads(out.read_text())
    assert res["passed"] and res["gpu"] is None and res["cpu"]["completed"] == 2
    assert res["cpu"]["training"]["device"] == "cpu" and res["cpu"]["target"]["target"] == "cpu:2"
    kd = res["cpu"]["trials"]["student+prune+kd"]
    assert kd["trained_on"] == [{"device": "cpu", "precision": "fp32"}] * 2  # the student, then the KD fine-tune
    assert kd["loaded_params"] == ["cpu/float32"] and kd["latency_ms"] > 0


@pytest.mark.slow
def test_recovery_smoke(tmp_path):
    """Each reference config built with plain KD and with the opt-in recovery, side by side."""
    bench = _load("recovery")
    out = tmp_path / "recovery.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    rows = {r["config"]: r for r in res["rows"]}
    assert len(rows) == 7 and rows["dynamic_int8"]["recovery"] is None  # int8 alone distils nothing
    for r in (r for r in res["rows"] if r["recovery"] is not None):  # every row that distils
        assert r["plain"]["kd_teacher"] == ["cached"] and r["recovery"]["kd_teacher"] == ["online"]
        assert 0 <= r["plain"]["val_accuracy"] <= 1 and 0 <= r["recovery"]["val_accuracy"] <= 1
        assert r["gain"] == pytest.approx(r["recovery"]["val_accuracy"] - r["plain"]["val_accuracy"], abs=1e-4)
        assert r["recovery"]["train_seconds"] > 0
    assert res["complete"] and res["settings"]["kd_augment"] == "shift" and res["settings"]["kd_feature_weight"] == 1.0


def test_bf16_accuracy_smoke(tmp_path):
    """benchmarks/bf16_accuracy.py --smoke: one seed, 2 epochs, the fp32 / bf16 pair side by side."""
    from vitshrink.training import resolve_training

    bench = _load("bf16_accuracy")
    out = tmp_path / "bf16.json"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    if resolve_training("cpu", "bf16").precision != "bf16":
        assert not out.exists()  # nothing to compare on a CPU without bf16
        return
    res = json.loads(out.read_text())
    assert [(r["precision"], r["seed"]) for r in res["rows"]] == [("fp32", 0), ("bf16", 0)]
    assert all(0 <= r["test_accuracy"] <= 1 and r["train_seconds"] > 0 for r in res["rows"])
    s = res["summary"]["digits"]
    assert s["median_bf16_minus_fp32"] == pytest.approx(res["rows"][1]["test_accuracy"] - res["rows"][0]["test_accuracy"])


def test_time_to_random_final_is_the_median_run_reaching_randoms_median() -> None:
    bench = _load("search_efficiency")
    random = [{"seed": s, "hypervolume": hv, "history": [[10.0, hv / 2], [150.0, hv]]}
              for s, hv in ((0, 0.4), (1, 0.5), (2, 0.6))]
    fast = [{"seed": s, "hypervolume": hv, "history": [[t, hv]]}
            for s, hv, t in ((0, 0.8, 30.0), (1, 0.45, 20.0), (2, 0.9, 60.0))]  # seed 1 never reaches 0.5
    res = bench.compare_methods({"random": random, "fast": fast}, 180.0)
    assert res["random_median_final_hypervolume"] == 0.5
    f = res["methods"]["fast"]
    assert f["time_to_random_final"] == 60.0  # reached at 30 s, 60 s, never: the median run is at 60 s
    assert f["ratio_to_random"] == {0: 2.0, 1: 0.9, 2: 1.5} and f["median_ratio_to_random"] == 1.5
    assert f["seeds_above_random"] == 2
    assert res["methods"]["random"]["time_to_random_final"] == 150.0
    # areas 0.8 x 150/180, 0.45 x 160/180, 0.9 x 120/180 = 0.667, 0.4, 0.6 of the budget: median 0.6
    assert f["median_area_under_curve"] == pytest.approx(0.6, abs=1e-5)
