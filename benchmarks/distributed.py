"""Distributed and resumable searches, measured: trials per hour with 1 and 2 Ray workers, and the
time from a kill -9 of a search to the resumed study's first new completed trial.

Throughput: the quickstart recipe (reduced to `--trials` completed trials) on a local Ray cluster
(`run_search(..., executor="ray", workers=N)`), each run on a fresh SQLite storage. The 2-worker run
replays the 1-worker run's configurations (enqueued in the same order), so both do the same work:
quickstart trials range from seconds to minutes, and two different samples would compare configs,
not executors. Trials per hour is counted over the trials' own span (first trial start to last
trial end, from the storage), leaving out Ray start-up and teacher loading; the wall time with them
is reported too. The teacher is trained once into a benchmark cache; the latency cache is emptied
before each run, so neither run reuses the other's measurements.

A third run replays the same configurations on one worker with one CPU: on a 2-core machine shared
with other work, torch's 2 intra-op threads can be many times slower than 1 (threads spin while
their partner is descheduled), so "1 worker x 2 CPUs" vs "2 workers x 1 CPU" mixes two effects.

Resume: `vitshrink search quickstart --storage sqlite:///...` runs as a real process; once a trial
is complete and another is running it gets SIGKILL; the same command is started at once, and the
time until a trial completes that started after the kill is measured (process start, imports,
teacher load from cache, stale-trial detection, and the retried trial itself); the time until the
retry starts (the resume overhead alone) is reported too.

Usage:
    python benchmarks/distributed.py                      # a few minutes on 2 cores
    python benchmarks/distributed.py --trials 4 --out /tmp/distributed.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from vitshrink.search import open_or_create_study, open_storage, run_search  # noqa: E402
from vitshrink.search.ray_executor import connect, cpu_share  # noqa: E402
from vitshrink.spaces import resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.distributed")


def throughput(workers: int, trials: int, work: Path, replay: list[tuple[dict, dict]] | None = None,
               cpus: int | None = None) -> tuple[dict, list[tuple[dict, dict]]]:
    """Run the quickstart study with `trials` completed trials on `workers` Ray workers (the trials of
    `replay` first, in order) on a local cluster of `cpus` CPUs (default: all); returns the
    measurements and the (params, user attrs) run."""
    (work / "cache" / "latency-cache.json").unlink(missing_ok=True)
    storage = f"sqlite:///{work}/ray-{workers}-{cpus or 'all'}.db"
    ray, _ = connect(None, num_cpus=cpus or os.cpu_count())  # run_search reuses this cluster
    cpus_per_trial = cpu_share(ray, workers)
    # the budget is the trial count, not the recipe's 10-minute timeout
    recipe = dataclasses.replace(resolve_recipe("quickstart"), trials=trials, timeout=None)
    if replay:
        study = open_or_create_study(recipe, storage)
        for params, attrs in replay:
            study.enqueue_trial(params, user_attrs=attrs)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        summary = run_search(recipe, storage=storage, executor="ray", workers=workers, evaluate_test=False)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    done = [t for t in summary.study.trials if t.state == TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    per_trial = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    ran = [(dict(t.params), {k: t.user_attrs[k] for k in ("config_override", "role") if k in t.user_attrs})
           for t in sorted(done, key=lambda t: t.number)]
    return {"workers": workers, "cpus_per_trial": cpus_per_trial, "completed": len(done), "failed": summary.failed, "span_s": round(span, 1),
            "wall_s": round(wall, 1), "trials_per_hour": round(len(done) * 3600 / span, 1),
            "median_trial_s": round(per_trial[len(per_trial) // 2], 1), "replayed": bool(replay),
            "load_avg_1min_before": round(load, 2)}, ran


def _study(storage: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return None


def kill_and_resume(work: Path, trials: int, grace: int) -> dict:
    """kill -9 a quickstart search mid-trial, rerun it, time the first trial completed after the kill."""
    storage = f"sqlite:///{work}/resume.db"
    cmd = [sys.executable, "-m", "vitshrink.cli", "-q", "search", "quickstart", "--storage", storage,
           "--trials", str(trials), "--grace-period", str(grace)]
    first = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = None
    while killed is None:
        if first.poll() is not None:
            raise RuntimeError("the search ended before it could be killed; raise --trials")
        study = _study(storage, "quickstart")
        if study is not None:
            ts = study.get_trials(deepcopy=False)
            running = [t for t in ts if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
            if running and any(t.state == TrialState.COMPLETE for t in ts):
                killed = running[0]
                os.kill(first.pid, signal.SIGKILL)
                t_kill = time.time()
        time.sleep(0.05)
    first.wait()
    second = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_new = t_retry = None
    while t_new is None:
        study = _study(storage, "quickstart")
        trials = study.get_trials(deepcopy=False)
        if t_retry is None and any(t.system_attrs.get("failed_trial") == killed.number and t.datetime_start
                                   for t in trials):
            t_retry = next(t.datetime_start.timestamp() for t in trials
                           if t.system_attrs.get("failed_trial") == killed.number and t.datetime_start)
        new = [t for t in trials if t.state == TrialState.COMPLETE and t.datetime_start.timestamp() > t_kill]
        if new:
            t_new = time.time()
            first_new = min(new, key=lambda t: t.datetime_complete)
        elif second.poll() is not None:
            raise RuntimeError(f"the resumed search exited ({second.returncode}) without completing a trial")
        time.sleep(0.05)
    second.wait()
    study = _study(storage, "quickstart")
    counts = {s.name: sum(t.state == s for t in study.trials) for s in (TrialState.COMPLETE, TrialState.FAIL)}
    return {"kill_to_first_new_complete_s": round(t_new - t_kill, 1),
            "kill_to_retry_start_s": round(t_retry - t_kill, 1) if t_retry else None,
            "first_new_trial": first_new.number,
            "first_new_is_retry_of_killed": first_new.system_attrs.get("failed_trial") == killed.number,
            "first_new_trial_s": round((first_new.datetime_complete - first_new.datetime_start).total_seconds(), 1),
            "killed_trial": killed.number, "final_complete": counts["COMPLETE"], "final_fail": counts["FAIL"],
            "exit_code": second.returncode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="completed trials per throughput run")
    ap.add_argument("--resume-trials", type=int, default=4, help="budget of the kill/resume study")
    ap.add_argument("--grace", type=int, default=30, help="heartbeat grace period of the resumed search")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="vitshrink-bench-"))
    os.environ["VITSHRINK_CACHE"] = str(work / "cache")  # the teacher is trained once, here, for all runs
    try:
        one, ran = throughput(1, args.trials, work)
        # the same configurations with one CPU per trial, alone and two at a time
        runs = [one, throughput(1, args.trials, work, replay=ran, cpus=1)[0],
                throughput(2, args.trials, work, replay=ran)[0]]
        resume = kill_and_resume(work, args.resume_trials, args.grace)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "recipe": "quickstart", "trials": args.trials, "ray": runs, "resume": resume,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_avg": os.getloadavg()},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"trials per hour, {r['workers']} Ray worker(s) x {r['cpus_per_trial']} CPU(s): {r['trials_per_hour']}")
    print(f"kill -9 to first new completed trial: {resume['kill_to_first_new_complete_s']} s "
          f"(the retry started after {resume['kill_to_retry_start_s']} s)")


if __name__ == "__main__":
    main()
