"""Objectives: accuracy, latency (the target-hardware protocol), size, memory, MACs."""

from .accuracy import AccuracyResult, NonFiniteOutput, accuracy
from .latency import (
    BatchLatency,
    LatencyCache,
    LatencyError,
    LatencyProtocol,
    LatencyResult,
    Target,
    machine_lock,
    measure_latency,
    measure_latency_cached,
    structural_signature,
)
from .macs import count_macs
from .memory import peak_memory_bytes
from .size import param_count, safetensors_size_bytes, size_bytes

__all__ = [
    "AccuracyResult",
    "BatchLatency",
    "LatencyCache",
    "LatencyError",
    "LatencyProtocol",
    "LatencyResult",
    "NonFiniteOutput",
    "Target",
    "accuracy",
    "count_macs",
    "machine_lock",
    "measure_latency",
    "measure_latency_cached",
    "param_count",
    "peak_memory_bytes",
    "safetensors_size_bytes",
    "size_bytes",
    "structural_signature",
]
