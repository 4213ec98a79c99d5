"""Timing on a Ray target node: a ``ray:RESOURCE`` target runs the measurement as a Ray task on the
node that owns RESOURCE (capacity 1 there, so measurements never overlap), with the target's threads.

Example (not run as a doctest: it needs a Ray cluster with a target node)::

    run_on_target(measure, Target.parse("ray:vitshrink_target:2"), model, (3, 16, 16))
"""

from __future__ import annotations

from typing import Any, Callable

from ._target import LatencyError, Target


def run_on_target(fn: Callable[..., Any], target: Target, *args: Any) -> Any:
    """``fn(*args)`` run as a Ray task on a node that owns `target.ray_resource` (its CPU is the target)."""
    try:
        import ray
    except ImportError:
        raise LatencyError("a ray target needs Ray: pip install 'ray[tune]'") from None
    if not ray.is_initialized():
        raise LatencyError(f"target {target} needs a running Ray connection: call ray.init(address=...) first")
    if ray.cluster_resources().get(target.ray_resource, 0) <= 0:
        raise LatencyError(f"no Ray node offers the resource {target.ray_resource!r}; start the target node with "
                           f"ray start --resources '{{\"{target.ray_resource}\": 1}}'")
    task = ray.remote(num_cpus=target.threads, resources={target.ray_resource: 1})(fn)
    return ray.get(task.remote(*args))


__all__ = ["run_on_target"]
