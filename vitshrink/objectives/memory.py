"""Peak memory of one forward pass: extra resident memory on CPU, extra allocated memory on CUDA.

Limitations, said plainly: on CPU this is the growth of the whole process's peak resident set
(VmHWM) during the forward, so another thread allocating at the same time is counted too, and
memory the allocator keeps from earlier work is reused without being counted. To make it repeatable
one untimed forward runs first (one-time allocations such as packed weights and runtime arenas are
excluded) and freed heap memory is handed back to the OS (glibc ``malloc_trim``) before measuring.
Where the peak cannot be reset (no /proc/self/clear_refs), the process-lifetime peak from
``getrusage`` is used, which only shows growth past every earlier peak: a lower bound.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import resource
import sys
from pathlib import Path

import torch
from torch import nn

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    with contextlib.suppress(OSError):
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1))
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@torch.no_grad()
def peak_memory_bytes(model: nn.Module, example: torch.Tensor) -> int:
    """Extra memory at the peak of `model(example)` beyond what was held before it (see the module doc).

    On CUDA (`example` on a CUDA device) this is ``max_memory_allocated`` minus the allocation before.

    Example:
        >>> peak_memory_bytes(nn.Linear(4, 2), torch.zeros(1, 4)) >= 0
        True
    """
    was_training = model.training
    model.eval()
    try:
        model(example)  # one-time allocations are not the model's working memory
        if example.is_cuda:
            torch.cuda.synchronize(example.device)
            before = torch.cuda.memory_allocated(example.device)
            torch.cuda.reset_peak_memory_stats(example.device)
            model(example)
            torch.cuda.synchronize(example.device)
            return max(0, torch.cuda.max_memory_allocated(example.device) - before)
        _trim_heap()
        if _reset_peak_rss() and (before := _status_kib("VmRSS")) is not None:
            model(example)
            peak = _status_kib("VmHWM") or before
            return max(0, peak - before) * 1024
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model(example)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * unit
    finally:
        model.train(was_training)


__all__ = ["peak_memory_bytes"]
