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
    try:  # lazy: `import vitshrink` loads this module, and Ray must load after _ray.connect sets its loopback switch
        import ray
    except ImportError:
        raise LatencyError("a ray target needs Ray: pip install 'ray[tune]'") from None
    if not ray.is_initialized():
        raise LatencyError(f"target {target} needs a running Ray connection: call ray.init(address=...) first")
    if ray.cluster_resources().get(target.ray_resource, 0) <= 0:
        raise LatencyError(f"no Ray node offers the resource {target.ray_resource!r}; start the target node with "
                           f"ray start --resources '{{\"{target.ray_resource}\": 1}}'")
    # A Ray Tune trial runs in a placement group, which captures its child tasks: "DEFAULT" scheduling
    # takes the measurement out of it (the target's resource is not in the group). The group's CPUs are
    # reserved, and it may sit on the target node itself: asking for CPUs there would wait for the very
    # trial that waits for the measurement. So inside a group the measurement asks for the target's
    # resource only (capacity 1: measurements still never overlap); start the target node with
    # --num-cpus 0 so that no Tune trial trains beside a measurement.
    in_group = ray.get_runtime_context().get_placement_group_id() is not None
    task = ray.remote(num_cpus=0 if in_group else target.threads, resources={target.ray_resource: 1},
                      scheduling_strategy="DEFAULT")(fn)
    return ray.get(task.remote(*args))


__all__ = ["run_on_target"]
