"""The study schema: every study and trial attribute key vitshrink writes or reads, in one place.

A study is Optuna's storage and nothing else, so these strings are its file format: a study stored
by an earlier vitshrink is read by these same keys. Change a value here and stored studies stop
resuming, rebuilding and exporting; add a key here, never as a literal elsewhere
(tests/test_schema.py greps the package for that).

Example:
    >>> key_of_test_accuracy(3)
    'vitshrink.test_accuracy.3'
    >>> import optuna
    >>> t = optuna.trial.create_trial(values=[0.9, 2.0, 10.0], user_attrs={FAIL_REASON_ATTR: None,
    ...                               PRUNED_REASON_ATTR: "screened: too slow"}, state=optuna.trial.TrialState.PRUNED)
    >>> role_of(t), reason_of(t)
    ('sampled', 'screened: too slow')
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial

from ..spaces import DEFAULT_OBJECTIVES

# --- study user attributes -------------------------------------------------------------------------------------
RECIPE_ATTR = "vitshrink.recipe"  # the recipe as `Recipe.to_dict` writes it (what `Recipe.from_dict` reads)
TEACHER_ATTR = "vitshrink.teacher"  # the teacher's TeacherSpec.to_dict()
VERSION_ATTR = "vitshrink.version"  # the vitshrink that created the study
ARTIFACT_DIR_ATTR = "vitshrink.artifact_dir"  # where the trials' safetensors artifacts are
FINGERPRINT_ATTR = "vitshrink.fingerprint"  # what the study's trials mean (search/_fingerprint.py)
LATENCY_REFERENCE_ATTR = "vitshrink.latency_reference"  # the latency objective's unit (search/_latency.py)
TEACHER_ACCURACY_ATTR = "vitshrink.teacher_accuracy"  # the teacher's val accuracy
DATA_ATTR = "vitshrink.data"  # the data's description
CLASSES_ATTR = "vitshrink.classes"  # class names, index by index
TARGET_ATTR = "vitshrink.target"  # where latency is measured: spec, host, CPU, versions
TRAINING_ATTR = "vitshrink.training"  # where the driver trains (trials record their own)
PREPROCESSING_ATTR = "vitshrink.preprocessing"  # the models' input preprocessing (vitshrink/preprocessing.py)
PROBES_ATTR = "vitshrink.probes"  # the vitshrink sampler's cold-start structures: config JSON -> structural values
TEST_ACCURACY_PREFIX = "vitshrink.test_accuracy."  # + trial number: test accuracy of a Pareto trial

# --- trial user attributes: what the trial is -------------------------------------------------------------------
CONFIG_ATTR = "config"  # the CompressionConfig as a dict
CONFIG_OVERRIDE_ATTR = "config_override"  # a warm start's config, used as is
ROLE_ATTR = "role"  # "teacher" / "reference" for warm starts; absent: sampled
LABEL_ATTR = "label"  # the config's one-line summary
ARTIFACT_ATTR = "artifact"  # the artifact id of the saved float weights
RECORDS_ATTR = "records"  # one record per build stage
SECONDS_ATTR = "seconds"  # {screen, build, measure, save, total}

# --- trial user attributes: what was measured -------------------------------------------------------------------
METRICS_ATTR = "metrics"  # every measured metric by objective name (the study's objectives are its values too)
LATENCY_ATTR = "latency"  # the LatencyResult dict with cached, ratio_to_reference, objective_ms, baseline_ms
LATENCY_IQR_ATTR = "latency_iqr_ms"
LATENCY_SPREAD_ATTR = "latency_spread"
LATENCY_NOISY_ATTR = "latency_noisy"
SIZE_ATTR = "size_bytes"  # the structure's size, stored by screening before training
PEAK_MEMORY_ATTR = "peak_memory_bytes"  # the structure's peak memory, stored by screening when an objective
PARAMS_ATTR = "params"
MACS_ATTR = "macs"
ACCURACY_DROP_ATTR = "accuracy_drop"
PROPOSAL_CLAIM_ATTR = "proposal_claim"  # "<digest of the model>@<epoch s>": claimed by a proposal before it builds
PROPOSAL_ATTR = "proposal"  # what the vitshrink sampler predicted for the trial before it ran (search/_proposer.py)

# --- trial user attributes: why a trial ended without values, and who ran it ------------------------------------
FAIL_REASON_ATTR = "fail_reason"
PRUNED_REASON_ATTR = "pruned_reason"  # every PRUNED trial: impossible, screened or stopped
SCREENED_ATTR = "screened"  # the reason a candidate was not trained (search/_screening.py)
STOPPED_ATTR = "stopped"  # the reason training was stopped at a rung (search/_rungs.py)
STOPPED_AT_ATTR = "stopped_at"  # {stage, epoch, epochs, accuracy}
RUNG_PREFIX = "rung:"  # + "<stage>:<epoch>/<epochs>": the accuracy at that rung
FINISHED_AT_ATTR = "finished_at"  # epoch seconds a failed trial recorded its failure
RETRY_OF_ATTR = "retry_of"  # on the queued retry of an interrupted trial
NOT_RUN_ATTR = "not_run"  # the trial gave its budget slot back unbuilt (search/_budget.py)
REQUEUED_FROM_ATTR = "requeued_from"  # on a queued copy of a trial that gave its slot back
WORKER_ATTR = "worker"  # host:pid of the process running the trial
DRIVER_ATTR = "driver"  # the Ray driver that started the trial's task
RAY_TASK_ATTR = "ray_task"  # the Ray task that ran the trial (written by versions with a Ray-task executor)
TUNE_TRIAL_ATTR = "tune_trial"  # the Ray Tune trial running it (search/tune_executor.py)
# Attributes that describe the process running a trial: a retry must not inherit them, or the new
# owner's trial would look like the dead one until it overwrites them.
OWNER_USER_ATTRS = (WORKER_ATTR, DRIVER_ATTR, RAY_TASK_ATTR, TUNE_TRIAL_ATTR, FAIL_REASON_ATTR, NOT_RUN_ATTR)

# --- trial system attributes ------------------------------------------------------------------------------------
HEARTBEAT_ATTR = "vitshrink.heartbeat"  # journal storages: epoch seconds of the owner's last beat
OPTUNA_FAILED_TRIAL_ATTR = "failed_trial"  # Optuna's: set on a retry of a failed trial
OPTUNA_FIXED_PARAMS_ATTR = "fixed_params"  # Optuna's: the params an enqueued trial was queued with

DEFAULT_ROLE = "sampled"


def key_of_test_accuracy(number: int) -> str:
    """The study attribute holding trial `number`'s test accuracy."""
    return f"{TEST_ACCURACY_PREFIX}{number}"


def role_of(t: FrozenTrial) -> str:
    """"teacher", "reference" or "sampled"."""
    return t.user_attrs.get(ROLE_ATTR, DEFAULT_ROLE)


def reason_of(t: FrozenTrial) -> str | None:
    """Why a trial has no values: its failure, else why it was pruned; None when it has none."""
    return t.user_attrs.get(FAIL_REASON_ATTR) or t.user_attrs.get(PRUNED_REASON_ATTR)


def set_user_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Write several user attributes of a running trial."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def objective_names(study: optuna.Study) -> tuple[str, ...]:
    """The study's objectives in the order of its values: the metric names set when it was created
    (a study stored before objectives were chosen has the default three, named or not)."""

    names = study.metric_names
    return tuple(names) if names else DEFAULT_OBJECTIVES


def metric(t: FrozenTrial, name: str, names: Iterable[str]) -> float | None:
    """Trial `t`'s value of metric `name`: its objective value when `name` is one of the study's
    objectives `names`, else what the trial stored about it; None when unknown.

    Example:
        >>> t = optuna.trial.create_trial(values=[0.9, 2.0], user_attrs={MACS_ATTR: 1000, SIZE_ATTR: 5})
        >>> metric(t, "latency_ms", ["accuracy", "latency_ms"]), metric(t, "macs", ["accuracy", "latency_ms"])
        (2.0, 1000.0)
    """
    names = list(names)
    if name in names and t.values is not None and names.index(name) < len(t.values):
        return float(t.values[names.index(name)])
    stored = (t.user_attrs.get(METRICS_ATTR) or {}).get(name)
    if stored is None:
        stored = _structure_attr(t, name)
    return None if stored is None else float(stored)


def metrics_of(t: FrozenTrial, names: Iterable[str], wanted: Iterable[str]) -> dict[str, float | None]:
    """`metric` for each of `wanted`."""
    names = list(names)
    return {w: metric(t, w, names) for w in wanted}


def objective_ms(latency_attr: dict[str, Any]) -> float:
    """The latency objective a stored ``latency`` user attr stands for (older trials: the median)."""
    value = latency_attr.get("objective_ms")
    return float(value if value is not None else latency_attr["batches"][0]["median_ms"])


def _structure_attr(t: FrozenTrial, name: str) -> Any:
    """A metric a trial's structure stored on its own (screening, or a trial stored before METRICS_ATTR)."""
    ua = t.user_attrs
    if name == "latency_ms":
        return objective_ms(ua[LATENCY_ATTR]) if ua.get(LATENCY_ATTR) else None
    if name == "throughput":  # the throughput batch is timed after the latency batch
        batches = (ua.get(LATENCY_ATTR) or {}).get("batches") or []
        return batches[-1]["batch"] * 1000.0 / batches[-1]["median_ms"] if len(batches) > 1 else None
    return {"size_bytes": ua.get(SIZE_ATTR), "macs": ua.get(MACS_ATTR),
            "peak_memory_bytes": ua.get(PEAK_MEMORY_ATTR)}.get(name)


__all__ = [name for name in dir() if name.endswith(("_ATTR", "_ATTRS", "_PREFIX"))] + [
    "DEFAULT_ROLE", "metric", "metrics_of", "objective_ms", "objective_names", "reason_of", "role_of",
    "set_user_attrs", "key_of_test_accuracy"]
