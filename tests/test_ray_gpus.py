"""--gpus-per-trial (issue 13.4): Ray trial tasks ask for GPUs; a cluster without any is refused in
one sentence before the study exists or a teacher trains (on a real local Ray cluster)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recipes import tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def _search(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "r.toml").write_text(tiny_recipe("gpus", trials=1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VITSHRINK_CACHE": str(tmp_path / "cache"),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([sys.executable, "-m", "vitshrink.cli", "search", "r.toml", "--storage",
                           f"sqlite:///{tmp_path / 'st.db'}", *extra], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def _nothing_done(res, tmp_path: Path) -> str:
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-2000:]
    assert not (tmp_path / "cache" / "teachers").exists()  # no teacher trained
    import optuna

    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path / 'st.db'}") == []  # no study created
    return errors[0]


def test_gpus_per_trial_needs_the_ray_executor(tmp_path):
    from support import run_cli  # in process: no Ray is started, nothing about the process matters

    (tmp_path / "r.toml").write_text(tiny_recipe("gpus", trials=1))
    line = _nothing_done(run_cli(["search", "r.toml", "--storage", f"sqlite:///{tmp_path / 'st.db'}",
                                  "--gpus-per-trial", "1"], cwd=tmp_path,
                                 env={"VITSHRINK_CACHE": str(tmp_path / "cache")}), tmp_path)
    assert "--gpus-per-trial" in line and "--executor tune" in line


@pytest.mark.slow
@pytest.mark.services
def test_a_ray_cluster_without_gpus_is_refused_before_any_trial(tmp_path):
    pytest.importorskip("ray")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the local Ray cluster would offer it")
    line = _nothing_done(_search(tmp_path, "--executor", "ray", "--gpus-per-trial", "0.5"), tmp_path)
    assert "--gpus-per-trial 0.5" in line and "has none" in line
