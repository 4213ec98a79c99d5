"""Where and in what precision models train: the training device, apart from the latency target.

`[teacher.train] device` and `precision` in a recipe say where every model of a study trains (the
teacher, students and KD fine-tunes alike); the latency target (`[target] device`) is untouched:
trained models come back to the CPU as float32 weights before anything is measured.

- ``device = "auto"`` (default): the first GPU when torch sees one, else the CPU; or ``"cpu"``,
  ``"cuda"``, ``"cuda:N"``. A GPU asked for and absent is one ConfigError before anything trains.
- ``precision = "auto"`` (default): bf16 autocast on a GPU that supports it, float32 on a CPU, so a
  study on a CPU means what it meant before this setting existed; ``"bf16"`` asks for bf16 autocast
  on the CPU too (about 2x faster on CPUs with native bf16: AVX512-BF16 or AMX); ``"fp32"``: none.

Example:
    >>> where = resolve_training("cpu", "fp32")
    >>> where.device, where.precision, where.cache_tag()
    ('cpu', 'fp32', None)
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("auto", "fp32", "bf16")
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_training_keys(device: Any, precision: Any, where: str = "teacher.train") -> None:
    """Refuse a device or precision that no machine could honour (the spelling, not the hardware:
    a recipe is read on machines without the GPU it names, e.g. to export a trial)."""
    if device is not None and not (isinstance(device, str) and _DEVICE_RE.fullmatch(device)):
        raise ConfigError(f"{where}.device = {device!r} is not a training device; use auto, cpu, cuda or cuda:N")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"{where}.precision = {precision!r} is not a precision; use auto, fp32 or bf16")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where bf16 autocast pays off."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class TrainingDevice:
    """A resolved training setup: a concrete torch device ("cpu", "cuda:0") and "fp32" or "bf16"."""

    device: str
    precision: str

    @property
    def is_cpu_fp32(self) -> bool:
        return self.device == "cpu" and self.precision == "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device, or nothing (float32)."""
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def cache_tag(self) -> str | None:
        """What a cache key of trained weights must add: None on the CPU in float32 (so keys made before
        training devices existed stay valid), else the device type and precision, e.g. "cuda/bf16"."""
        return None if self.is_cpu_fp32 else f"{torch.device(self.device).type}/{self.precision}"

    def describe(self) -> dict[str, Any]:
        """JSON-able, for the study and model cards: device, precision and the hardware's name."""
        if self.device.startswith("cuda"):
            hardware = torch.cuda.get_device_name(torch.device(self.device))
        else:
            hardware = f"cpu ({torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()})"
        return {"device": self.device, "precision": self.precision, "hardware": hardware}


def resolve_training(device: str | None = "auto", precision: str | None = "auto") -> TrainingDevice:
    """The concrete device and precision of a recipe's settings on this machine.

    Raises:
        ConfigError: a GPU asked for and not present (or a GPU index beyond the GPUs torch sees),
            or a spelling that is no device or precision.
    """
    device, precision = device or "auto", precision or "auto"
    check_training_keys(device, precision)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda:0" if gpus else "cpu"
    elif device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if index >= gpus:
            have = f"torch sees {gpus} GPU(s)" if gpus else "torch sees no GPU on this machine"
            raise ConfigError(f"teacher.train.device = {device!r} but {have}; set device = \"auto\" or \"cpu\" "
                              "to train on the CPU")
        device = f"cuda:{index}"
    if precision == "auto":
        on_gpu = device.startswith("cuda")
        precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    elif precision == "bf16" and device == "cpu" and not cpu_has_native_bf16():
        log.warning("precision = bf16 on a CPU without native bf16 (AVX512-BF16 / AMX): emulated, likely slower "
                    "than fp32")
    return TrainingDevice(device, precision)


__all__ = ["DEVICES", "PRECISIONS", "TrainingDevice", "check_training_keys", "cpu_has_native_bf16",
           "resolve_training"]
