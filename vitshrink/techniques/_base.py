"""`Technique`: one compression technique as a record, and the registry that holds them by name.

A technique owns a frozen config dataclass (its settings by their short names, which are also its
search dimensions: ``<technique>.<setting>``), how it is chosen (a value of its stage's choice such as
``runtime = "static_int8"``, or one of its own settings above zero such as ``prune.heads``), its
checks against the model, its stage, an active example and its identity setting. Its handler, the
function that applies it, is registered for its config type in `vitshrink.compress`
(`register_handler`). Its settings exist only where it is chosen: that is the whole of a search
space's conditions (`vitshrink.techniques.keys`).

A candidate (`vitshrink.spaces.CompressionConfig`) is the chosen techniques' own configs, each a
`TechniqueConfig` that checks its values and round-trips as a typed, versioned record
(`config_to_dict` / `config_from_dict`, as torchao's). The flat form that earlier versions stored
(every setting a field) is read by `vitshrink.spaces._legacy`, which asks the techniques; nothing
here knows it.

Example:
    >>> from vitshrink.techniques import get_technique
    >>> nystrom = get_technique("nystrom")
    >>> nystrom.key_of("landmarks"), nystrom.choice, nystrom.selector
    ('nystrom.landmarks', 'lowrank', 'nystrom')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import ConfigError

# The stages of `build`, in the documented order of application; each technique declares its own.
STAGES = ("student", "prune", "lowrank", "tokens", "finetune", "quantize")
ANY = "*"  # a selector value: any value but "none" chooses the technique (a student: "custom" or a timm name)
CHOICE_KEYS = {"quantize": "runtime"}  # a stage's choice key where it is not the stage's name
SHARED = "distill"  # the key prefix of the settings the distilling techniques share (the candidate's `distill`)


@dataclass(frozen=True)
class Bounds:
    """The interval a number setting must lie in, checked on every config whether or not its
    technique is chosen (a negative fraction is wrong anywhere).

    Example:
        >>> Bounds(0.0, 1.0, high_open=True, why="1.0 would remove everything").problem("prune_heads", 1.0)
        'prune_heads=1.0 must be in [0, 1): 1.0 would remove everything'
        >>> Bounds(0).problem("kd_epochs", -1)
        'kd_epochs=-1 must be >= 0'
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    why: str = ""

    def problem(self, name: str, value: Any) -> str | None:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if above and below:
            return None
        g = lambda x: f"{x:g}"
        if self.high is None:
            rule = f"{'>' if self.low_open else '>='} {g(self.low)}"
        elif self.low is None:
            rule = f"{'<' if self.high_open else '<='} {g(self.high)}"
        else:
            rule = f"in {'(' if self.low_open else '['}{g(self.low)}, {g(self.high)}{')' if self.high_open else ']'}"
        return f"{name}={value} must be {rule}" + (f": {self.why}" if self.why else "")


def check_kind(label: str, kind: str, value: Any) -> None:
    """Refuse `value` unless it is of `kind` ("str", "int", "float", "bool", else block indices),
    naming it as `label`; ints are fine where a number is wanted, bools and NaN are not.

    Example:
        >>> check_kind("prune.heads", "float", "half")
        Traceback (most recent call last):
        ...
        vitshrink.errors.ConfigError: invalid compression config: prune.heads='half' must be a number
    """
    v = value
    if kind == "str":
        ok = isinstance(v, str)
    elif kind == "int":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif kind == "float":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v: not NaN
    elif kind == "bool":
        ok = isinstance(v, bool)
    else:  # tuple[int, ...]: block indices
        ok = isinstance(v, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    if not ok:
        want = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
            kind, "a list of block indices")
        raise ConfigError(f"invalid compression config: {label}={value!r} must be {want}")


AT_LEAST_ZERO = Bounds(0)
ABOVE_ZERO = Bounds(0, low_open=True)
FRACTION = Bounds(0.0, 1.0, high_open=True, why="1.0 would remove everything")


def setting(default: Any, *, choices: tuple[Any, ...] | None = None, as_list: bool = False,
            only: str | None = None, bounds: Bounds | None = None, needs: int | None = None,
            needs_note: str = "", unused: bool = False) -> Any:
    """A field of a technique's config dataclass, with the rules its values follow.

    Args:
        default: The identity value.
        choices: The values it may take (a recipe or config naming another is refused).
        as_list: A two-number list in a recipe is a set of choices, never a range.
        only: The selector value this setting needs besides the technique (a custom student's width).
        bounds: The interval its value must lie in, checked on every config.
        needs: Where its technique is chosen (by a selector), the least value it must have, e.g. the
            landmarks of Nystrom attention; `needs_note` is said after the rule in the message.
        unused: A value other than `default` is refused where no technique owning it is chosen
            (landmarks without Nystrom): it would be stored and do nothing.
    """
    meta = {"choices": choices, "as_list": as_list or choices is not None, "only": only, "bounds": bounds,
            "needs": needs, "needs_note": needs_note, "unused": unused}
    return field(default=default, metadata=meta)


class TechniqueConfig:
    """The base of every technique's frozen config dataclass (and of the shared `DistillConfig`).

    Building one checks each value's type, its choices and its bounds (a setting's rules, `setting`)
    and turns lists (from JSON or TOML) into tuples; what a technique needs where it is chosen, and
    its own cross-setting `problem`, are asked by the candidate that holds it. `config_to_dict` writes
    it as a typed, versioned record; bump `VERSION` when a setting's meaning changes.

    Example:
        >>> from vitshrink.techniques.prune import PruneConfig
        >>> PruneConfig(heads=1.0)
        Traceback (most recent call last):
        ...
        vitshrink.errors.ConfigError: invalid PruneConfig: heads=1.0 must be in [0, 1): 1.0 would remove everything
    """

    VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(f.default, tuple) and isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            if problem := _setting_problem(f, value):
                raise ConfigError(f"invalid {type(self).__name__}: {problem}")


def _setting_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` cannot be setting `f` (its type by its default's, its choices, its bounds), or None."""
    default, name = f.default, f.name
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and value == value  # not NaN
    elif isinstance(default, int):
        ok = isinstance(value, int)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:  # a tuple of block indices
        ok = isinstance(value, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    if not ok:
        want = {float: "a number", int: "an integer", str: "a string"}.get(type(default), "a list of block indices")
        return f"{name}={value!r} must be {want}"
    meta = f.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"{name}={value!r} is not one of {', '.join(map(str, meta['choices']))}"
    if meta.get("bounds") is not None:
        return meta["bounds"].problem(name, value)
    return None


_CONFIG_TYPES: dict[str, type] = {}  # class name -> config class, for reading records


def register_config_type(cls: type) -> type:
    """Make records of config class `cls` readable by `config_from_dict` (a technique's is registered with it)."""
    known = _CONFIG_TYPES.setdefault(cls.__name__, cls)
    if known is not cls:
        raise ValueError(f"two config classes named {cls.__name__}")
    return cls


def config_to_dict(config: TechniqueConfig) -> dict[str, Any]:
    """`config` as a typed, versioned JSON-able record (torchao's `config_to_dict` form).

    Example:
        >>> from vitshrink.techniques.prune import PruneConfig
        >>> config_to_dict(PruneConfig(heads=0.5))
        {'_type': 'PruneConfig', '_version': 1, '_data': {'heads': 0.5, 'mlp': 0.0, 'score': 'magnitude'}}
    """
    data = {f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
            for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    return {"_type": type(config).__name__, "_version": type(config).VERSION, "_data": data}


def config_from_dict(record: Mapping[str, Any]) -> TechniqueConfig:
    """The config a `config_to_dict` record holds; ConfigError naming what is wrong with it."""
    if not isinstance(record, Mapping) or "_type" not in record:
        raise ConfigError(f"invalid technique config record {record!r}: it needs _type, _version and _data")
    cls = _CONFIG_TYPES.get(record["_type"])
    if cls is None:
        raise ConfigError(f"unknown technique config type {record['_type']!r}; known: {', '.join(sorted(_CONFIG_TYPES))}")
    version = record.get("_version", 1)
    if not isinstance(version, int) or version > cls.VERSION:
        raise ConfigError(f"{record['_type']} record of version {version!r} was written by a newer vitshrink (this one "
                          f"reads up to version {cls.VERSION}); upgrade vitshrink to read it")
    data = dict(record.get("_data", {}))
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(data) - known):
        raise ConfigError(f"unknown {record['_type']} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


@dataclass(frozen=True)
class Technique:
    """One technique: its settings, how it is chosen, its stage, its checks, an active example and its
    identity setting (its handler is registered for its name: `vitshrink.compress.register_handler`).

    Attributes:
        name: How recipes, the registry and messages name it ("nystrom", "prune", "static_int8").
        stage: Where `build` applies its handler (student, prune, lowrank, tokens, finetune, quantize).
        config: Its frozen config dataclass; each field is a setting with its identity default.
        selector: The value of its stage's choice (`choice`: ``runtime``, ``lowrank``, ``student``)
            that chooses it, its name ("nystrom"); `ANY`: any value but "none" (its `choice_setting`
            holds the value: a student's model). None: chosen when one of `switches` is above zero.
        choice_setting: With an `ANY` selector, the setting whose value is the choice (a student's model).
        switches: Settings whose value above zero switches it on (prune: heads, mlp); searched always.
        on: Keyed settings (`vitshrink.techniques.keys`) that switch it on with valid values, given the
            keyed settings so far (a space's values are checked one at a time in a config where their
            technique is on).
        example: Its config in an active example that changes a small ViT (the transform contract test
            applies it); None: its config where `on` switches it on.
        identity: Its config at which its handler is exact, and the tolerance of that: a pair, or a
            function of the model returning one (Nystrom's m = n landmarks); None: it has none (a
            student is never the teacher, int8 is never float).
        shape_problem: (its own config, ModelShape) -> why the model's numbers cannot take it, or None.
        model_problem: (model, its own config) -> why the model's modules cannot take it, or None.
        problem: (its own settings) -> why they do not fit together, or None; asked where it is chosen
            (a custom student's width that its head count does not divide).
        accepts: Settings of its config that are not search dimensions (ort_int8 takes a hand-written
            calib_size).
        shared: The config class of settings it shares with other techniques, held once by the
            candidate (`DistillConfig`: a student's training and the KD fine-tune); its recipe table
            may set them (`searched` lists them).
        demands: (values_of) -> the (rule, closest) pairs a search space that can choose it asks of the
            models it produces: `rule(shape)` says why a model cannot take the most demanding value
            the space can sample (`values_of(key)` lists them), `closest(shape)` ranks the
            models for the message (the deepest for a block index). See `SearchSpace.check_model`.
        trains: Its setting holding the epochs it trains (a student, the KD fine-tune): a search
            stops a trial behind at rungs of its last training stage (`training_epochs`).
        references: (space) -> keyed settings of its configs in the hand-picked reference set that
            ``seed_with = "reference"`` opens a study with (the space's fixed values and ranges shape them).
        cost: (its own config, `CostPlan`, named) -> None: what it does to a ViT's analytic costs (the
            vitshrink sampler's estimates); `named(model_name)` gives a timm architecture's numbers.
        features: (its own config) -> numbers the vitshrink sampler's models read beside the analytic
            costs (a student's epochs, ToMe's r); asked of its identity config where it is not chosen,
            so every candidate has the same columns.
        stage_configs: (values_of) -> (name, keyed settings) of the models leaving its stage that a space
            of those values can build, for a student stage: the largest custom student (name None) and
            each named architecture (name: its selector value). The search checks them before a study.
        stage_shape: (its own config from `stage_configs` with name None, the teacher's ModelShape) ->
            the ModelShape of that model (a custom student's depth), which a space's checks ask of.
        space_problem: (space) -> why no sample of a search space that can choose it could be valid,
            or None: a combination of its settings' values that no draw can make work (a custom
            student's widths that none of its head counts divide). The space asks it when it is made.
    """

    name: str
    stage: str
    config: type
    selector: str | None = None
    choice_setting: str | None = None
    switches: tuple[str, ...] = ()
    on: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] = field(default_factory=dict)
    example: Any = None
    identity: tuple[Any, float] | Callable[[Any], tuple[Any, float]] | None = None
    shape_problem: Callable[[Any, Any], str | None] | None = None
    model_problem: Callable[[Any, Any], str | None] | None = None
    problem: Callable[[Any], str | None] | None = None
    accepts: tuple[str, ...] = ()
    demands: Callable[[Callable[[str], list[Any]]], Iterable[tuple[Callable[[Any], str | None], Callable[[Any], Any]]]] | None = None
    trains: str | None = None
    references: Callable[[Any], list[Mapping[str, Any]]] | None = None
    stage_configs: Callable[[Callable[[str], list[Any]]], Iterable[tuple[str | None, Mapping[str, Any]]]] | None = None
    shared: type | None = None
    stage_shape: Callable[[Any, Any], Any] | None = None
    space_problem: Callable[[Any], str | None] | None = None
    cost: Callable[[Any, Any, Callable[[str], tuple[int, int, int, int, int]]], None] | None = None
    features: Callable[[Any], tuple[float, ...]] | None = None

    def __post_init__(self) -> None:
        if not issubclass(self.config, TechniqueConfig):
            raise ValueError(f"technique {self.name!r}: its config {self.config.__name__} must derive from TechniqueConfig")
        own = {f.name for f in dataclasses.fields(self.config)}
        if unknown := sorted({*self.accepts, *self.switches, *filter(None, [self.choice_setting])} - own):
            raise ValueError(f"technique {self.name!r} names settings its config {self.config.__name__} lacks: {unknown}")
        if (self.choice_setting is not None) != (self.selector == ANY):
            raise ValueError(f"technique {self.name!r}: a choice_setting goes with a selector of value ANY, and only there")
        if self.stage not in STAGES:
            raise ValueError(f"technique {self.name!r}: unknown stage {self.stage!r}; stages are {STAGES}")
        if (self.selector is None) == (not self.switches):
            raise ValueError(f"technique {self.name!r} needs a selector or switches, not both")
        pair = self.identity if not callable(self.identity) else None
        for what, value in (("example", self.example), ("identity", pair[0] if pair else None)):
            if value is not None and not isinstance(value, self.config):
                raise ValueError(f"technique {self.name!r}: its {what} must be a {self.config.__name__}, "
                                 f"not {type(value).__name__}")
        if self.trains is not None and self.trains not in own:
            raise ValueError(f"technique {self.name!r} trains by {self.trains!r}, which is not one of its settings")

    # --- what it owns -------------------------------------------------------------------------
    @functools.cached_property
    def searched(self) -> tuple[str, ...]:
        """Its settings a search varies: its config's (not the `accepts` ones) and the shared ones."""
        shared = [f.name for f in dataclasses.fields(self.shared)] if self.shared else []
        return (*(f.name for f in dataclasses.fields(self.config) if f.name not in self.accepts), *shared)

    def how_chosen(self) -> str:
        """How a candidate chooses it, for messages: ``lowrank='nystrom'``, ``prune.heads > 0``."""
        if self.selector:
            return f"{self.choice} other than 'none'" if self.selector == ANY else f"{self.choice}={self.selector!r}"
        return " or ".join(f"{self.key_of(s)} > 0" for s in self.switches)

    def meta(self, name: str) -> Mapping[str, Any]:
        return self._metas[name]

    @functools.cached_property
    def _metas(self) -> dict[str, Mapping[str, Any]]:
        shared = dataclasses.fields(self.shared) if self.shared else ()
        return {f.name: f.metadata for f in (*dataclasses.fields(self.config), *shared)}

    def switch_on(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Keyed settings that switch it on with valid values, given keyed `values`."""
        return dict(self.on(values) if callable(self.on) else self.on)

    @functools.cached_property
    def choice(self) -> str | None:
        """The key of its stage's choice where a selector chooses it (``runtime``, ``lowrank``), or None."""
        return CHOICE_KEYS.get(self.stage, self.stage) if self.selector else None

    def key_of(self, name: str) -> str:
        """The search key of its setting `name`: ``<technique>.<setting>``, ``distill.<setting>`` for
        a shared one, its choice for the setting that chooses it (a student's model)."""
        if self.shared is not None and name in {f.name for f in dataclasses.fields(self.shared)}:
            return f"{SHARED}.{name}"
        if name == self.choice_setting:
            return self.choice  # type: ignore[return-value]
        return f"{self.name}.{name}"

    def settings_of(self, values: Mapping[str, Any]) -> Any:
        """Its own config from keyed settings `values` (a setting not there at its default)."""
        keys = {f.name: self.key_of(f.name) for f in dataclasses.fields(self.config)}
        return self.config(**{name: values[key] for name, key in keys.items() if key in values})

    def active_example(self) -> Any:
        """Its config in a candidate that applies it and changes a small ViT (see `example`).

        Example:
            >>> get_technique("tome").active_example()
            TomeConfig(r=2)
        """
        return self.example if self.example is not None else self.settings_of(self.switch_on({}))

    def identity_of(self, model: Any) -> tuple[Any, float] | None:
        """Its config at which its handler leaves `model`'s function unchanged, and the tolerance."""
        pair = self.identity(model) if callable(self.identity) else self.identity
        return None if pair is None else (pair[0], float(pair[1]))

    def settings(self, config: Any) -> Any:
        """Its own frozen config in candidate `config` (its identity config where not chosen).

        Example:
            >>> from vitshrink.spaces import CompressionConfig
            >>> get_technique("prune").settings(CompressionConfig({"prune": {"heads": 0.5}}))
            PruneConfig(heads=0.5, mlp=0.0, score='magnitude')
        """
        return config.get(self.name) or self.config()

    def is_chosen_by(self, settings: Any) -> bool:
        """Whether its own config `settings` chooses it (a student's model other than "none"; a
        pruning fraction above zero), i.e. whether a candidate holding it applies it."""
        if self.selector:
            return self.selector != ANY or getattr(settings, self.choice_setting or "", "none") != "none"
        return any(getattr(settings, s) > 0 for s in self.switches)

    def needs_problem(self, settings: Any) -> str | None:
        """Where it is chosen: a setting below its `needs`, or its own `problem`; None when it fits."""
        for f in dataclasses.fields(self.config):
            need = f.metadata.get("needs")
            if need is not None and getattr(settings, f.name) < need:
                note = f" {f.metadata['needs_note']}" if f.metadata["needs_note"] else ""
                return f"{self.name} needs {f.name} >= {need}{note}"
        return self.problem(settings) if self.problem is not None else None


_TECHNIQUES: dict[str, Technique] = {}


def register_technique(technique: Technique) -> Technique:
    """Add `technique` to the registry under its name (as timm's `register_model`); returns it."""
    if technique.name in _TECHNIQUES:
        raise ValueError(f"technique {technique.name!r} registered twice")
    if other := next((t for t in _TECHNIQUES.values() if t.config is technique.config), None):
        raise ValueError(f"techniques {other.name!r} and {technique.name!r} share the config class "
                         f"{technique.config.__name__}; each technique has its own (its handler is found by it)")
    register_config_type(technique.config)
    _TECHNIQUES[technique.name] = technique
    ordered = sorted(_TECHNIQUES.values(), key=lambda t: STAGES.index(t.stage))  # stable: registration order within a stage
    _TECHNIQUES.clear()
    _TECHNIQUES.update((t.name, t) for t in ordered)
    return technique


def get_technique(name: str) -> Technique:
    try:
        return _TECHNIQUES[name]
    except KeyError:
        raise KeyError(f"unknown technique {name!r}; registered: {', '.join(_TECHNIQUES)}") from None


def list_techniques(stage: str | None = None) -> list[str]:
    """Names of the registered techniques, in the order `build` applies them (by stage, then
    registration order), optionally of one stage."""
    ordered = sorted(_TECHNIQUES.values(), key=lambda t: STAGES.index(t.stage))
    return [t.name for t in ordered if stage is None or t.stage == stage]


def techniques() -> list[Technique]:
    return list(_TECHNIQUES.values())


def selector_choices() -> dict[str, tuple[str, ...]]:
    """Each choice with fixed values -> "none" and the techniques' values, in registration order
    (``{"lowrank": ("none", "nystrom", "svd"), "runtime": ("none", "dynamic_int8", ...)}``): a
    technique registered with a selector value is a choice there, nothing else to edit.

    Example:
        >>> selector_choices()["lowrank"]
        ('none', 'nystrom', 'svd')
    """
    out: dict[str, tuple[str, ...]] = {}
    for t in _TECHNIQUES.values():
        if t.selector and t.selector != ANY:
            out[t.choice] = (*out.get(t.choice, ("none",)), t.selector)  # type: ignore[index]
    return out


def chosen_techniques(config: Any) -> list[Technique]:
    """The techniques candidate `config` chooses (those it holds), in the order `build` applies them."""
    return [_TECHNIQUES[name] for name, _ in config.parts]


def training_epochs(config: Any) -> tuple[str, int] | None:
    """(stage, epochs) of the last stage of `config` that trains (`Technique.trains`), or None.

    Example:
        >>> from vitshrink.spaces import CompressionConfig
        >>> training_epochs(CompressionConfig({"prune": {"heads": 0.5}, "finetune": {"epochs": 3}}))
        ('finetune', 3)
    """
    for t in reversed(chosen_techniques(config)):
        epochs = getattr(t.settings(config), t.trains) if t.trains else 0
        if epochs > 0:
            return t.stage, int(epochs)
    return None


def without_stage(config: Any, stage: str) -> Any:
    """Candidate `config` without its techniques of `stage` (the float model of a quantized
    candidate: ``without_stage(c, "quantize")``).

    Example:
        >>> from vitshrink.spaces import CompressionConfig
        >>> cfg = CompressionConfig({"prune": {"heads": 0.5}, "static_int8": {"calib_size": 8}})
        >>> without_stage(cfg, "quantize").names
        ('prune',)
    """
    return type(config)({n: c for n, c in config.parts if _TECHNIQUES[n].stage != stage}, distill=config.distill)


def deployment_of(config: Any) -> str:
    """The name of the quantize-stage technique (the runtime) `config` chooses, or "none".

    Example:
        >>> from vitshrink.spaces import CompressionConfig
        >>> deployment_of(CompressionConfig({"ort_int8": {}})), deployment_of(CompressionConfig())
        ('ort_int8', 'none')
    """
    return next((t.name for t in chosen_techniques(config) if t.stage == "quantize"), "none")


def config_problem(config: Any, shape: Any) -> str | None:
    """Why `config` cannot be applied to the model of `shape` (a `vitshrink.spaces.ModelShape`: the
    model leaving the student stage), or None when it can: each chosen technique's own `shape_problem`.

    Example:
        >>> from vitshrink.spaces import CompressionConfig, ModelShape
        >>> shape = ModelShape("a 1-block student", tokens=17, depth=1)
        >>> config_problem(CompressionConfig({"patch_drop": {"fraction": 0.5, "at": (2,)}}), shape)
        'patch_drop.at names block(s) [2] but a 1-block student has 1 blocks; use indices 0..0'
    """
    return next((p for t in chosen_techniques(config)
                 if t.shape_problem is not None and (p := t.shape_problem(t.settings(config), shape))), None)


def calibration_images(needed: bool = True) -> Any:
    """The setting of a post-training quantization calibrated on training images: how many (at
    least one where `needed`; otherwise 0 keeps it uncalibrated)."""
    return setting(0, bounds=AT_LEAST_ZERO, needs=1 if needed else None, needs_note="calibration images", unused=True)


__all__ = [
    "ABOVE_ZERO",
    "ANY",
    "AT_LEAST_ZERO",
    "Bounds",
    "FRACTION",
    "STAGES",
    "TechniqueConfig",
    "calibration_images",
    "config_from_dict",
    "config_to_dict",
    "register_config_type",
    "Technique",
    "chosen_techniques",
    "config_problem",
    "check_kind",
    "deployment_of",
    "selector_choices",
    "get_technique",
    "list_techniques",
    "register_technique",
    "setting",
    "techniques",
    "training_epochs",
    "without_stage",
]
