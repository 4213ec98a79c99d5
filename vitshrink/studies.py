"""Query stored studies: list them, their Pareto front and trials as pandas tables, rebuild and export models.

A study is read from Optuna's storage alone (plus the artifact folder recorded on it), so anything
`vitshrink search` wrote, on this machine or a cluster, opens here; and Optuna's own API
(`optuna.load_study`, `study.best_trials`, `trials_dataframe()`) reads the same study.

Example (not run as a doctest: it needs a stored study)::

    import vitshrink
    study = vitshrink.open_study("quickstart", storage="sqlite:///vitshrink.db")
    study.pareto()[["trial", "accuracy", "test_accuracy", "latency_ms", "size_bytes"]]
    study.hypervolume()  # -> 0.41
    model = study.load_model(3)
    study.export(3, "onnx", "model.onnx")
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import optuna
import pandas as pd
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from .compress import build
from .data import DataBundle
from .exporting import export_trial
from .models import TeacherSpec, create_model
from .objectives import get_objective
from .search import DEFAULT_STORAGE, open_storage, pareto_trials
from .search._artifacts import ArtifactError, LoadedTrial, artifact_dir_of, read_artifact, rebuild_trial
from .search._budget import is_not_run
from .search._pareto import HV_REFERENCE, front_hypervolume, hypervolume, is_feasible, normalized_values
from .search._rungs import rungs_of
from .search._schema import (ACCURACY_DROP_ATTR, ARTIFACT_ATTR, CONFIG_ATTR, FAIL_REASON_ATTR, FINISHED_AT_ATTR,
                             LABEL_ATTR, LATENCY_ATTR, LATENCY_IQR_ATTR, MACS_ATTR, PARAMS_ATTR, PRUNED_REASON_ATTR,
                             RECIPE_ATTR, RECORDS_ATTR, SCREENED_ATTR, SECONDS_ATTR, STOPPED_AT_ATTR, STOPPED_ATTR,
                             TARGET_ATTR, TEACHER_ACCURACY_ATTR, TEACHER_ATTR, TEST_ACCURACY_PREFIX, WORKER_ATTR,
                             key_of_test_accuracy, metrics_of, objective_names, reason_of, role_of)
from .search._storage import artifact_store, mask_url, study_names
from .search._trial import LOGITS_KEY, load_data
from .spaces import CompressionConfig, Recipe, SearchSpace
from .techniques import keys as K, without_stage

log = logging.getLogger(__name__)

TEST_ACCURACY_ATTR = TEST_ACCURACY_PREFIX  # the name this module exported before search/_schema.py

# The columns of `StudyHandle.pareto()` and `.trials()`, then one `config.<key>` per search key (`config_columns`).
# A study's objectives not among them (peak_memory_bytes, throughput) follow size_bytes.
COLUMNS = ["trial", "state", "accuracy", "test_accuracy", "latency_ms", "latency_iqr_ms", "latency_cv",
           "size_bytes", "params", "macs", "accuracy_drop", "feasible", "role", "label", "fail_reason"]
# the metrics every trial measures, objectives or not: their columns read the trial's value by name
METRICS = ("accuracy", "latency_ms", "size_bytes", "macs")
# the hypervolume's space: each objective's normalised column in `StudyHandle.normalized_front`
NORMALIZED_COLUMNS = {"accuracy": "error", "latency_ms": "latency_rel", "size_bytes": "size_rel",
                      "peak_memory_bytes": "memory_rel", "throughput": "time_per_image_rel", "macs": "macs_rel"}
def config_columns() -> list[str]:
    """A trial row's config columns: ``config.<key>`` for every search key (``config.runtime``,
    ``config.prune.heads``), the value its config gives it, or its default where it is not chosen."""
    return [f"config.{k}" for k in K.search_keys()]


CONFIG_COLUMNS = config_columns()  # the built-in techniques' (a technique registered later adds its own)


class StudyNotFound(LookupError):
    """No study of that name in the storage."""


class TrialNotAvailable(LookupError):
    """A trial number that does not exist or did not complete."""


def list_studies(storage: str | None = None) -> pd.DataFrame:
    """One row per study: name, trials done / failed / running, best values, last update.

    Example (not run as a doctest: it needs a stored study)::

        list_studies("sqlite:///vitshrink.db")[["study", "complete"]]
    """
    st = open_storage(storage)
    rows = []
    for s in st.get_all_studies():
        trials = st.get_all_trials(st.get_study_id_from_name(s.study_name), deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        names = objective_names(optuna.load_study(study_name=s.study_name, storage=st))
        best = {m: [v for t in done if (v := metrics_of(t, names, [m])[m]) is not None] for m in METRICS}
        last = max((t.datetime_complete or t.datetime_start for t in trials if t.datetime_start), default=None)
        row: dict[str, Any] = {
            "study": s.study_name,
            "complete": len(done),
            "failed": sum(t.state == TrialState.FAIL and not is_not_run(t) for t in trials),  # not slots given back
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),  # impossible samples, never built
            "running": sum(t.state == TrialState.RUNNING for t in trials),
            "screened": sum(t.state == TrialState.PRUNED and SCREENED_ATTR in t.user_attrs for t in trials),
            "stopped": sum(t.state == TrialState.PRUNED and STOPPED_ATTR in t.user_attrs for t in trials),
            "best_accuracy": max(best["accuracy"], default=None),
            "best_latency_ms": min(best["latency_ms"], default=None),
            "best_size_bytes": min(best["size_bytes"], default=None),
            "last_update": last,
        }
        rows.append(row)
    return pd.DataFrame(rows, columns=["study", "complete", "failed", "pruned", "screened", "stopped", "running",
                                       "best_accuracy", "best_latency_ms",
                                       "best_size_bytes", "last_update"])


def _latency_spread(t: FrozenTrial) -> dict[str, Any]:
    first = ((t.user_attrs.get(LATENCY_ATTR) or {}).get("batches") or [{}])[0]
    return {"latency_iqr_ms": t.user_attrs.get(LATENCY_IQR_ATTR, first.get("iqr_ms")), "latency_cv": first.get("cv")}


def _columns(names: tuple[str, ...]) -> list[str]:
    """`COLUMNS` with the study's objectives that are not among them after size_bytes."""
    at = COLUMNS.index("size_bytes") + 1
    return COLUMNS[:at] + [n for n in names if n not in COLUMNS] + COLUMNS[at:]


def _trial_row(t: FrozenTrial, study_attrs: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    # a trial without values (failed, pruned) shows none, though screening measured its structure
    measured = metrics_of(t, names, dict.fromkeys((*METRICS, *names))) if t.values else {}
    size = measured.get("size_bytes")
    row: dict[str, Any] = {
        "trial": t.number,
        "state": t.state.name,
        "accuracy": measured.get("accuracy"),
        "test_accuracy": study_attrs.get(key_of_test_accuracy(t.number)),
        "latency_ms": measured.get("latency_ms"),
        **_latency_spread(t),
        "size_bytes": int(size) if size is not None else None,
        **{n: measured.get(n) for n in names if n not in COLUMNS},
        "params": t.user_attrs.get(PARAMS_ATTR),
        "macs": measured.get("macs", t.user_attrs.get(MACS_ATTR)),
        "accuracy_drop": t.user_attrs.get(ACCURACY_DROP_ATTR),
        "feasible": is_feasible(t) if t.state == TrialState.COMPLETE else None,
        "role": role_of(t),
        "label": t.user_attrs.get(LABEL_ATTR),
        # why the trial has no objectives: its failure, or why its sample was impossible (PRUNED)
        "fail_reason": (t.user_attrs.get(FAIL_REASON_ATTR) if t.state == TrialState.FAIL
                        else t.user_attrs.get(PRUNED_REASON_ATTR) if t.state == TrialState.PRUNED else None),
    }
    stored = t.user_attrs.get(CONFIG_ATTR)
    if stored:
        values = {k: key.default for k, key in K.search_keys().items()}
        values.update(SearchSpace.values_in(CompressionConfig.from_dict(stored)))
        for k, v in values.items():
            row[f"config.{k}"] = tuple(v) if isinstance(v, list) else v
    return row


def _busy_span(t: FrozenTrial) -> tuple[float, float] | None:
    """(start, end) epoch seconds a finished trial ran, or None when unknown (see hypervolume_history)."""
    if t.datetime_start is None:
        return None
    end = t.datetime_complete if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    if t.state == TrialState.FAIL and t.user_attrs.get(FINISHED_AT_ATTR) is not None:
        return t.datetime_start.timestamp(), float(t.user_attrs[FINISHED_AT_ATTR])
    return (t.datetime_start.timestamp(), end.timestamp()) if end is not None else None


def _busy_seconds(spans: Iterable[tuple[float, float]], until: float) -> float:
    """Length of the union of `spans`, clipped at `until`."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted((s, min(e, until)) for s, e in spans if s < until):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


@dataclass
class StudyHandle:
    """A vitshrink study in an Optuna storage: tables, front quality, models and exports.

    Example (not run as a doctest: it needs a stored study)::

        h = open_study("quickstart")
        h.trials().query("state == 'FAIL'")[["trial", "fail_reason"]]
    """

    study: optuna.Study
    storage_url: str

    @property
    def name(self) -> str:
        return self.study.study_name

    @cached_property
    def objectives(self) -> tuple[str, ...]:
        """The study's objectives, in the order of its trials' values (its Optuna metric names)."""
        return objective_names(self.study)

    def values_of(self, t: FrozenTrial, names: Iterable[str] | None = None) -> dict[str, float | None]:
        """Trial `t`'s metrics by name (default: the study's objectives), objectives or not."""
        return metrics_of(t, self.objectives, self.objectives if names is None else names)

    @cached_property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.study.user_attrs[RECIPE_ATTR], "stored recipe", stored=True)

    @property
    def teacher_accuracy(self) -> float | None:
        """The teacher's val accuracy, as measured when the search started."""
        return self.study.user_attrs.get(TEACHER_ACCURACY_ATTR)

    @property
    def target(self) -> dict[str, Any]:
        """Where latency was measured: target spec, host, CPU model, torch version."""
        return dict(self.study.user_attrs.get(TARGET_ATTR) or {})

    def test_accuracy(self, number: int) -> float | None:
        """Test-split accuracy of a Pareto trial (evaluated once, after the search); None otherwise."""
        return self.study.user_attrs.get(key_of_test_accuracy(number))

    def trial(self, number: int, complete: bool = True) -> FrozenTrial:
        """The stored trial `number`; raises TrialNotAvailable if absent or (with `complete`) not COMPLETE."""
        trials = self.study.get_trials(deepcopy=False)
        match = next((t for t in trials if t.number == number), None)
        if match is None:
            raise TrialNotAvailable(f"study {self.name!r} has no trial {number} (trials 0..{len(trials) - 1}); "
                                    f"see `vitshrink pareto {self.name}`")
        if complete and match.state != TrialState.COMPLETE:
            why = reason_of(match)
            raise TrialNotAvailable(f"trial {number} of {self.name!r} is {match.state.name}, not COMPLETE"
                                    + (f" ({why})" if why else "") + "; pick a completed trial from `vitshrink pareto`")
        return match

    def teacher_trial(self) -> FrozenTrial | None:
        """The completed trial of the uncompressed teacher (role "teacher"), the baseline of every study."""
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return next((t for t in done if role_of(t) == "teacher"), None)

    def pareto(self, include_infeasible: bool = False) -> pd.DataFrame:
        """The Pareto-optimal trials, one row each (columns `COLUMNS` then `CONFIG_COLUMNS`).

        Objectives (val accuracy, latency median, size), the latency spread (IQR, coefficient of
        variation), test accuracy (measured once on the front after the search), params, MACs,
        accuracy drop from the teacher, role (teacher / reference / sampled), a short label and
        the flattened config. Infeasible trials (constraints broken) are left out unless asked.
        """
        return self._frame(pareto_trials(self.study, include_infeasible=include_infeasible))

    def trials(self, states: Iterable[str] | None = None) -> pd.DataFrame:
        """Every trial (or those in `states`, e.g. ["COMPLETE"]) with its state, objectives and config;
        failed trials carry their `fail_reason`."""
        wanted = None if states is None else tuple(TrialState[s.upper()] for s in states)
        return self._frame(self.study.get_trials(deepcopy=False, states=wanted))

    def _frame(self, trials: list[FrozenTrial]) -> pd.DataFrame:
        attrs = self.study.user_attrs  # one storage read for every row
        df = pd.DataFrame([_trial_row(t, attrs, self.objectives) for t in trials])
        return df.reindex(columns=_columns(self.objectives) + config_columns())

    def describe(self, number: int) -> dict[str, Any]:
        """Everything stored about one trial, JSON-able: state, objectives, latency spread, test
        accuracy, config, every build stage's record, timings, fail reason.

        Example (not run as a doctest: it needs a stored study)::

            open_study("quickstart").describe(3)["records"][0]["stage"]  # -> 'prune'
        """
        t = self.trial(number, complete=False)
        ua = t.user_attrs
        values = dict(zip(self.objectives, t.values or []))
        return {
            "study": self.name, "trial": t.number, "state": t.state.name, "role": role_of(t),
            "label": ua.get(LABEL_ATTR), "objectives": values, "test_accuracy": self.test_accuracy(number),
            # every metric measured (the objectives and, e.g., latency when it is not one)
            "metrics": {k: v for k, v in self.values_of(t, dict.fromkeys((*METRICS, *self.objectives))).items()
                        if v is not None} if t.values else {},
            "teacher_accuracy": self.teacher_accuracy, "accuracy_drop": ua.get(ACCURACY_DROP_ATTR),
            "latency": ua.get(LATENCY_ATTR), **_latency_spread(t), "params": ua.get(PARAMS_ATTR),
            "macs": ua.get(MACS_ATTR), "feasible": is_feasible(t) if t.state == TrialState.COMPLETE else None,
            "constraints": dict(t.constraints) or None,
            "config": ua.get(CONFIG_ATTR), "records": ua.get(RECORDS_ATTR) or [], "seconds": ua.get(SECONDS_ATTR),
            "fail_reason": ua.get(FAIL_REASON_ATTR), "pruned_reason": ua.get(PRUNED_REASON_ATTR),
            "worker": ua.get(WORKER_ATTR), "screened": ua.get(SCREENED_ATTR), "stopped": ua.get(STOPPED_ATTR),
            "stopped_at": ua.get(STOPPED_AT_ATTR), "rungs": rungs_of(t),
            "started": t.datetime_start.isoformat() if t.datetime_start else None,
            "completed": t.datetime_complete.isoformat() if t.datetime_complete else None,
        }

    def _teacher(self) -> FrozenTrial:
        t = self.teacher_trial()
        if t is None:
            raise TrialNotAvailable(f"study {self.name!r} has no completed teacher trial to normalise by; "
                                    "resume the search so the teacher (trial 0) completes")
        return t

    def teacher_costs(self) -> tuple[float, float]:
        """(latency ms, size bytes) of the teacher trial (objectives of the study or not)."""
        costs = self.values_of(self._teacher(), ["latency_ms", "size_bytes"])
        return float(costs["latency_ms"]), float(costs["size_bytes"])

    def teacher_values(self) -> tuple[float, ...]:
        """The teacher trial's objective values, in the study's order: the units `hypervolume` normalises by."""
        return tuple(float(v) for v in self._teacher().values)

    def hypervolume(self, reference_point: tuple[float, ...] | None = None) -> float:
        """Hypervolume of the feasible Pareto front in teacher-normalised objectives.

        Each objective becomes a value to minimise: 1 - accuracy, a cost (latency, size, memory,
        MACs) over the teacher's, the teacher's throughput over the trial's. The default reference
        point (`default_reference`; `HV_REFERENCE` = (1.0, 1.1, 1.1) for the default objectives) is
        zero accuracy and 10 % costlier than the teacher. Larger is better; at most 1.21 for the
        default objectives.

        Example (not run as a doctest: it needs a stored study)::

            open_study("quickstart").hypervolume()  # -> 0.412
        """
        return front_hypervolume(pareto_trials(self.study), self.teacher_values(), self.objectives, reference_point)

    def hypervolume_history(self, reference_point: tuple[float, ...] | None = None) -> pd.DataFrame:
        """How the search improved: one row per finished trial, in the order they finished, with the
        search's busy seconds so far and the hypervolume (as `hypervolume`) of the feasible trials
        completed by then.

        Busy seconds are the union of the trials' running intervals, read from the storage: time
        between resumes (nothing running) is not counted, time with several trials running at once
        counts once, so a study resumed three times or run by many workers is put on one wall clock.
        A trial's interval ends when it completed or was pruned, or, for a failed trial, when it
        recorded its failure ("finished_at"); a worker killed mid-trial leaves no end and adds nothing.

        Columns: trial, state, seconds, complete (completed trials so far), hypervolume.

        Example (not run as a doctest: it needs a stored study)::

            open_study("quickstart").hypervolume_history().tail(1)
        """
        teacher = self.teacher_values()
        spans = {t.number: span for t in self.study.get_trials(deepcopy=False) if (span := _busy_span(t))}
        trials = sorted((t for t in self.study.get_trials(deepcopy=False) if t.number in spans),
                        key=lambda t: spans[t.number][1])
        rows, done, complete = [], [], 0
        for t in trials:
            end = spans[t.number][1]
            complete += t.state == TrialState.COMPLETE
            if t.state == TrialState.COMPLETE and is_feasible(t):
                done.append(t)
            rows.append({"trial": t.number, "state": t.state.name, "seconds": _busy_seconds(spans.values(), end),
                         "complete": complete,
                         "hypervolume": front_hypervolume(done, teacher, self.objectives, reference_point)})
        return pd.DataFrame(rows, columns=["trial", "state", "seconds", "complete", "hypervolume"])

    def normalized_front(self) -> pd.DataFrame:
        """The front in the hypervolume's space: trial, then each objective as `NORMALIZED_COLUMNS` names
        it (error = 1 - accuracy, latency_rel = latency / the teacher's, ...)."""
        teacher = self.teacher_values()
        front = pareto_trials(self.study)
        pts = normalized_values([t.values for t in front], teacher, self.objectives) if front else []
        return pd.DataFrame([(t.number, *p) for t, p in zip(front, pts)],
                            columns=["trial", *(NORMALIZED_COLUMNS.get(n, f"{n}_rel") for n in self.objectives)])

    @cached_property
    def data(self) -> DataBundle:
        """The recipe's dataset splits (rebuilt from the recipe stored on the study)."""
        return load_data(self.recipe)

    def load_trial(self, number: int) -> LoadedTrial:
        """The deployed model of a completed trial, its config and the val logits measured in the trial."""
        return rebuild_trial(self.study, self.trial(number), None, self.data)

    def load_model(self, number: int) -> nn.Module:
        """The deployed model of a completed trial, rebuilt from its safetensors weights and config.

        Example (not run as a doctest: it needs a stored study)::

            model = open_study("quickstart").load_model(3)
        """
        return self.load_trial(number).model

    def float_weights(self, number: int) -> tuple[dict[str, torch.Tensor], CompressionConfig]:
        """The float weights saved for a trial (before quantization) and its config, read from the
        checksummed safetensors artifact."""
        t = self.trial(number)
        artifact_id = t.user_attrs.get(ARTIFACT_ATTR)
        if not artifact_id:
            raise ArtifactError(f"trial {number} of {self.name!r} has no saved model")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "weights.safetensors"
            try:
                optuna.artifacts.download_artifact(artifact_store=artifact_store(artifact_dir_of(self.study)),
                                                   artifact_id=artifact_id, file_path=str(path))
            except Exception as exc:  # noqa: BLE001 - any store error means the file is not there
                raise ArtifactError(f"artifact of trial {number} cannot be read from "
                                    f"{artifact_dir_of(self.study)}: {exc}") from None
            state, meta = read_artifact(path)
        state.pop(LOGITS_KEY)
        return state, CompressionConfig.from_json(meta["config"])

    def load_float_model(self, number: int) -> nn.Module:
        """A trial's model before quantization (float32): the structure its config gives, its saved weights.

        Equal to `load_model` for trials without quantization.
        """
        state, config = self.float_weights(number)
        teacher = create_model(TeacherSpec.from_dict(self.study.user_attrs[TEACHER_ATTR]), load_weights=False)
        float_config = without_stage(config, "quantize")
        return build(teacher, float_config, self.data, seed=self.recipe.seed, train=False, float_state=state).model

    def export(self, number: int, fmt: str, path: str | Path) -> Path:
        """Export a completed trial as onnx, torchscript or safetensors, with a model card beside it.

        See `vitshrink.exporting.export_trial`.
        """
        return export_trial(self, number, fmt, Path(path))


def open_study(name: str, storage: str | None = None) -> StudyHandle:
    """Open a vitshrink study by name from an Optuna storage URL (default: sqlite:///vitshrink.db).

    Example (not run as a doctest: it needs a stored study)::

        h = open_study("quickstart", "sqlite:///vitshrink.db")
    """
    url = storage or DEFAULT_STORAGE
    st = open_storage(url)
    names = study_names(st)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise StudyNotFound(f"no study {name!r} in {mask_url(url)} (studies there: {listing}); "
                            "run `vitshrink studies` to list them or pass --storage")
    study = optuna.load_study(study_name=name, storage=st)
    if RECIPE_ATTR not in study.user_attrs:
        raise StudyNotFound(f"study {name!r} in {mask_url(url)} was not written by vitshrink")
    return StudyHandle(study, url)


def compare_studies(handles: list[StudyHandle], reference_point: tuple[float, ...] | None = None
                    ) -> pd.DataFrame:
    """One row per study: its objectives, front size, hypervolume (teacher-normalised, over the study's
    own objectives: comparable between studies of the same objectives), teacher and best values
    (``best_<metric>`` for the metrics every trial measures and each study's objectives).

    Example (not run as a doctest: it needs a stored study)::

        compare_studies([open_study("a"), open_study("b")])[["study", "hypervolume"]]
    """
    rows = []
    for h in handles:
        front = pareto_trials(h.study)
        teacher = h.teacher_trial()
        row = {
            "study": h.name, "objectives": ", ".join(h.objectives), "pareto_trials": len(front),
            "complete": len(h.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
            "hypervolume": h.hypervolume(reference_point) if teacher else None,
            "teacher_accuracy": h.teacher_accuracy,
            "teacher_latency_ms": h.values_of(teacher, ["latency_ms"])["latency_ms"] if teacher else None,
        }
        for name in dict.fromkeys((*METRICS[:3], *h.objectives)):
            best = [v for t in front if (v := h.values_of(t, [name])[name]) is not None]
            maximize = get_objective(name).maximize
            row[f"best_{name}"] = (max if maximize else min)(best, default=None)
        if row["best_size_bytes"] is not None:
            row["best_size_bytes"] = int(row["best_size_bytes"])
        rows.append(row)
    return pd.DataFrame(rows)


def load_model(study_name: str, trial_number: int, storage: str | None = None) -> nn.Module:
    """Rebuild the model of a completed trial; its outputs on the val split equal those measured.

    Example (not run as a doctest: it needs a stored study)::

        model = load_model("quickstart", 3)
    """
    return open_study(study_name, storage).load_model(trial_number)


def export(study_name: str, trial_number: int, fmt: str, path: str | Path, storage: str | None = None) -> Path:
    """Export a trial's model (onnx, torchscript or safetensors) plus a JSON model card; returns the path.

    Example (not run as a doctest: it needs a stored study)::

        export("quickstart", 3, "onnx", "model.onnx")  # -> PosixPath('model.onnx')
    """
    return open_study(study_name, storage).export(trial_number, fmt, path)


__all__ = ["COLUMNS", "CONFIG_COLUMNS", "config_columns", "HV_REFERENCE", "StudyHandle", "StudyNotFound", "TrialNotAvailable",
           "compare_studies", "export", "hypervolume", "list_studies", "load_model", "open_study"]
