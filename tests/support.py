"""Helpers the test modules share (fixtures live in conftest.py; no test module imports another).

`run_cli` runs the command line in this process (typer's CliRunner: no interpreter start, no torch
import per call); `run_cli_process` runs it as a real process, for the tests where a process matters
(signals, kill -9, several drivers at once, Ray workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from optuna.trial import TrialState
from recipes import tiny_recipe

from vitshrink.spaces import CompressionConfig, Recipe

GRACE = 2  # seconds a trial's heartbeat may be late before it counts as stale; the CLI default is 30
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379"


def require_service(name: str) -> None:
    """Skip when a server is absent on a user's machine; fail instead in CI (VITSHRINK_REQUIRE_SERVICES=1)."""
    if os.environ.get("VITSHRINK_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{name} is required in CI but not reachable")
    pytest.skip(f"{name} not reachable")


@dataclass
class CliResult:
    """What a CLI run gave, shaped like subprocess.CompletedProcess."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: dict[str, str] | None):
    if not env:
        yield
        return
    before = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def run_cli(args: list[str], cwd: Path | str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """`vitshrink ARGS` in this process, in `cwd`, with `env` added to the environment."""
    import torch
    from typer.testing import CliRunner

    from vitshrink.cli import STATE, app

    threads = torch.get_num_threads()
    with contextlib.chdir(cwd or os.getcwd()), _environment(env):
        result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    STATE.update(debug=False, quiet=False)
    torch.set_num_threads(threads)  # a search sets the target's threads; the next test gets the suite's
    return CliResult(result.exit_code, result.stdout, result.stderr)


def cli_env(tmp: Path) -> dict[str, str]:
    """The environment of a real CLI process: the test's own cache, wide lines, one thread."""
    return {**os.environ, "VITSHRINK_CACHE": str(tmp / "cache"), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}


def run_cli_process(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m vitshrink.cli ARGS` as a real process."""
    return subprocess.run([sys.executable, "-m", "vitshrink.cli", *map(str, args)], cwd=cwd,
                          env=env or cli_env(Path(cwd)), capture_output=True, text=True, timeout=timeout)


def build_ctx(teacher, data, *, seed: int = 0, train: bool = True):
    """A `BuildContext` for calling one transform directly (keywords after the two positionals, so no
    test passes them in another order); `train=False` only shapes the model (no fine-tuning)."""
    from vitshrink.compress import BuildContext

    return BuildContext(data=data, teacher=teacher, seed=seed, train=train)


def write_cifar10(root: Path, n: int = 20) -> None:
    """A local copy of CIFAR-10 in torchvision's format (cifar-10-batches-py), `n` random images per batch."""
    import pickle

    import numpy as np

    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), "labels": list(np.arange(n) % 10)}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def recipe_text(name: str, trials: int, device: str = "cpu:1", kd_epochs: int = 1, sampler: str = "random") -> str:
    """The resume / budget tests' recipe: pruning and Nystrom on the tiny teacher, random sampler."""
    return tiny_recipe(name, 'techniques = ["prune", "nystrom", "finetune"]\n[space.prune]\nheads = [0.0, 0.5]\n'
                       f'[space.nystrom]\nlandmarks = [2, 8]\n[space.finetune]\nepochs = {kd_epochs}',
                       trials=trials, sampler=sampler, epochs=2, device=device)


def storage_url(kind: str, tmp_path: Path) -> str:
    """A storage URL of `kind` (sqlite, journal, postgres, redis); skips (fails in CI) when the server is down."""
    from vitshrink.search import open_storage

    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/studies.db"
    if kind == "journal":
        return f"journal:///{tmp_path}/studies.log"
    url = POSTGRES if kind == "postgres" else REDIS
    try:
        open_storage(url)
    except Exception:  # noqa: BLE001 - any failure to connect means the service is absent
        require_service(kind)
    return url


def cli(*args: str):
    """`vitshrink ARGS` in this process; typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from vitshrink.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# --- the session's shared study (conftest.py: shared_study) ----------------------------------------------------

RECIPE = tiny_recipe("q", 'techniques = ["prune", "nystrom", "tome", "dynamic_int8", "ort_int8"]\n'
                     '[space.prune]\nheads = [0.0, 0.5]\n[space.nystrom]\nlandmarks = [2, 8]\n[space.tome]\nr = [0, 3]',
                     trials=4, sampler="random", epochs=2, device="cpu:2")

CONFIGS = {
    "teacher": CompressionConfig(),
    "prune_dyn": CompressionConfig({"prune": {"heads": 0.5, "mlp": 0.5}, "dynamic_int8": {}}),
    "nys_tokens": CompressionConfig({"nystrom": {"landmarks": 4}, "tome": {"r": 3}}),
    "ort_int8": CompressionConfig({"prune": {"mlp": 0.25}, "ort_int8": {}}),
}


@dataclass
class SharedStudy:
    storage: str
    name: str
    numbers: dict[str, int]  # config key -> trial number
    failed: int  # a FAIL trial's number
    root: Path


def build_shared_study(tmp_path_factory) -> SharedStudy:
    """Search the study once per session (idempotent: a second caller reuses it)."""
    from vitshrink.search import open_or_create_study, run_search

    root = tmp_path_factory.getbasetemp() / "shared-study"
    storage = f"sqlite:///{root}/studies.db"
    done = root / "done.json"
    if not done.exists():
        root.mkdir(exist_ok=True)
        with pytest.MonkeyPatch.context() as mp:  # module/session fixtures miss conftest's function-scoped cache
            mp.setenv("VITSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
            recipe = Recipe.from_toml_text(RECIPE)
            study = open_or_create_study(recipe, storage)
            for key, cfg in CONFIGS.items():  # enqueued before the search: these run in this order
                study.enqueue_trial(recipe.space.params_for(cfg, strict=False),
                                    user_attrs={"config_override": cfg.to_dict(),
                                                "role": "teacher" if key == "teacher" else "sampled"})
            summary = run_search(recipe, storage=storage)
            assert summary.completed == len(CONFIGS), [t.user_attrs.get("fail_reason") for t in summary.study.trials]
            trial = summary.study.ask()  # a failed trial, with its reason, as the driver records it
            trial.set_user_attr("fail_reason", "RuntimeError: out of landmarks")
            summary.study.tell(trial, state=TrialState.FAIL)
        numbers = {key: i for i, key in enumerate(CONFIGS)}
        done.write_text(json.dumps({"numbers": numbers, "failed": trial.number}))
    meta = json.loads(done.read_text())
    return SharedStudy(storage, "q", meta["numbers"], meta["failed"], root)
