"""The Ray executor on a real two-node cluster on loopback (head + a node owning the latency target):
budget shared without double counting, latency timed one at a time on the target, a killed worker's
trial retried with the same parameters."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: stay on loopback
ray = pytest.importorskip("ray")

from support import POSTGRES, recipe_text, require_service  # noqa: E402
from vitshrink.search import open_storage, run_search  # noqa: E402
from vitshrink.spaces import Recipe  # noqa: E402

RESOURCE = "vitshrink_target"
pytestmark = [pytest.mark.slow, pytest.mark.services]


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=1, resources={RESOURCE: 1})  # the target device: one measurement at a time
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, configure_logging=False)
    yield c
    ray.shutdown()
    c.shutdown()


def _recipe(name: str, trials: int, device: str = "cpu:1", kd_epochs: int = 1) -> Recipe:
    text = recipe_text(name, trials, device, kd_epochs=kd_epochs)
    return Recipe.from_toml_text(text)


def test_two_workers_fill_the_budget_once_and_time_on_the_target_node(cluster, tmp_path) -> None:
    try:
        open_storage(POSTGRES)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service("postgres")
    name = f"ray-{uuid.uuid4().hex[:8]}"
    # every trial trains to the end (no screening or rungs: their verdicts follow noisy timings), and a
    # heartbeat may be late by the CLI's default 30 s on a loaded machine before a trial counts as stale
    recipe = _recipe(name, trials=4, device=f"ray:{RESOURCE}").with_overrides(screening=False, rungs=False)
    try:
        summary = run_search(recipe, storage=POSTGRES, executor="ray", address=cluster.address, workers=2,
                             artifact_dir=tmp_path / "art", evaluate_test=False, grace_period=30)
        trials = summary.study.trials
        # exactly the budget: no trial asked beyond it, none counted twice
        assert summary.completed == 4 and len(trials) == 4
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs["ray_task"] for t in trials}) == 4
        assert len({t.user_attrs["driver"] for t in trials}) == 1
        # the first two tasks ran side by side, in two worker processes
        assert len({t.user_attrs["worker"] for t in trials}) >= 2
        # measured (not cached) latencies come from one-at-a-time runs on the target node
        spans = sorted((t.user_attrs["latency"]["started_at"], t.user_attrs["latency"]["finished_at"])
                       for t in trials if not t.user_attrs["latency"]["cached"])
        assert spans
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES))


def test_killing_a_ray_worker_retries_its_trial_once(cluster, tmp_path) -> None:
    storage = f"journal:///{tmp_path}/ray.log"
    name = "ray-kill"
    # trials of seconds, so a running one can be killed; no rungs or screening, so every trial (the retry too)
    # trains its 10 epochs whatever its peers measured
    recipe = _recipe(name, trials=3, kd_epochs=10).with_overrides(rungs=False, screening=False)
    result: dict = {}

    def drive() -> None:
        try:
            result["summary"] = run_search(recipe, storage=storage, executor="ray", address=cluster.address,
                                           workers=2, evaluate_test=False, grace_period=30)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test thread below
            result["error"] = exc

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and driver.is_alive():
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:
            study = None
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            running = [t for t in trials if t.state == TrialState.RUNNING and "ray_task" in t.user_attrs
                       and "worker" in t.user_attrs]
            if running and any(t.state == TrialState.COMPLETE for t in trials):
                killed = running[0]
                os.kill(int(killed.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        time.sleep(0.1)
    driver.join(timeout=300)
    assert "error" not in result, result.get("error")
    assert killed is not None, "no trial was running in time"

    study = result["summary"].study
    trials = study.trials
    assert trials[killed.number].state == TrialState.FAIL
    reason = trials[killed.number].user_attrs["fail_reason"]
    assert "died" in reason or "stopped" in reason
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert {k: retries[0].params.get(k) for k in killed.params} == killed.params  # a kill may land mid-sampling
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1 and len(trials) == 4
