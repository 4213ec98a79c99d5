"""The Ray Tune executor (also ``--executor ray``) on a real two-node cluster on loopback (head + a node
owning the latency target): budget shared without double counting, latency timed one at a time on
the target, Tune's experiment folder and a callback seeing every trial, a killed worker's trial
retried with the same parameters. The driver runs in its own process (tests/ray_driver.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray")

from support import POSTGRES, recipe_text, require_service  # noqa: E402

from vitshrink.search import open_storage  # noqa: E402
from vitshrink.spaces import Recipe  # noqa: E402

RESOURCE = "vitshrink_target"
DRIVER = Path(__file__).with_name("ray_driver.py")
TASK_ATTR = {"ray": "tune_trial", "tune": "tune_trial"}  # what ties a trial to the Tune trial running it
pytestmark = [pytest.mark.slow, pytest.mark.services]


def _recipe(name: str, trials: int, device: str = "cpu:1", kd_epochs: int = 1, always_prune: bool = False) -> Recipe:
    # every trial trains to the end (no screening or rungs: their verdicts follow noisy timings)
    text = recipe_text(name, trials, device, kd_epochs=kd_epochs)
    if always_prune:  # every sampled trial removes one of the 2 heads: a structure the teacher's measurement is not
        text = text.replace("heads = [0.0, 0.5]", "heads = [0.25, 0.5]")
        assert "heads = [0.25, 0.5]" in text
    return Recipe.from_toml_text(text).with_overrides(screening=False, rungs=False)


def _start_driver(recipe: Recipe, storage: str, tmp_path: Path, grace: int = 30, executor: str = "ray",
                  extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """The Ray driver (cluster + search) in its own process: see tests/ray_driver.py for why."""
    path = tmp_path / f"{recipe.name}.json"
    path.write_text(json.dumps(recipe.to_dict()))
    return subprocess.Popen([sys.executable, str(DRIVER), str(path), storage, "--resource", RESOURCE,
                             "--grace", str(grace), "--artifacts", str(tmp_path / "art"), "--executor", executor,
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, err[-3000:])  # the Ray driver process exits cleanly too
    return json.loads(out.strip().splitlines()[-1])


def test_two_workers_fill_the_budget_once_and_time_on_the_target_node(tmp_path) -> None:
    executor = "tune"
    try:
        open_storage(POSTGRES)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service("postgres")
    name = f"{executor}-{uuid.uuid4().hex[:8]}"
    recorded = tmp_path / "callback.jsonl"
    try:
        done = _finish(_start_driver(_recipe(name, trials=4, device=f"ray:{RESOURCE}", always_prune=True), POSTGRES, tmp_path,
                                     executor=executor, extra=("--callback", str(recorded))))
        trials = optuna.load_study(study_name=name, storage=open_storage(POSTGRES)).trials
        # exactly the budget: no trial asked beyond it, none counted twice
        assert done["completed"] == 4 and len(trials) == 4
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs[TASK_ATTR[executor]] for t in trials}) == 4
        assert not any("ray_task" in t.user_attrs for t in trials)  # no second dispatcher
        assert len({t.user_attrs["driver"] for t in trials}) == 1
        # the first two tasks ran side by side, in two worker processes
        assert len({t.user_attrs["worker"] for t in trials}) >= 2
        # measured (not cached) latencies come from one-at-a-time runs on the target node; the sampled trials
        # all prune, so at least one structure is new here (the teacher's was measured by the driver)
        spans = sorted((t.user_attrs["latency"]["started_at"], t.user_attrs["latency"]["finished_at"])
                       for t in trials if not t.user_attrs["latency"]["cached"])
        assert spans
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
        _check_tune_records(tmp_path / "art" / "tune" / name, recorded, trials)
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(POSTGRES))
        except KeyError:
            pass


def _check_tune_records(folder: Path, recorded: Path, trials: list[optuna.trial.FrozenTrial]) -> None:
    """Tune's experiment folder holds a result per trial (its default loggers), with the study's numbers;
    the callback given to run_search saw every trial finish."""
    by_number = {t.number: t for t in trials}
    results = [json.loads(p.read_text().strip().splitlines()[-1]) for p in folder.glob("*/result.json")]
    assert len(results) == len(trials), sorted(p.name for p in folder.iterdir())
    for r in results:
        t = by_number[r["optuna_trial"]]
        assert r["state"] == "COMPLETE" and r["trial_id"] == t.user_attrs["tune_trial"]
        assert [r[k] for k in ("accuracy", "latency_ms", "size_bytes")] == pytest.approx(t.values)
        assert r["params"] == t.params
    trial_dirs = [p.parent for p in folder.glob("*/result.json")]
    assert all((d / "progress.csv").is_file() and (d / "params.json").is_file() for d in trial_dirs)  # CSV, JSON loggers
    seen = [json.loads(line) for line in recorded.read_text().splitlines()]
    assert sorted(s["trial_id"] for s in seen) == sorted(t.user_attrs["tune_trial"] for t in trials)
    assert all(s["result"]["state"] == "COMPLETE" for s in seen)


def test_killing_a_ray_worker_retries_its_trial_once(tmp_path) -> None:
    executor = "ray"  # the name kept for the Tune executor
    storage = f"journal:///{tmp_path}/ray.log"
    name = f"{executor}-kill"
    # trials of seconds, so a running one can be killed; every trial (the retry too) trains its 10 epochs
    driver = _start_driver(_recipe(name, trials=3, kd_epochs=10), storage, tmp_path, executor=executor)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and driver.poll() is None:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING and TASK_ATTR[executor] in t.user_attrs
                       and "worker" in t.user_attrs]
            if running and any(t.state == TrialState.COMPLETE for t in trials):
                killed = running[0]
                os.kill(int(killed.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(0.1)
    done = _finish(driver)
    assert killed is not None, "no trial was running in time"

    trials = optuna.load_study(study_name=name, storage=open_storage(storage)).trials
    assert done["completed"] == 3
    assert trials[killed.number].state == TrialState.FAIL
    reason = trials[killed.number].user_attrs["fail_reason"]
    assert "died" in reason or "stopped" in reason
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert {k: retries[0].params.get(k) for k in killed.params} == killed.params  # a kill may land mid-sampling
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1 and len(trials) == 4
