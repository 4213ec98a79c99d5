"""A study's fingerprint: everything that gives its trials their meaning, stored when the study is
created and compared on every resume, so a resumed study is the same study.

What is in it: the teacher (timm name, kwargs, pretrained flag, the checkpoint's content digest, the
training settings and seed), the data (dataset, options, split seed, a digest of every split's
images and labels), the latency target and protocol, the objectives, the constraints and the search
space. What is not: trials, timeout, sampler, seed_with, max_failures, workers, executor, storage,
data folder (the content digest stands for it): changing those never changes what a stored trial means.

Constraints are compared, not recomputed: Optuna's storages refuse attribute writes to finished
trials (the journal storage drops them on replay), so stored feasibility cannot be rewritten through
Optuna, and a study whose trials were judged against other limits is another study.

Example:
    >>> from vitshrink.spaces import resolve_recipe
    >>> fp = recipe_fingerprint(resolve_recipe("quickstart"))
    >>> sorted(fp)
    ['constraints', 'data', 'objectives', 'seed', 'space', 'target', 'teacher', 'version']
    >>> differences(fp, fp)
    []
"""

from __future__ import annotations

from typing import Any

from ..models import TrainSettings, checkpoint_sha256
from ..objectives import Target, directions_of
from ..spaces import ConfigError, Recipe, SearchSpace
from ._schema import FINGERPRINT_ATTR  # noqa: F401 - the study attribute holding the fingerprint (a JSON dict)
FINGERPRINT_VERSION = 1
# A value a study stored by an older vitshrink cannot tell (it kept no digests): not compared, then recorded.
UNKNOWN = "unknown: stored before fingerprints"
# Data options that decide how data is fetched, not what it is.
NOT_MEANING_DATA_OPTIONS = ("download",)
SECTION_NAMES = {"teacher": "teacher", "data": "data", "target": "latency target", "objectives": "objectives",
                 "constraints": "constraints", "space": "search space", "seed": "seed"}


def _device(text: str) -> str:
    """`cpu` and `cpu:N` (N = this machine's cores) are one target; spell it the way it is measured."""

    try:
        return Target.parse(text).spec()
    except ValueError:
        return text  # refused, with its own message, when the target is built


def teacher_part(recipe: Recipe, checkpoint_digest: str | None = None) -> dict[str, Any]:
    """The teacher: a fixed checkpoint is loaded as is (training settings play no part); otherwise it
    is trained here from the settings (fine-tuned from `pretrained` weights) and the study seed."""
    loaded_as_is = bool(recipe.teacher_checkpoint) and not recipe.teacher_pretrained
    if checkpoint_digest is None and recipe.teacher_checkpoint:
        checkpoint_digest = checkpoint_sha256(recipe.teacher_checkpoint)
    # where it trains (`device`) is free to change, as results are reproducible per device; precision is not
    train = None if loaded_as_is else {k: (list(v) if isinstance(v, tuple) else v)
                                       for k, v in TrainSettings(**recipe.teacher_train).__dict__.items()
                                       if k != "device"}
    return {"model": recipe.teacher_model, "kwargs": dict(recipe.teacher_kwargs),
            "pretrained": bool(recipe.teacher_pretrained), "checkpoint_sha256": checkpoint_digest,
            "train": train}


def recipe_fingerprint(recipe: Recipe, data_sha256: str | None = None,
                       checkpoint_digest: str | None = None) -> dict[str, Any]:
    """The fingerprint of a study of `recipe`. Cheap (reads the teacher checkpoint, if any, once);
    `data_sha256` (`vitshrink.digests.data_sha256` of the loaded data) is added when given."""
    data: dict[str, Any] = {"dataset": recipe.dataset, "seed": recipe.data_seed,
                            "options": {k: v for k, v in sorted(recipe.data_options.items())
                                        if k not in NOT_MEANING_DATA_OPTIONS}}
    if data_sha256 is not None:
        data["sha256"] = data_sha256
    return {
        "version": FINGERPRINT_VERSION,
        "teacher": teacher_part(recipe, checkpoint_digest),
        "data": data,
        "target": {"device": _device(recipe.device), "runs": recipe.latency_runs, "warmup": recipe.latency_warmup,
                   "batch": recipe.latency_batch, "throughput_batch": recipe.throughput_batch,
                   "max_runs": recipe.latency_max_runs, "target_cv": recipe.latency_target_cv},
        "objectives": {"names": list(recipe.objectives), "directions": directions_of(recipe.objectives)},
        "constraints": {"limits": dict(sorted(recipe.constraints.items()))},
        "space": recipe.space.to_dict(),
        # seeds the teacher's training and every trial's training, not only the sampler
        "seed": {"study": recipe.seed},
    }


def stored_fingerprint(user_attrs: dict[str, Any], recipe_attr: str) -> dict[str, Any]:
    """The fingerprint stored on a study, or, for a study an older vitshrink created, what its stored
    recipe tells (the checkpoint's and the data's contents are `UNKNOWN` there)."""
    if FINGERPRINT_ATTR in user_attrs:
        return user_attrs[FINGERPRINT_ATTR]
    try:
        old = Recipe.from_dict(user_attrs[recipe_attr], source="the study's stored recipe", stored=True)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; it cannot be compared with this recipe, pass --new-study to start a new study") from None
    return recipe_fingerprint(old, checkpoint_digest=UNKNOWN if old.teacher_checkpoint else None)


def _show(field: str, value: Any) -> str:
    if field.endswith("sha256") and isinstance(value, str) and value != UNKNOWN:
        return repr(value[:12] + "…")
    return repr(value)


def differences(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Lines ``section.field: stored X -> now Y`` for every field `now` sets differently from `stored`.

    A field `stored` lacks or holds as `UNKNOWN` is not compared (an older study could not record it)."""
    out = []
    for section, fields in now.items():
        if section == "version":
            continue
        if section == "space" and "space" in stored:
            out += SearchSpace.from_json_dict(stored["space"]).diff(SearchSpace.from_json_dict(fields))
            continue
        old_fields = stored.get(section) or {}
        for field, value in fields.items():
            old = old_fields.get(field, UNKNOWN)
            if isinstance(old, str) and old == UNKNOWN:
                continue
            if old != value:
                out.append(f"{section}.{field}: stored {_show(field, old)} -> now {_show(field, value)}")
    return out


def merged(stored: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """After `differences` found none: `now`, keeping what only `stored` knows (a field this run did
    not compute, such as the data digest before the data is loaded)."""
    return {section: (dict(stored.get(section) or {}) | fields) if isinstance(fields, dict) else fields
            for section, fields in now.items()}


def changed_sections(lines: list[str]) -> list[str]:
    """The names of the parts that differ, in the order `SECTION_NAMES` lists them."""
    touched = {line.split(".", 1)[0] for line in lines}
    touched = {"space" if t == "fixed" else t for t in touched}  # SearchSpace.diff names `space.` and `fixed.`
    return [label for key, label in SECTION_NAMES.items() if key in touched]
