"""Is a cached latency still true on this machine? Ask the reference model.

Every cached entry keeps the reference's median measured in the same window as the candidate. When
an entry is reused, the reference is timed again (briefly: the protocol's minimum runs, alone) and
if it moved by more than `DRIFT` the candidate is measured again. The reference's current median is
the same for every candidate, so a process keeps it for `RECHECK_S` seconds; a fresh measurement of
any candidate also refreshes it (the reference was timed in that window).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from ._protocol import LatencyProtocol, LatencyResult

DRIFT = 0.10  # the reference moved by more than this fraction: cached candidates are measured again
RECHECK_S = 60.0  # how long a process trusts its last timing of the reference

_now: dict[str, tuple[float, float]] = {}  # reference signature -> (median ms of the first batch, monotonic s)


def note(reference_sig: str, median_ms: float) -> None:
    """Remember the reference's median as measured now (after timing it, alone or beside a candidate)."""
    _now[reference_sig] = (float(median_ms), time.monotonic())


def forget() -> None:
    """Drop what this process knows of the references' current medians (the next reuse re-times)."""
    _now.clear()


def brief_protocol(protocol: LatencyProtocol) -> LatencyProtocol:
    """The reference alone, first batch only, the minimum runs: a drift check costs little."""
    return dataclasses.replace(protocol, reference=None, batch_sizes=protocol.batch_sizes[:1], throughput_batch=None,
                               max_runs=protocol.runs)


def current_median(reference_sig: str, time_reference: Callable[[], LatencyResult]) -> float:
    """The reference's median now: this process's last timing if younger than `RECHECK_S`, else
    `time_reference()` (which runs `brief_protocol`)."""
    known = _now.get(reference_sig)
    if known is not None and time.monotonic() - known[1] < RECHECK_S:
        return known[0]
    median = time_reference().median_ms
    note(reference_sig, median)
    return median


def drift(stored_ms: float | None, now_ms: float) -> float | None:
    """Relative move of the reference since `stored_ms` (None: nothing stored to compare with)."""
    if not stored_ms or stored_ms <= 0:
        return None
    return now_ms / stored_ms - 1.0


def still_valid(entry: LatencyResult, now_ms: float) -> bool:
    """A cached entry may be reused when its reference median is within `DRIFT` of `now_ms`."""
    moved = drift(entry.reference_ms, now_ms)
    return moved is not None and abs(moved) <= DRIFT
