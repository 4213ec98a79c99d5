"""`SearchSpace`: which `CompressionConfig` fields are searched, their ranges or choices (a technique's
settings exist only where the technique is chosen: `vitshrink.techniques`), as data that round-trips
through JSON and maps an Optuna trial to a config.

Example:
    >>> import optuna
    >>> space = SearchSpace.from_dict({"quant": ["none", "dynamic_int8"], "prune_heads": [0.0, 0.5]})
    >>> cfg = space.sample(optuna.trial.FixedTrial({"runtime": "dynamic_int8", "prune.heads": 0.25}))
    >>> cfg.names, cfg["prune"].heads
    (('prune', 'dynamic_int8'), 0.25)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

from .. import techniques as _registry  # the techniques depend on _config and _fit only, never on this module
from ._config import CompressionConfig, ConfigError
from ._legacy import FlatConfig, check_field_type
from ._fit import ModelShape

_FIELD_TYPES = {f.name: f.type for f in fields(FlatConfig)}
_DEFAULTS = FlatConfig().to_dict()
# the settings that choose a technique by their value, and the values they take



def allowed_choices(name: str) -> tuple[Any, ...] | None:
    """The values field `name` may take (a selector's modes, a technique setting's choices), or None."""
    if (modes := _registry.selector_choices().get(name)) is not None:
        return modes
    for t in _registry.techniques():
        setting = t.setting_of(name)
        if setting is not None and t.meta(setting)["choices"] is not None:
            return t.meta(setting)["choices"]
    return None


def always_choices(name: str) -> bool:
    """Whether a two-number list for `name` is a set of choices, never a range (a student's width
    must be divisible by its head count, so both are picked from lists)."""
    if name in _registry.selector_choices():
        return True
    return any(t.setting_of(name) is not None and t.meta(t.setting_of(name))["as_list"]
               for t in _registry.techniques())


def field_applies(name: str, values: dict[str, Any]) -> bool:
    """Whether field `name` is used under the settings `values`: a technique's setting exists only
    where the technique is chosen (dimensions are sampled in CompressionConfig's field order, after
    the settings that choose their technique)."""
    return _registry.field_applies(name, values)


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
        if self.optional and value == _DEFAULTS[self.name]:
            return True
        return self.low <= value <= self.high  # type: ignore[operator]

    def suggest(self, trial: Any, param: str | None = None) -> Any:
        """Suggest a value on an Optuna trial, as parameter `param` (default: the field's own name)."""
        param = param or self.name
        if self.optional and not trial.suggest_categorical(f"{param}_on", [False, True]):
            return _DEFAULTS[self.name]
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


def _parse_dimension(name: str, spec: Any) -> Dimension | Any:
    """A TOML value -> Dimension, or a plain value for a fixed setting (each value type-checked)."""
    if name not in _FIELD_TYPES:
        import difflib

        close = difflib.get_close_matches(name, _FIELD_TYPES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known dimensions: {', '.join(_FIELD_TYPES)}"
        raise ConfigError(f"unknown search dimension {name!r}{hint}")
    is_int = "int" in str(_FIELD_TYPES[name]) and "tuple" not in str(_FIELD_TYPES[name])
    is_tuple_field = "tuple" in str(_FIELD_TYPES[name])
    if isinstance(spec, dict):
        unknown = set(spec) - {"choices", "low", "high", "step", "log", "optional"}
        if unknown:
            raise ConfigError(f"dimension {name!r}: unknown key(s) {', '.join(sorted(unknown))}; "
                              "use choices or low/high/step/log/optional")
        optional = spec.get("optional", False)
        if not isinstance(optional, bool):
            raise ConfigError(f"dimension {name!r}: optional = {optional!r} must be true or false")
        if optional and "choices" in spec:
            raise ConfigError(f"dimension {name!r}: optional applies to ranges; for choices, list the "
                              f"identity value {_DEFAULTS[name]!r} among them instead")
        if "choices" in spec:
            if not isinstance(spec["choices"], list):
                raise ConfigError(f"dimension {name!r}: choices = {spec['choices']!r} must be a list")
            spec = list(spec["choices"])
            if is_tuple_field:
                return _choices(name, [_block_list(name, c) for c in spec])
            return _choices(name, spec)
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"dimension {name!r}: a range needs both low and high")
        if "str" in str(_FIELD_TYPES[name]) or is_tuple_field:
            raise ConfigError(f"dimension {name!r} takes a list of choices, not a range")
        return _range(name, spec["low"], spec["high"], spec.get("step"), spec.get("log", False), is_int, optional)
    if isinstance(spec, list):
        if is_tuple_field:
            if spec and all(isinstance(c, list) for c in spec):
                return _choices(name, [_block_list(name, c) for c in spec])
            check_field_type(name, spec)
            return tuple(spec)  # one fixed tuple, e.g. token_drop_at = [2, 4]
        if len(spec) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec) and not always_choices(name):
            return _range(name, spec[0], spec[1], None, False, is_int)
        return _choices(name, spec)
    check_field_type(name, spec)
    return spec  # a fixed value


def _block_list(name: str, value: Any) -> tuple[int, ...]:
    check_field_type(name, value)
    return tuple(value)


def _choices(name: str, values: list[Any]) -> Dimension:
    for v in values:
        check_field_type(name, v)
    if not values:
        raise ConfigError(f"dimension {name!r} has no choices; give at least one")
    allowed = allowed_choices(name)
    if allowed:
        bad = [v for v in values if v not in allowed]
        if bad:
            raise ConfigError(f"dimension {name!r}: {bad[0]!r} is not one of {', '.join(allowed)}")
    if len(set(map(_encode, values))) != len(values):
        raise ConfigError(f"dimension {name!r} lists a choice twice: {values}")
    return Dimension(name, choices=tuple(values))


def _range(name: str, low: Any, high: Any, step: Any, log: Any, integer: bool, optional: bool = False) -> Dimension:
    for what, v in (("low", low), ("high", high), ("step", step)):
        if v is None and what == "step":
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
            raise ConfigError(f"dimension {name!r}: {what} = {v!r} must be a number")
    if not isinstance(log, bool):
        raise ConfigError(f"dimension {name!r}: log = {log!r} must be true or false")
    if integer and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"dimension {name!r} is an integer setting but its range [{low}, {high}] is not")
    if low > high:
        raise ConfigError(f"dimension {name!r}: range [{low}, {high}] is inverted; write [{high}, {low}]")
    if low == high:
        raise ConfigError(f"dimension {name!r}: range [{low}, {high}] is empty; give low < high or a fixed value")
    if log and low <= 0:
        raise ConfigError(f"dimension {name!r}: a log range needs low > 0, got {low}")
    return Dimension(name, low=low, high=high, step=step, log=log, integer=integer, optional=optional)


@dataclass(frozen=True)
class SearchSpace:
    """Searched dimensions plus fixed settings; everything else keeps its identity default.

    `naming`: how its Optuna parameters are named. "technique" (what new studies use): qualified by
    technique, ``runtime``, ``prune.heads``, ``nystrom.landmarks`` (`vitshrink.techniques.param_name`);
    "flat": the FlatConfig field, ``quant``, ``prune_heads``, as studies an earlier vitshrink created
    store them (a study keeps the naming it was created with).
    """

    dimensions: tuple[Dimension, ...] = ()
    fixed: tuple[tuple[str, Any], ...] = ()
    naming: str = "technique"

    def param(self, name: str, values: dict[str, Any]) -> str:
        """The Optuna parameter of dimension `name` under the settings sampled before it."""
        return name if self.naming == "flat" else _registry.param_name(name, values)

    @classmethod
    def from_dict(cls, space: dict[str, Any], fixed: dict[str, Any] | None = None) -> SearchSpace:
        dims: list[Dimension] = []
        fixed_items: dict[str, Any] = {}
        order = list(_FIELD_TYPES)
        for name, spec in sorted(space.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else -1):
            parsed = _parse_dimension(name, spec)
            if isinstance(parsed, Dimension):
                dims.append(parsed)
            else:
                fixed_items[name] = parsed
        for name, value in (fixed or {}).items():
            parsed = _parse_dimension(name, value)
            if isinstance(parsed, Dimension):
                raise ConfigError(f"fixed setting {name!r} must be a single value, not {value!r}")
            fixed_items[name] = parsed
        both = {d.name for d in dims} & set(fixed or {})
        if both:
            raise ConfigError(f"{', '.join(sorted(both))} is both searched and fixed; keep it in one table")
        space_obj = cls(tuple(dims), tuple(sorted(fixed_items.items())))
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
        return next((d for d in self.dimensions if d.name == name), None)

    def _check_combinations(self) -> None:
        """Refuse combinations that no sample could turn into a valid config: a technique's own
        `space_problem`, then every fixed value and every end of every range on its own."""
        for t in _registry.techniques():
            if t.space_problem is not None and (problem := t.space_problem(self)):
                raise ConfigError(problem)
        # Every fixed value and every end of every range must make a valid config on its own.
        for d in self.dimensions:
            probes = d.choices if d.choices is not None else (d.low, d.high)
            if d.optional:
                probes = (*probes, _DEFAULTS[d.name])
            for v in probes:
                self._probe({d.name: v})
        self._probe({})
        self._check_needed_settings()

    def _check_needed_settings(self) -> None:
        """Refuse a technique the space can choose but whose needed settings it neither searches nor
        fixes (patch dropping without the blocks to drop at): every trial choosing it would be invalid."""
        T = _registry
        for t in T.techniques():
            for f in t.switch_fields:
                for v in self.values_of(f):
                    if not t.chosen({f: v}):
                        continue
                    values = {**dict(self.fixed), f: v}
                    # what the space searches takes a valid value: for this technique, then for every other one
                    # the values choose (a fixed custom student whose width the space searches)
                    for chosen in [t, *(c for c in T.chosen_techniques(values) if c is not t)]:
                        for k, on in chosen.switch_on(values).items():
                            if k not in values and self.dimension(k) is not None:
                                values[k] = on
                    for k in list(values):
                        if not field_applies(k, values):
                            del values[k]
                    try:
                        CompressionConfig.from_dict(values)
                    except ConfigError as exc:
                        raise ConfigError(f"the space can choose {t.name} ({f}={v!r}) but does not set what it "
                                          f"needs ({exc}); give it in [space.{t.name}]") from None

    def _probe(self, values: dict[str, Any]) -> None:
        """Build the config of the fixed settings plus `values` (one value of one dimension), with the
        technique that value belongs to switched on as that technique declares, and refuse it when invalid."""
        merged = dict(self.fixed)
        ((name, value),) = values.items() if values else ((None, None),)
        probed = self._technique_of(name, value) if name else None
        if probed is not None:
            on = probed.switch_on({**merged, **values})
            merged.update({k: v for k, v in on.items() if k in probed.switch_fields or k not in merged})
        merged.update(values)
        for t in _registry.chosen_techniques(merged):  # what the chosen techniques need to be valid
            for k, v in t.switch_on(merged).items():
                merged.setdefault(k, v)
        for field_name in list(merged):  # as in `sample`: a setting of a technique not chosen keeps its default
            if field_name not in values and not field_applies(field_name, merged):
                del merged[field_name]
        try:
            CompressionConfig.from_dict(merged)
        except ConfigError as exc:
            raise ConfigError(f"search space can produce an invalid config ({', '.join(f'{k}={v}' for k, v in values.items()) or 'fixed settings'}): {exc}") from None

    def _technique_of(self, name: str, value: Any):
        """The technique a dimension's value is checked under: the one it chooses (quant="static_int8"),
        the one it switches on (prune_heads=0.5), or the one owning it (landmarks: nystrom)."""
        T = _registry
        if (t := T.selected_by(name, value)) is not None:
            return t
        switched = [t for t in T.techniques() if name in t.switch_fields and not t.selector]
        if switched:
            return switched[0] if switched[0].chosen({name: value}) else None
        own = T.owners(name)
        chosen = [t for t in own if t.chosen(dict(self.fixed))]
        return (chosen or own or [None])[0]

    def sample(self, trial: Any) -> CompressionConfig:
        """Suggest every active dimension on an Optuna trial and return the config."""
        values: dict[str, Any] = dict(self.fixed)
        for d in self.dimensions:
            if field_applies(d.name, values):
                values[d.name] = d.suggest(trial, self.param(d.name, values))
        for name in list(values):
            if not field_applies(name, values):
                del values[name]  # a fixed setting whose parent was not chosen keeps its default
        return CompressionConfig.from_dict(values)

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

    def _params_of(self, config: CompressionConfig, strict: bool):
        """(dimension, Optuna param, encoded value, whether it is an optional range's on/off switch
        ``<param>_on``) of each param `sample` would suggest for `config`."""
        values = config.flat.to_dict()
        seen: dict[str, Any] = dict(self.fixed)
        for d in self.dimensions:
            if not field_applies(d.name, seen):
                continue
            v = values[d.name]
            v = tuple(v) if isinstance(v, list) else v
            param = self.param(d.name, seen)
            if d.optional:
                yield d, f"{param}_on", v != _DEFAULTS[d.name], True
                if v == _DEFAULTS[d.name]:
                    seen[d.name] = v
                    continue
            if not d.contains(v):
                if not strict:
                    continue
                raise ConfigError(f"{d.name}={v!r} is outside the search space ({d.to_dict()})")
            yield d, param, _encode(v), False
            seen[d.name] = v

    def values_of(self, name: str) -> list[Any]:
        """Every value `name` can take in this space: its choices, the two ends of its range, its fixed
        value, or else the identity default."""
        d = self.dimension(name)
        if d is not None:
            values = list(d.choices) if d.choices is not None else [d.low, d.high]
            return values + [_DEFAULTS[name]] if d.optional else values
        fixed = dict(self.fixed)
        return [fixed[name]] if name in fixed else [_DEFAULTS[name]]

    def can_choose(self, technique, only: str | None = None) -> bool:
        """Whether some value this space can sample chooses `technique` (with selector value `only`,
        where given: a custom student's width needs student = "custom", not just a student)."""
        return any(technique.chosen({f: v}) and (only is None or v == only)
                   for f in technique.switch_fields for v in self.values_of(f))

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
            vitshrink.errors.ConfigError: impossible combination: landmarks reaches 64 but ...
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
                    shapes.append(t.stage_shape(t.settings(flat), teacher))
                elif key in students:
                    shapes.append(students[key])
        return shapes or [teacher]

    def can_skip(self, techniques: list) -> bool:
        """Whether some value this space can sample chooses none of `techniques` (those of one stage,
        chosen by one setting: a student stage the teacher leaves as it is)."""
        return not techniques or any(not any(t.chosen({f: v}) for t in techniques)
                                     for f in techniques[0].switch_fields for v in self.values_of(f))

    def diff(self, other: SearchSpace) -> list[str]:
        """Human-readable differences between two spaces (for refusing a changed resume)."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for section in ("space", "fixed"):
            for key in sorted(set(a[section]) | set(b[section])):
                if a[section].get(key) != b[section].get(key):
                    out.append(f"{section}.{key}: stored {a[section].get(key)!r} -> now {b[section].get(key)!r}")
        return out
