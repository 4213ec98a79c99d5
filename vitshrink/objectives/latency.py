"""Latency on the target hardware: one protocol, one measurement at a time per machine, cached by structure.

The protocol (`LatencyProtocol`): a fixed thread count, `warmup` untimed forwards, then timed
forwards per batch size (``time.perf_counter_ns``; CUDA is synchronised before the clock is read),
at least `runs` and more, up to `max_runs` or `max_seconds`, until the CV of the median estimate is
below `target_cv` (a result that reached the cap first says so: ``noisy``). With a reference model
(the search passes the teacher) candidate and reference forwards alternate in one window and the
ratio of their medians is kept beside the milliseconds. Measurements hold a machine-wide file lock
(``cache_dir()/latency.lock``) so two trials never time on one machine at once, while training may
go on beside them. Latency is a property of the structure, not of the weights, so results are
cached under `structural_signature` in ``cache_dir()/latency-cache.json``; a cached result is
measured again when the reference has drifted by more than 10 % since (`_reference.py`).

The parts live in their own modules: `_target` (where), `_protocol` (how, and what a result
holds), `_lock`, `_signature`, `_cache`, `_reference` (drift), `_remote` (a Ray target node); this
module times and re-exports.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    >>> result = measure_latency(model, (3, 4, 4), Target.parse("cpu:1"), LatencyProtocol(warmup=1, runs=5))
    >>> result.batch(1).median_ms > 0
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import socket  # noqa: F401 - tests point gethostname elsewhere through this module
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import _reference
from ._cache import LatencyCache
from ._lock import lock_path, machine_lock
from ._protocol import BatchLatency, LatencyProtocol, LatencyResult, median_cv, ratio_cv, summarise
from ._remote import run_on_target
from ._signature import STRUCTURAL_ATTRIBUTES, reference_signature, structural_signature
from ._target import DEFAULT_RAY_RESOURCE, TARGET_KINDS, LatencyError, Target, cpu_model

log = logging.getLogger(__name__)


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # not on every platform
        return 0.0


OTHERS_WINDOW_S = 0.1


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, ticks of this process) from /proc; None where there is none."""
    try:
        with open("/proc/stat") as f:
            parts = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    return sum(parts[:8]) - idle, int(fields[11]) + int(fields[12])  # utime + stime


def other_load(window_s: float = OTHERS_WINDOW_S) -> float | None:
    """Cores kept busy by other processes, averaged over `window_s` while this one waits: what
    competes with a latency measurement now. The load average cannot say this: it counts the
    search's own training of the last minute, which has ended when the timing starts."""
    before = _cpu_ticks()
    if before is None:
        return None
    t0 = time.monotonic()
    time.sleep(window_s)
    after = _cpu_ticks()
    elapsed = time.monotonic() - t0
    if after is None or elapsed <= 0:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / hz / elapsed)


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timer(model: nn.Module, x: torch.Tensor, sync: Callable[[], None]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter_ns()
        model(x)
        sync()
        return (time.perf_counter_ns() - t0) / 1e6

    return once


def _time_batch(candidate: Callable[[], float], reference: Callable[[], float] | None,
                protocol: LatencyProtocol) -> tuple[list[float], list[float]]:
    """Alternate candidate and reference runs (c, r, c, r, ...) until the minimum runs are done and
    the spread is below the target, or the cap (runs or seconds) is reached."""
    times, ref_times = [], []
    deadline = time.monotonic() + protocol.max_seconds
    while True:
        times.append(candidate())
        if reference is not None:
            ref_times.append(reference())
        n = len(times)
        if n < protocol.runs:
            continue
        spread = ratio_cv(median_cv(times), median_cv(ref_times)) if reference is not None else median_cv(times)
        if spread < protocol.target_cv or n >= protocol.max_runs or time.monotonic() >= deadline:
            return times, ref_times


def measure_latency(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol | None = None
) -> LatencyResult:
    """Time `model` on inputs of per-image shape `example_shape` (C, H, W) under `protocol` on `target`.

    Threads: torch's intra-op thread count is set for the measurement and restored afterwards. ONNX
    Runtime sessions have their own thread setting: `vitshrink.compress.onnx_runtime.OrtModule`
    takes ``torch.get_num_threads()`` when it (re)creates its session, which it does on the first
    forward here (a warm-up run) when the count differs; a wrapper that fixed its threads at build
    time would keep them, so build such models under the same thread count.
    A CUDA target times a copy of the model (and of the reference) moved to the device; a ray
    target runs this function on a node holding the target's custom resource, which also keeps its
    own cache and lock.

    Example:
        >>> r = measure_latency(torch.nn.Flatten(), (1, 2, 2), Target("cpu", 1), LatencyProtocol(runs=5, max_runs=5))
        >>> r.batch(1).runs
        5
    """
    protocol = protocol or LatencyProtocol()
    if target.kind == "ray":
        return _measure_on_ray(model, example_shape, target, protocol, extra=None)[0]
    shape = tuple(int(s) for s in example_shape)
    device = torch.device("cpu")
    reference = protocol.reference
    if target.kind == "cuda":
        if not torch.cuda.is_available() or target.device >= torch.cuda.device_count():
            raise LatencyError(f"target {target} asks for CUDA device {target.device} but torch sees "
                               f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}; use --target cpu:N")
        device = torch.device("cuda", target.device)
        model = copy.deepcopy(model).to(device)
        reference = copy.deepcopy(reference).to(device) if reference is not None else None
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    models = [m for m in (model, reference) if m is not None]
    was_training = [m.training for m in models]
    gen = torch.Generator().manual_seed(0)
    threads = protocol.threads_for(target)
    results = []
    try:
        with machine_lock(), _threads(threads), torch.no_grad():
            for m in models:
                m.eval()
            load = _load_average()
            # other work (e.g. another worker training beside it) starves intra-op threads: with 2 threads
            # on 2 busy cores torch was measured 400x slower than alone. Stored; the search says it once a run
            others = other_load() if device.type == "cpu" else None
            started = time.time()
            for batch in protocol.all_batches:
                x = torch.randn((batch, *shape), generator=gen).to(device)
                for _ in range(protocol.warmup):
                    for m in models:
                        m(x)
                sync()
                ref_timer = _timer(reference, x, sync) if reference is not None else None
                times, ref_times = _time_batch(_timer(model, x, sync), ref_timer, protocol)
                results.append(summarise(batch, times, ref_times or None))
            finished = time.time()
    finally:
        for m, mode in zip(models, was_training):
            m.train(mode)
    throughput = None
    if protocol.throughput_batch:
        throughput = next(r.images_per_s for r in results if r.batch == protocol.throughput_batch)
    noisy = protocol.adaptive and results[0].spread >= protocol.target_cv
    if noisy:
        log.debug("latency spread %.1f %% after %d runs is above the %.1f %% target: the result is marked noisy",
                  100 * results[0].spread, results[0].runs, 100 * protocol.target_cv)
    return LatencyResult(tuple(results), throughput, threads, target.describe(), started, finished, load,
                         noisy=noisy, target_cv=protocol.target_cv, other_load=others)


def measure_latency_cached(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol | None = None,
    extra: dict[str, Any] | None = None, cache: LatencyCache | None = None,
) -> tuple[LatencyResult, bool]:
    """`measure_latency`, unless a model of the same structural signature was measured already and,
    with a reference in the protocol, the reference has not drifted by more than 10 % since.

    Returns ``(result, cached)``. The lookup, the measurement and the write happen under one hold
    of the machine lock, so two processes asking for one new structure measure it once.

    Example:
        >>> m = torch.nn.Flatten()
        >>> _, first = measure_latency_cached(m, (1, 2, 2), Target("cpu", 1), LatencyProtocol(runs=5))
        >>> _, second = measure_latency_cached(m, (1, 2, 2), Target("cpu", 1), LatencyProtocol(runs=5))
        >>> second
        True
    """
    protocol = protocol or LatencyProtocol()
    if target.kind == "ray":
        return _measure_on_ray(model, example_shape, target, protocol, extra=extra or {})
    cache = cache if cache is not None else LatencyCache()  # an empty cache is falsy (__len__)
    signature = structural_signature(model, example_shape, target, protocol, extra)
    valid = _validator(example_shape, target, protocol)
    hit = cache.get(signature)
    if hit is not None and valid(hit):
        return hit, True
    with machine_lock():
        hit = cache.get(signature)  # another process may have measured it while we waited
        if hit is not None and valid(hit):
            return hit, True
        result = measure_latency(model, example_shape, target, protocol)
        if hit is not None:
            result = dataclasses.replace(result, stale_reference_ms=hit.reference_ms)
        if protocol.reference is not None and result.reference_ms:
            _reference.note(reference_signature(example_shape, target, protocol), result.reference_ms)
        cache.put(signature, result)
    return result, False


def _validator(example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol
               ) -> Callable[[LatencyResult], bool]:
    """Without a reference every cached entry is valid; with one, an entry whose reference median is
    more than 10 % off the reference's median now is not (`_reference.py`)."""
    if protocol.reference is None:
        return lambda entry: True

    def valid(entry: LatencyResult) -> bool:
        ref_sig = reference_signature(example_shape, target, protocol)
        brief = _reference.brief_protocol(protocol)
        now = _reference.current_median(ref_sig, lambda: measure_latency(protocol.reference, example_shape, target,
                                                                          brief))
        if _reference.still_valid(entry, now):
            return True
        log.info("the reference's latency moved from %s ms to %.4f ms since this structure was cached: measuring "
                 "it again", f"{entry.reference_ms:.4f}" if entry.reference_ms else "unknown", now)
        return False

    return valid


def _remote_measure(model, example_shape, threads, protocol, extra):  # runs on the target node
    local = Target("cpu", threads=threads)
    if extra is None:
        return measure_latency(model, example_shape, local, protocol), False
    return measure_latency_cached(model, example_shape, local, protocol, extra)


def _measure_on_ray(model, example_shape, target, protocol, extra) -> tuple[LatencyResult, bool]:
    """Run the measurement on the node that owns `target.ray_resource` (its CPU is the target)."""
    return run_on_target(_remote_measure, target, model, tuple(example_shape), target.threads, protocol, extra)


__all__ = [
    "BatchLatency",
    "DEFAULT_RAY_RESOURCE",
    "LatencyCache",
    "LatencyError",
    "LatencyProtocol",
    "LatencyResult",
    "STRUCTURAL_ATTRIBUTES",
    "TARGET_KINDS",
    "Target",
    "cpu_model",
    "lock_path",
    "machine_lock",
    "measure_latency",
    "measure_latency_cached",
    "median_cv",
    "structural_signature",
]
