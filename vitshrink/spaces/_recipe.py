"""Recipes: a study described in TOML (data, teacher, target, search space, budget, constraints).

Every table and key is checked; an unknown or misspelt one is refused with a message naming it.

Example:
    >>> r = Recipe.from_toml_text('''
    ... [study]
    ... name = "demo"
    ... [space]
    ... quant = ["none", "dynamic_int8"]
    ... ''')
    >>> r.name, r.space.dimension("quant").choices
    ('demo', ('none', 'dynamic_int8'))
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._config import ConfigError
from ._space import SearchSpace

SAMPLERS = ("nsga2", "tpe", "gp", "random")

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "study": {"name": str, "trials": int, "timeout": (str, int, float), "sampler": str, "seed": int,
              "seed_with": str, "max_failures": int},
    "data": {"dataset": str, "data_dir": str, "seed": int, "download": bool, "limit": int, "img_size": int,
             "kd_limit": int},
    "teacher": {"model": str, "checkpoint": str, "pretrained": bool, "kwargs": dict, "train": dict},
    "target": {"device": str, "runs": int, "warmup": int, "batch": int, "throughput_batch": int},
    "constraints": {"max_accuracy_drop": (int, float), "max_latency_ms": (int, float), "max_size_mb": (int, float)},
    "space": {},
    "fixed": {},
}
# device and precision: where every model of the study trains (teacher, students, KD fine-tunes); training.py
_TRAIN_KEYS = {"epochs": int, "lr": float, "weight_decay": float, "batch_size": int, "label_smoothing": float,
               "augment": list, "device": str, "precision": str}
AUGMENTATIONS = ("flip", "shift")


def parse_duration(value: str | int | float | None) -> float | None:
    """'90s', '10m', '2h', '1h30m' or a number of seconds -> seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        else:
            parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", text)
            if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
                raise ConfigError(f"cannot read duration {value!r}; write e.g. 90s, 10m, 2h or 1h30m")
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ConfigError(f"duration {value!r} must be positive")
    return seconds


@dataclass(frozen=True)
class Recipe:
    name: str
    dataset: str = "digits"
    data_dir: str | None = None
    data_seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    teacher_model: str = "vit_tiny_patch16_224"
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    teacher_checkpoint: str | None = None
    teacher_pretrained: bool = False
    teacher_train: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu:2"
    latency_runs: int = 20
    latency_warmup: int = 5
    latency_batch: int = 1
    throughput_batch: int = 0
    trials: int = 20
    timeout: float | None = None
    sampler: str = "nsga2"
    seed: int = 0
    seed_with: str | None = None
    max_failures: int | None = None
    constraints: dict[str, float] = field(default_factory=dict)
    space: SearchSpace = field(default_factory=SearchSpace)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        return cls.from_dict(doc, source)

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} not found; built-in recipes: {', '.join(builtin_recipes())}")
        recipe = cls.from_toml_text(p.read_text(), str(p))
        return recipe if recipe.name else recipe.with_overrides(name=p.stem)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<recipe>") -> Recipe:
        for table, value in doc.items():
            if table not in _SCHEMA:
                raise ConfigError(f"{source}: unknown table [{table}]{_hint(table, _SCHEMA)}")
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{table}] must be a table")
            if table in ("space", "fixed"):
                continue
            for key, v in value.items():
                if key not in _SCHEMA[table]:
                    raise ConfigError(f"{source}: unknown key {table}.{key}{_hint(key, _SCHEMA[table])}")
                want = _SCHEMA[table][key]
                if not isinstance(v, want) or (isinstance(v, bool) and want is int):
                    raise ConfigError(f"{source}: {table}.{key} = {v!r} has the wrong type; expected {_type_name(want)}")
                if isinstance(v, str) and not v.strip() and (table, key) != ("study", "name"):
                    raise ConfigError(f"{source}: {table}.{key} is empty; give a value or remove the key")
        study, data, teacher = doc.get("study", {}), doc.get("data", {}), doc.get("teacher", {})
        target, constraints = doc.get("target", {}), doc.get("constraints", {})
        for key, v in teacher.get("train", {}).items():
            if key not in _TRAIN_KEYS:
                raise ConfigError(f"{source}: unknown key teacher.train.{key}{_hint(key, _TRAIN_KEYS)}")
            want = _TRAIN_KEYS[key]
            if not isinstance(v, int | float if want is float else want) or isinstance(v, bool):
                raise ConfigError(f"{source}: teacher.train.{key} = {v!r} has the wrong type; expected {_type_name(want)}")
            if key == "augment" and (bad := [a for a in v if a not in AUGMENTATIONS]):
                raise ConfigError(f"{source}: teacher.train.augment has unknown augmentation(s) {bad}; "
                                  f"choose from {list(AUGMENTATIONS)} (flip: random horizontal flip, shift: up to 2 px)")
        train = teacher.get("train", {})
        try:
            from ..training import check_training_keys  # lazy: training imports this package

            check_training_keys(train.get("device"), train.get("precision"))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        try:
            space = SearchSpace.from_dict(doc.get("space", {}), doc.get("fixed", {}))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        data_options = {k: v for k, v in data.items() if k in ("download", "limit", "img_size", "kd_limit")}
        recipe = cls(
            name=study.get("name", ""),
            dataset=data.get("dataset", "digits"),
            data_dir=data.get("data_dir"),
            data_seed=data.get("seed", 0),
            data_options=data_options,
            teacher_model=teacher.get("model", "vit_tiny_patch16_224"),
            teacher_kwargs=dict(teacher.get("kwargs", {})),
            teacher_checkpoint=teacher.get("checkpoint"),
            teacher_pretrained=teacher.get("pretrained", False),
            teacher_train=dict(teacher.get("train", {})),
            device=target.get("device", "cpu:2"),
            latency_runs=target.get("runs", 20),
            latency_warmup=target.get("warmup", 5),
            latency_batch=target.get("batch", 1),
            throughput_batch=target.get("throughput_batch", 0),
            trials=study.get("trials", 20),
            timeout=parse_duration(study.get("timeout")),
            sampler=study.get("sampler", "nsga2"),
            seed=study.get("seed", 0),
            seed_with=study.get("seed_with"),
            max_failures=study.get("max_failures"),
            constraints={k: float(v) for k, v in constraints.items()},
            space=space,
        )
        recipe.validate(source)
        return recipe

    def validate(self, source: str = "<recipe>") -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"{source}: study.sampler = {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.trials < 1:
            raise ConfigError(f"{source}: study.trials = {self.trials} must be at least 1")
        if self.latency_runs < 5:
            raise ConfigError(f"{source}: target.runs = {self.latency_runs} is too few for a median and spread; use >= 5")
        if self.seed_with not in (None, "reference"):
            raise ConfigError(f"{source}: study.seed_with = {self.seed_with!r}; the only warm start is 'reference'")
        kd_limit = self.data_options.get("kd_limit")
        if kd_limit is not None and kd_limit < 1:
            raise ConfigError(f"{source}: data.kd_limit = {kd_limit} must be >= 1 (leave it out to train KD on the whole split)")
        drop = self.constraints.get("max_accuracy_drop")
        if drop is not None and not 0 <= drop <= 1:
            raise ConfigError(f"{source}: constraints.max_accuracy_drop = {drop} is a fraction in [0, 1] (0.01 = one point)")

    @property
    def kd_limit(self) -> int | None:
        """`[data] kd_limit`: students and KD fine-tunes train on a seeded subset of this many train
        images (the teacher always trains on the whole split); None: the whole split."""
        return self.data_options.get("kd_limit")

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with the non-None `changes` applied (how CLI options override the recipe)."""
        import dataclasses

        clean = {k: v for k, v in changes.items() if v is not None}
        recipe = dataclasses.replace(self, **clean)
        recipe.validate("command line")
        return recipe

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["space"] = self.space.to_dict()
        return d


def _type_name(t: type | tuple[type, ...]) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                        "dict": "a table"}[x.__name__] for x in types)


def _hint(word: str, known: Any) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "recipes"


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def resolve_recipe(name_or_path: str | None) -> Recipe:
    """A recipe from a TOML path, or a built-in recipe by name (default: quickstart)."""
    target = name_or_path or "quickstart"
    path = Path(target)
    if path.suffix == ".toml" or path.exists():
        if not path.exists() and (recipes_dir() / path.name).exists():
            path = recipes_dir() / path.name  # studies/x.toml outside a checkout: the packaged copy
        return Recipe.from_file(path)
    builtin = recipes_dir() / f"{target}.toml"
    if builtin.exists():
        return Recipe.from_file(builtin)
    raise ConfigError(f"no recipe {target!r}: not a file and not a built-in recipe ({', '.join(builtin_recipes())})")
