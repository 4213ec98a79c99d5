"""Resuming searches: kill -9 the driver mid-trial on every storage kind, run the same command again;
stale trials (heartbeat or dead owner) are failed and retried once; a changed space is refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from support import GRACE, recipe_text, run_cli, storage_url
from vitshrink.search import open_storage, run_search
from vitshrink.search._storage import HEARTBEAT_ATTR, fail_stale_trials, owner_is_gone, trial_heartbeat
from vitshrink.spaces import Recipe


def tiny_recipe(tmp_path: Path, name: str, trials: int = 2, kd_epochs: int = 1) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(recipe_text(name, trials, kd_epochs=kd_epochs))
    return path


def _search_cmd(recipe: Path, storage: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vitshrink.cli", "-q", "search", str(recipe), "--storage", storage,
            "--grace-period", str(GRACE), *extra]


def _study(storage: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None


def _kill_mid_trial(cmd: list[str], storage: str, name: str, cwd: Path, timeout: float = 240) -> None:
    """Start the CLI, wait until one trial is complete and another is running, then kill -9 it."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the search ended before it could be killed:\n{proc.stderr.read()}"
            study = _study(storage, name)
            if study is not None:
                trials = study.get_trials(deepcopy=False)
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                running = [t for t in trials if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
                if done and running:
                    os.kill(proc.pid, signal.SIGKILL)
                    return
            time.sleep(0.1)
        pytest.fail("no trial was running in time")
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.parametrize("kind", ["sqlite", "journal", "postgres", "redis"])
def test_kill_9_then_rerun_resumes_and_retries_the_killed_trial(kind, tmp_path, unique_name) -> None:
    name, cleanup = unique_name
    storage = storage_url(kind, tmp_path)
    if kind in ("postgres", "redis"):
        cleanup.append(storage)
    # 10 KD epochs: every trial after the teacher's lasts seconds even on a fast machine, long enough
    # to be killed in the middle of one (1 epoch finished before the kill on CI's machine)
    recipe = tiny_recipe(tmp_path, name, trials=2, kd_epochs=10)
    cmd = _search_cmd(recipe, storage)

    _kill_mid_trial(cmd, storage, name, tmp_path)
    study = _study(storage, name)
    before = {t.number: t for t in study.trials if t.state == TrialState.COMPLETE}
    killed = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert len(killed) == 1 and before, [(t.number, t.state.name) for t in study.trials]
    killed = killed[0]

    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)  # the same command
    assert res.returncode == 0, res.stderr

    study = _study(storage, name)
    trials = study.trials
    # completed trials are kept as they were, not re-run
    for number, t in before.items():
        assert trials[number].state == TrialState.COMPLETE
        assert trials[number].datetime_start == t.datetime_start and trials[number].values == t.values
    # the killed trial is FAIL with its reason, and retried once with the same parameters
    assert trials[killed.number].state == TrialState.FAIL
    assert "stopped" in trials[killed.number].user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    # the retry keeps every parameter the killed trial had recorded (a kill can land between two
    # suggestions, so the retry may add the ones the killed trial never reached)
    assert retries[0].state == TrialState.COMPLETE
    assert {k: retries[0].params[k] for k in killed.params} == killed.params
    assert retries[0].user_attrs["worker"] != killed.user_attrs["worker"]
    # exactly the budget, nothing left running or waiting
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2
    assert len(trials) == 3 and states.count(TrialState.FAIL) == 1


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_stale_heartbeat_on_another_host_is_failed_and_retried_after_the_grace_period(kind, tmp_path) -> None:
    grace = 3  # loose enough that a loaded machine never delays a live beat past it
    storage = open_storage(storage_url(kind, tmp_path), heartbeat_interval=1, grace_period=grace)
    study = optuna.create_study(study_name="stale", storage=storage)
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr("worker", "elsewhere:1")  # another host: only the heartbeat can tell
    dead.set_user_attr("fail_reason", None)
    if kind == "sqlite":
        storage.record_heartbeat(dead._trial_id)
    else:
        storage.set_trial_system_attr(dead._trial_id, HEARTBEAT_ATTR, time.time())
    last_dead_beat = time.monotonic()
    alive = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive.set_user_attr("worker", "elsewhere:2")

    assert fail_stale_trials(study, grace_period=grace) == []  # fresh heartbeats: nothing is stale
    with trial_heartbeat(alive, interval=0.3):  # sqlite: Optuna beats only inside optimize, so beat by hand
        while time.monotonic() - last_dead_beat < grace + 1:
            if kind == "sqlite":
                storage.record_heartbeat(alive._trial_id)
            time.sleep(0.3)
        assert fail_stale_trials(study, grace_period=grace) == [dead.number]

    trials = study.trials
    assert trials[dead.number].state == TrialState.FAIL
    assert "no heartbeat" in trials[dead.number].user_attrs["fail_reason"]
    assert trials[alive.number].state == TrialState.RUNNING
    retry = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retry) == 1 and retry[0].params == trials[dead.number].params
    assert retry[0].system_attrs["failed_trial"] == dead.number
    assert "worker" not in retry[0].user_attrs and HEARTBEAT_ATTR not in retry[0].system_attrs
    assert fail_stale_trials(study, grace_period=grace) == []  # never retried twice


def test_owner_is_gone_only_for_dead_processes_on_this_host() -> None:
    host = os.uname().nodename
    assert not owner_is_gone(f"{host}:{os.getpid()}")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert owner_is_gone(f"{host}:{proc.pid}")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # exited, not yet reaped
    assert owner_is_gone(f"{host}:{zombie.pid}")
    zombie.wait()
    assert not owner_is_gone(f"not-{socket.gethostname()}-x:{proc.pid}") and not owner_is_gone(None)


@pytest.mark.slow
def test_changed_space_is_refused_by_the_cli_without_a_traceback(tmp_path) -> None:
    storage = f"sqlite:///{tmp_path}/s.db"
    recipe = tiny_recipe(tmp_path, "changed", trials=1)
    run_search(Recipe.from_file(recipe), storage=storage, evaluate_test=False)
    recipe.write_text(recipe.read_text().replace("heads = [0.0, 0.5]", "heads = [0.0, 0.75]"))

    # in process (the exit code and stderr are the CLI's own; no signal or process matters here)
    res = run_cli(_search_cmd(recipe, storage)[3:], cwd=tmp_path)
    assert res.returncode == 2
    assert "different search space" in res.stderr and "0.75" in res.stderr and "--new-study" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout

    res = run_cli(_search_cmd(recipe, storage, "--new-study")[3:], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert {s.study_name for s in optuna.get_all_study_summaries(storage)} == {"changed", "changed-2"}
