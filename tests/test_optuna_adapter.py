"""The contract of `vitshrink.search._optuna`, the one module allowed to use Optuna's private API: each
of its functions against every storage vitshrink opens (SQLite file, PostgreSQL, journal file,
journal Redis), so an Optuna upgrade that changes one of them fails here; and a scan of the package
that fails when an Optuna private name is used anywhere else.

PostgreSQL and Redis on loopback are skipped when absent, and fail instead with
VITSHRINK_REQUIRE_SERVICES=1 (CI)."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import TrialState

import vitshrink
from support import storage_url
from vitshrink.search import _optuna as adapter
from vitshrink.search import open_storage

KINDS = ["sqlite", "postgres", "journal", "redis"]
RDB = ("sqlite", "postgres")  # the storages with Optuna's own heartbeat
GRACE = 1  # seconds: the shortest grace period Optuna's heartbeat takes

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture(params=KINDS)
def kind_and_study(request, tmp_path):
    """(storage kind, URL, a new study opened as the driver opens it: heartbeat every 1 s, grace 1 s);
    the study is deleted afterwards, so the shared PostgreSQL and Redis keep nothing."""
    kind = request.param
    url = storage_url(kind, tmp_path)
    storage = open_storage(url, heartbeat_interval=1, grace_period=GRACE)
    name = f"adapter-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"])
    try:
        yield kind, url, study
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url, heartbeat_interval=None))


def _elsewhere(study: optuna.Study, url: str) -> optuna.Study:
    """The same study as another process sees it: through a storage of its own, opened by URL."""
    return optuna.load_study(study_name=study.study_name, storage=open_storage(url, heartbeat_interval=None))


def test_storage_of_and_ids_address_the_study_and_its_trials(kind_and_study) -> None:
    _, _, study = kind_and_study
    storage = adapter.storage_of(study)
    assert isinstance(storage, BaseStorage)
    assert storage.get_study_id_from_name(study.study_name) == adapter.study_id(study)
    live = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    expected = storage.get_trial_id_from_study_id_trial_number(adapter.study_id(study), live.number)
    assert adapter.trial_id(live) == adapter.trial_id(frozen) == expected


def test_trial_attributes_are_written_and_read_through_the_storage(kind_and_study) -> None:
    _, url, study = kind_and_study
    live = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    adapter.set_trial_user_attr(study, frozen, "fail_reason", "a reason")
    adapter.set_trial_system_attr(study, live, "vitshrink.heartbeat", 12.5)
    fresh = adapter.get_trial(study, live)
    assert fresh.number == live.number and fresh.state == TrialState.RUNNING
    assert fresh.user_attrs["fail_reason"] == "a reason"
    assert fresh.system_attrs["vitshrink.heartbeat"] == 12.5
    seen = _elsewhere(study, url).trials[live.number]  # written through, not only into this process's cache
    assert seen.user_attrs["fail_reason"] == "a reason" and seen.system_attrs["vitshrink.heartbeat"] == 12.5


def test_set_trial_state_fails_a_running_trial_once(kind_and_study) -> None:
    _, url, study = kind_and_study
    live = study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    assert adapter.set_trial_state(study, frozen, TrialState.FAIL) is True
    assert adapter.get_trial(study, live).state == TrialState.FAIL
    other = _elsewhere(study, url)
    with pytest.raises(UpdateFinishedTrialError):  # another process finished it first: callers rely on this
        adapter.set_trial_state(other, other.trials[live.number], TrialState.FAIL)


def test_heartbeat_helpers_see_optuna_heartbeat_on_rdb_and_none_on_journals(kind_and_study) -> None:
    kind, _, study = kind_and_study
    storage = adapter.storage_of(study)
    live = study.ask()
    if kind not in RDB:
        assert adapter.heartbeat_enabled(storage) is False
        assert adapter.heartbeat_grace_period(storage) is None
        assert adapter.stale_trial_ids(study) == set()
        return
    assert adapter.heartbeat_enabled(storage) is True
    assert adapter.heartbeat_grace_period(storage) == GRACE
    storage.record_heartbeat(adapter.trial_id(live))  # public BaseHeartbeat API, as Study.optimize beats
    assert adapter.trial_id(live) not in adapter.stale_trial_ids(study)
    time.sleep(GRACE + 1.5)
    assert adapter.stale_trial_ids(study) == {adapter.trial_id(live)}


def test_heartbeat_is_off_on_an_rdb_storage_opened_without_one(tmp_path) -> None:
    storage = open_storage(storage_url("sqlite", tmp_path), heartbeat_interval=None)
    study = optuna.create_study(storage=storage)
    assert adapter.heartbeat_enabled(adapter.storage_of(study)) is False
    assert adapter.stale_trial_ids(study) == set()


def test_compute_hypervolume_of_known_point_sets() -> None:
    import numpy as np

    assert adapter.compute_hypervolume(np.array([[0.5, 0.5]]), np.array([1.0, 1.0])) == pytest.approx(0.25)
    points = np.array([[0.5, 0.5, 0.5], [0.25, 0.75, 0.5]])
    # two boxes of 0.125 and 0.09375 overlapping in 0.5 x 0.25 x 0.5
    assert adapter.compute_hypervolume(points, np.array([1.0, 1.0, 1.0])) == pytest.approx(0.15625)


# --- Optuna's private API stays inside the adapter ------------------------------------------------

def _optuna_private_names() -> set[str]:
    """Underscore names Optuna's own classes define (methods, properties, attributes their instances set),
    and its private submodules: a use of one of these is a use of Optuna's private API."""
    names: set[str] = set()
    for info in pkgutil.walk_packages(optuna.__path__, "optuna."):
        names.update(part for part in info.name.split(".") if _private(part))
    classes = {cls for mod in (optuna, optuna.storages, optuna.trial, optuna.study, optuna.samplers)
               for _, cls in inspect.getmembers(mod, inspect.isclass) if cls.__module__.startswith("optuna")}
    for cls in classes:
        for klass in cls.__mro__:
            if klass.__module__.startswith("optuna"):
                names.update(n for n in vars(klass) if _private(n))
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend, JournalStorage

    study = optuna.create_study(directions=["minimize", "minimize"])
    trial = study.ask()
    rdb_study = optuna.create_study(storage=optuna.storages.RDBStorage("sqlite:///:memory:"))
    with tempfile.TemporaryDirectory() as tmp:
        journal = JournalStorage(JournalFileBackend(f"{tmp}/j.log"))
        for obj in (study, trial, study.trials[0], study.sampler, adapter.storage_of(rdb_study),
                    adapter.storage_of(rdb_study)._backend, journal, journal._backend,
                    JournalRedisBackend("redis://127.0.0.1:1")):  # constructed without connecting
            names.update(n for n in vars(obj) if _private(n))
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _uses(tree: ast.AST, private: set[str]) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] == "optuna" and any(_private(p) for p in module.split(".")):
                    found.append((node.lineno, f"import {module}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in (
                "getattr", "hasattr", "setattr"):
            found += [(node.lineno, f"{node.func.id}(..., {a.value!r})") for a in node.args
                      if isinstance(a, ast.Constant) and a.value in private]
    return found


def test_optuna_private_api_is_used_only_in_the_adapter() -> None:
    private = _optuna_private_names()
    assert {"_storage", "_trial_id", "_study_id", "_heartbeat", "_get_stale_trial_ids"} <= private  # the scan sees
    package = Path(vitshrink.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path == package / "search" / "_optuna.py":
            continue
        for line, what in _uses(ast.parse(path.read_text(), str(path)), private):
            offenders.append(f"{path.relative_to(package.parent)}:{line}: {what}")
    assert not offenders, ("Optuna's private API outside vitshrink/search/_optuna.py (add a named function "
                           "there, with why, and call it):\n" + "\n".join(offenders))


def test_the_scan_finds_what_it_guards_against() -> None:
    private = _optuna_private_names()
    code = ("import optuna.storages._heartbeat\nfrom optuna._hypervolume import compute_hypervolume\n"
            "s = study._storage\nt = trial._trial_id\nb = getattr(storage, '_backend', storage)\nself._storage = 1\n")
    assert [line for line, _ in _uses(ast.parse(code), private)] == [1, 2, 3, 4, 5]
