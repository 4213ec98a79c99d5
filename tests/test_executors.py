"""Executors: one protocol, found by name; the driver above them, and neither executor importing the
driver or the other (the modules below them hold the budget, the summary and the error types)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vitshrink
from vitshrink.search import EXECUTORS, Executor, make_executor
from vitshrink.spaces import ConfigError

SEARCH = Path(vitshrink.__file__).parent / "search"


def _search_imports(module: str) -> set[str]:
    """The `vitshrink.search` modules `module` imports, anywhere in it (inside functions too)."""
    tree = ast.parse((SEARCH / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vitshrink.search."):
            found.add(node.module.removeprefix("vitshrink.search."))
    return found


@pytest.mark.parametrize("name", sorted(EXECUTORS))
def test_every_registered_executor_implements_the_protocol(name) -> None:
    executor = make_executor(name, address=None, workers=2, gpus_per_trial=0.0)
    assert executor.name == name  # "ray" is Tune's executor under the name it always had
    assert isinstance(executor, Executor)
    executor.check()  # nothing asked that it cannot do


EXECUTOR_MODULES = {"_driver", "local_executor", "tune_executor"}


def test_ray_and_tune_are_one_dispatcher() -> None:
    assert type(make_executor("ray")).__mro__[1] is type(make_executor("tune"))
    assert not (SEARCH / "ray_executor.py").exists()


@pytest.mark.parametrize("module", ["local_executor", "tune_executor"])
def test_executors_import_neither_the_driver_nor_each_other(module) -> None:
    imported = _search_imports(module)
    assert not imported & EXECUTOR_MODULES, imported


def test_the_types_executors_share_sit_below_them() -> None:
    for low in ("_summary", "_executor", "_budget", "_warm", "_optuna", "_ray", "_worker"):
        assert not _search_imports(low) & EXECUTOR_MODULES, low


def test_an_unknown_executor_is_refused_with_the_names_to_use() -> None:
    with pytest.raises(ConfigError, match="unknown executor 'dask'; use local, ray or tune"):
        make_executor("dask")


def test_the_local_executor_refuses_gpus_per_trial() -> None:
    with pytest.raises(ConfigError, match="applies to Ray Tune trials"):
        make_executor("local", gpus_per_trial=1).check()
    with pytest.raises(ConfigError, match="must be >= 0"):
        make_executor("local", gpus_per_trial=-1).check()
