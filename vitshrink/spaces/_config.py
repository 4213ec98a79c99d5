"""`CompressionConfig`: one candidate of the search, the chosen techniques' own frozen configs in the
order `build` applies them, and the distillation settings the techniques that distil share.

It round-trips through JSON as typed, versioned records (`vitshrink.techniques.config_to_dict`)::

    {"techniques": {"prune": {"_type": "PruneConfig", "_version": 1, "_data": {"heads": 0.5, ...}},
                    "ort_int8": {"_type": "OrtInt8Config", "_version": 1, "_data": {"calib_size": 0}}}}

A flat record (what studies stored before techniques were configs) and flat keyword arguments,
``CompressionConfig(prune_heads=0.5)``, are read by `vitshrink.spaces._legacy`, the one reader of
the flat form.

Example:
    >>> from vitshrink.techniques.prune import PruneConfig
    >>> cfg = CompressionConfig({"prune": PruneConfig(heads=0.5), "dynamic_int8": {}})
    >>> cfg.names, cfg["prune"].heads
    (('prune', 'dynamic_int8'), 0.5)
    >>> CompressionConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import techniques as _registry
from ..errors import ConfigError
from . import _legacy
from ._legacy import FlatConfig

_DISTILL = _registry.DistillConfig()


@dataclass(frozen=True, init=False)
class CompressionConfig:
    """What to do to the teacher: the chosen techniques' configs, applied in the stage order
    student -> prune -> low-rank -> tokens -> KD fine-tune -> quantize.

    ``CompressionConfig()`` is the teacher itself. A technique whose config does not choose it (a
    pruning of 0 heads and 0 units, a student of model "none") is left out.

    Args:
        techniques: Technique name -> its config (`vitshrink.techniques.get_technique(name).config`),
            a record `config_to_dict` wrote, or a dict of its settings.
        distill: The distillation settings (`DistillConfig`, or a dict of them) of the techniques that
            distil (a student, the KD fine-tune).
        **flat: The flat form instead (`FlatConfig`'s fields), read by `_legacy.read_config`.

    Raises:
        ConfigError: an unknown technique, a config of another technique's type, two techniques of
            one choice (two runtimes), a setting a chosen technique needs, or settings that do not fit.
    """

    parts: tuple[tuple[str, Any], ...]
    distill: Any

    def __init__(self, techniques: Mapping[str, Any] | None = None, /, *, distill: Any = None, **flat: Any) -> None:
        if flat:
            if techniques is not None or distill is not None:
                raise ConfigError("give a compression config as technique configs, CompressionConfig({'prune': "
                                  "PruneConfig(heads=0.5)}), or in the flat form, CompressionConfig(prune_heads=0.5); "
                                  "not both")
            if named := sorted(set(flat) & set(_registry.list_techniques()) - set(_legacy.FLAT_FIELDS)):
                raise ConfigError(f"give technique configs as a mapping, CompressionConfig({{{named[0]!r}: ...}}), not as "
                                  f"keyword arguments ({', '.join(named)}=...)")
            techniques, distill = _legacy.read_config(flat)
        parts, distill = _compose(techniques or {}, distill)
        object.__setattr__(self, "parts", parts)
        object.__setattr__(self, "distill", distill)

    # --- what it holds -------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """The chosen techniques, in build order."""
        return tuple(name for name, _ in self.parts)

    def __getitem__(self, name: str) -> Any:
        for n, config in self.parts:
            if n == name:
                return config
        _registry.get_technique(name)  # an unknown name: its own message
        raise KeyError(f"this config does not choose {name!r}; it chooses {', '.join(self.names) or 'nothing (the teacher)'}")

    def get(self, name: str, default: Any = None) -> Any:
        """Technique `name`'s config, or `default` where this candidate does not choose it."""
        return next((config for n, config in self.parts if n == name), default)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    @property
    def is_identity(self) -> bool:
        return not self.parts and self.distill == _DISTILL

    def __repr__(self) -> str:
        parts = ", ".join(f"{n!r}: {c!r}" for n, c in self.parts)
        distill = "" if self.distill == _DISTILL else f", distill={self.distill!r}"
        return f"CompressionConfig({{{parts}}}{distill})"

    # --- records -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The typed record every trial stores (`from_dict` reads it back, and the flat form)."""
        out: dict[str, Any] = {"techniques": {n: _registry.config_to_dict(c) for n, c in self.parts}}
        if self.distill != _DISTILL:
            out["distill"] = _registry.config_to_dict(self.distill)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompressionConfig:
        """A candidate from its record, or from the flat form (`FlatConfig.to_dict`, as earlier
        versions stored it)."""
        if "techniques" not in data:
            return from_flat(data)
        unknown = sorted(set(data) - {"techniques", "distill"})
        if unknown:
            raise ConfigError(f"unknown compression config key(s) {', '.join(unknown)}; a config holds techniques "
                              "and distill")
        return cls(dict(data["techniques"]), distill=data.get("distill"))

    @classmethod
    def from_json(cls, text: str) -> CompressionConfig:
        return cls.from_dict(json.loads(text))

    # --- the flat form -------------------------------------------------------------------------
    @functools.cached_property
    def flat(self) -> FlatConfig:
        """This candidate in the flat form, for code written against it."""
        return _legacy.flat_of(self)

    def replace(self, **changes: Any) -> CompressionConfig:
        """This candidate with flat settings `changes` (``replace(quant="none")``)."""
        return from_flat(self.flat.replace(**changes))

    def summary(self) -> str:
        """A short human label in the technique form: each chosen technique with the settings it changes
        from its own defaults, then the distillation settings changed; ``teacher`` for the identity.

        Example:
            >>> CompressionConfig({"prune": {"heads": 0.5}, "tome": {"r": 2}, "dynamic_int8": {}}).summary()
            'prune(heads=0.5) tome(r=2) dynamic_int8'
        """
        parts = [_changed(name, config) for name, config in self.parts]
        if self.distill != _DISTILL:
            parts.append(_changed("distill", self.distill))
        return " ".join(parts) or "teacher"


def _changed(name: str, config: Any) -> str:
    """``name(setting=value ...)`` for the settings of `config` that differ from its class's defaults."""
    default = type(config)()
    changed = [f"{f.name}={_short(v)}" for f in dataclasses.fields(config)
               if (v := getattr(config, f.name)) != getattr(default, f.name)]
    return f"{name}({' '.join(changed)})" if changed else name


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def from_flat(flat: FlatConfig | Mapping[str, Any]) -> CompressionConfig:
    """The candidate a flat config (or a mapping of its fields) means: each technique it chooses with
    its settings, and its distillation settings (`_legacy.read_config`).

    Example:
        >>> from_flat(FlatConfig(lowrank="nystrom", landmarks=4)).names
        ('nystrom',)
    """
    parts, distill = _legacy.read_config(flat)
    return CompressionConfig(parts, distill=distill)


def _part(name: str, value: Any) -> Any:
    technique = _registry.get_technique(name)  # KeyError: the registered ones
    if isinstance(value, Mapping) and "_type" in value:
        value = _registry.config_from_dict(value)
    elif isinstance(value, Mapping):
        known = [f.name for f in dataclasses.fields(technique.config)]
        if unknown := sorted(set(value) - set(known)):
            raise ConfigError(f"unknown {name} setting(s) {', '.join(unknown)}; {name} takes "
                              f"{', '.join(known) or 'no settings'}")
        value = technique.config(**value)
    if type(value) is not technique.config:
        raise ConfigError(f"technique {name!r} takes a {technique.config.__name__}, not {type(value).__name__}")
    return value


def _compose(techniques: Mapping[str, Any], distill: Any) -> tuple[tuple[tuple[str, Any], ...], Any]:
    """The parts, in build order, and the distillation settings; ConfigError where they do not fit."""
    try:
        parts = {name: _part(name, value) for name, value in techniques.items()}
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    if distill is None:
        distill = _DISTILL
    elif isinstance(distill, Mapping):
        distill = _registry.config_from_dict(distill) if "_type" in distill else _registry.DistillConfig(**distill)
    if not isinstance(distill, _registry.DistillConfig):
        raise ConfigError(f"distill takes a DistillConfig, not {type(distill).__name__}")
    for name, config in parts.items():  # a part that does not choose its technique is left out: unless it
        technique = _registry.get_technique(name)  # sets what only a chosen technique uses (it would do nothing)
        if technique.is_chosen_by(config):
            continue
        default = technique.config()
        if unused := [f.name for f in dataclasses.fields(config)
                      if f.metadata.get("unused") and getattr(config, f.name) != getattr(default, f.name)]:
            raise ConfigError(f"invalid compression config: {name} {unused[0]}={getattr(config, unused[0])!r} is only used "
                              f"where {name} is chosen ({technique.how_chosen()}); choose it, or leave {unused[0]} out")
    order = _registry.list_techniques()
    chosen = [(n, parts[n]) for n in order if n in parts and _registry.get_technique(n).is_chosen_by(parts[n])]
    groups: dict[str, str] = {}
    for name, config in chosen:
        technique = _registry.get_technique(name)
        if technique.choice:  # one technique per choice: one runtime, one low-rank method, one student
            if (other := groups.setdefault(technique.choice, name)) != name:
                raise ConfigError(f"invalid compression config: {other} and {name} are both a {technique.choice} "
                                  "choice; a candidate takes one of them")
        if problem := technique.needs_problem(config):
            raise ConfigError(f"invalid compression config: {problem}")
    if not any(_registry.get_technique(n).shared for n, _ in chosen):
        for k in ("augment", "feature_weight"):  # what only distillation reads (temperature and alpha are kept)
            if getattr(distill, k) != getattr(_DISTILL, k):
                raise ConfigError(f"invalid compression config: distill {k}={getattr(distill, k)!r} is only used by a "
                                  "technique that distils (student, finetune); add one, or leave it out")
    return tuple(chosen), distill


__all__ = ["CompressionConfig", "ConfigError", "FlatConfig", "from_flat"]
