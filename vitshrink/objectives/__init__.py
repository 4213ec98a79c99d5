"""Objectives: accuracy, latency (the target-hardware protocol), size, memory, MACs, throughput,
registered by name (`list_objectives`) and chosen in the recipe (``[study] objectives``)."""

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
from ._registry import (
    Candidate,
    Objective,
    check_objective_names,
    directions_of,
    get_objective,
    list_objectives,
    objective_values,
    objectives_for,
    register_objective,
)
from .macs import count_macs
from .memory import peak_memory_bytes
from .size import param_count, safetensors_size_bytes, size_bytes

__all__ = [
    "AccuracyResult",
    "BatchLatency",
    "Candidate",
    "LatencyCache",
    "LatencyError",
    "LatencyProtocol",
    "LatencyResult",
    "NonFiniteOutput",
    "Objective",
    "Target",
    "accuracy",
    "check_objective_names",
    "count_macs",
    "directions_of",
    "get_objective",
    "list_objectives",
    "machine_lock",
    "measure_latency",
    "measure_latency_cached",
    "objective_values",
    "objectives_for",
    "param_count",
    "peak_memory_bytes",
    "register_objective",
    "safetensors_size_bytes",
    "size_bytes",
    "structural_signature",
]
