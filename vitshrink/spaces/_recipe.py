"""Recipes: a study described in TOML (data, teacher, target, search space, budget, constraints).

Every table and key is checked; an unknown or misspelt one is refused with a message naming it.

Example:
    >>> r = Recipe.from_toml_text('''
    ... [study]
    ... name = "demo"
    ... [space]
    ... quant = ["none", "dynamic_int8"]
    ... ''')
    >>> r.name, r.space.dimension("runtime").choices
    ('demo', ('none', 'dynamic_int8'))
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import data_shape  # attributes read at call time: data_shape imports this package's ConfigError
from ..objectives._registry import DEFAULT_OBJECTIVES, check_objective_names
from ..training import check_training_keys
from .. import techniques as _registry  # the techniques depend on _config and _fit only, never on this module
from ._config import ConfigError
from ..techniques import keys as K
from ._space import SearchSpace
from ._space_form import read_space, stored_space, warn_if_flat

log = logging.getLogger(__name__)

SAMPLERS = ("vitshrink", "nsga2", "tpe", "gp", "random")
PARAM_NAMINGS = ("technique", "flat")  # how a study's Optuna parameters are named (SearchSpace.naming)
SAMPLER_ABLATIONS = ("vitshrink-no-zero-shot", "vitshrink-no-cold-start")  # benchmarks only
# what a study optimises unless its recipe says (vitshrink.objectives registers every name)

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "study": {"name": str, "trials": int, "timeout": (str, int, float), "sampler": str, "seed": int,
              "seed_with": str, "max_failures": int, "screening": bool, "rungs": bool, "rung_margin": (int, float),
              "objectives": list, "param_names": str},
    "data": {"dataset": str, "data_dir": str, "seed": int, "download": bool, "limit": int, "img_size": int,
             "kd_limit": int},
    "teacher": {"model": str, "checkpoint": str, "pretrained": bool, "kwargs": dict, "train": dict},
    "target": {"device": str, "runs": int, "warmup": int, "batch": int, "throughput_batch": int, "max_runs": int,
               "target_cv": (int, float)},
    "constraints": {"max_accuracy_drop": (int, float), "max_latency_ms": (int, float), "max_size_mb": (int, float)},
    "space": {},
    "fixed": {},
}
# device and precision: where every model of the study trains (teacher, students, KD fine-tunes); training.py
_TRAIN_KEYS = {"epochs": int, "lr": float, "weight_decay": float, "batch_size": int, "label_smoothing": float,
               "augment": list, "device": str, "precision": str}
AUGMENTATIONS = ("flip", "shift", "randaugment", "mixup", "cutmix")
# [data] keys that apply to some datasets only (the others apply to every dataset), and why not elsewhere
_DATA_KEYS_FOR = {
    "data_dir": (("fashion-mnist", "cifar10", "image-folder"), "scikit-learn ships {ds} itself"),
    "download": (("cifar10",), "only cifar10 is downloaded (by torchvision)"),
    "img_size": (("image-folder",), "{ds} images are {px}x{px} px; img_size resizes image folders only"),
}
# the recipe's settings written for its own dataset: replaced when --dataset names another
_DATASET_OWN_OPTIONS = ("download", "img_size")


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
    latency_max_runs: int = 200  # timed runs are added up to this many until the median is stable (target_cv)
    latency_target_cv: float = 0.03  # CV of the median estimate (of the ratio to the teacher) to reach
    throughput_batch: int = 0
    trials: int = 20
    timeout: float | None = None
    sampler: str = "vitshrink"
    seed: int = 0
    seed_with: str | None = None
    max_failures: int | None = None
    screening: bool = True  # measure the untrained structure first; skip candidates that cannot enter the front
    rungs: bool = True  # stop a trial whose per-epoch accuracy falls clearly behind its peers (search/_rungs.py)
    rung_margin: float = 0.02  # "clearly behind": this much val accuracy below its peers at the same epoch
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES  # registered names (vitshrink.objectives), the study's values
    constraints: dict[str, float] = field(default_factory=dict)
    space: SearchSpace = field(default_factory=SearchSpace)

    @classmethod
    def from_toml_text(cls, text: str, source: str = "<recipe>") -> Recipe:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source} is not valid TOML: {exc}") from None
        recipe = cls.from_dict(doc, source)
        warn_if_flat(doc, recipe.space, source)
        return recipe

    @classmethod
    def from_file(cls, path: str | Path) -> Recipe:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} not found; built-in recipes: {', '.join(builtin_recipes())}")
        recipe = cls.from_toml_text(p.read_text(), str(p))
        return recipe if recipe.name else recipe.with_overrides(name=p.stem)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<recipe>", stored: bool = False) -> Recipe:
        """`stored`: a recipe a study holds, accepted when the study was created; settings an older
        vitshrink let through without meaning (e.g. data_dir on digits) are not refused again."""
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
                                  f"choose from {list(AUGMENTATIONS)} (flip: random horizontal flip, shift: up to 2 px, randaugment / mixup / cutmix: timm's, for a pretrained teacher on an image folder)")
        train = teacher.get("train", {})
        try:
            check_training_keys(train.get("device"), train.get("precision"))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        try:
            space = read_space(doc.get("space", {}), doc.get("fixed", {}), source)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        # a study an earlier vitshrink created stored no param_names: its parameters are the flat fields
        naming = study.get("param_names", "flat" if stored else "technique")
        if naming not in PARAM_NAMINGS:
            raise ConfigError(f"{source}: study.param_names = {naming!r} is not one of {', '.join(PARAM_NAMINGS)}")
        space = dataclasses.replace(space, naming=naming)
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
            latency_max_runs=target.get("max_runs", max(200, target.get("runs", 20))),
            latency_target_cv=float(target.get("target_cv", 0.03)),
            throughput_batch=target.get("throughput_batch", 0),
            trials=study.get("trials", 20),
            timeout=parse_duration(study.get("timeout")),
            sampler=study.get("sampler", "vitshrink"),
            seed=study.get("seed", 0),
            seed_with=study.get("seed_with"),
            max_failures=study.get("max_failures"),
            screening=study.get("screening", True),
            rungs=study.get("rungs", True),
            rung_margin=float(study.get("rung_margin", 0.02)),
            objectives=tuple(study.get("objectives", DEFAULT_OBJECTIVES)),
            constraints={k: float(v) for k, v in constraints.items()},
            space=space,
        )
        recipe.validate(source, stored=stored)
        return recipe

    def validate(self, source: str = "<recipe>", stored: bool = False) -> None:
        if self.sampler not in SAMPLERS + SAMPLER_ABLATIONS:
            raise ConfigError(f"{source}: study.sampler = {self.sampler!r} is not one of {', '.join(SAMPLERS)}")
        if self.trials < 1:
            raise ConfigError(f"{source}: study.trials = {self.trials} must be at least 1")
        if self.latency_runs < 5:
            raise ConfigError(f"{source}: target.runs = {self.latency_runs} is too few for a median and spread; use >= 5")
        if self.latency_max_runs < self.latency_runs:
            raise ConfigError(f"{source}: target.max_runs = {self.latency_max_runs} is below target.runs = "
                              f"{self.latency_runs}; give max_runs >= runs (equal: a fixed number of runs)")
        if not 0 < self.latency_target_cv < 1:
            raise ConfigError(f"{source}: target.target_cv = {self.latency_target_cv} is a fraction in (0, 1) "
                              "(0.03: stop adding runs once the median's spread is under 3 %)")
        if self.seed_with not in (None, "reference"):
            raise ConfigError(f"{source}: study.seed_with = {self.seed_with!r}; the only warm start is 'reference'")
        _check_objectives(self, source)
        if not 0 <= self.rung_margin <= 1:
            raise ConfigError(f"{source}: study.rung_margin = {self.rung_margin} is a fraction of val accuracy in "
                              "[0, 1] (0.02 = two points)")
        kd_limit = self.data_options.get("kd_limit")
        if kd_limit is not None and kd_limit < 1:
            raise ConfigError(f"{source}: data.kd_limit = {kd_limit} must be >= 1 (leave it out to train KD on the whole split)")
        drop = self.constraints.get("max_accuracy_drop")
        if drop is not None and not 0 <= drop <= 1:
            raise ConfigError(f"{source}: constraints.max_accuracy_drop = {drop} is a fraction in [0, 1] (0.01 = one point)")
        if not stored:
            _check_positive(self, source)
            _check_data_keys(self, source)
            _check_teacher_keys(self, source)
            _check_fixed_settings(self, source)

    @property
    def canonical_dataset(self) -> str | None:
        """The dataset's name with aliases resolved (fashion_mnist -> fashion-mnist); None if unknown."""
        return data_shape.canonical_name(self.dataset)

    @property
    def kd_limit(self) -> int | None:
        """`[data] kd_limit`: students and KD fine-tunes train on a seeded subset of this many train
        images (the teacher always trains on the whole split); None: the whole split."""
        return self.data_options.get("kd_limit")

    def with_overrides(self, **changes: Any) -> Recipe:
        """A copy with the non-None `changes` applied (how CLI options override the recipe).

        A new `dataset` also replaces the recipe's settings written for its own dataset (its data_dir
        unless given too, download, img_size, and the teacher's in_chans, img_size and num_classes,
        which then follow the new data); a new exact `teacher_checkpoint` drops the recipe's
        [teacher.train] (a checkpoint read as it is is not trained)."""
        clean = {k: v for k, v in changes.items() if v is not None}
        recipe = dataclasses.replace(self, **clean)
        if "dataset" in clean and data_shape.canonical_name(clean["dataset"]) != self.canonical_dataset:
            recipe = recipe._for_new_dataset(keep_dir="data_dir" in clean)
        if "teacher_checkpoint" in clean and not recipe.teacher_pretrained and recipe.teacher_train:
            log.info("the recipe's [teacher.train] is not used: the teacher is read as it is from %s",
                     recipe.teacher_checkpoint)
            recipe = dataclasses.replace(recipe, teacher_train={})
        recipe.validate("command line")
        return recipe

    def _for_new_dataset(self, keep_dir: bool) -> Recipe:
        dropped = [f"data.{k} = {v!r}" for k, v in self.data_options.items() if k in _DATASET_OWN_OPTIONS]
        dropped += [f"teacher.kwargs.{k} = {v!r}" for k, v in self.teacher_kwargs.items() if k in data_shape.DATA_SHAPED]
        if self.data_dir and not keep_dir:
            dropped.append(f"data.data_dir = {self.data_dir!r}")
        if dropped:
            log.info("--dataset %s: the recipe's %s (written for its own dataset) now follow the new data",
                     self.dataset, ", ".join(dropped))
        return dataclasses.replace(
            self, data_dir=self.data_dir if keep_dir else None,
            data_options={k: v for k, v in self.data_options.items() if k not in _DATASET_OWN_OPTIONS},
            teacher_kwargs={k: v for k, v in self.teacher_kwargs.items() if k not in data_shape.DATA_SHAPED})

    def to_dict(self) -> dict[str, Any]:
        """The recipe as the TOML-shaped dict `from_dict` reads (what a study stores): tables and keys
        as a recipe file writes them, optional keys left out when unset.

        Example:
            >>> r = Recipe.from_dict({"study": {"name": "demo", "objectives": ["accuracy", "macs"]}})
            >>> r.to_dict()["study"]["objectives"], Recipe.from_dict(r.to_dict()) == r
            (['accuracy', 'macs'], True)
        """
        optional = lambda table: {k: v for k, v in table.items() if v is not None}  # noqa: E731
        return {
            "study": {"name": self.name, "trials": self.trials, "sampler": self.sampler, "seed": self.seed,
                      "screening": self.screening, "rungs": self.rungs, "rung_margin": self.rung_margin,
                      "objectives": list(self.objectives), "param_names": self.space.naming,
                      **optional({"timeout": self.timeout or None, "seed_with": self.seed_with or None,
                                  "max_failures": self.max_failures})},
            "data": {"dataset": self.dataset, "seed": self.data_seed, **self.data_options,
                     **optional({"data_dir": self.data_dir or None})},
            "teacher": {"model": self.teacher_model, "kwargs": self.teacher_kwargs, "train": self.teacher_train,
                        "pretrained": self.teacher_pretrained,
                        **optional({"checkpoint": self.teacher_checkpoint or None})},
            "target": {"device": self.device, "runs": self.latency_runs, "warmup": self.latency_warmup,
                       "batch": self.latency_batch, "throughput_batch": self.throughput_batch,
                       "max_runs": self.latency_max_runs, "target_cv": self.latency_target_cv},
            "constraints": dict(self.constraints),
            **stored_space(self.space),
        }


def _check_objectives(r: Recipe, source: str) -> None:
    """The objectives are registered names, each once; throughput needs its batch measured."""
    if not isinstance(r.objectives, tuple) or not all(isinstance(n, str) for n in r.objectives):
        raise ConfigError(f"{source}: study.objectives = {list(r.objectives)!r} must be a list of names")
    try:
        check_objective_names(r.objectives)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if "throughput" in r.objectives and not r.throughput_batch:
        raise ConfigError(f"{source}: study.objectives has throughput, the images/s at target.throughput_batch; "
                          "set target.throughput_batch (e.g. 32) or choose another objective")


def _check_positive(r: Recipe, source: str) -> None:
    """Values that would make a setting meaningless: nothing to time, train or allow."""
    checks = [("target.batch", r.latency_batch, 1), ("target.warmup", r.latency_warmup, 0),
              ("target.throughput_batch", r.throughput_batch, 0), ("data.limit", r.data_options.get("limit"), 1),
              ("study.max_failures", r.max_failures, 1), ("teacher.train.epochs", r.teacher_train.get("epochs"), 1),
              ("teacher.train.batch_size", r.teacher_train.get("batch_size"), 1)]
    for name, value, low in checks:
        if value is not None and value < low:
            raise ConfigError(f"{source}: {name} = {value} must be >= {low}")
    if r.throughput_batch and r.throughput_batch == r.latency_batch:
        raise ConfigError(f"{source}: target.throughput_batch = {r.throughput_batch} equals target.batch, so it adds "
                          "nothing; give a larger batch for throughput, or 0 to measure none")
    for key in ("max_latency_ms", "max_size_mb"):
        if key in r.constraints and r.constraints[key] <= 0:
            raise ConfigError(f"{source}: constraints.{key} = {r.constraints[key]} rules out every model; give a "
                              "positive bound or remove it")
    lr = r.teacher_train.get("lr")
    if lr is not None and lr <= 0:
        raise ConfigError(f"{source}: teacher.train.lr = {lr} must be positive")
    smoothing = r.teacher_train.get("label_smoothing")
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ConfigError(f"{source}: teacher.train.label_smoothing = {smoothing} must be in [0, 1)")


def _check_data_keys(r: Recipe, source: str) -> None:
    """Refuse [data] keys the chosen dataset (or the search space) would not use."""
    ds = r.canonical_dataset
    if ds is None:
        raise ConfigError(f"{source}: unknown dataset {r.dataset!r}; choose one of {', '.join(data_shape.DATASETS)}")
    given = {"data_dir": r.data_dir, **{k: r.data_options.get(k) for k in ("download", "img_size")}}
    for key, value in given.items():
        applies_to, why = _DATA_KEYS_FOR[key]
        if value is not None and ds not in applies_to:
            px = data_shape.FIXED_SHAPES.get(ds, (0, 0))[1]
            raise ConfigError(f"{source}: data.{key} = {value!r} does not apply to {ds} ({why.format(ds=ds, px=px)}); "
                              f"remove it{' (and --data-dir)' if key == 'data_dir' else ''}")
    kd_limit = r.data_options.get("kd_limit")
    training = [t for t in _registry.techniques() if t.trains]
    if kd_limit is not None and not any(r.space.can_choose(t) for t in training):
        how = ", ".join(f"{t.name} ({t.how_chosen()})" for t in training)
        raise ConfigError(f"{source}: data.kd_limit = {kd_limit} has nothing to limit: the space never chooses a "
                          f"technique that trains: {how}; remove it")


def _check_fixed_settings(r: Recipe, source: str) -> None:
    """Refuse a setting the space fixes away from its default for a technique the space never
    chooses: `landmarks = 8` with no Nystrom among the lowrank values would be stored and do nothing.
    A recipe stored on a study is not asked: the study keeps what it was created with."""
    for name, value in r.space.fixed:
        key = K.get_key(name)
        if key.kind in ("choice", "switch") or value == key.default:  # a choice or a switch chooses by itself
            continue
        needed = [(t, key.only) for t in key.owners]  # with the choice value it needs
        if any(r.space.can_choose(t, only) for t, only in needed):
            continue
        how = " or ".join(f"{t.choice}={only!r}" if only else t.how_chosen() for t, only in needed)
        label = r.space.param(name)
        raise ConfigError(f"{source}: the space fixes {label} = {value!r} but never chooses what uses it ({how}), "
                          f"so it would do nothing; let the space choose {how}, or remove {label}")


def _check_teacher_keys(r: Recipe, source: str) -> None:
    """Refuse teacher settings the data or the teacher's source would contradict or not use."""
    if r.teacher_checkpoint and not r.teacher_pretrained and r.teacher_train:
        raise ConfigError(f"{source}: [teacher.train] does not apply to a teacher read as it is from "
                          f"teacher.checkpoint (it is not trained); remove [teacher.train], or set pretrained = true "
                          "to fine-tune from the checkpoint")
    ds, kwargs = r.canonical_dataset, r.teacher_kwargs
    timm_read = r.teacher_pretrained and ds in data_shape.TIMM_PREPROCESSED  # streamed through the model's own transforms
    timm_only = [a for a in r.teacher_train.get("augment", ()) if a in ("randaugment", "mixup", "cutmix")]
    if timm_only and not timm_read:
        raise ConfigError(f"{source}: teacher.train.augment {timm_only} is timm's training pipeline, used for a "
                          f"pretrained teacher (pretrained = true) on {' or '.join(data_shape.TIMM_PREPROCESSED)}; use flip / "
                          "shift here, or fine-tune a pretrained teacher on one of those")
    try:
        if ds in data_shape.FIXED_SHAPES:
            in_chans, px, classes = data_shape.FIXED_SHAPES[ds]
            # a pretrained teacher reads CIFAR-10 at its own img_size (timm's transforms resize)
            data_shape.fit_teacher_kwargs(kwargs, ds, in_chans, None if timm_read else px, classes)
        elif "img_size" in kwargs and r.data_options.get("img_size") is not None:
            data_shape.fit_teacher_kwargs(kwargs, ds, None, r.data_options["img_size"], None)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if ds == "image-folder" and kwargs.get("in_chans", 3) not in (1, 3):
        raise ConfigError(f"{source}: teacher.kwargs.in_chans = {kwargs['in_chans']!r} cannot be read from an image "
                          "folder; use 1 (grayscale) or 3 (RGB), or leave it out to follow the images")


def _type_name(t: type | tuple[type, ...]) -> str:
    types = t if isinstance(t, tuple) else (t,)
    return " or ".join({"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                        "dict": "a table", "list": "a list"}[x.__name__] for x in types)


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
