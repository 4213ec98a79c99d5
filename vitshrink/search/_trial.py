"""One trial: sample a config, build the model, measure its objectives, save its weights.

The same `run_trial` serves the local and the Ray executors; everything it needs is rebuilt from
the recipe (data, cached teacher, cached teacher logits), so a worker on another machine runs it
against the same storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from ..compress import build
from ..compress.distill import teacher_logits as cached_teacher_logits
from ..data import DataBundle, load_dataset
from ..models import TeacherSpec, TrainSettings, evaluate, get_teacher
from ..objectives import LatencyProtocol, Target, accuracy, measure_latency_cached, size_bytes
from ..spaces import CompressionConfig, Recipe
from ..training import TrainingDevice, resolve_training
from ._storage import this_worker

log = logging.getLogger(__name__)

METRIC_NAMES = ("accuracy", "latency_ms", "size_bytes")
DIRECTIONS = ("maximize", "minimize", "minimize")
ARTIFACT_FORMAT = 1
LOGITS_KEY = "_vitshrink.val_logits"


@dataclass
class SearchContext:
    """Everything a trial needs that does not depend on the trial: built once per process."""

    recipe: Recipe
    data: DataBundle
    teacher: nn.Module
    teacher_spec: TeacherSpec
    teacher_accuracy: float
    teacher_logits: torch.Tensor
    target: Target
    protocol: LatencyProtocol
    training: TrainingDevice = TrainingDevice("cpu", "fp32")  # where students and fine-tunes train

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.val.x.shape[1:])


def teacher_spec_of(recipe: Recipe) -> TeacherSpec:
    return TeacherSpec(recipe.teacher_model, dict(recipe.teacher_kwargs), recipe.teacher_checkpoint,
                       recipe.teacher_pretrained)


def load_data(recipe: Recipe) -> DataBundle:
    return load_dataset(recipe.dataset, recipe.data_dir, seed=recipe.data_seed, **recipe.data_options)


@lru_cache(maxsize=4)
def _context_cached(recipe_json: str) -> SearchContext:
    return make_context(Recipe.from_dict(json.loads(recipe_json)))


def training_device_of(recipe: Recipe) -> TrainingDevice:
    """Where this machine trains the recipe's models; ConfigError when it lacks the GPU asked for."""
    return resolve_training(recipe.teacher_train.get("device"), recipe.teacher_train.get("precision"))


def make_context(recipe: Recipe, progress=None) -> SearchContext:
    training = training_device_of(recipe)  # a missing GPU is refused before data is read or anything trains
    data = load_data(recipe)
    settings = TrainSettings(**recipe.teacher_train)
    teacher, spec = get_teacher(teacher_spec_of(recipe), data, settings, seed=recipe.seed, progress=progress)
    acc, _ = evaluate(teacher, data.val.x, data.val.y)
    target = Target.parse(recipe.device)
    batches = (recipe.latency_batch,) + ((recipe.throughput_batch,) if recipe.throughput_batch else ())
    protocol = LatencyProtocol(warmup=recipe.latency_warmup, runs=recipe.latency_runs, batch_sizes=batches,
                               threads=target.threads)
    logits = cached_teacher_logits(teacher, data, device=training.device)
    return SearchContext(recipe, data, teacher, spec, acc, logits, target, protocol, training)


def check_space_fits_teacher(recipe: Recipe) -> None:
    """Refuse a search space the teacher's architecture cannot honour (landmarks > tokens, block
    indices >= depth, merging more than a block can), before a study is created or a trial runs.

    Only the architecture is built (no weights are read or trained), so this is quick.

    Raises:
        ConfigError: naming the setting and the teacher's numbers; ModelError for an unknown model.
    """
    from ..models import create_model

    arch = create_model(teacher_spec_of(recipe), load_weights=False)
    prefix = int(getattr(arch, "num_prefix_tokens", 0))
    tokens = int(arch.patch_embed.num_patches) + prefix
    recipe.space.check_model(tokens, len(arch.blocks), prefix, model=f"the teacher {recipe.teacher_model}")


def context_for(recipe: Recipe) -> SearchContext:
    """The process-wide context of `recipe` (data and teacher loaded once per process)."""
    return _context_cached(json.dumps(recipe_doc(recipe), sort_keys=True))


def recipe_doc(recipe: Recipe) -> dict[str, Any]:
    """The recipe as the TOML-shaped dict `Recipe.from_dict` reads (stored on the study)."""
    doc: dict[str, Any] = {
        "study": {"name": recipe.name, "trials": recipe.trials, "sampler": recipe.sampler, "seed": recipe.seed},
        "data": {"dataset": recipe.dataset, "seed": recipe.data_seed, **recipe.data_options},
        "teacher": {"model": recipe.teacher_model, "kwargs": recipe.teacher_kwargs, "train": recipe.teacher_train,
                    "pretrained": recipe.teacher_pretrained},
        "target": {"device": recipe.device, "runs": recipe.latency_runs, "warmup": recipe.latency_warmup,
                   "batch": recipe.latency_batch, "throughput_batch": recipe.throughput_batch},
        "constraints": dict(recipe.constraints),
        **recipe.space.to_dict(),
    }
    if recipe.timeout:
        doc["study"]["timeout"] = recipe.timeout
    if recipe.seed_with:
        doc["study"]["seed_with"] = recipe.seed_with
    if recipe.max_failures is not None:
        doc["study"]["max_failures"] = recipe.max_failures
    if recipe.data_dir:
        doc["data"]["data_dir"] = recipe.data_dir
    if recipe.teacher_checkpoint:
        doc["teacher"]["checkpoint"] = recipe.teacher_checkpoint
    return doc


def constraint_values(recipe: Recipe, teacher_accuracy: float, acc: float, latency_ms: float, size: int
                      ) -> dict[str, float]:
    """Optuna's convention: a trial is feasible when every value is <= 0 (stored with
    `Trial.set_constraint`, which Optuna's samplers and `best_trials` read)."""
    c = recipe.constraints
    values = {}
    if "max_accuracy_drop" in c:
        values["max_accuracy_drop"] = (teacher_accuracy - acc) - c["max_accuracy_drop"]
    if "max_latency_ms" in c:
        values["max_latency_ms"] = latency_ms - c["max_latency_ms"]
    if "max_size_mb" in c:
        values["max_size_mb"] = size / 1e6 - c["max_size_mb"]
    return values


class TrialFailed(RuntimeError):
    """A trial that cannot produce valid objectives (the reason is stored on the trial)."""


def sample_config(trial: optuna.Trial, recipe: Recipe) -> CompressionConfig:
    override = trial.user_attrs.get("config_override")
    if override is not None:
        # teacher / reference warm starts: suggest what the space can represent, then use the config as is
        config = CompressionConfig.from_dict(override)
        params = recipe.space.params_for(config, strict=False)
        for d in recipe.space.dimensions:
            if d.name in params:
                d.suggest(trial)
        return config
    return recipe.space.sample(trial)


def run_trial(trial: optuna.Trial, recipe: Recipe, artifact_dir: str | Path, ctx: SearchContext | None = None
              ) -> tuple[float, float, float]:
    """The objective: returns (val accuracy, latency ms, size bytes); failures are recorded with their reason."""
    ctx = ctx or context_for(recipe)
    start = time.perf_counter()
    trial.set_user_attr("worker", this_worker())
    if "fail_reason" in trial.user_attrs:  # a retried trial starts clean
        trial.set_user_attr("fail_reason", None)
    try:
        config = sample_config(trial, recipe)
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("label", config.summary())
        t0 = time.perf_counter()
        result = build(ctx.teacher, config, ctx.data, seed=recipe.seed, teacher_logits=ctx.teacher_logits,
                       kd_limit=recipe.kd_limit, train_device=ctx.training.device,
                       train_precision=ctx.training.precision)
        t1 = time.perf_counter()
        acc_result = accuracy(result.model, ctx.data.val)
        lat, cached = measure_latency_cached(result.model, ctx.example_shape, ctx.target, ctx.protocol,
                                             extra={"quant": config.quant})
        size = int(size_bytes(result.model))
        primary = lat.batches[0]
        values = (float(acc_result.accuracy), float(primary.median_ms), float(size))
        if not all(math.isfinite(v) for v in values):
            raise TrialFailed(f"non-finite objective values {values}")
        t2 = time.perf_counter()
        artifact_id = save_trial_artifact(trial, result.float_model, acc_result.logits, config, artifact_dir)
        t3 = time.perf_counter()
        trial.set_user_attr("artifact", artifact_id)
        trial.set_user_attr("records", result.records)
        trial.set_user_attr("latency", lat.to_dict() | {"cached": cached})
        trial.set_user_attr("latency_iqr_ms", float(primary.iqr_ms))
        trial.set_user_attr("params", sum(p.numel() for p in result.float_model.parameters()))
        macs = next((r["macs_after"] for r in reversed(result.records) if r.get("macs_after")), None)
        trial.set_user_attr("macs", macs if macs is not None else _macs(result.float_model, ctx))
        trial.set_user_attr("accuracy_drop", ctx.teacher_accuracy - values[0])
        for name, value in constraint_values(recipe, ctx.teacher_accuracy, *values[:2], size).items():
            trial.set_constraint(name, value)
        # build: the transforms; measure: accuracy, latency, size; save: the artifact upload; total: all of
        # run_trial (the rest is sampling and storage writes: benchmarks/overhead.py reads these)
        trial.set_user_attr("seconds", {"build": round(t1 - t0, 4), "measure": round(t2 - t1, 4),
                                        "save": round(t3 - t2, 4), "total": round(time.perf_counter() - start, 4)})
        return values
    except BaseException as exc:  # record every failure (KeyboardInterrupt too), then let Optuna mark FAIL
        reason = _reason(exc)
        try:
            trial.set_user_attr("fail_reason", reason)
        except Exception:  # noqa: BLE001 - the storage itself may be what failed
            log.warning("could not record the failure reason of trial %d", trial.number)
        log.warning("trial %d failed: %s", trial.number, reason)
        log.debug("".join(traceback.format_exception(exc)))
        if isinstance(exc, KeyboardInterrupt):
            _enqueue_retry(trial)
        raise


def _enqueue_retry(trial: optuna.Trial) -> None:
    """Queue an interrupted trial's parameters (and warm-start config) to run first on resume."""
    keep = {k: v for k, v in trial.user_attrs.items() if k in ("config_override", "role")}
    try:
        trial.study.enqueue_trial(dict(trial.params), user_attrs={**keep, "retry_of": trial.number})
    except Exception as exc:  # noqa: BLE001 - resuming then samples afresh; nothing is lost
        log.warning("could not queue a retry of interrupted trial %d: %s", trial.number, exc)


def _macs(model: nn.Module, ctx: SearchContext) -> int | None:
    from ..objectives.macs import count_macs

    try:
        return count_macs(model, ctx.data.val.x[:1])
    except Exception:  # noqa: BLE001
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted by the user (Ctrl-C); retried when the search resumes"
    if isinstance(exc, torch.OutOfMemoryError) or isinstance(exc, MemoryError):
        return f"out of memory: {exc}"[:500]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]


def save_trial_artifact(trial: optuna.Trial, float_model: nn.Module, val_logits: torch.Tensor,
                        config: CompressionConfig, artifact_dir: str | Path) -> str:
    """Upload the float weights (safetensors), the measured val logits and the config (metadata)
    to the study's artifact store; returns the artifact id."""
    from safetensors.torch import save_file

    from ._storage import artifact_store

    state = {k: v.detach().contiguous().clone() for k, v in float_model.state_dict().items()}
    state[LOGITS_KEY] = val_logits.detach().float().contiguous()
    meta = {"format": str(ARTIFACT_FORMAT), "config": config.to_json(), "trial": str(trial.number),
            "logits_sha256": logits_digest(val_logits), "weights_sha256": state_digest(state, config.to_json())}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"trial-{trial.number}.safetensors"
        save_file(state, str(path), metadata=meta)
        return optuna.artifacts.upload_artifact(artifact_store=artifact_store(artifact_dir), file_path=str(path),
                                                study_or_trial=trial, mimetype="application/octet-stream")


def logits_digest(logits: torch.Tensor) -> str:
    return hashlib.sha256(logits.detach().float().contiguous().numpy().tobytes()).hexdigest()


def state_digest(state: dict[str, torch.Tensor], config_json: str = "") -> str:
    """SHA-256 over the config and every tensor's name, dtype, shape and bytes: any change to a saved
    artifact's weights or config shows."""
    h = hashlib.sha256(config_json.encode())
    for name in sorted(state):
        t = state[name].detach().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
