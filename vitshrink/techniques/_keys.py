"""Search keys: how a search space, its recipe tables and its Optuna parameters name what is searched.

Each stage whose techniques are chosen by a selector is one choice, a categorical key named by the
stage (``runtime`` for the quantize stage, ``lowrank``, ``student``): its values are "none" and the
techniques' selector values (a student's model: "custom" or a timm name). Each setting of a
technique is ``<technique>.<setting>`` (``prune.heads``, ``nystrom.landmarks``), and the settings the
distilling techniques share are ``distill.<setting>``. A technique's settings exist only where it is
chosen: a key applies under the values sampled before it when one of its techniques is chosen there.

The flat names that recipes and studies of earlier versions use are read by `spaces._legacy`.

Example:
    >>> list(search_keys())[:3]
    ['student', 'student.depth', 'student.embed_dim']
    >>> applies("nystrom.landmarks", {"lowrank": "nystrom"}), applies("nystrom.landmarks", {})
    (True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._base import _TECHNIQUES, ANY, CHOICE_KEYS, SHARED, Technique


@dataclass(frozen=True)
class Key:
    """One searchable key: a stage's choice, a technique's setting (`switch`: one that switches its
    technique on by a value above zero), or a setting the distilling techniques share.

    Attributes:
        owners: The techniques it belongs to (a choice: the techniques it chooses between).
        setting: The owners' config field it sets (a student's choice: "model"), None for a plain choice.
        field: That dataclass field (its default, type and rules), None for a plain choice.
    """

    name: str
    kind: str  # "choice" | "switch" | "setting" | "shared"
    owners: tuple[Technique, ...]
    setting: str | None = None
    field: Any = None

    @property
    def default(self) -> Any:
        return "none" if self.field is None or self.kind == "choice" else self.field.default

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.field.metadata if self.field is not None else {}

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The values it may take: a choice's "none" and techniques (None where free: a student's
        timm names), a setting's declared choices."""
        if self.kind == "choice":
            if any(t.selector == ANY for t in self.owners):
                return None
            return ("none", *(t.selector for t in self.owners))
        return self.meta.get("choices")

    @property
    def as_list(self) -> bool:
        """Whether a two-number list is a set of choices, never a range."""
        return self.kind == "choice" or bool(self.meta.get("as_list"))

    @property
    def only(self) -> str | None:
        """The choice value its technique needs besides being chosen (a custom student's width)."""
        return self.meta.get("only")


def choice_key(technique: Technique) -> str | None:
    """The choice key of a technique chosen by a selector (its stage's), or None."""
    return technique.choice


def _own_fields(technique: Technique) -> list[Any]:
    """Its config's searchable fields, in declaration order (not the accepted, hand-written ones)."""
    return [f for f in dataclasses.fields(technique.config) if f.name not in technique.accepts]


_CACHE: dict[tuple[str, ...], dict[str, Key]] = {}


def search_keys() -> dict[str, Key]:
    """Every key, in the order a space suggests them: by stage, a stage's choice first, then each
    technique's settings in its config's order, the shared settings after the last technique sharing them."""
    registered = tuple(_TECHNIQUES)
    if registered in _CACHE:
        return _CACHE[registered]
    ts = list(_TECHNIQUES.values())
    sharing = [t for t in ts if t.shared is not None]
    out: dict[str, Key] = {}
    for t in ts:
        choice = choice_key(t)
        if choice is not None and choice not in out:
            owners = tuple(x for x in ts if choice_key(x) == choice)
            own = next((f for x in owners for f in _own_fields(x) if f.name == x.choice_setting), None)
            out[choice] = Key(choice, "choice", owners, own.name if own else None, own)
        for f in _own_fields(t):
            if f.name == t.choice_setting:
                continue  # the choice itself (a student's model)
            kind = "switch" if f.name in t.switches else "setting"
            out[f"{t.name}.{f.name}"] = Key(f"{t.name}.{f.name}", kind, (t,), f.name, f)
        if sharing and t is sharing[-1]:
            for f in dataclasses.fields(t.shared):
                out[f"{SHARED}.{f.name}"] = Key(f"{SHARED}.{f.name}", "shared", tuple(sharing), f.name, f)
    _CACHE.clear()
    _CACHE[registered] = out
    return out


def get_key(name: str) -> Key:
    try:
        return search_keys()[name]
    except KeyError:
        raise KeyError(f"unknown search key {name!r}") from None


def own_keys(technique: Technique) -> dict[str, str]:
    """Its settings -> their keys (a student's model: its choice key; shared settings: ``distill.*``)."""
    return {k.setting: k.name for k in search_keys().values() if technique in k.owners and k.setting is not None
            and (k.kind != "choice" or technique.selector == ANY)}


def chosen(technique: Technique, values: Mapping[str, Any]) -> bool:
    """Whether keyed `values` (missing ones at their defaults) choose `technique`."""
    if technique.selector:
        value = values.get(choice_key(technique), "none")  # type: ignore[arg-type]
        return value != "none" if technique.selector == ANY else value == technique.selector
    return any(values.get(f"{technique.name}.{s}", get_key(f"{technique.name}.{s}").default) > 0
               for s in technique.switches)


def applies(name: str, values: Mapping[str, Any]) -> bool:
    """Whether key `name` is used under keyed `values` (those sampled before it): a choice and a
    switch always are; a setting where one of its techniques is chosen (with the choice value its
    `only` needs)."""
    key = get_key(name)
    if key.kind in ("choice", "switch"):
        return True
    return any(chosen(t, values) and (key.only is None or values.get(choice_key(t)) == key.only)  # type: ignore[arg-type]
               for t in key.owners)


def technique_of(name: str, value: Any, fixed: Mapping[str, Any]) -> Technique | None:
    """The technique a key's value is checked under: the one a choice value chooses, the one a
    switch's value above zero switches on, or the key's owner (the one `fixed` chooses first)."""
    key = get_key(name)
    if key.kind == "choice":
        return next((t for t in key.owners if chosen(t, {name: value})), None)
    if key.kind == "switch":
        return key.owners[0] if value > 0 else None
    picked = [t for t in key.owners if chosen(t, fixed)]
    return (picked or list(key.owners) or [None])[0]


__all__ = ["CHOICE_KEYS", "Key", "SHARED", "applies", "choice_key", "chosen", "get_key", "own_keys", "search_keys", "technique_of"]
