"""Distributed and resumable searches, measured: trials per hour with 1 and 2 workers of the Ray and the
Ray Tune executors on the same trials, the time from a kill -9 of a worker to its trial's retry, and
from a kill -9 of a search to the resumed study's first new completed trial.

Until commit f329903 (2026-12-04) `--executor ray` dispatched Ray tasks by hand; the committed
result (`--executors ray,tune`) compares that dispatcher with Ray Tune's on the same trials, and is
why `ray` now names the Tune executor. Since then both names run Tune.

Throughput: the quickstart recipe (reduced to `--trials` completed trials, screening and rungs off so
every trial trains to its end) on a local Ray cluster (`run_search(..., executor=E, workers=N)`), each
run on a fresh SQLite storage. A first Ray run samples the configurations; every other run replays
them (enqueued in the same order), so all do the same work: quickstart trials range from seconds to
minutes, and two different samples would compare configs, not executors. Runs alternate between the
executors, `--rounds` times. Trials per hour is counted over the trials' own span (first trial start to last trial
end, from the storage), leaving out Ray start-up and teacher loading; the wall time with them is
reported too, and so is the median gap a worker sits idle between two trials (the dispatch
overhead). Tune's extra cost per trial is the difference of those gaps, in ms and in % of the
sampled run's median quickstart trial; its throughput ratio to Ray is paired by round. The teacher is trained once into a benchmark cache; the latency cache is emptied before each
run, so no run reuses another's measurements.

Worker kill: `vitshrink search quickstart --executor E` runs as a real process; once a trial is
complete and another is running, that trial's worker process gets SIGKILL; the time until the
retry (same parameters) starts, as its storage timestamp, is reported.

Resume: `vitshrink search quickstart --storage sqlite:///...` runs as a real process; once a trial
is complete and another is running it gets SIGKILL; the same command is started at once, and the
time until a trial completes that started after the kill is measured (process start, imports,
teacher load from cache, stale-trial detection, and the retried trial itself); the time until the
retry starts (the resume overhead alone) is reported too.

Usage:
    python benchmarks/distributed.py                      # about 15 minutes on 2 cores
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
import statistics
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
from vitshrink.search._ray import connect, cpu_share  # noqa: E402
from vitshrink.spaces import resolve_recipe  # noqa: E402

log = logging.getLogger("benchmarks.distributed")


def throughput(executor: str, workers: int, trials: int, work: Path, replay: list[tuple[dict, dict]] | None = None,
               cpus: int | None = None, round_: int = 0) -> tuple[dict, list[tuple[dict, dict]]]:
    """Run the quickstart study with `trials` completed trials on `workers` workers of `executor` (ray or
    tune; the trials of `replay` first, in order) on a local cluster of `cpus` CPUs (default: all);
    returns the measurements and the (params, user attrs) run."""
    (work / "cache" / "latency-cache.json").unlink(missing_ok=True)
    storage = f"sqlite:///{work}/{executor}-{workers}-{cpus or 'all'}-{'replay' if replay else 'sampled'}-{round_}.db"
    ray, _ = connect(None, num_cpus=cpus or os.cpu_count())  # run_search reuses this cluster
    cpus_per_trial = cpu_share(ray, workers)
    # the budget is the trial count, not the recipe's 10-minute timeout; every trial trains to its end (screening
    # and rungs follow measured latencies, so a replay could stop a different set of trials)
    recipe = dataclasses.replace(resolve_recipe("quickstart"), trials=trials, timeout=None, screening=False,
                                 rungs=False)
    if replay:
        study = open_or_create_study(recipe, storage)
        for params, attrs in replay:
            study.enqueue_trial(params, user_attrs=attrs)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    try:
        summary = run_search(recipe, storage=storage, executor=executor, workers=workers, evaluate_test=False)
    finally:
        ray.shutdown()
    wall = time.perf_counter() - start
    done = [t for t in summary.study.trials if t.state == TrialState.COMPLETE]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    per_trial = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
    ran = [(dict(t.params), {k: t.user_attrs[k] for k in ("config_override", "role") if k in t.user_attrs})
           for t in sorted(done, key=lambda t: t.number)]
    return {"executor": executor, "workers": workers, "cpus_per_trial": cpus_per_trial, "completed": len(done),
            "failed": summary.failed, "span_s": round(span, 1), "wall_s": round(wall, 1),
            "trials_per_hour": round(len(done) * 3600 / span, 1),
            "median_trial_s": round(statistics.median(per_trial), 2), "busy_s": round(sum(per_trial), 1),
            "median_gap_ms": _median_gap_ms(done), "replayed": bool(replay), "round": round_,
            "load_avg_1min_before": round(load, 2), "load_avg_1min_after": round(os.getloadavg()[0], 2)}, ran


def _median_gap_ms(done: list[optuna.trial.FrozenTrial]) -> float | None:
    """Median time a worker process sat between finishing one trial and starting its next: the
    executor's dispatch overhead (result back to the driver, the next trial asked, the worker reused)."""
    by_worker: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in done:
        by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
    gaps = [(b.datetime_start - a.datetime_complete).total_seconds() * 1000
            for ts in by_worker.values() for a, b in zip(sorted(ts, key=lambda t: t.datetime_start),
                                                          sorted(ts, key=lambda t: t.datetime_start)[1:])]
    return round(statistics.median(gaps), 1) if gaps else None


def compare(runs: list[dict], quickstart_trial_s: float) -> list[dict]:
    """Tune against Ray at each worker count, on the same replayed trials, paired by round: the median
    throughput ratio, and the per-trial overhead Tune adds as the difference of the workers' median idle
    gaps between trials (the dispatch path; trial durations themselves move by +-20 % from run to run on
    these 2 shared cores, so span differences measure the machine, not the executor), in ms and in % of
    the median sampled quickstart trial."""
    rows = []
    for w in sorted({r["workers"] for r in runs if r["executor"] == "ray"} & {r["workers"] for r in runs if r["executor"] == "tune"}):
        pairs = [(r, t) for r in runs for t in runs if r["executor"] == "ray" and t["executor"] == "tune"
                 and r["replayed"] and r["workers"] == t["workers"] == w and r["round"] == t["round"]]
        ratios = [t["trials_per_hour"] / r["trials_per_hour"] for r, t in pairs]
        gaps = {"ray": [r["median_gap_ms"] for r, _ in pairs if r["median_gap_ms"] is not None],
                "tune": [t["median_gap_ms"] for _, t in pairs if t["median_gap_ms"] is not None]}
        gap = {e: statistics.median(g) if g else float("nan") for e, g in gaps.items()}
        extra = gap["tune"] - gap["ray"]
        rows.append({"workers": w, "rounds": len(pairs),
                     "ray_trials_per_hour": [r["trials_per_hour"] for r, _ in pairs],
                     "tune_trials_per_hour": [t["trials_per_hour"] for _, t in pairs],
                     "tune_over_ray_throughput": [round(x, 3) for x in ratios],
                     "tune_over_ray_throughput_median": round(statistics.median(ratios), 3),
                     "median_gap_ms": {k: round(v, 1) for k, v in gap.items()},
                     "tune_extra_ms_per_trial": round(extra, 1),
                     "tune_extra_pct_of_quickstart_trial": round(100 * extra / (1000 * quickstart_trial_s), 2)})
    return rows


def worker_kill(executor: str, work: Path, trials: int = 3) -> dict:
    """kill -9 one Ray/Tune worker process mid-trial (the driver lives on); the time until its trial's
    retry starts, and until it completes."""
    storage = f"sqlite:///{work}/kill-{executor}.db"
    tag = {"ray": "ray_task", "tune": "tune_trial"}[executor]
    cmd = [sys.executable, "-m", "vitshrink.cli", "-q", "search", "quickstart", "--storage", storage, "--trials",
           str(trials), "--executor", executor]
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = t_kill = None
    while killed is None:
        if proc.poll() is not None:
            raise RuntimeError(f"the {executor} search ended before a worker could be killed: {proc.stderr.read()[-2000:]}")
        study = _study(storage, "quickstart")
        ts = study.get_trials(deepcopy=False) if study is not None else []
        running = [t for t in ts if t.state == TrialState.RUNNING and tag in t.user_attrs and "worker" in t.user_attrs]
        if running and any(t.state == TrialState.COMPLETE for t in ts):
            killed = running[0]
            os.kill(int(killed.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            t_kill = time.time()
        time.sleep(0.05)
    t_retry = t_done = None
    while t_done is None and proc.poll() is None:
        retry = next((t for t in _study(storage, "quickstart").get_trials(deepcopy=False)
                      if t.system_attrs.get("failed_trial") == killed.number and t.datetime_start), None)
        if retry is not None:
            t_retry = t_retry or time.time()
            if retry.state == TrialState.COMPLETE:
                t_done = time.time()
        time.sleep(0.05)
    proc.wait()
    study = _study(storage, "quickstart")
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number)
    return {"executor": executor, "killed_trial": killed.number,
            "kill_to_retry_start_s": round(retry.datetime_start.timestamp() - t_kill, 2),
            "kill_to_retry_seen_s": round(t_retry - t_kill, 2) if t_retry else None,
            "kill_to_retry_complete_s": round(t_done - t_kill, 2) if t_done else None,
            "final_complete": sum(t.state == TrialState.COMPLETE for t in study.trials), "exit_code": proc.returncode}


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
    ap.add_argument("--rounds", type=int, default=3, help="replays of the trials per executor and worker count")
    ap.add_argument("--executors", default="tune", help="comma-separated; 'ray,tune' compares the two names")
    ap.add_argument("--resume-trials", type=int, default=4, help="budget of the kill/resume study")
    ap.add_argument("--grace", type=int, default=30, help="heartbeat grace period of the resumed search")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="vitshrink-bench-"))
    os.environ["VITSHRINK_CACHE"] = str(work / "cache")  # the teacher is trained once, here, for all runs
    load_start = os.getloadavg()[0]
    try:
        sampled, ran = throughput(args.executors.split(",")[0], 1, args.trials, work)
        # the same configurations on each executor, one and two workers, interleaved so drift hits both
        executors = args.executors.split(",")
        runs = [sampled] + [throughput(executor, workers, args.trials, work, replay=ran, round_=i)[0]
                            for i in range(args.rounds) for workers in (1, 2) for executor in executors]
        kills = [worker_kill(executor, work) for executor in executors]
        resume = kill_and_resume(work, args.resume_trials, args.grace)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "recipe": "quickstart (screening and rungs off: every replayed trial trains to its end)",
        "trials": args.trials, "runs": runs, "tune_vs_ray": compare(runs, sampled["median_trial_s"]),
        "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip(), "worker_kill": kills, "resume": resume,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1min_start": round(load_start, 2), "load_avg_1min_end": round(os.getloadavg()[0], 2)},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"trials per hour, {r['executor']} {r['workers']} worker(s) x {r['cpus_per_trial']} CPU(s)"
              f"{' (replayed)' if r['replayed'] else ''}: {r['trials_per_hour']} (median gap {r['median_gap_ms']} ms)")
    for c in result["tune_vs_ray"]:
        print(f"{c['workers']} worker(s): Tune / Ray throughput {c['tune_over_ray_throughput']} (median "
              f"{c['tune_over_ray_throughput_median']}), Tune adds {c['tune_extra_ms_per_trial']} ms per trial "
              f"({c['tune_extra_pct_of_quickstart_trial']} % of a quickstart trial, {sampled['median_trial_s']} s)")
    for k in kills:
        print(f"{k['executor']}: kill -9 of a worker to its retry's start {k['kill_to_retry_start_s']} s")
    print(f"kill -9 to first new completed trial: {resume['kill_to_first_new_complete_s']} s "
          f"(the retry started after {resume['kill_to_retry_start_s']} s)")


if __name__ == "__main__":
    main()
