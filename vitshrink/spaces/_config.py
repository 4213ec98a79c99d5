"""`CompressionConfig`: one candidate of the search, as frozen, JSON-able data."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

QUANT_MODES = ("none", "dynamic_int8", "static_int8", "bf16", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8")
# quant modes that calibrate on calib_size >= 1 training images; ort_int8 may (static QDQ) or may not (dynamic)
CALIBRATED_QUANT = ("static_int8", "openvino_int8")
LOWRANK_MODES = ("none", "nystrom", "svd")
PRUNE_SCORES = ("magnitude", "taylor", "activation")
STUDENT_INITS = ("random", "teacher")
# augmentation of the KD batches (the teacher then runs on each augmented batch: no cached logits)
KD_AUGMENTS = ("none", "flip", "shift", "flip+shift")


class ConfigError(ValueError):
    """A configuration or recipe that cannot be used; the message says what and how to fix it."""


def check_field_type(name: str, value: Any) -> None:
    """Refuse a value of the wrong type for CompressionConfig field `name` (ints are fine where a
    number is wanted; bools and NaN are not).

    Example:
        >>> check_field_type("prune_heads", "half")
        Traceback (most recent call last):
        ...
        vitshrink.spaces._config.ConfigError: invalid compression config: prune_heads='half' must be a number
    """
    kind = _FIELD_KINDS[name]
    v = value
    if kind == "str":
        ok = isinstance(v, str)
    elif kind == "int":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif kind == "float":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # v == v: not NaN
    else:  # tuple[int, ...]: block indices
        ok = isinstance(v, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    if not ok:
        want = {"str": "a string", "int": "an integer", "float": "a number"}.get(kind, "a list of block indices")
        raise ConfigError(f"invalid compression config: {name}={value!r} must be {want}")


@dataclass(frozen=True)
class CompressionConfig:
    """What to do to the teacher, applied in the fixed order
    student/distill -> prune -> low-rank -> tokens -> KD fine-tune -> quantize.

    Every field's default is the identity setting, so ``CompressionConfig()`` is the
    teacher itself.

    Example:
        >>> cfg = CompressionConfig(prune_heads=0.5, quant="dynamic_int8")
        >>> CompressionConfig.from_json(cfg.to_json()) == cfg
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
        """Checks that do not need the model; model-dependent ones live in `check_against`."""

        def bad(msg: str) -> ConfigError:
            return ConfigError(f"invalid compression config: {msg}")

        if self.quant not in QUANT_MODES:
            raise bad(f"quant={self.quant!r} is not one of {', '.join(QUANT_MODES)}")
        if self.lowrank not in LOWRANK_MODES:
            raise bad(f"lowrank={self.lowrank!r} is not one of {', '.join(LOWRANK_MODES)}")
        if self.prune_score not in PRUNE_SCORES:
            raise bad(f"prune_score={self.prune_score!r} is not one of {', '.join(PRUNE_SCORES)}")
        for name in ("prune_heads", "prune_mlp", "token_drop"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise bad(f"{name}={v} must be in [0, 1): 1.0 would remove everything")
        if not 0.0 < self.svd_rank <= 1.0:
            raise bad(f"svd_rank={self.svd_rank} must be in (0, 1]")
        if self.lowrank == "nystrom" and self.landmarks < 1:
            raise bad("lowrank='nystrom' needs landmarks >= 1")
        if self.lowrank != "nystrom" and self.landmarks:
            raise bad(f"landmarks={self.landmarks} is set but lowrank={self.lowrank!r}; set lowrank='nystrom'")
        if self.student == "custom" and min(self.student_depth, self.student_embed_dim, self.student_heads) < 1:
            raise bad("student='custom' needs student_depth, student_embed_dim and student_heads >= 1")
        if self.student == "custom" and self.student_embed_dim % self.student_heads:
            raise bad(
                f"student_embed_dim={self.student_embed_dim} is not divisible by student_heads={self.student_heads}"
            )
        if self.student_mlp_ratio <= 0:
            raise bad(f"student_mlp_ratio={self.student_mlp_ratio} must be > 0")
        if self.student == "custom" and int(self.student_embed_dim * self.student_mlp_ratio) < 1:
            raise bad(f"student_mlp_ratio={self.student_mlp_ratio} leaves the {self.student_embed_dim}-wide student's "
                      "MLP without hidden units; raise it")
        if self.student_init not in STUDENT_INITS:
            raise bad(f"student_init={self.student_init!r} is not one of {', '.join(STUDENT_INITS)}")
        if self.student == "none" and self.student_init != "random":
            raise bad(f"student_init={self.student_init!r} needs a student; set student='custom' or a timm name")
        if self.student != "none" and self.student_epochs < 1:
            raise bad(f"student={self.student!r} needs student_epochs >= 1 to be trained by distillation")
        if self.token_merge_r < 0 or self.kd_epochs < 0 or self.calib_size < 0 or self.nystrom_conv < 0:
            raise bad("token_merge_r, kd_epochs, calib_size and nystrom_conv must be >= 0")
        if self.token_drop > 0 and not self.token_drop_at:
            raise bad("token_drop > 0 needs token_drop_at: the block indices where patches are dropped")
        if self.quant in CALIBRATED_QUANT and self.calib_size < 1:
            raise bad(f"quant={self.quant!r} needs calib_size >= 1 calibration images")
        if self.quant not in (*CALIBRATED_QUANT, "ort_int8") and self.calib_size:
            raise bad(f"calib_size={self.calib_size} is only used by quant={', '.join(CALIBRATED_QUANT)} or ort_int8")
        if self.kd_temperature <= 0 or not 0.0 <= self.kd_alpha <= 1.0:
            raise bad("kd_temperature must be > 0 and kd_alpha in [0, 1]")
        self._validate_recovery(bad)

    def _validate_recovery(self, bad) -> None:
        if self.kd_augment not in KD_AUGMENTS:
            raise bad(f"kd_augment={self.kd_augment!r} is not one of {', '.join(KD_AUGMENTS)}")
        if self.kd_feature_weight < 0:
            raise bad(f"kd_feature_weight={self.kd_feature_weight} must be >= 0")
        if (self.kd_augment != "none" or self.kd_feature_weight) and self.kd_epochs == 0 and self.student == "none":
            raise bad("kd_augment / kd_feature_weight shape knowledge distillation, but nothing is distilled; "
                      "set kd_epochs >= 1 or a student")

    @property
    def is_identity(self) -> bool:
        return self == CompressionConfig()

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown compression setting(s) {', '.join(unknown)}; known settings are {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> CompressionConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> CompressionConfig:
        return dataclasses.replace(self, **changes)

    def summary(self) -> str:
        """A short human label, e.g. ``prune_heads=0.5 quant=dynamic_int8``; ``teacher`` for the identity."""
        default = CompressionConfig()
        parts = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in self.to_dict().items() if v != default.to_dict()[k]]
        return " ".join(parts) or "teacher"


# field name -> "str" | "int" | "float" | "tuple[int, ...]" (annotations are strings here)
_FIELD_KINDS = {f.name: f.type for f in fields(CompressionConfig)}

__all__ = ["CALIBRATED_QUANT", "KD_AUGMENTS", "check_field_type", "CompressionConfig", "ConfigError", "QUANT_MODES", "LOWRANK_MODES", "PRUNE_SCORES"]
