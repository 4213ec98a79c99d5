"""Ray Tune as the dispatcher, on real local clusters on loopback: a Tune user's own `Tuner` running a
vitshrink study; `vitshrink search --executor tune` stopped by Ctrl-C, then killed with kill -9, then
run again (the study resumes from its storage each time); and Tune, Ray and local drivers sharing
one PostgreSQL study's budget. (The two-node cluster, the latency target and a killed Tune worker
are in test_distributed.py, beside the Ray executor's.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray.tune")

from support import GRACE, POSTGRES, cli_env, recipe_text, require_service  # noqa: E402

from vitshrink.search import open_storage  # noqa: E402
from vitshrink.spaces import Recipe  # noqa: E402

USER_SCRIPT = Path(__file__).with_name("tune_user.py")
pytestmark = [pytest.mark.slow, pytest.mark.services]


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage)).get_trials(deepcopy=False)
    except KeyError:
        return []


def test_a_tune_users_own_tuner_runs_the_study_to_its_budget(tmp_path) -> None:
    recipe = Recipe.from_toml_text(recipe_text("own-tuner", trials=3, kd_epochs=1)).with_overrides(
        screening=False, rungs=False)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    storage = f"sqlite:///{tmp_path}/own.db"
    res = subprocess.run([sys.executable, str(USER_SCRIPT), str(path), storage, str(tmp_path / "tune")],
                         cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    trials = _trials(storage, "own-tuner")
    # num_samples=-1: the searcher ends Tune's run exactly at the study's budget
    assert out["completed"] == 3 and [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert out["results"] == 3 and out["states"] == ["COMPLETE"] * 3 and out["errors"] == 0
    assert out["objectives"] == sorted(["accuracy", "latency_ms", "size_bytes"] * 3)  # reported by name
    assert out["pareto"] and set(out["pareto"]) <= {t.number for t in trials}
    assert len(list((tmp_path / "tune" / "own-tuner").glob("*/result.json"))) == 3  # the user's own Tune folder
    assert "not resumed by Tuner.restore: run the same vitshrink search command" in out["restore"]
    assert len(_trials(storage, "own-tuner")) == 3  # the refused restore ran nothing


def _running_trial(storage: str, name: str, after: int) -> optuna.trial.FrozenTrial | None:
    """A trial inside run_trial in a Tune worker, numbered `after` or more."""
    return next((t for t in _trials(storage, name) if t.state == TrialState.RUNNING and t.number >= after
                 and "worker" in t.user_attrs and "tune_trial" in t.user_attrs), None)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = cond()
        if found is not None:
            return found
        time.sleep(0.2)
    return None


def test_ctrl_c_then_kill_9_then_the_same_command_completes_the_budget(tmp_path) -> None:
    # trials of ~5 s (15 KD epochs, none screened out), so each stop lands inside one
    text = recipe_text("stop", trials=3, kd_epochs=15).replace("seed = 0\n", "seed = 0\nscreening = false\nrungs = false\n")
    assert "rungs = false" in text
    (tmp_path / "stop.toml").write_text(text)
    storage = f"sqlite:///{tmp_path}/stop.db"
    cmd = [sys.executable, "-m", "vitshrink.cli", "search", "stop.toml", "--storage", storage, "--executor", "tune",
           "--grace-period", str(GRACE)]
    env = cli_env(tmp_path)

    def start() -> subprocess.Popen:  # SIGINT at its default, as in a terminal (see test_faults.py)
        return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    # 1. Ctrl-C: Tune stops its trial; the trial is failed and queued again; exit 130 as with every executor
    first = start()
    interrupted = _wait_for(lambda: _running_trial(storage, "stop", after=1), first)
    assert interrupted is not None, "no trial ran under Tune"
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=180)
    flat = " ".join(err.split())
    assert first.returncode == 130, flat[-3000:]
    assert "run the same command to resume" in flat and "Traceback" not in err
    trials = _trials(storage, "stop")
    assert TrialState.RUNNING not in [t.state for t in trials]
    stopped = trials[interrupted.number]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["fail_reason"].startswith("interrupted by the user")
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs.get("failed_trial") for t in queued] == [interrupted.number]

    # 2. kill -9 of the driver mid-trial (the interrupted trial's retry, run first): its Tune worker dies with it
    second = start()
    killed = _wait_for(lambda: _running_trial(storage, "stop", after=interrupted.number + 1), second)
    assert killed is not None, "the resumed search ran no new trial"
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=60)

    # 3. the same command: the killed trial is failed and retried with its parameters, the budget is exact
    third = start()
    _, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-3000:]
    trials = _trials(storage, "stop")
    table = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3, table
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], table
    assert trials[killed.number].state == TrialState.FAIL, table

    # Optuna names the first trial of a retry chain in each retry: the interrupted one was retried (that
    # retry killed), then retried again, once, to completion, with the same parameters
    chain = [t for t in trials if t.system_attrs.get("failed_trial") == interrupted.number]
    assert [t.number for t in chain][:1] == [killed.number] and len(chain) == 2, table
    assert chain[1].state == TrialState.COMPLETE, table
    assert {k: chain[1].params.get(k) for k in interrupted.params} == interrupted.params


def test_tune_ray_and_local_drivers_on_one_postgres_study_complete_exactly_the_budget(tmp_path) -> None:
    try:
        open_storage(POSTGRES)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service("postgres")
    name = f"mixed-{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.toml").write_text(recipe_text(name, trials=6, kd_epochs=2))
    env = cli_env(tmp_path) | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    drivers = [subprocess.Popen([sys.executable, "-m", "vitshrink.cli", "-q", "search", f"{name}.toml", "--storage",
                                 POSTGRES, "--executor", executor, "--grace-period", str(GRACE)],
                                cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for executor in ("tune", "ray", "local")]
    try:
        results = [(p.wait(timeout=900), p.stderr.read()) for p in drivers]
        for rc, err in results:
            assert rc == 0, err[-3000:]
        trials = _trials(POSTGRES, name)
        table = [(t.number, t.state.name, t.user_attrs.get("driver"), t.user_attrs.get("fail_reason")) for t in trials]
        assert [t.state for t in trials].count(TrialState.COMPLETE) == 6, table
        assert not [t for t in trials if t.state == TrialState.RUNNING], table
        # every FAIL is a slot given back unbuilt; no configuration completed twice
        assert all(t.user_attrs.get("not_run") for t in trials if t.state == TrialState.FAIL), table
        ran = [json.dumps(t.user_attrs["config"], sort_keys=True) for t in trials if t.state == TrialState.COMPLETE]
        assert len(ran) == len(set(ran)), table
    finally:
        for p in drivers:
            if p.poll() is None:
                p.kill()
        try:
            optuna.delete_study(study_name=name, storage=open_storage(POSTGRES))
        except KeyError:
            pass
