"""`FlatConfig`: a candidate in the flat form, one field per setting of every technique (the form
vitshrink stored before a candidate was a composition of technique configs, and that the flat
search space and recipes still map to): read by `CompressionConfig.from_dict` and the flat search
space, never written as a trial's config. Its rules (choices, bounds, a setting left unused where
its technique is not chosen, what a chosen technique needs) are the techniques' own, registered
here by `vitshrink.techniques` (`register_config_rule`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..errors import ConfigError

PRUNE_SCORES = ("magnitude", "taylor", "activation")
STUDENT_INITS = ("random", "teacher")
# augmentation of the KD batches (the teacher then runs on each augmented batch: no cached logits)
KD_AUGMENTS = ("none", "flip", "shift", "flip+shift")


def check_field_type(name: str, value: Any) -> None:
    """Refuse a value of the wrong type for FlatConfig field `name` (ints are fine where a
    number is wanted; bools and NaN are not).

    Example:
        >>> check_field_type("prune_heads", "half")
        Traceback (most recent call last):
        ...
        vitshrink.errors.ConfigError: invalid compression config: prune_heads='half' must be a number
    """
    check_kind(name, _FIELD_KINDS[name], value)


def check_kind(label: str, kind: str, value: Any) -> None:
    """Refuse `value` unless it is of `kind` ("str", "int", "float", "bool", else block indices),
    naming it as `label`; ints are fine where a number is wanted, bools and NaN are not."""
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
    # "random": timm's initialisation; "teacher": weight selection from the teacher (evenly spaced
    # blocks, the leading channels of every tensor; Xu et al., ICLR 2024), then distillation
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
        self._check_types()
        # tuples may arrive as lists from JSON/TOML
        for name in ("lowrank_blocks", "token_drop_at"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self.validate()

    def _check_types(self) -> None:
        """Each field holds its declared type (ints are fine where a number is wanted, bools are not)."""
        for f in fields(self):
            check_field_type(f.name, getattr(self, f.name))

    def validate(self) -> None:
        """Checks that do not need the model: a selector's value names a registered technique (a
        runtime for quant), and each technique's own rules on its settings (choices, bounds, what it
        needs where chosen, settings left unused), which its module in `vitshrink.techniques` declares."""
        if all(getattr(self, f.name) == f.default for f in fields(self)):
            return  # the identity breaks no rule (and is built while the rules are registered)
        problem = next((p for rule in _RULES if (p := rule(self))), None)
        if problem:
            raise ConfigError(f"invalid compression config: {problem}")

    @property
    def is_identity(self) -> bool:
        return self == FlatConfig()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlatConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown compression setting(s) {', '.join(unknown)}; known settings are {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> FlatConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> FlatConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """A short human label, e.g. ``prune_heads=0.5 quant=dynamic_int8``; ``teacher`` for the identity."""
        default = FlatConfig()
        parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in self.to_dict().items() if v != default.to_dict()[k]]
        return " ".join(parts) or "teacher"


# Rules every config is validated by, added by the modules that own them: vitshrink.techniques adds
# each technique's (its choices, bounds, needs); importing vitshrink.spaces imports the techniques.
# The techniques depend on this module, never the other way.
_RULES: list[Callable[[FlatConfig], str | None]] = []


def register_config_rule(rule: Callable[[FlatConfig], str | None]) -> Callable[[FlatConfig], str | None]:
    """Validate every non-identity `FlatConfig` by `rule(config) -> why it is invalid, or None`."""
    _RULES.append(rule)
    return rule


# Each search key's flat name: the FlatConfig field that held it, which a flat recipe, a flat stored
# config and a flat-named study's Optuna parameter use. A field two techniques share holds the key of
# each (one of them is chosen at a time). This table is the only place flat names are defined; a
# technique added after the flat form has none.
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

# field name -> "str" | "int" | "float" | "tuple[int, ...]" (annotations are strings here)
_FIELD_KINDS = {f.name: f.type for f in fields(FlatConfig)}

__all__ = ["FLAT_NAMES", "KD_AUGMENTS", "check_field_type", "register_config_rule", "FlatConfig", "ConfigError", "PRUNE_SCORES",
           "STUDENT_INITS"]
