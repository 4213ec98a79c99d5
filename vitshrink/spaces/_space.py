"""`SearchSpace`: what a search varies, per technique, as Optuna distributions that round-trip
through JSON and map an Optuna trial to a `CompressionConfig`.

A space is keyed by search key (`vitshrink.techniques.keys`): each stage's choice (``runtime``,
``lowrank``, ``student``) and each technique's settings (``prune.heads``, ``nystrom.landmarks``,
``distill.alpha``). A technique's settings are suggested only where it is chosen, as parameters
of the same names; a study an earlier vitshrink created keeps its flat parameter names
(``naming = "flat"``: ``quant``, ``prune_heads``). A space given in the flat form (`from_dict` with
the flat names that recipes and studies of earlier versions hold) is read into keys by
`vitshrink.spaces._legacy`.

Example:
    >>> import optuna
    >>> space = SearchSpace.from_dict({"runtime": ["none", "dynamic_int8"], "prune.heads": [0.0, 0.5]})
    >>> cfg = space.sample(optuna.trial.FixedTrial({"runtime": "dynamic_int8", "prune.heads": 0.25}))
    >>> cfg.names, cfg["prune"].heads
    (('prune', 'dynamic_int8'), 0.25)
    >>> SearchSpace.from_dict({"quant": ["none", "dynamic_int8"], "prune_heads": [0.0, 0.5]}) == space
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .. import techniques as _registry  # the techniques depend on _config and _fit only, never on this module
from ..techniques import check_kind
from ..techniques import keys as K
from . import _legacy
from ._config import CompressionConfig, ConfigError
from ._fit import ModelShape


def _kind(name: str) -> str:
    default = K.get_key(name).default
    if isinstance(default, bool):
        return "bool"
    return {str: "str", int: "int", float: "float"}.get(type(default), "tuple")


def check_type(name: str, value: Any, label: str | None = None) -> None:
    """Refuse a value of the wrong type for key `name` (ints are fine where a number is wanted;
    bools and NaN are not), naming it as `label` (the name the recipe used)."""
    check_kind(label or name, _kind(name), value)


def allowed_choices(name: str) -> tuple[Any, ...] | None:
    """The values key `name` may take (a choice's techniques, a setting's declared choices), or None."""
    return K.get_key(name).choices


def always_choices(name: str) -> bool:
    """Whether a two-number list for key `name` is a set of choices, never a range (a student's width
    must be divisible by its head count, so both are picked from lists)."""
    return K.get_key(name).as_list


def default_of(name: str) -> Any:
    return K.get_key(name).default


@dataclass(frozen=True)
class Dimension:
    """One searched field: categorical `choices`, or an int/float range [low, high] (`step`, `log`)."""

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False
    # a range that is first switched on or off (the Optuna categorical `<name>_on`); off is the
    # identity default (0: no pruning, no merging, ...), on samples the range
    optional: bool = False

    @property
    def gate(self) -> str:
        """The name of the on/off parameter of an optional range (flat naming)."""
        return f"{self.name}_on"

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": [list(c) if isinstance(c, tuple) else c for c in self.choices]}
        d: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            d["step"] = self.step
        if self.log:
            d["log"] = True
        if self.optional:
            d["optional"] = True
        return d

    def contains(self, value: Any) -> bool:
        if self.choices is not None:
            return _encode(value) in [_encode(c) for c in self.choices]
        if self.optional and value == default_of(self.name):
            return True
        return self.low <= value <= self.high  # type: ignore[operator]

    def suggest(self, trial: Any, param: str | None = None) -> Any:
        """Suggest a value on an Optuna trial, as parameter `param` (default: the field's own name)."""
        param = param or self.name
        if self.optional and not trial.suggest_categorical(f"{param}_on", [False, True]):
            return default_of(self.name)
        if self.choices is not None:
            encoded = [_encode(c) for c in self.choices]
            return _decode(trial.suggest_categorical(param, encoded))
        if self.integer:
            return trial.suggest_int(param, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(param, float(self.low), float(self.high), step=self.step, log=self.log)


def _encode(value: Any) -> Any:
    # Optuna categorical choices must be None/bool/int/float/str: lists travel as JSON strings.
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("["):
        return tuple(json.loads(value))
    return value


def _parse_dimension(name: str, spec: Any, label: str | None = None) -> Dimension | Any:
    """A TOML value for key `name` -> Dimension, or a plain value for a fixed setting (each value
    type-checked); messages name it as `label`, the name the recipe used."""
    label = label or name
    kind = _kind(name)
    if isinstance(spec, dict):
        unknown = set(spec) - {"choices", "low", "high", "step", "log", "optional"}
        if unknown:
            raise ConfigError(f"dimension {label!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                              "use choices or low/high/step/log/optional")
        optional = spec.get("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"dimension {label!r}: optional = {optional!r} must be true or false")
        if optional and "choices" in spec:
            raise ConfigError(f"dimension {label!r}: optional applies to ranges; for choices, list the "
                              f"identity value {default_of(name)!r} among them instead")
        if "choices" in spec:
            if not isinstance(spec["choices"], list):
                raise ConfigError(f"dimension {label!r}: choices = {spec['choices']!r} must be a list")
            spec = list(spec["choices"])
            if kind == "tuple":
                return _choices(name, [_block_list(name, c, label) for c in spec], label)
            return _choices(name, spec, label)
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"dimension {label!r}: a range needs both low and high")
        if kind in ("str", "tuple"):
            raise ConfigError(f"dimension {label!r} takes a list of choices, not a range")
        return _range(name, spec["low"], spec["high"], spec.get("step"), spec.get("log", False), kind == "int",
                      optional, label)
    if isinstance(spec, list):
        if kind == "tuple":
            if spec and all(isinstance(c, list) for c in spec):
                return _choices(name, [_block_list(name, c, label) for c in spec], label)
            check_type(name, spec, label)
            return tuple(spec)  # one fixed tuple, e.g. patch_drop.at = [2, 4]
        if len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec) \
                and not always_choices(name):
            return _range(name, spec[0], spec[1], None, False, kind == "int", False, label)
        return _choices(name, spec, label)
    check_type(name, spec, label)
    return spec  # a fixed value


def _block_list(name: str, value: Any, label: str) -> tuple[int, ...]:
    check_type(name, value, label)
    return tuple(value)


def _choices(name: str, values: list[Any], label: str) -> Dimension:
    for v in values:
        check_type(name, v, label)
    if not values:
        raise ConfigError(f"dimension {label!r} has no choices; give at least one")
    allowed = allowed_choices(name)
    if allowed:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"dimension {label!r}: {bad[0]!r} is not one of {', '.join(allowed)}")
    if len(set(map(_encode, values))) != len(values):
        raise ConfigError(f"dimension {label!r} lists a choice twice: {values}")
    return Dimension(name, choices=tuple(values))


def _range(name: str, low: Any, high: Any, step: Any, log: Any, integer: bool, optional: bool, label: str) -> Dimension:
    for what, v in (("low", low), ("high", high), ("step", step)):
        if v is None and what == "step":
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            raise ConfigError(f"dimension {label!r}: {what} = {v!r} must be a number")
    if not isinstance(log, bool):
        raise ConfigError(f"dimension {label!r}: log = {log!r} must be true or false")
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"dimension {label!r} is an integer setting but its range [{low}, {high}] is not")
    if low > high:
        raise ConfigError(f"dimension {label!r}: range [{low}, {high}] is inverted; write [{high}, {low}]")
    if low == high:
        raise ConfigError(f"dimension {label!r}: range [{low}, {high}] is empty; give low < high or a fixed value")
    if log and low <= 0:
        raise ConfigError(f"dimension {label!r}: a log range needs low > 0, got {low}")
    return Dimension(name, low=low, high=high, step=step, log=log, integer=integer, optional=optional)


@dataclass(frozen=True)
class SearchSpace:
    """Searched dimensions plus fixed settings, by search key; everything else keeps its identity default.

    `naming`: how its Optuna parameters are named. "technique" (what new studies use): the keys
    themselves, ``runtime``, ``prune.heads``, ``nystrom.landmarks``; "flat": the FlatConfig field,
    ``quant``, ``prune_heads``, as studies an earlier vitshrink created store them (a study keeps the
    naming it was created with).
    """

    dimensions: tuple[Dimension, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    naming: str = "technique"

    def param(self, name: str) -> str:
        """The Optuna parameter of key `name`."""
        return _legacy.flat_name(name) if self.naming == "flat" else name

    @classmethod
    def from_dict(cls, space: dict[str, Any], fixed: dict[str, Any] | None = None) -> SearchSpace:
        """A space from tables keyed by search key (tables in the flat form are read into keys by
        `_legacy.keyed_space` first)."""
        fixed = fixed or {}
        keys = K.search_keys()
        label: dict[str, str] = {}  # a key's name in the tables where it was a flat name
        if any(name not in keys for name in [*space, *fixed]):
            space, fixed, label = _legacy.keyed_space(space, fixed)
        dims: dict[str, Dimension] = {}
        fixed_items: dict[str, Any] = {}
        for table, is_fixed in ((space, False), (fixed, True)):
            for key, spec in table.items():
                name = label.get(key, key)
                parsed = _parse_dimension(key, spec, name)
                if is_fixed and isinstance(parsed, Dimension):
                    raise ConfigError(f"fixed setting {name!r} must be a single value, not {spec!r}")
                if is_fixed and key in dims:
                    raise ConfigError(f"{name} is both searched and fixed; keep it in one table")
                if isinstance(parsed, Dimension):
                    dims[key] = parsed
                else:
                    fixed_items[key] = parsed
        order = list(keys)
        space_obj = cls(tuple(sorted(dims.values(), key=lambda d: order.index(d.name))),
                        tuple(sorted(fixed_items.items(), key=lambda kv: order.index(kv[0]))))
        space_obj._check_combinations()
        return space_obj

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": {d.name: d.to_dict() for d in self.dimensions},
            "fixed": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.fixed},
        }

    @classmethod
    def from_json_dict(cls, d: dict[str, Any]) -> SearchSpace:
        return cls.from_dict(d.get("space", {}), d.get("fixed", {}))

    def dimension(self, name: str) -> Dimension | None:
        """The dimension of key `name`, or None."""
        return next((d for d in self.dimensions if d.name == name), None)

    def fixed_value(self, name: str, default: Any = None) -> Any:
        """The fixed value of key `name`, or `default`."""
        return dict(self.fixed).get(name, default)

    def _check_combinations(self) -> None:
        """Refuse combinations that no sample could turn into a valid config: a technique's own
        `space_problem`, then every fixed value and every end of every range on its own."""
        for t in _registry.techniques():
            if t.space_problem is not None and (problem := t.space_problem(self)):
                raise ConfigError(problem)
        for d in self.dimensions:
            probes = d.choices if d.choices is not None else (d.low, d.high)
            if d.optional:
                probes = (*probes, default_of(d.name))
            for v in probes:
                self._probe(d.name, v)
        self._probe(None, None)
        self._check_needed_settings()

    def _check_needed_settings(self) -> None:
        """Refuse a technique the space can choose but whose needed settings it neither searches nor
        fixes (patch dropping without the blocks to drop at): every trial choosing it would be invalid."""
        for t in _registry.techniques():
            for key in self.choosing_keys(t):
                for v in self.values_of(key):
                    if not K.chosen(t, {key: v}):
                        continue
                    values = {**dict(self.fixed), key: v}
                    # what the space searches takes a valid value: for this technique, then for every other one
                    # the values choose (a fixed custom student whose width the space searches)
                    for chosen in [t, *(c for c in _registry.techniques() if c is not t and K.chosen(c, values))]:
                        for k, on in chosen.switch_on(values).items():
                            if k not in values and self.dimension(k) is not None:
                                values[k] = on
                    try:
                        self.config_of(values)
                    except ConfigError as exc:
                        raise ConfigError(f"the space can choose {t.name} ({self._label(key)}={v!r}) but does not set "
                                          f"what it needs ({exc}); give it in [space.{t.name}]") from None

    @staticmethod
    def choosing_keys(technique) -> list[str]:
        """The keys whose values choose `technique` (its choice, or its switches)."""
        if technique.selector:
            return [K.choice_key(technique)]
        return [f"{technique.name}.{s}" for s in technique.switches]

    def _label(self, name: str) -> str:
        return self.param(name)

    def _probe(self, name: str | None, value: Any) -> None:
        """Build the config of the fixed settings plus key `name` = `value`, with the technique that value
        belongs to switched on as that technique declares, and refuse it when invalid."""
        merged = dict(self.fixed)
        probed = K.technique_of(name, value, merged) if name else None
        if probed is not None:
            own = set(self.choosing_keys(probed))
            merged.update({k: v for k, v in probed.switch_on({**merged, name: value}).items()
                           if k in own or k not in merged})
        if name is not None:
            merged[name] = value
        for t in _registry.techniques():  # what the chosen techniques need to be valid
            if K.chosen(t, merged):
                for k, v in t.switch_on(merged).items():
                    merged.setdefault(k, v)
        try:
            self.config_of(merged)
        except ConfigError as exc:
            what = f"{self._label(name)}={value}" if name else "fixed settings"
            raise ConfigError(f"search space can produce an invalid config ({what}): {exc}") from None

    @staticmethod
    def config_of(values: dict[str, Any]) -> CompressionConfig:
        """The candidate keyed settings `values` make: each technique they choose with the settings of
        it they give (others at its defaults), and the shared distillation settings where a technique
        that distils is chosen. A setting of a technique not chosen is not used."""
        parts: dict[str, Any] = {}
        for t in _registry.techniques():
            if K.chosen(t, values):
                own = {s: values[k] for s, k in K.own_keys(t).items() if k in values and not k.startswith(K.SHARED + ".")}
                parts[t.name] = own
        distill = {K.get_key(k).setting: v for k, v in values.items()
                   if k.startswith(K.SHARED + ".") and K.applies(k, values)}
        return CompressionConfig(parts, distill=distill or None)

    def sample(self, trial: Any) -> CompressionConfig:
        """Suggest every dimension that applies on an Optuna trial and return the config."""
        values: dict[str, Any] = dict(self.fixed)
        for d in self.dimensions:
            if K.applies(d.name, values):
                values[d.name] = d.suggest(trial, self.param(d.name))
        return self.config_of(values)

    def params_for(self, config: CompressionConfig, strict: bool = True) -> dict[str, Any]:
        """Optuna params that make `sample` return `config` (for enqueueing). A value outside the
        space raises ConfigError, or with `strict=False` is left out (the warm start then carries
        its config separately and the sampler learns from the params it can represent)."""
        return {param: value for _, param, value, _ in self._params_of(config, strict)}

    def record(self, trial: Any, config: CompressionConfig) -> None:
        """Suggest on `trial` the params of `config` that this space can represent (those of
        ``params_for(config, strict=False)``, under this space's naming), so that a trial whose config
        is given (a warm start, enqueued with those params) carries them for the sampler to learn from."""
        for d, param, _, gate in self._params_of(config, strict=False):
            if gate:
                trial.suggest_categorical(param, [False, True])
            else:
                dataclasses.replace(d, optional=False).suggest(trial, param)

    @staticmethod
    def values_in(config: CompressionConfig) -> dict[str, Any]:
        """`config` as keyed settings: each chosen technique's settings and its choice, and the
        distillation settings (every key at its value in `config`, its default where not chosen)."""
        values: dict[str, Any] = {}
        for name, own in config.parts:
            t = _registry.get_technique(name)
            if t.selector and t.selector != _registry.ANY:
                values[K.choice_key(t)] = t.selector
            for s, k in K.own_keys(t).items():
                if not k.startswith(K.SHARED + "."):
                    values[k] = getattr(own, s)
        for k, key in K.search_keys().items():
            if key.kind == "shared":
                values[k] = getattr(config.distill, key.setting)
        return values

    def _params_of(self, config: CompressionConfig, strict: bool):
        """(dimension, Optuna param, encoded value, whether it is an optional range's on/off switch
        ``<param>_on``) of each param `sample` would suggest for `config`."""
        values = self.values_in(config)
        seen: dict[str, Any] = dict(self.fixed)
        for d in self.dimensions:
            if not K.applies(d.name, seen):
                continue
            v = values.get(d.name, default_of(d.name))
            v = tuple(v) if isinstance(v, list) else v
            param = self.param(d.name)
            if d.optional:
                yield d, f"{param}_on", v != default_of(d.name), True
                if v == default_of(d.name):
                    seen[d.name] = v
                    continue
            if not d.contains(v):
                if not strict:
                    continue
                raise ConfigError(f"{self._label(d.name)}={v!r} is outside the search space ({d.to_dict()})")
            yield d, param, _encode(v), False
            seen[d.name] = v

    def values_of(self, name: str) -> list[Any]:
        """Every value key `name` can take in this space: its choices, the two ends of its range, its
        fixed value, or else the identity default."""
        d = self.dimension(name)
        if d is not None:
            values = list(d.choices) if d.choices is not None else [d.low, d.high]
            return values + [default_of(name)] if d.optional else values
        fixed = dict(self.fixed)
        return [fixed[name]] if name in fixed else [default_of(name)]

    def can_choose(self, technique, only: str | None = None) -> bool:
        """Whether some value this space can sample chooses `technique` (with choice value `only`,
        where given: a custom student's width needs student = "custom", not just a student)."""
        return any(K.chosen(technique, {k: v}) and (only is None or v == only)
                   for k in self.choosing_keys(technique) for v in self.values_of(k))

    def check_model(self, num_tokens: int, depth: int, prefix_tokens: int = 1, model: str = "the teacher", *,
                    cls_token: bool = True, students: dict[str, ModelShape] | None = None) -> None:
        """Refuse values this space can sample that no model it can produce honours, before any trial runs.

        The stages after the student stage act on the model leaving it, so what each technique demands
        is asked of every model the space can produce there (`_model_shapes`): the teacher where the
        student stage can be skipped, and each model of that stage's techniques. A value that only
        some of them honour (a block index beyond a shallow student) passes here; the trial that
        samples the impossible combination is pruned.

        Args:
            num_tokens: Tokens entering the teacher's first block (patches + prefix tokens such as cls).
            depth: The teacher's number of transformer blocks.
            prefix_tokens: Tokens that are never merged or dropped (cls, register tokens).
            model: A name for the messages.
            cls_token: Whether the teacher has a cls token (custom students copy the teacher's token setup).
            students: ModelShape of each timm-named student the space can sample, by name.

        What each technique asks of a model is its own `demands` (vitshrink.techniques), asked where
        the space can choose it; a technique without `demands` asks nothing.

        Raises:
            ConfigError: naming the setting, the model's numbers and the largest usable value.

        Example:
            >>> space = SearchSpace.from_dict({"lowrank": ["nystrom"], "landmarks": [4, 64]})
            >>> space.check_model(num_tokens=17, depth=2)
            Traceback (most recent call last):
            ...
            vitshrink.errors.ConfigError: impossible combination: nystrom.landmarks reaches 64 but ...
        """
        teacher = ModelShape(model, num_tokens, depth, prefix_tokens, cls_token)
        shapes = self._model_shapes(teacher, students or {})
        demands = []  # (rule on a shape, which shape comes closest to honouring it): each technique's own
        for t in _registry.techniques():
            if t.demands is not None and self.can_choose(t):
                demands.extend(t.demands(self.values_of))
        for rule, closest in demands:
            problems = [rule(s) for s in shapes]
            if all(problems):
                best = max(range(len(shapes)), key=lambda i: closest(shapes[i]))
                raise ConfigError(f"impossible combination: {problems[best]}")

    def _model_shapes(self, teacher: ModelShape, students: dict[str, ModelShape]) -> list[ModelShape]:
        """The models leaving the student stage that this space can produce: the teacher where the space
        can choose none of that stage's techniques, each technique's own models (`stage_configs`: its
        deepest custom student by `stage_shape`, a named one by its shape in `students`)."""
        stage = [t for t in _registry.techniques() if t.stage_configs is not None]
        shapes = [teacher] if self.can_skip(stage) else []
        for t in stage:
            for key, flat in t.stage_configs(self.values_of):
                if key is None and t.stage_shape is not None:
                    shapes.append(t.stage_shape(t.settings_of(flat), teacher))
                elif key in students:
                    shapes.append(students[key])
        return shapes or [teacher]

    def can_skip(self, techniques: list) -> bool:
        """Whether some value this space can sample chooses none of `techniques` (those of one stage,
        chosen by one key: a student stage the teacher leaves as it is)."""
        return not techniques or any(not any(K.chosen(t, {k: v}) for t in techniques)
                                     for k in self.choosing_keys(techniques[0]) for v in self.values_of(k))

    def diff(self, other: SearchSpace) -> list[str]:
        """Human-readable differences between two spaces (for refusing a changed resume)."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for section in ("space", "fixed"):
            for key in sorted(set(a[section]) | set(b[section])):
                if a[section].get(key) != b[section].get(key):
                    out.append(f"{section}.{key}: stored {a[section].get(key)!r} -> now {b[section].get(key)!r}")
        return out
