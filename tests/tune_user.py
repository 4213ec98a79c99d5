"""A Tune user's own script, as README shows it (for tests/test_tune.py): vitshrink's trainable and
searcher inside a plain `tune.Tuner`, then the study's Pareto front.

    python tests/tune_user.py RECIPE.json STORAGE TUNE_FOLDER

Prints one JSON line: the ResultGrid's size and states, and the study's counts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray is imported: stay on loopback


def main() -> int:
    recipe_path, storage, tune_folder = sys.argv[1:4]

    import ray
    from ray import tune

    from vitshrink.spaces import Recipe
    from vitshrink.tune import prepare

    recipe = Recipe.from_dict(json.loads(Path(recipe_path).read_text()))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    # --- as in README -------------------------------------------------------------------------------------
    search = prepare(recipe, storage=storage)
    tuner = tune.Tuner(search.trainable(cpus=1),
                       tune_config=tune.TuneConfig(search_alg=search.searcher(), num_samples=-1,
                                                   max_concurrent_trials=2),
                       run_config=tune.RunConfig(name=recipe.name, storage_path=tune_folder, verbose=0))
    grid = tuner.fit()
    summary = search.finish(evaluate_test=False)
    # -------------------------------------------------------------------------------------------------------
    try:  # Tune's own resume is refused with one sentence: the study resumes from its storage instead
        tune.Tuner.restore(str(Path(tune_folder) / recipe.name), trainable=search.trainable(cpus=1)).fit()
        restore = "restored"
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        restore = str(exc)
    ray.shutdown()
    print(json.dumps({"results": len(grid), "states": sorted(r.metrics.get("state", "?") for r in grid),
                      "errors": len(grid.errors), "completed": summary.completed,
                      "pareto": [t.number for t in search.pareto()], "restore": restore,
                      "objectives": sorted(k for r in grid for k in recipe.objectives if k in r.metrics)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
