"""The flat form, read here and nowhere else.

Before a candidate was a composition of technique configs, vitshrink wrote one flat form: a
candidate was one field per setting of every technique (`FlatConfig`: ``prune_heads``, ``landmarks``,
``quant``), a recipe's [space] and [fixed] tables named those fields, and a study's Optuna parameters
were those fields. Studies, stored configs and recipes written then are read by this module, one way,
into the technique form:

- a flat config (a trial's stored config, flat keyword arguments): `read_config` gives the chosen
  techniques' configs and the distillation settings;
- flat [space] / [fixed] tables (a recipe, a stored study): `keyed_space` gives them by search key;
- a flat-named study's Optuna parameters: `flat_name` (a resumed study keeps the names it has).

`FLAT_NAMES` is the one table of flat names. A flat config is checked by the techniques' own rules
(their settings' choices, bounds and needs), found through that table; a technique added since the
flat form has no flat name. This module asks the techniques; they know nothing of it. vitshrink
writes no flat record, recipe or space; only a study created with flat parameter names keeps them
when it resumes (its sampler's history is under those names).

Example:
    >>> parts, distill = read_config({"prune_heads": 0.5, "quant": "dynamic_int8"})
    >>> parts
    {'prune': PruneConfig(heads=0.5, mlp=0.0, score='magnitude'), 'dynamic_int8': DynamicInt8Config()}
    >>> keyed_space({"quant": ["none", "ort_int8"], "landmarks": [4, 16], "lowrank": ["nystrom"]}, {})[0]
    {'runtime': ['none', 'ort_int8'], 'nystrom.landmarks': [4, 16], 'lowrank': ['nystrom']}
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .. import techniques as T
from ..errors import ConfigError
from ..techniques import ANY, SHARED, Technique, check_kind
from ..techniques import keys as K

# Each search key's flat name: the FlatConfig field that held it, which a flat recipe, a flat stored
# config and a flat-named study's Optuna parameter use. A field two techniques share holds the key of
# each (one of them is chosen at a time). A technique added after the flat form has none.
FLAT_NAMES: dict[str, str] = {
    "student": "student", "student.depth": "student_depth", "student.embed_dim": "student_embed_dim",
    "student.heads": "student_heads", "student.mlp_ratio": "student_mlp_ratio", "student.epochs": "student_epochs",
    "student.init": "student_init",
    "prune.heads": "prune_heads", "prune.mlp": "prune_mlp", "prune.score": "prune_score",
    "lowrank": "lowrank", "nystrom.landmarks": "landmarks", "nystrom.blocks": "lowrank_blocks",
    "nystrom.conv": "nystrom_conv", "svd.rank": "svd_rank", "svd.blocks": "lowrank_blocks",
    "tome.r": "token_merge_r", "patch_drop.fraction": "token_drop", "patch_drop.at": "token_drop_at",
    "finetune.epochs": "kd_epochs", "distill.temperature": "kd_temperature", "distill.alpha": "kd_alpha",
    "distill.augment": "kd_augment", "distill.feature_weight": "kd_feature_weight",
    "runtime": "quant", "static_int8.calib_size": "calib_size", "openvino_int8.calib_size": "calib_size",
    "ort_int8.calib_size": "calib_size",
}


@dataclass(frozen=True)
class FlatConfig:
    """What to do to the teacher, applied in the fixed order
    student/distill -> prune -> low-rank -> tokens -> KD fine-tune -> quantize.

    Every field's default is the identity setting, so ``FlatConfig()`` is the
    teacher itself.

    Example:
        >>> cfg = FlatConfig(prune_heads=0.5, quant="dynamic_int8")
        >>> FlatConfig.from_json(cfg.to_json()) == cfg
        True
    """

    # student: "none" (compress the teacher), "custom" (the student_* fields) or a timm name
    student: str = "none"
    student_depth: int = 0
    student_embed_dim: int = 0
    student_heads: int = 0
    student_mlp_ratio: float = 4.0
    student_epochs: int = 0
    student_init: str = "random"
    # structured pruning: fraction of attention heads / MLP hidden units removed per block
    prune_heads: float = 0.0
    prune_mlp: float = 0.0
    prune_score: str = "magnitude"
    # low-rank: Nystrom attention with `landmarks`, or truncated SVD of Linear layers at `svd_rank`
    lowrank: str = "none"
    landmarks: int = 0
    lowrank_blocks: tuple[int, ...] = ()  # empty: every block
    nystrom_conv: int = 0  # kernel of the depthwise-conv skip on values; 0: off
    svd_rank: float = 1.0
    # token reduction: ToMe merging of r tokens per block, and/or dropping patches
    token_merge_r: int = 0
    token_drop: float = 0.0  # fraction of patch tokens dropped at each depth in token_drop_at
    token_drop_at: tuple[int, ...] = ()
    # knowledge-distillation recovery fine-tune (and student training) hyper-parameters
    kd_epochs: int = 0
    kd_temperature: float = 4.0
    kd_alpha: float = 0.7
    # stronger recovery (off by default; compress/recovery.py): augment the KD batches, the teacher's
    # logits taken on each augmented batch; and match the teacher's block outputs (token features)
    # with a cosine loss of this weight, added to the KD loss
    kd_augment: str = "none"
    kd_feature_weight: float = 0.0
    # deployment: quantization mode / runtime
    quant: str = "none"
    calib_size: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):  # each field holds its declared type
            check_kind(f.name, _FIELD_KINDS[f.name], getattr(self, f.name))
        for name in ("lowrank_blocks", "token_drop_at"):  # tuples may arrive as lists from JSON/TOML
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def validate(self) -> None:
        """Refuse settings that break a technique's rules (`problem`)."""
        if (p := problem(self.to_dict())) is not None:
            raise ConfigError(f"invalid compression config: {p}")

    @property
    def is_identity(self) -> bool:
        return self == FlatConfig()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlatConfig:
        unknown = sorted(set(data) - set(FLAT_FIELDS))
        if unknown:
            raise ConfigError(f"unknown compression setting(s) {', '.join(unknown)}; known settings are "
                              f"{', '.join(sorted(FLAT_FIELDS))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> FlatConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> FlatConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """A short label of the fields changed from the identity, ``teacher`` for the identity."""
        changed = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                   for k, v in self.to_dict().items() if v != _DEFAULTS[k]]
        return " ".join(changed) or "teacher"


# field name -> "str" | "int" | "float" | "tuple[int, ...]" (annotations are strings here)
_FIELD_KINDS = {f.name: f.type for f in fields(FlatConfig)}
FLAT_FIELDS = tuple(_FIELD_KINDS)
# the identity value of every field, as `to_dict` writes it (lists for tuples)
_DEFAULTS = {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields(FlatConfig)}
_DISTILL = {k.split(".", 1)[1]: f for k, f in FLAT_NAMES.items() if k.startswith(f"{SHARED}.")}


# --- a technique seen through the flat names -----------------------------------------------------
_STORED: dict[str, dict[str, str]] = {}  # technique name -> `_stored`, computed once (a name is registered once)


def _stored(t: Technique) -> dict[str, str]:
    """Its own config's settings -> the fields that hold them (a technique added since: none)."""
    if t.name not in _STORED:
        _STORED[t.name] = {f.name: FLAT_NAMES[k] for f in fields(t.config) if (k := t.key_of(f.name)) in FLAT_NAMES}
    return _STORED[t.name]


def _named(t: Technique) -> dict[str, str]:
    """Its searched settings (the shared ones too) -> the fields that hold them."""
    return {s: FLAT_NAMES[k] for s in t.searched if (k := t.key_of(s)) in FLAT_NAMES}


def _switch_fields(t: Technique) -> tuple[str, ...]:
    """The fields that decide whether it is chosen: its choice's, or its switches'."""
    if t.selector:
        return (flat_name(t.choice),)  # type: ignore[arg-type]
    return tuple(flat_name(t.key_of(s)) for s in t.switches)


def chosen(t: Technique, values: Mapping[str, Any]) -> bool:
    """Whether flat settings `values` (missing ones at their defaults) choose technique `t`."""
    get = lambda f: values.get(f, _DEFAULTS.get(f, 0))  # noqa: E731  a technique added since: never chosen
    if t.selector:
        value = get(_switch_fields(t)[0])
        return value != "none" if t.selector == ANY else value == t.selector
    return any(get(f) > 0 for f in _switch_fields(t))


def how_chosen(t: Technique) -> str:
    """How a flat config chooses `t`, for messages: ``lowrank='nystrom'``, ``prune_heads > 0 or prune_mlp > 0``."""
    if t.selector:
        field = _switch_fields(t)[0]
        return f"{field} other than 'none'" if t.selector == ANY else f"{field}={t.selector!r}"
    return " or ".join(f"{f} > 0" for f in _switch_fields(t))


def field_of(t: Technique, setting: str) -> str:
    """The field that holds setting `setting` of `t` (KeyError for one with no flat name)."""
    return FLAT_NAMES[t.key_of(setting)]


def _settings(t: Technique, values: Mapping[str, Any]) -> Any:
    return t.config(**{k: values.get(f, _DEFAULTS[f]) for k, f in _stored(t).items()})


def _needs_problem(t: Technique, values: Mapping[str, Any]) -> str | None:
    """Where `t` is chosen: a setting below its `needs`, or its own `problem`, in flat terms."""
    if not chosen(t, values):
        return None
    stored = _stored(t)
    for f in fields(t.config):
        need = f.metadata.get("needs")
        if need is not None and values[stored[f.name]] < need:
            note = f" {f.metadata['needs_note']}" if f.metadata["needs_note"] else ""
            field = _switch_fields(t)[0]
            chooser = f"{field}={values[field]!r}" if t.selector else how_chosen(t)
            return f"{chooser} needs {stored[f.name]} >= {need}{note}"
    return t.problem(_settings(t, values)) if t.problem is not None else None


_RULES: dict[tuple[str, ...], dict[str, list[tuple[Technique, str]]]] = {}


def _rules() -> dict[str, list[tuple[Technique, str]]]:
    """Field -> the (technique, setting) pairs stored there, once per set of registered techniques."""
    registered = tuple(T.list_techniques())
    if registered not in _RULES:
        rules: dict[str, list[tuple[Technique, str]]] = {}
        for t in T.techniques():
            for setting, field in _named(t).items():
                rules.setdefault(field, []).append((t, setting))
        _RULES.clear()
        _RULES[registered] = rules
    return _RULES[registered]


def problem(values: Mapping[str, Any]) -> str | None:
    """Why flat settings `values` break a technique's rules, or None: each choice names a registered
    technique, each value keeps its setting's choices and bounds, a setting marked `unused` is not set
    where none of its techniques is chosen, and each chosen technique has what it needs.

    Example:
        >>> FlatConfig(landmarks=8)
        Traceback (most recent call last):
        ...
        vitshrink.errors.ConfigError: invalid compression config: landmarks=8 is only used with lowrank='nystrom'; set lowrank='nystrom', or leave landmarks at 0
    """
    if all(values.get(f) == d for f, d in _DEFAULTS.items()):
        return None  # the identity breaks no rule
    ts = T.techniques()
    for choice, modes in T.selector_choices().items():
        field = flat_name(choice)
        if values[field] not in modes:
            return f"{field}={values[field]!r} is not one of {', '.join(modes)}"
    rules = _rules()
    for field, value in values.items():
        for t, setting in rules.get(field, ()):
            meta = t.meta(setting)
            if meta["choices"] is not None and value not in meta["choices"]:
                return f"{field}={value!r} is not one of {', '.join(map(str, meta['choices']))}"
            if meta["bounds"] is not None and (p := meta["bounds"].problem(field, value)):
                return p
    for field, value in values.items():
        if value == _DEFAULTS[field]:
            continue
        own = [(t, s) for t, s in rules.get(field, ()) if field not in _switch_fields(t)]
        if not any(t.meta(s)["unused"] for t, s in own):
            continue
        users = [t for t, _ in own] + [t for t in ts if any(_stored(t).get(a) == field for a in t.accepts)]
        if not any(chosen(t, values) for t in users):
            how = " or ".join(how_chosen(t) for t in users)
            return f"{field}={value!r} is only used with {how}; set {how}, or leave {field} at {_DEFAULTS[field]!r}"
    return next((p for t in ts if (p := _needs_problem(t, values))), None)


# --- reading ---------------------------------------------------------------------------------------
def read_config(flat: FlatConfig | Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """(technique name -> its config, the distillation settings) that a flat config means (a mapping
    is read as `FlatConfig.from_dict`, checked by the techniques' rules)."""
    if not isinstance(flat, FlatConfig):
        flat = FlatConfig.from_dict(flat)
    values = flat.to_dict()
    parts = {t.name: _settings(t, values) for t in T.techniques() if chosen(t, values)}
    return parts, T.DistillConfig(**{k: values[f] for k, f in _DISTILL.items()})


def flat_of(config: Any) -> FlatConfig:
    """Candidate `config` (a `CompressionConfig`) in the flat form, for code that still compares flat fields."""
    values: dict[str, Any] = {}
    for name, settings in config.parts:
        t = T.get_technique(name)
        values.update({f: getattr(settings, k) for k, f in _stored(t).items()})
        if t.selector and t.selector != ANY:
            values[_switch_fields(t)[0]] = t.selector
    values.update({f: getattr(config.distill, k) for k, f in _DISTILL.items()})
    return FlatConfig(**values)


def flat_name(key: str) -> str:
    """The field that holds search key `key` (the Optuna parameter of a flat-named study); a key of a
    technique added since the flat form is its own name."""
    return FLAT_NAMES.get(key, key)


def keys_of_flat(field: str) -> list[str]:
    """The search keys field `field` holds (a field two techniques share gives both)."""
    return [k for k in K.search_keys() if FLAT_NAMES.get(k) == field]


def is_flat(space: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> bool:
    """Whether [space] / [fixed] tables are in the flat form: a [fixed] table, or a name that is a
    flat field and not a search key (``lowrank`` and ``student`` are both)."""
    keys = K.search_keys()
    return bool(fixed) or any(name not in keys and name in FLAT_FIELDS for name in space)


def _keys_of(name: str) -> list[str]:
    if name in K.search_keys():
        return [name]
    if keys := keys_of_flat(name):
        return keys
    known = [*K.search_keys(), *(flat_name(k) for k in K.search_keys())]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known dimensions: {', '.join(K.search_keys())}"
    raise ConfigError(f"unknown search dimension {name!r}{hint}")


def keyed_space(space: Mapping[str, Any], fixed: Mapping[str, Any] | None
                ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """Flat [space] and [fixed] tables by search key, and each key's name in the tables (for messages
    in the words the recipe used): each field read as the key or keys that hold it. A field two
    techniques share (``lowrank_blocks``, ``calib_size``) means the key of each technique the tables
    can choose (all of them where they choose none: the recipe's checks then say so)."""
    out: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    label: dict[str, str] = {}
    shared: list[list[str]] = []
    for table, given in zip(out, (space, fixed or {})):
        for name, spec in given.items():
            keys = _keys_of(name)
            if len(keys) > 1:
                shared.append(keys)
            for key in keys:
                if key in out[0] or key in out[1]:
                    if table is out[1] and key in out[0]:
                        raise ConfigError(f"{name} is both searched and fixed; keep it in one table")
                    raise ConfigError(f"{label[key]} and {name} are one setting ({key}); give it once")
                table[key], label[key] = spec, name
    for keys in shared:
        usable = [k for k in keys if any(_can_choose(t, out) for t in K.get_key(k).owners)]
        for k in keys:
            if usable and k not in usable:
                out[0].pop(k, None)
                out[1].pop(k, None)
    return out[0], out[1], label


def _can_choose(t: Technique, tables: tuple[dict[str, Any], dict[str, Any]]) -> bool:
    """Whether keyed tables can choose selector technique `t` (a switched one: taken as yes)."""
    if not t.selector:
        return True
    spec = tables[0].get(t.choice, tables[1].get(t.choice, "none"))  # type: ignore[arg-type]
    values = spec.get("choices", []) if isinstance(spec, Mapping) else spec if isinstance(spec, list) else [spec]
    return any(v != "none" for v in values) if t.selector == ANY else t.selector in values


__all__ = ["FLAT_FIELDS", "FLAT_NAMES", "FlatConfig", "chosen", "field_of", "flat_name", "flat_of", "how_chosen",
           "is_flat", "keyed_space", "keys_of_flat", "problem", "read_config"]
