"""Where latency is measured: the local CPU, a local CUDA device, or a Ray node owning a resource."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

TARGET_KINDS = ("cpu", "cuda", "ray")
DEFAULT_RAY_RESOURCE = "vitshrink_target"


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
