"""A recipe's [space] in its two forms.

The technique form names the techniques a space searches, and gives each one's settings in a table
of its own; a technique's settings exist only where it is chosen::

    [space]
    techniques = ["prune", "nystrom", "dynamic_int8"]
    [space.prune]
    heads = [0.0, 0.5]
    [space.nystrom]
    landmarks = [4, 16]

A technique chosen by a selector (quant: the runtimes; lowrank: nystrom, svd; student) is one choice
beside "none"; ``always = ["quant"]`` leaves "none" out. A technique switched on by its own settings
(prune, tome, patch_drop, finetune) is on where they are above zero: give ranges that include 0, or
``optional = true``. A single value is a fixed setting. The student's models are its setting
``model = ["custom", "deit_tiny_patch16_224"]``.

The flat form (``[space] quant = [...]``, ``prune_heads = [...]``, ``[fixed]``), which vitshrink read
before techniques were modules and which studies store, is still read as before; a recipe text
written in it gets one warning with the same space in the technique form.

Both are read into search keys (`vitshrink.techniques.keys`): the technique form here, the flat
form by `vitshrink.spaces._legacy` (through `SearchSpace.from_dict`).

Example:
    >>> keyed, fixed = keyed_tables({"techniques": ["nystrom"], "nystrom": {"landmarks": [4, 16]}}, {}, "<recipe>")
    >>> keyed
    {'lowrank': ['none', 'nystrom'], 'nystrom.landmarks': [4, 16]}
"""

from __future__ import annotations

import difflib
import json
import logging
import tomllib
from typing import Any

from .. import techniques as _registry
from ..techniques import keys as K
from ._config import ConfigError
from ._legacy import is_flat
from ._space import SearchSpace, always_choices

log = logging.getLogger("vitshrink.spaces._recipe")

FORM_KEYS = ("techniques", "always")
# how `always` names the choices -> their keys (the runtime choice is "quant" in the documented form, or "runtime")
ALWAYS = {"student": "student", "lowrank": "lowrank", "quant": "runtime", "runtime": "runtime"}


def is_technique_form(space: dict[str, Any]) -> bool:
    return "techniques" in space


def read_space(space: dict[str, Any], fixed: dict[str, Any], source: str) -> SearchSpace:
    """The SearchSpace of a recipe's [space] (and, in the flat form, [fixed]) tables, in either form."""
    return SearchSpace.from_dict(*keyed_tables(space, fixed, source))


def warn_if_flat(doc: dict[str, Any], space: SearchSpace, source: str) -> None:
    """One warning, showing `space` in the technique form, for a recipe text whose [space] is flat.
    (Recipes stored on studies and rebuilt in workers are flat dicts, read without a word.)"""
    if not is_technique_form(doc.get("space", {})) and is_flat(doc.get("space", {}), doc.get("fixed")):
        log.warning("%s: [space] is in the flat form, read as before; in the technique form it reads:\n%s",
                    source, technique_form_toml(space))


def keyed_tables(space: dict[str, Any], fixed: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(space, fixed) keyed by search key from the technique form; the flat form as it is (its names
    are read by `SearchSpace.from_dict`)."""
    if not is_technique_form(space):
        return space, fixed
    if fixed:
        raise ConfigError(f"{source}: [fixed] belongs to the flat form; in the technique form give a fixed setting "
                          "as a single value in its technique's table, e.g. [space.student] epochs = 40")
    names = _technique_names(space, source)
    tables = _technique_tables(space, names, source)
    keyed = _selector_choices(space, names, tables, source)
    for name in names:
        technique = _registry.get_technique(name)
        own = K.own_keys(technique)
        for setting, spec in tables.get(name, {}).items():
            key = own[setting]
            if K.get_key(key).kind == "choice":
                continue  # the choice's values are made above
            if key in keyed and keyed[key] != spec:
                raise ConfigError(f"{source}: space.{name}.{setting} is one setting ({key}) with another technique "
                                  f"that gives it as {keyed[key]!r}; give it once, or the same in both")
            keyed[key] = spec
    for name in names:
        technique = _registry.get_technique(name)
        if technique.switches and not any(f"{name}.{s}" in keyed for s in technique.switches):
            raise ConfigError(f"{source}: {name} is in space.techniques but [space.{name}] searches none of "
                              f"{', '.join(technique.switches)}; give e.g. {technique.switches[0]} = "
                              "{low = 0.1, high = 0.5, optional = true} (optional: off is one of the choices)")
    return keyed, {}


def _technique_names(space: dict[str, Any], source: str) -> list[str]:
    names = space["techniques"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: space.techniques = {names!r} must be a list of technique names")
    known = _registry.list_techniques()
    for n in names:
        if n not in known:
            raise ConfigError(f"{source}: space.techniques names an unknown technique {n!r}{_hint(n, known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{source}: space.techniques lists a technique twice: {names}")
    return names


def _technique_tables(space: dict[str, Any], names: list[str], source: str) -> dict[str, dict[str, Any]]:
    tables = {k: v for k, v in space.items() if k not in FORM_KEYS}
    known = _registry.list_techniques()
    for key, table in tables.items():
        if key not in known:
            flat = " (a flat-form setting: the two forms do not mix)" if not isinstance(table, dict) else ""
            raise ConfigError(f"{source}: unknown key space.{key}{flat}; the technique form takes techniques, "
                              f"always and one table per technique{_hint(key, known)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: space.{key} must be a table of {key}'s settings")
        if key not in names:
            raise ConfigError(f"{source}: [space.{key}] is given but {key} is not in space.techniques; add it there")
        technique = _registry.get_technique(key)
        for setting in table:
            if setting not in technique.searched:
                raise ConfigError(f"{source}: unknown setting space.{key}.{setting}"
                                  f"{_hint(setting, list(technique.searched)) if technique.searched else f'; {key} has no settings'}")
    return tables


def _selector_choices(space: dict[str, Any], names: list[str], tables: dict[str, dict[str, Any]],
                      source: str) -> dict[str, Any]:
    always = space.get("always", [])
    if not isinstance(always, list) or any(a not in ALWAYS for a in always):
        raise ConfigError(f"{source}: space.always = {always!r} must list some of student, lowrank, quant (the "
                          "choices that never take 'none')")
    always = {ALWAYS[a]: a for a in always}
    keyed: dict[str, Any] = {}
    for choice in dict.fromkeys(ALWAYS.values()):
        chosen = [t for t in map(_registry.get_technique, names) if t.choice == choice]
        if not chosen:
            if choice in always:
                raise ConfigError(f"{source}: space.always names {always[choice]} but space.techniques has none of "
                                  "its techniques")
            continue
        values: list[Any] = []
        for t in chosen:
            if t.selector != _registry.ANY:
                values.append(t.selector)
                continue
            key = K.get_key(K.choice_key(t)).setting
            given = tables.get(t.name, {}).get(key)
            if given is None:
                raise ConfigError(f"{source}: [space.{t.name}] needs {key} = [...] (e.g. \"custom\" or a timm model name)")
            values += given if isinstance(given, list) else [given]
        choices = values if choice in always else ["none", *values]
        keyed[choice] = choices[0] if len(choices) == 1 else choices
    return keyed


def technique_form_toml(space: SearchSpace) -> str:
    """`space` written in the technique form (TOML), ending with a note where the two are not the
    same space to the letter (a choice whose "none" is not its first value).

    Example:
        >>> print(technique_form_toml(SearchSpace.from_dict({"lowrank": ["none", "nystrom"], "landmarks": [4, 16]})))
        [space]
        techniques = ["nystrom"]
        [space.nystrom]
        landmarks = [4, 16]
    """
    T = _registry
    given = {d.name: d for d in space.dimensions}
    fixed = dict(space.fixed)
    keys = K.search_keys()
    names: list[str] = []
    always: list[str] = []
    tables: dict[str, dict[str, str]] = {}
    for t in T.techniques():
        choice = K.choice_key(t)
        if choice is None or any(K.choice_key(T.get_technique(n)) == choice for n in names):
            continue
        values = _values(choice, given, fixed)
        chosen = [v for v in values if v != "none"]
        if not chosen:
            continue
        if "none" not in values:
            always.append(next(a for a, c in ALWAYS.items() if c == choice))
        owners = keys[choice].owners
        if keys[choice].setting is not None:  # a student: its models are its setting
            names.append(owners[0].name)
            tables[owners[0].name] = {keys[choice].setting: _toml(chosen if choice in given else chosen[0])}
        else:
            names += [v for v in chosen if v not in names]
    for t in T.techniques():  # on where a switch can be above zero
        if t.switches and any(max(_values(f"{t.name}.{s}", given, fixed) or [0], key=_magnitude) for s in t.switches):
            names.append(t.name)
    stages = list(dict.fromkeys(t.stage for t in T.techniques()))  # registration order: build's stages
    names.sort(key=lambda n: stages.index(T.get_technique(n).stage))  # stable: a choice keeps its values' order
    dropped = []
    for key in [*given, *fixed]:
        if keys[key].kind == "choice":
            continue
        owner = next((t for t in keys[key].owners if t.name in names), None)
        if owner is None:
            dropped.append(key)
            continue
        spec = _dimension_toml(given[key]) if key in given else _toml(fixed[key])
        tables.setdefault(owner.name, {})[keys[key].setting] = spec
    lines = ["[space]", f"techniques = {_toml(names)}"]
    if always:
        lines.append(f"always = {_toml(always)}")
    for name in names:
        if tables.get(name):
            lines.append(f"[space.{name}]")
            lines += [f"{k} = {v}" for k, v in tables[name].items()]
    lines += [f"# {space.param(k)}: set, but no technique that uses it is searched, so it is left out" for k in dropped]
    text = "\n".join(lines)
    try:
        same = read_space(tomllib.loads(text)["space"], {}, "").to_dict() == space.to_dict()
    except ConfigError:
        same = False
    if not same and not dropped:
        text += "\n# the same settings, though the choices' order differs: a study made from the flat form keeps it"
    return text


def stored_space(space: SearchSpace) -> dict[str, Any]:
    """The [space] tables a recipe stores `space` as: the technique form, or the space's own keyed
    tables (`SearchSpace.to_dict`) where the technique form cannot say the same space to the letter (a
    choice whose "none" is not its first value, a fixed setting no searched technique uses), so a
    stored study never changes meaning.

    Example:
        >>> stored_space(SearchSpace.from_dict({"lowrank": ["none", "nystrom"], "landmarks": [4, 16]}))
        {'space': {'techniques': ['nystrom'], 'nystrom': {'landmarks': [4, 16]}}}
    """
    try:
        tables = tomllib.loads(technique_form_toml(space))["space"]
        if read_space(tables, {}, "").to_dict() == space.to_dict():
            return {"space": tables}
    except ConfigError:
        pass
    return space.to_dict()


def _values(name: str, given: dict[str, Any], fixed: dict[str, Any]) -> list[Any]:
    if name in given:
        d = given[name]
        return list(d.choices) if d.choices is not None else [d.low, d.high]
    return [fixed[name]] if name in fixed else []


def _magnitude(value: Any) -> float:
    return float(value or 0)


def _dimension_toml(d: Any) -> str:
    spec = d.to_dict()
    if "choices" in spec:
        choices = spec["choices"]
        plain = always_choices(d.name) or isinstance(choices[0], list) or not (
            len(choices) == 2 and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices))
        return _toml(choices) if plain else f"{{choices = {_toml(choices)}}}"
    if set(spec) == {"low", "high"} and not always_choices(d.name):
        return _toml([spec["low"], spec["high"]])
    return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in spec.items()) + "}"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _hint(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


__all__ = ["keyed_tables", "is_technique_form", "read_space", "stored_space", "technique_form_toml", "warn_if_flat"]
