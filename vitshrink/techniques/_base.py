"""`Technique`: one compression technique as a record, and the registry that holds them by name.

A technique owns a frozen config dataclass (its settings by their short names, which are also its
search dimensions in a recipe), how it is chosen (a value of a selector setting such as
``quant = "static_int8"``, or one of its own settings above zero such as ``prune_heads``), its checks
against the model and the name of its handler (the transform registered in `vitshrink.compress`).
Its settings exist only where it is chosen: that is the whole of a search space's conditions.

Each setting is stored under a field of the flat `CompressionConfig` (the JSON every trial keeps,
and the Optuna parameter name), given by `fields`.

Example:
    >>> from vitshrink.techniques import get_technique
    >>> nystrom = get_technique("nystrom")
    >>> nystrom.fields["landmarks"], nystrom.chosen({"lowrank": "nystrom"}), nystrom.chosen({})
    ('landmarks', True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..spaces._config import CompressionConfig

_DEFAULTS = CompressionConfig().to_dict()
# the distillation settings a student's training and the KD fine-tune share (each stored once)
DISTILL_FIELDS = {"temperature": "kd_temperature", "alpha": "kd_alpha", "augment": "kd_augment",
                  "feature_weight": "kd_feature_weight"}
ANY = "*"  # a selector value: any value but "none" chooses the technique (a student: "custom" or a timm name)


def setting(default: Any, *, choices: tuple[Any, ...] | None = None, as_list: bool = False,
            only: str | None = None) -> Any:
    """A field of a technique's config dataclass.

    Args:
        default: The identity value (CompressionConfig's default for the field it is stored in).
        choices: The values it may take (a recipe naming another is refused).
        as_list: A two-number list in a recipe is a set of choices, never a range.
        only: The selector value this setting needs besides the technique (a custom student's width).
    """
    meta = {"choices": choices, "as_list": as_list or choices is not None, "only": only}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Technique:
    """One technique: its settings, how it is chosen, its checks and its handler.

    Attributes:
        name: How recipes, the registry and messages name it ("nystrom", "prune", "static_int8").
        stage: Where `build` applies its handler (student, prune, lowrank, tokens, finetune, quantize).
        config: Its frozen config dataclass; each field is a setting with its identity default.
        fields: Setting name -> the CompressionConfig field it is stored in (and the Optuna parameter).
        selector: (CompressionConfig field, value) that chooses it, e.g. ("lowrank", "nystrom"); value
            `ANY`: any value but "none". None: chosen when one of `switches` is above zero.
        switches: Settings whose value above zero switches it on (prune: heads, mlp); searched always.
        on: Flat settings that switch it on with valid values, given the settings so far (a space's
            values are checked one at a time in a config where their technique is on).
        handler: The name of its transform in `vitshrink.compress` (two techniques may share one).
        shape_problem: (config, ModelShape) -> why the model's numbers cannot take it, or None.
        model_problem: (model, config) -> why the model's modules cannot take it, or None.
    """

    name: str
    stage: str
    config: type
    fields: Mapping[str, str]
    selector: tuple[str, str] | None = None
    switches: tuple[str, ...] = ()
    on: Mapping[str, Any] | Callable[[Mapping[str, Any]], Mapping[str, Any]] = field(default_factory=dict)
    handler: str = ""
    shape_problem: Callable[[CompressionConfig, Any], str | None] | None = None
    model_problem: Callable[[Any, CompressionConfig], str | None] | None = None

    def __post_init__(self) -> None:
        own = {f.name for f in dataclasses.fields(self.config)}
        if own != set(self.fields):
            raise ValueError(f"technique {self.name!r}: config fields {sorted(own)} and fields {sorted(self.fields)} differ")
        unknown = set(self.fields.values()) - set(_DEFAULTS)
        if unknown:
            raise ValueError(f"technique {self.name!r} stores settings in unknown CompressionConfig fields {sorted(unknown)}")
        if (self.selector is None) == (not self.switches):
            raise ValueError(f"technique {self.name!r} needs a selector or switches, not both")

    # --- what it owns -------------------------------------------------------------------------
    def flat(self, name: str) -> str:
        """The CompressionConfig field of setting `name`."""
        return self.fields[name]

    def setting_of(self, flat_field: str) -> str | None:
        """The setting stored in CompressionConfig field `flat_field`, or None."""
        return next((k for k, v in self.fields.items() if v == flat_field), None)

    def meta(self, name: str) -> Mapping[str, Any]:
        return next(f.metadata for f in dataclasses.fields(self.config) if f.name == name)

    @property
    def switch_fields(self) -> tuple[str, ...]:
        """The flat fields that decide whether it is chosen (its selector, or its switches)."""
        return (self.selector[0],) if self.selector else tuple(self.fields[s] for s in self.switches)

    @property
    def conditional_fields(self) -> tuple[str, ...]:
        """The flat fields that exist only where it is chosen (all but what chooses it)."""
        return tuple(f for f in self.fields.values() if f not in self.switch_fields)

    # --- when it applies ----------------------------------------------------------------------
    def chosen(self, values: Mapping[str, Any]) -> bool:
        """Whether flat settings `values` (missing ones at their defaults) choose this technique."""
        get = lambda f: values.get(f, _DEFAULTS[f])
        if self.selector:
            field_, want = self.selector
            return get(field_) != "none" if want == ANY else get(field_) == want
        return any(get(f) > 0 for f in self.switch_fields)

    def applies(self, flat_field: str, values: Mapping[str, Any]) -> bool:
        """Whether `flat_field`, one of its settings, is used under `values`."""
        if not self.chosen(values):
            return False
        name = self.setting_of(flat_field)
        only = self.meta(name)["only"] if name else None
        return only is None or values.get(self.selector[0], _DEFAULTS[self.selector[0]]) == only  # type: ignore[index]

    def switch_on(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Flat settings that switch it on with valid values, given `values`."""
        return dict(self.on(values) if callable(self.on) else self.on)

    def settings(self, config: CompressionConfig) -> Any:
        """Its own frozen config, read from a flat `CompressionConfig`.

        Example:
            >>> from vitshrink.techniques import get_technique
            >>> get_technique("prune").settings(CompressionConfig(prune_heads=0.5))
            PruneConfig(heads=0.5, mlp=0.0, score='magnitude')
        """
        return self.config(**{k: getattr(config, f) for k, f in self.fields.items()})


_TECHNIQUES: dict[str, Technique] = {}


def register_technique(technique: Technique) -> Technique:
    """Add `technique` to the registry under its name (as timm's `register_model`); returns it."""
    if technique.name in _TECHNIQUES:
        raise ValueError(f"technique {technique.name!r} registered twice")
    _TECHNIQUES[technique.name] = technique
    return technique


def get_technique(name: str) -> Technique:
    try:
        return _TECHNIQUES[name]
    except KeyError:
        raise KeyError(f"unknown technique {name!r}; registered: {', '.join(_TECHNIQUES)}") from None


def list_techniques(stage: str | None = None) -> list[str]:
    """Names of the registered techniques, in registration order (optionally of one stage)."""
    return [t.name for t in _TECHNIQUES.values() if stage is None or t.stage == stage]


def techniques() -> list[Technique]:
    return list(_TECHNIQUES.values())


def owners(flat_field: str) -> list[Technique]:
    """The techniques that own `flat_field` as a setting that exists only where they are chosen."""
    return [t for t in _TECHNIQUES.values() if flat_field in t.conditional_fields]


def selected_by(flat_field: str, value: Any) -> Technique | None:
    """The technique that `flat_field = value` chooses (quant = "static_int8" -> static_int8), or None."""
    return next((t for t in _TECHNIQUES.values() if t.selector and t.selector[0] == flat_field
                 and t.chosen({flat_field: value})), None)


def field_applies(flat_field: str, values: Mapping[str, Any]) -> bool:
    """Whether `flat_field` is used under flat settings `values`: a setting of no technique's
    condition (a selector, a switch) always is; another only where a technique owning it is chosen."""
    own = owners(flat_field)
    return not own or any(t.applies(flat_field, values) for t in own)


def chosen_techniques(config: CompressionConfig | Mapping[str, Any]) -> list[Technique]:
    values = config.to_dict() if isinstance(config, CompressionConfig) else config
    return [t for t in _TECHNIQUES.values() if t.chosen(values)]




@dataclass(frozen=True)
class NoSettings:
    """The config of a technique with nothing to set (a runtime: dynamic int8, bf16, ORT fp32)."""


@dataclass(frozen=True)
class CalibratedConfig:
    """The config of a post-training quantization calibrated on training images."""

    calib_size: int = setting(0)  # training images the int8 ranges are calibrated on, >= 1


__all__ = [
    "ANY",
    "DISTILL_FIELDS",
    "CalibratedConfig",
    "NoSettings",
    "Technique",
    "chosen_techniques",
    "field_applies",
    "get_technique",
    "list_techniques",
    "owners",
    "register_technique",
    "selected_by",
    "setting",
    "techniques",
]
