"""What the Ray and Ray Tune executors share: connecting to (or starting) a cluster on loopback,
CPU shares, GPU and latency-target checks, and storage URLs every node can open."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ..objectives import Target
from ..spaces import Recipe
from ._storage import DEFAULT_STORAGE
from ._summary import SearchError

POLL_S = 1.0
MAX_TASK_ERRORS = 3  # tasks in a row that fail before running a trial: a broken setup, not bad luck
# Ray binds a local cluster to the machine's network address unless this is "0" when Ray is imported.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def absolute_storage_url(url: str | None) -> str:
    """The storage URL with file paths made absolute: Ray workers do not share the driver's cwd.

    Example:
        >>> absolute_storage_url("sqlite:////tmp/a.db")
        'sqlite:////tmp/a.db'
    """
    url = url or DEFAULT_STORAGE
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise SearchError("an in-memory SQLite storage cannot be shared with Ray workers; "
                              "use sqlite:///file.db, postgresql://..., journal:///file.log or redis://...")
        return "sqlite:///" + str(Path(path).expanduser().resolve())
    if "://" not in url or url.startswith("journal:"):
        if url.startswith("journal:") or url.endswith(".log"):
            path = url.removeprefix("journal://").removeprefix("journal:")
            return "journal://" + str(Path(path).expanduser().resolve())
    return url


def connect(address: str | None, num_cpus: int | None = None):
    """Connect to the Ray cluster at `address`, or start a local one on loopback; returns
    ``(ray, owned)`` where `owned` says this call connected (and the caller should shut down)."""
    if address is None and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray  # lazy: Ray reads LOOPBACK_ENV when imported, so the line above must run first
    except ImportError:
        raise SearchError("the ray executor needs Ray: pip install 'ray[default]'") from None
    if ray.is_initialized():
        return ray, False
    kwargs: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    # workers on this machine reuse the driver's teacher cache; elsewhere the folder is created
    env = {k: os.environ[k] for k in ("VITSHRINK_CACHE",) if k in os.environ}
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return ray, True


def check_gpus(ray, gpus_per_trial: float) -> None:
    """Refuse GPUs per trial on a cluster that has none (Ray would leave every task pending forever)."""
    have = ray.cluster_resources().get("GPU", 0)
    if gpus_per_trial > 0 and have <= 0:
        raise SearchError(f"--gpus-per-trial {gpus_per_trial:g} asks for GPUs but the Ray cluster has none; "
                          "start Ray nodes with GPUs (ray start --num-gpus N) or leave --gpus-per-trial out")
    if gpus_per_trial > have:
        raise SearchError(f"--gpus-per-trial {gpus_per_trial:g} is more than the Ray cluster's {have:g} GPU(s); "
                          f"ask for at most {have:g}")


def refuse_missing_gpus(address: str | None, gpus_per_trial: float) -> None:
    """`check_gpus` before the study exists or a teacher trains (a local cluster started here for the
    check is shut down again; the executor starts its own)."""
    ray, owned = connect(address)
    try:
        check_gpus(ray, gpus_per_trial)
    finally:
        if owned:
            ray.shutdown()


def cpu_share(ray, workers: int) -> int:
    """CPUs per trial task: the cluster's CPUs split over `workers`, at most one node's worth."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    biggest = max((n["Resources"].get("CPU", 0) for n in nodes), default=1)
    total = ray.cluster_resources().get("CPU", 1)
    return max(1, min(int(total // workers), int(biggest)))


def check_target(ray, recipe: Recipe) -> None:
    target = Target.parse(recipe.device)
    if target.kind == "ray" and ray.cluster_resources().get(target.ray_resource, 0) <= 0:
        raise SearchError(f"no Ray node offers the resource {target.ray_resource!r} of the latency target "
                          f"{target}; start the target node with ray start --resources "
                          f"'{{\"{target.ray_resource}\": 1}}'")


__all__ = ["LOOPBACK_ENV", "MAX_TASK_ERRORS", "POLL_S", "absolute_storage_url", "check_gpus", "check_target", "connect",
           "cpu_share", "refuse_missing_gpus"]
