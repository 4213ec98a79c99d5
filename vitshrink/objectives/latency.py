"""Latency on the target hardware: one protocol, one measurement at a time per machine, cached by structure.

The protocol: a fixed thread count, `warmup` untimed forwards, then `runs` timed forwards per batch
size (``time.perf_counter_ns``; CUDA is synchronised before the clock is read); the median, the
inter-quartile range, the coefficient of variation and the minimum are kept. Measurements hold a
machine-wide file lock (``cache_dir()/latency.lock``) so two trials never time on one machine at once,
while training may go on beside them. Latency is a property of the structure, not of the weights, so
results are cached under `structural_signature` in ``cache_dir()/latency-cache.json``.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    >>> result = measure_latency(model, (3, 4, 4), Target.parse("cpu:1"), LatencyProtocol(warmup=1, runs=5))
    >>> result.batch(1).median_ms > 0
    True
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..data import cache_dir

log = logging.getLogger(__name__)

TARGET_KINDS = ("cpu", "cuda", "ray")
DEFAULT_RAY_RESOURCE = "vitshrink_target"

# Module attributes that change run time without changing a tensor shape (heads, landmarks, merged
# tokens, kernels, runtime modes). Weight-dependent values (kept indices, quantization scales) are
# deliberately absent: two models that differ only there must share a signature.
STRUCTURAL_ATTRIBUTES = (
    "num_heads", "head_dim", "attn_dim", "landmarks", "num_landmarks", "r", "keep", "keep_ratio",
    "drop", "drop_at", "conv_kernel", "pinv_iters", "prefix", "rank", "mode", "quant_mode", "runtime", "fused_attn",
    "num_prefix_tokens", "in_features", "out_features", "kernel_size", "stride", "groups", "kind",
)


class LatencyError(RuntimeError):
    """A latency measurement that cannot be made as asked (bad target, no CUDA, Ray missing)."""


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one, else `platform`."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Target:
    """Where latency is measured: the local CPU, a local CUDA device, or a Ray node owning a resource.

    `threads` is the intra-op thread count used on CPU (and on the Ray node, which measures on its CPU).

    Example:
        >>> Target.parse("cpu:2")
        Target(kind='cpu', threads=2, device=0, ray_resource='', name='cpu:2')
        >>> Target.parse(str(Target.parse("ray:vitshrink_target"))).ray_resource
        'vitshrink_target'
    """

    kind: str = "cpu"
    threads: int = 1
    device: int = 0
    ray_resource: str = ""
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"unknown target kind {self.kind!r}; use one of {', '.join(TARGET_KINDS)}")
        if self.threads < 1:
            raise ValueError(f"target threads={self.threads} must be >= 1")
        if self.device < 0:
            raise ValueError(f"target device={self.device} must be >= 0")
        if self.kind == "ray" and not self.ray_resource:
            raise ValueError("a ray target needs a custom resource name, e.g. 'ray:vitshrink_target'")
        if not self.name:
            object.__setattr__(self, "name", self.spec())

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse ``cpu``, ``cpu:THREADS``, ``cuda``, ``cuda:INDEX``, ``ray:RESOURCE`` or ``ray:RESOURCE:THREADS``."""
        usage = "use cpu[:THREADS], cuda[:INDEX] or ray:RESOURCE[:THREADS], e.g. cpu:2, cuda:0, ray:vitshrink_target"
        parts = str(text).strip().split(":")
        kind = parts[0].lower()
        try:
            if kind == "cpu" and len(parts) <= 2:
                threads = int(parts[1]) if len(parts) == 2 else (os.cpu_count() or 1)
                return cls("cpu", threads=threads)
            if kind == "cuda" and len(parts) <= 2:
                return cls("cuda", device=int(parts[1]) if len(parts) == 2 else 0)
            if kind == "ray" and len(parts) in (2, 3) and parts[1]:
                threads = int(parts[2]) if len(parts) == 3 else 1
                return cls("ray", threads=threads, ray_resource=parts[1])
        except ValueError as exc:
            raise ValueError(f"bad latency target {text!r} ({exc}); {usage}") from None
        raise ValueError(f"bad latency target {text!r}; {usage}")

    def spec(self) -> str:
        """The string `parse` reads back into an equal target (name aside)."""
        if self.kind == "cpu":
            return f"cpu:{self.threads}"
        if self.kind == "cuda":
            return f"cuda:{self.device}"
        return f"ray:{self.ray_resource}:{self.threads}" if self.threads != 1 else f"ray:{self.ray_resource}"

    def __str__(self) -> str:
        return self.spec()

    def describe(self) -> dict[str, Any]:
        """What the numbers were measured on: host, CPU model, device, torch version (JSON-able)."""
        info: dict[str, Any] = {
            "target": self.spec(), "host": socket.gethostname(), "cpu": cpu_model(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
        }
        if self.kind == "cuda" and torch.cuda.is_available() and self.device < torch.cuda.device_count():
            info["cuda_device"] = torch.cuda.get_device_name(self.device)
            info["cuda"] = torch.version.cuda
        return info


@dataclass(frozen=True)
class LatencyProtocol:
    """How to time: warm-up forwards, timed runs per batch size, an optional throughput batch, threads.

    `threads` overrides the target's thread count when set. The throughput batch is timed like the
    others and reported as images per second.

    Example:
        >>> LatencyProtocol(runs=30, batch_sizes=(1,), throughput_batch=8).all_batches
        (1, 8)
    """

    warmup: int = 5
    runs: int = 30
    batch_sizes: tuple[int, ...] = (1,)
    throughput_batch: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in self.batch_sizes))
        if self.runs < 5:
            raise ValueError(f"latency runs={self.runs} is too few for a median and a spread; use runs >= 5")
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

    def threads_for(self, target: Target) -> int:
        return self.threads or target.threads


@dataclass(frozen=True)
class BatchLatency:
    """Timing of one batch size: milliseconds per forward of the whole batch."""

    batch: int
    median_ms: float
    iqr_ms: float
    cv: float
    min_ms: float
    runs: int

    @property
    def images_per_s(self) -> float:
        return self.batch * 1000.0 / self.median_ms


@dataclass(frozen=True)
class LatencyResult:
    """Per-batch timings, throughput at the throughput batch, and where and when it was measured."""

    batches: tuple[BatchLatency, ...]
    throughput: float | None
    threads: int
    target: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # epoch seconds, taken while holding the machine lock
    finished_at: float = 0.0
    load_avg: float = 0.0  # 1-minute load average when timing started: above the core count, distrust it

    def batch(self, size: int) -> BatchLatency:
        for b in self.batches:
            if b.batch == size:
                return b
        raise KeyError(f"batch {size} was not measured; measured: {[b.batch for b in self.batches]}")

    @property
    def median_ms(self) -> float:
        """Median of the first protocol batch (batch 1 by default): the latency objective."""
        return self.batches[0].median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyResult:
        batches = tuple(BatchLatency(**b) for b in d["batches"])
        return cls(batches, d.get("throughput"), int(d["threads"]), dict(d.get("target") or {}),
                   float(d.get("started_at", 0.0)), float(d.get("finished_at", 0.0)), float(d.get("load_avg", 0.0)))


# One flock per process, re-entrant across nested calls (cache check + measurement + write):
# flock locks belong to open file descriptions, so a second open() in this process would deadlock.
_LOCK_STATE = threading.RLock()
_lock_depth = 0
_lock_fd: int | None = None


def lock_path() -> Path:
    return cache_dir() / "latency.lock"


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """Hold the machine-wide latency lock (blocking). Re-entrant within a process; threads queue.

    Example:
        >>> with machine_lock():
        ...     pass
    """
    global _lock_depth, _lock_fd
    with _LOCK_STATE:
        if _lock_depth == 0:
            fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            _lock_fd = fd
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
            if _lock_depth == 0 and _lock_fd is not None:
                fcntl.flock(_lock_fd, fcntl.LOCK_UN)
                os.close(_lock_fd)
                _lock_fd = None


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):  # not on every platform
        return 0.0


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _summarise(batch: int, times_ns: list[int]) -> BatchLatency:
    ms = [t / 1e6 for t in times_ns]
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    mean = statistics.fmean(ms)
    return BatchLatency(batch=batch, median_ms=statistics.median(ms), iqr_ms=q3 - q1,
                        cv=statistics.pstdev(ms) / mean if mean > 0 else 0.0, min_ms=min(ms), runs=len(ms))


def measure_latency(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol | None = None
) -> LatencyResult:
    """Time `model` on inputs of per-image shape `example_shape` (C, H, W) under `protocol` on `target`.

    Threads: torch's intra-op thread count is set for the measurement and restored afterwards. ONNX
    Runtime sessions have their own thread setting: `vitshrink.compress.onnx_runtime.OrtModule`
    takes ``torch.get_num_threads()`` when it (re)creates its session, which it does on the first
    forward here (a warm-up run) when the count differs; a wrapper that fixed its threads at build
    time would keep them, so build such models under the same thread count.
    A CUDA target times a copy of the model moved to the device; a ray target runs this function
    on a node holding the target's custom resource, which also keeps its own cache and lock.

    Example:
        >>> r = measure_latency(torch.nn.Flatten(), (1, 2, 2), Target("cpu", 1), LatencyProtocol(runs=5))
        >>> r.batch(1).runs
        5
    """
    protocol = protocol or LatencyProtocol()
    if target.kind == "ray":
        return _measure_on_ray(model, example_shape, target, protocol, extra=None)[0]
    shape = tuple(int(s) for s in example_shape)
    device = torch.device("cpu")
    if target.kind == "cuda":
        if not torch.cuda.is_available() or target.device >= torch.cuda.device_count():
            raise LatencyError(f"target {target} asks for CUDA device {target.device} but torch sees "
                               f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}; use --target cpu:N")
        device = torch.device("cuda", target.device)
        model = copy.deepcopy(model).to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    threads = protocol.threads_for(target)
    results = []
    try:
        with machine_lock(), _threads(threads), torch.no_grad():
            started = time.time()
            load = _load_average()
            if load > (os.cpu_count() or 1):
                # other work (e.g. training beside the trial) starves intra-op threads: with 2 threads
                # on 2 busy cores torch was measured 400x slower than alone, so say it loudly
                log.warning("latency measured on a busy machine (load %.1f on %d cores): results are inflated",
                            load, os.cpu_count() or 1)
            for batch in protocol.all_batches:
                x = torch.randn((batch, *shape), generator=gen).to(device)
                for _ in range(protocol.warmup):
                    model(x)
                sync()
                times = []
                for _ in range(protocol.runs):
                    t0 = time.perf_counter_ns()
                    model(x)
                    sync()
                    times.append(time.perf_counter_ns() - t0)
                results.append(_summarise(batch, times))
            finished = time.time()
    finally:
        model.train(was_training)
    throughput = None
    if protocol.throughput_batch:
        throughput = next(r.images_per_s for r in results if r.batch == protocol.throughput_batch)
    return LatencyResult(tuple(results), throughput, threads, target.describe(), started, finished, load)


def _structure_rows(model: nn.Module) -> Iterator[list[Any]]:
    def simple(v: Any) -> bool:
        if isinstance(v, (bool, int, float, str)) or v is None:
            return True
        return isinstance(v, (tuple, list)) and all(isinstance(e, (bool, int, float, str)) for e in v)

    def tensor_row(name: str, t: Any) -> list[Any]:
        if isinstance(t, torch.Tensor):
            # the tensor's class catches tensor-subclass quantization (torchao) that keeps dtype/shape
            return [name, type(t).__name__, list(t.shape), str(t.dtype)]
        if isinstance(t, (tuple, list)):
            return [name, [tensor_row("", e) for e in t]]
        return [name, type(t).__name__]

    for path, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in STRUCTURAL_ATTRIBUTES if simple(getattr(module, a, object()))}
        attrs = {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
        yield [path, type(module).__module__ + "." + type(module).__qualname__, attrs]
        graph = getattr(module, "model_bytes", None)
        if isinstance(graph, (bytes, bytearray)):  # an ONNX Runtime wrapper: the graph is the structure
            yield [path, "onnx", _onnx_structure(bytes(graph))]
        # the module's own entries (no dot): parameters, buffers and packed quantized weights alike
        for name, t in module.state_dict(keep_vars=True).items():
            if "." not in name:
                yield tensor_row(f"{path}.{name}", t)


def _onnx_structure(model_bytes: bytes) -> list[Any]:
    """Operators, their attributes and the shapes/types of the initializers they read: not the values."""
    import onnx

    graph = onnx.load_from_string(model_bytes).graph

    def simple(v: Any) -> Any:
        if isinstance(v, onnx.TensorProto):
            return ["tensor", list(v.dims), v.data_type]
        if isinstance(v, bytes):
            return v.decode(errors="replace")
        return v if isinstance(v, (int, float, str)) else type(v).__name__

    def attr(a: Any) -> Any:
        value = onnx.helper.get_attribute_value(a)
        return [simple(v) for v in value] if isinstance(value, list) else simple(value)

    def value_info(v: Any) -> list[Any]:
        t = v.type.tensor_type
        return [t.elem_type, [d.dim_value or d.dim_param for d in t.shape.dim]]

    # The exporter shares equal-valued initializers through Identity nodes (e.g. all-zero biases of a
    # fresh model), which depends on the weights: so Identity nodes are skipped and each operator
    # records the shape/type of the initializers it reads, wherever they are stored.
    weights = {t.name: [list(t.dims), t.data_type] for t in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input}

    def operand(name: str) -> Any:
        while name in alias:
            name = alias[name]
        return weights.get(name, "x")

    return [
        [value_info(v) for v in graph.input], [value_info(v) for v in graph.output],
        [[n.domain, n.op_type, sorted((a.name, attr(a)) for a in n.attribute), [operand(i) for i in n.input]]
         for n in graph.node if n.op_type != "Identity"],
    ]


def _runtime(model: nn.Module) -> dict[str, str]:
    runtime = {"torch": torch.__version__}
    if any(isinstance(getattr(m, "model_bytes", None), (bytes, bytearray)) for m in model.modules()):
        import onnxruntime

        runtime["onnxruntime"] = onnxruntime.__version__
    return runtime


def structural_signature(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol,
    extra: dict[str, Any] | None = None,
) -> str:
    """A hash of what decides run time: the module tree (classes, tensor shapes/dtypes/kinds, the
    `STRUCTURAL_ATTRIBUTES`), `extra`, input shape, warm-up and timed runs, batches, threads, runtime
    versions (torch, ONNX Runtime, CUDA), host, CPU and GPU.

    Weight values are not part of it: two models of one structure with different weights share it.

    Example:
        >>> a, b = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
        >>> t, p = Target("cpu", 1), LatencyProtocol()
        >>> structural_signature(a, (4,), t, p) == structural_signature(b, (4,), t, p)
        True
    """
    target_info = target.describe()
    blob = {
        "modules": list(_structure_rows(model)),
        "extra": extra or {},
        "input": list(example_shape),
        "protocol": {"warmup": protocol.warmup, "runs": protocol.runs, "batches": list(protocol.all_batches),
                     "throughput_batch": protocol.throughput_batch},
        "threads": protocol.threads_for(target),
        "runtime": _runtime(model),
        "target": {k: target_info.get(k) for k in ("target", "host", "cpu", "machine", "cuda_device", "torch")},
    }
    if "cuda" in target_info:  # the CUDA runtime times kernels too; absent on CPU, so CPU keys stay as they were
        blob["target"]["cuda"] = target_info["cuda"]
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


class LatencyCache:
    """Latency results by structural signature, in one JSON file shared by the processes of a machine.

    Reads need no lock (writes replace the file atomically); writes happen under the machine lock,
    re-reading the file first so concurrent writers never lose each other's entries.

    Example:
        >>> cache = LatencyCache()
        >>> cache.get("no-such-signature") is None
        True
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "latency-cache.json"

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}  # a damaged cache only costs re-measuring; it is rewritten on the next put

    def get(self, signature: str) -> LatencyResult | None:
        entry = self._read().get(signature)
        return LatencyResult.from_dict(entry) if entry else None

    def put(self, signature: str, result: LatencyResult) -> None:
        with machine_lock():
            entries = self._read()
            entries[signature] = result.to_dict()
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries, sort_keys=True))
            os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._read())


def measure_latency_cached(
    model: nn.Module, example_shape: tuple[int, ...], target: Target, protocol: LatencyProtocol | None = None,
    extra: dict[str, Any] | None = None, cache: LatencyCache | None = None,
) -> tuple[LatencyResult, bool]:
    """`measure_latency`, unless a model of the same structural signature was measured already.

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
    hit = cache.get(signature)
    if hit is not None:
        return hit, True
    with machine_lock():
        hit = cache.get(signature)  # another process may have measured it while we waited
        if hit is not None:
            return hit, True
        result = measure_latency(model, example_shape, target, protocol)
        cache.put(signature, result)
    return result, False


def _remote_measure(model, example_shape, threads, protocol, extra):  # runs on the target node
    local = Target("cpu", threads=threads)
    if extra is None:
        return measure_latency(model, example_shape, local, protocol), False
    return measure_latency_cached(model, example_shape, local, protocol, extra)


def _measure_on_ray(model, example_shape, target, protocol, extra) -> tuple[LatencyResult, bool]:
    """Run the measurement as a Ray task on a node that owns `target.ray_resource` (its CPU is the target)."""
    try:
        import ray
    except ImportError:
        raise LatencyError("a ray target needs Ray: pip install 'ray[tune]'") from None
    if not ray.is_initialized():
        raise LatencyError(f"target {target} needs a running Ray connection: call ray.init(address=...) first")
    if ray.cluster_resources().get(target.ray_resource, 0) <= 0:
        raise LatencyError(f"no Ray node offers the resource {target.ray_resource!r}; start the target node with "
                           f"ray start --resources '{{\"{target.ray_resource}\": 1}}'")
    task = ray.remote(num_cpus=target.threads, resources={target.ray_resource: 1})(_remote_measure)
    return ray.get(task.remote(model, tuple(example_shape), target.threads, protocol, extra))


__all__ = [
    "BatchLatency",
    "LatencyCache",
    "LatencyError",
    "LatencyProtocol",
    "LatencyResult",
    "STRUCTURAL_ATTRIBUTES",
    "Target",
    "cpu_model",
    "machine_lock",
    "measure_latency",
    "measure_latency_cached",
    "structural_signature",
]
