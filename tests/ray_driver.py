"""A Ray search driver in its own process, for tests/test_distributed.py: a real two-node cluster on
loopback (head + a node owning the latency target resource), then `run_search(executor="ray")` (or
``--executor tune``: Ray Tune dispatches the trials).

Ray's core worker stays in the process that called `ray.init` (its threads and its fatal-signal
handler outlive `ray.shutdown`), so the test suite never runs a Ray driver in its own process.

    python tests/ray_driver.py RECIPE.json STORAGE [--resource NAME] [--grace SECONDS] [--executor tune]

Prints one JSON line: {"completed": N, "failed": N} on success; exit 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: stay on loopback


def _recorder(path: str):
    """A Tune callback, as MLflow's or W&B's would be: each finished trial's last result, one JSON line."""
    from ray import tune

    class Recorder(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            with open(path, "a") as f:
                f.write(json.dumps({"trial_id": trial.trial_id, "result": trial.last_result}, default=str) + "\n")

    return Recorder()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("recipe")
    p.add_argument("storage")
    p.add_argument("--resource", default="vitshrink_target")
    p.add_argument("--grace", type=int, default=30)
    p.add_argument("--artifacts", default=None)
    p.add_argument("--executor", default="ray")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--callback", default=None, help="a file a Tune callback appends each finished trial's result to")
    args = p.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from vitshrink.search import run_search
    from vitshrink.spaces import Recipe

    recipe = Recipe.from_dict(json.loads(Path(args.recipe).read_text()))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=1, resources={args.resource: 1})  # the target device: one measurement at a time
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    callbacks = [_recorder(args.callback)] if args.callback else None
    try:
        summary = run_search(recipe, storage=args.storage, executor=args.executor, address=cluster.address,
                             workers=args.workers,
                             artifact_dir=args.artifacts, evaluate_test=False, grace_period=args.grace,
                             tune_callbacks=callbacks)
        print(json.dumps({"completed": summary.completed, "failed": summary.failed}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
