"""How latency is timed and what a measurement holds: the protocol, per-batch timings, the result.

Spread, defined once: the coefficient of variation (CV) of the *median estimate*, from the
distribution-free 95 % confidence interval of a median (the order statistics at ranks
n/2 -/+ 1.96 sqrt(n)/2): half its width / 1.96, over the median. Unlike the spread of single runs
it shrinks as runs are added, so "enough runs" has a meaning: the protocol adds runs until it is
below `target_cv` (3 %). With a reference model timed in the same window, the number the search
uses is the ratio of the two medians, whose CV is the two medians' CVs added in quadrature.

Example:
    >>> median_cv([10.0] * 20)
    0.0
    >>> runs = [10.0 + i % 7 for i in range(200)]
    >>> median_cv(runs[:20]) > median_cv(runs)  # more runs, a tighter median
    True
    >>> LatencyProtocol(runs=30, batch_sizes=(1,), throughput_batch=8).all_batches
    (1, 8)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from ._target import Target

Z95 = 1.96


def median_cv(values: list[float]) -> float:
    """CV of the median of `values` as an estimate: the distribution-free 95 % interval's half-width
    / 1.96 / median (robust to the long right tail of timings; no normality assumed)."""
    s = sorted(values)
    n = len(s)
    mid = statistics.median(s)
    if n < 2 or mid <= 0:
        return float("inf") if n < 2 else 0.0
    half = Z95 * math.sqrt(n) / 2
    lo = max(math.floor(n / 2 - half) - 1, 0)
    hi = min(math.ceil(1 + n / 2 + half) - 1, n - 1)
    return (s[hi] - s[lo]) / (2 * Z95) / mid


def ratio_cv(cv_a: float, cv_b: float) -> float:
    """CV of a / b from the CVs of a and b (first order, independent errors)."""
    return math.hypot(cv_a, cv_b)


@dataclass(frozen=True)
class LatencyProtocol:
    """How to time: warm-up forwards, timed runs per batch size, an optional throughput batch, threads,
    and when to stop adding runs.

    `runs` timed forwards are the minimum; then runs are added (up to `max_runs`, or `max_seconds`
    per batch size) until the CV of the median estimate (see the module) is below `target_cv`;
    `max_runs == runs` times a fixed count. With a `reference` model (the search uses the teacher),
    candidate and reference forwards alternate (c, r, c, r, ...) in one window, the ratio of their
    medians is kept, and the stopping rule applies to the ratio's CV. `threads` overrides the
    target's thread count when set. The throughput batch is timed like the others and reported as
    images per second.

    Example:
        >>> LatencyProtocol(runs=10, max_runs=10).adaptive
        False
    """

    warmup: int = 5
    runs: int = 30
    batch_sizes: tuple[int, ...] = (1,)
    throughput_batch: int | None = None
    threads: int | None = None
    max_runs: int = 200
    target_cv: float = 0.03
    max_seconds: float = 30.0
    reference: nn.Module | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        if self.runs < 5:
            raise ValueError(f"latency runs={self.runs} is too few for a median and a spread; use runs >= 5")
        if self.max_runs < self.runs:
            raise ValueError(f"latency max_runs={self.max_runs} is below runs={self.runs}; use max_runs >= runs")
        if not 0 < self.target_cv < 1:
            raise ValueError(f"latency target_cv={self.target_cv} is a fraction in (0, 1), e.g. 0.03 for 3 %")
        if self.max_seconds <= 0:
            raise ValueError(f"latency max_seconds={self.max_seconds} must be > 0")
        if self.warmup < 0:
            raise ValueError(f"latency warmup={self.warmup} must be >= 0")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"latency batch_sizes={self.batch_sizes} must be non-empty and each >= 1")
        if self.throughput_batch is not None and self.throughput_batch < 1:
            raise ValueError(f"throughput_batch={self.throughput_batch} must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"latency threads={self.threads} must be >= 1")

    @property
    def all_batches(self) -> tuple[int, ...]:
        extra = (self.throughput_batch,) if self.throughput_batch else ()
        return tuple(dict.fromkeys(self.batch_sizes + extra))

    @property
    def adaptive(self) -> bool:
        return self.max_runs > self.runs

    def threads_for(self, target: Target) -> int:
        return self.threads or target.threads


@dataclass(frozen=True)
class BatchLatency:
    """Timing of one batch size: milliseconds per forward of the whole batch.

    `cv` is the spread of single runs (std / mean); `median_cv` the CV of the median estimate. With a
    reference: its median in the same window, the ratio median / reference median and its CV."""

    batch: int
    median_ms: float
    iqr_ms: float
    cv: float
    min_ms: float
    runs: int
    median_cv: float = 0.0
    reference_ms: float | None = None
    ratio: float | None = None
    ratio_cv: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.median_ms

    @property
    def spread(self) -> float:
        """The CV of the number the search uses: the ratio's with a reference, else the median's."""
        return self.ratio_cv if self.ratio else self.median_cv


def summarise(batch: int, times_ms: list[float], reference_ms: list[float] | None = None) -> BatchLatency:
    q1, _, q3 = statistics.quantiles(times_ms, n=4, method="inclusive")
    mean = statistics.fmean(times_ms)
    median, m_cv = statistics.median(times_ms), median_cv(times_ms)
    ref = ratio = r_cv = None
    if reference_ms:
        ref = statistics.median(reference_ms)
        ratio, r_cv = median / ref, ratio_cv(m_cv, median_cv(reference_ms))
    return BatchLatency(batch=batch, median_ms=median, iqr_ms=q3 - q1,
                        cv=statistics.pstdev(times_ms) / mean if mean > 0 else 0.0, min_ms=min(times_ms),
                        runs=len(times_ms), median_cv=m_cv, reference_ms=ref, ratio=ratio, ratio_cv=r_cv)


@dataclass(frozen=True)
class LatencyResult:
    """Per-batch timings, throughput at the throughput batch, and where and when it was measured.

    `noisy`: the runs reached the protocol's cap with the primary batch's spread still at or above
    `target_cv`. `stale_reference_ms`: when a cached entry was re-measured because the reference
    drifted, the reference median the stale entry had been measured with."""

    batches: tuple[BatchLatency, ...]
    throughput: float | None
    threads: int
    target: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # epoch seconds, taken while holding the machine lock
    finished_at: float = 0.0
    load_avg: float = 0.0  # 1-minute load average when timing started: above the core count, distrust it
    noisy: bool = False
    target_cv: float | None = None
    stale_reference_ms: float | None = None
    other_load: float | None = None  # cores other processes kept busy just before timing (None: not known)

    def batch(self, size: int) -> BatchLatency:
        for b in self.batches:
            if b.batch == size:
                return b
        raise KeyError(f"batch {size} was not measured; measured: {[b.batch for b in self.batches]}")

    @property
    def median_ms(self) -> float:
        """Median of the first protocol batch (batch 1 by default): the measured milliseconds."""
        return self.batches[0].median_ms

    @property
    def ratio_to_reference(self) -> float | None:
        """First batch: median / the reference's median in the same window (None without a reference)."""
        return self.batches[0].ratio

    @property
    def reference_ms(self) -> float | None:
        return self.batches[0].reference_ms

    def scaled_ms(self, baseline_ms: float | None) -> float:
        """The latency objective: ratio x `baseline_ms` (the reference's median when the study was
        created), so a machine that drifts since moves candidate and reference alike and cancels
        out; the plain median without a baseline or a ratio."""
        ratio = self.ratio_to_reference
        return ratio * baseline_ms if ratio and baseline_ms else self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyResult:
        batches = tuple(BatchLatency(**b) for b in d["batches"])
        return cls(batches, d.get("throughput"), int(d["threads"]), dict(d.get("target") or {}),
                   float(d.get("started_at", 0.0)), float(d.get("finished_at", 0.0)), float(d.get("load_avg", 0.0)),
                   bool(d.get("noisy", False)), d.get("target_cv"), d.get("stale_reference_ms"), d.get("other_load"))
