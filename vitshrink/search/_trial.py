"""One trial: sample a config, build the model, measure its objectives, save its weights.

The same `run_trial` serves the local and the Tune executors; everything it needs is rebuilt from
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
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from safetensors.torch import save_file
from torch import nn

from ..compress import build, impossible_reason
from ..compress._fit import model_shape, stage_model
from ..compress.distill import teacher_logits as cached_teacher_logits
from ..compress.quantize import quant_problem
from ..data import DataBundle, DataShape, load_dataset, peek_shape
from ..data_shape import TIMM_PREPROCESSED, fit_teacher_kwargs, side
from ..models import TeacherSpec, TrainSettings, create_model, evaluate, get_teacher, read_state_dict
from ..objectives.macs import count_macs
from ..objectives import (Candidate, LatencyProtocol, Target, accuracy, directions_of, measure_latency_cached,
                          objective_values, size_bytes)
from ..spaces import DEFAULT_OBJECTIVES, CompressionConfig, ConfigError, Recipe
from ..timm_preprocessing import timm_data_config, with_timm_preprocessing
from ..training import TrainingDevice, resolve_training
from ..techniques import keys as K, techniques
from ._latency import latency_attrs, latency_baseline, latency_extra
from ._schema import (ACCURACY_DROP_ATTR, ARTIFACT_ATTR, CONFIG_ATTR, CONFIG_OVERRIDE_ATTR, FAIL_REASON_ATTR,
                      FINISHED_AT_ATTR, LABEL_ATTR, LATENCY_ATTR, LATENCY_SPREAD_ATTR, MACS_ATTR, METRICS_ATTR,
                      PARAMS_ATTR, PROPOSAL_ATTR, PRUNED_REASON_ATTR, RECORDS_ATTR, RETRY_OF_ATTR, ROLE_ATTR, SECONDS_ATTR, WORKER_ATTR,
                      set_user_attrs)
from ._rungs import RungMonitor
from ._screening import constraint_values, screen, val_images
from ._storage import artifact_store, is_retry, this_worker

log = logging.getLogger(__name__)

# the default objectives and their directions (a study's own are its recipe's `objectives`)
METRIC_NAMES = DEFAULT_OBJECTIVES
DIRECTIONS = tuple(directions_of(DEFAULT_OBJECTIVES))
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
        return tuple(self.data.val.example_shape)


def teacher_spec_of(recipe: Recipe, shape: DataShape | None = None) -> TeacherSpec:
    """The recipe's teacher; with the data's `shape`, its in_chans, img_size and num_classes follow
    the data where the recipe leaves them out (ConfigError where it fixes one the data contradicts)."""
    kwargs = dict(recipe.teacher_kwargs)
    if shape is not None:
        kwargs = fit_teacher_kwargs(kwargs, recipe.dataset, shape.in_chans, shape.img_size, shape.num_classes)
    return TeacherSpec(recipe.teacher_model, kwargs, recipe.teacher_checkpoint, recipe.teacher_pretrained)


def _image_options(recipe: Recipe) -> dict[str, Any]:
    """An image folder is read at the teacher's input: [data] img_size, else the teacher's img_size
    (the recipe refuses the two disagreeing), converted to the teacher's in_chans if it fixes one."""
    if recipe.canonical_dataset != "image-folder":
        return {}
    size = recipe.data_options.get("img_size") or recipe.teacher_kwargs.get("img_size")
    return {"img_size": side(size) if size is not None else None, "in_chans": recipe.teacher_kwargs.get("in_chans")}


def data_shape_of(recipe: Recipe) -> DataShape:
    """The data's shape without loading it (an image folder is listed, not decoded)."""
    shape = peek_shape(recipe.dataset, recipe.data_dir, **_image_options(recipe))
    if _reads_at_teacher_size(recipe):
        return dataclasses.replace(shape, img_size=side(recipe.teacher_kwargs["img_size"]))
    return shape


def _reads_at_teacher_size(recipe: Recipe) -> bool:
    """CIFAR-10 for a pretrained teacher that fixes its img_size: read at that size by timm's transforms."""
    return (recipe.teacher_pretrained and recipe.canonical_dataset == "cifar10"
            and recipe.teacher_kwargs.get("img_size") is not None)


def load_data(recipe: Recipe) -> DataBundle:
    """The recipe's data. For a pretrained timm teacher, an image folder or CIFAR-10 is streamed and read
    through the model's own preprocessing (timm's data config, at the teacher's input size:
    `vitshrink.timm_preprocessing`); otherwise vitshrink's (train-split statistics)."""
    timm_read = recipe.teacher_pretrained and recipe.canonical_dataset in TIMM_PREPROCESSED
    data = load_dataset(recipe.dataset, recipe.data_dir, seed=recipe.data_seed, limit=recipe.data_options.get("limit"),
                        download=bool(recipe.data_options.get("download", False)),
                        stream=timm_read and recipe.canonical_dataset == "cifar10", **_image_options(recipe))
    if timm_read:

        size = side(recipe.teacher_kwargs["img_size"]) if _reads_at_teacher_size(recipe) else data.img_size
        arch = create_model(teacher_spec_of(recipe, DataShape(data.in_chans, size, data.num_classes)),
                            load_weights=False)
        cfg = timm_data_config(arch, data.in_chans, size)
        data = with_timm_preprocessing(data, cfg, tuple(recipe.teacher_train.get("augment", ())))
    return data


def describe_classes(data: DataBundle, show: int = 20) -> str:
    names = list(data.class_names) or [str(i) for i in range(data.num_classes)]
    more = f", ... ({len(names) - show} more)" if len(names) > show else ""
    return ", ".join(names[:show]) + more


@lru_cache(maxsize=4)
def _context_cached(recipe_json: str) -> SearchContext:
    return make_context(Recipe.from_dict(json.loads(recipe_json)))


def training_device_of(recipe: Recipe) -> TrainingDevice:
    """Where this machine trains the recipe's models; ConfigError when it lacks the GPU asked for."""
    return resolve_training(recipe.teacher_train.get("device"), recipe.teacher_train.get("precision"))


def make_context(recipe: Recipe, progress=None, data: DataBundle | None = None) -> SearchContext:
    """Data (`data`, if already loaded from this recipe), teacher, its logits, target and protocol."""
    training = training_device_of(recipe)  # a missing GPU is refused before data is read or anything trains
    data = data if data is not None else load_data(recipe)
    log.info("data: %s; classes: %s", data.describe(), describe_classes(data))
    settings = TrainSettings(**recipe.teacher_train)
    teacher, spec = get_teacher(teacher_spec_of(recipe), data, settings, seed=recipe.seed, progress=progress,
                                data_seed=recipe.data_seed)
    acc, _ = evaluate(teacher, data.val)
    target = Target.parse(recipe.device)
    batches = (recipe.latency_batch,) + ((recipe.throughput_batch,) if recipe.throughput_batch else ())
    # the teacher is the reference every candidate is timed beside (its ratio is what the search trusts)
    protocol = LatencyProtocol(warmup=recipe.latency_warmup, runs=recipe.latency_runs, batch_sizes=batches,
                               threads=target.threads, max_runs=recipe.latency_max_runs,
                               target_cv=recipe.latency_target_cv, reference=teacher)
    logits = cached_teacher_logits(teacher, data, device=training.device)
    return SearchContext(recipe, data, teacher, spec, acc, logits, target, protocol, training)


def check_space_fits_teacher(recipe: Recipe) -> None:
    """Refuse a search space that the teacher, or every student it can sample, can never honour, before
    a study is created or a trial runs: more Nystrom landmarks than tokens, block indices >= depth, merging more than a
    block can, patch dropping without a cls token, a technique the model's modules cannot take (pruning
    heads mixed by a norm, token reduction of non-ViT blocks), a timm-named student that cannot be built
    for the teacher's input, quantization modes the latency target cannot run.

    Only architectures are built (the teacher's without its weights, students on the meta device), so
    this is quick; the teacher is built
    for the data (see `teacher_spec_of`), whose shape is found without loading it. A value that only some samples cannot honour passes; its trials are pruned.

    Raises:
        ConfigError: naming the setting and the model's numbers, or a teacher setting the data
        contradicts; ModelError for an unknown model; DataError for data that cannot be found.
    """

    space = recipe.space
    arch = create_model(teacher_spec_of(recipe, data_shape_of(recipe)), load_weights=False)
    check_input_size(recipe, arch)
    if recipe.teacher_pretrained and recipe.teacher_checkpoint:
        check_checkpoint_fits(recipe, arch)
    teacher = model_shape(arch, f"the teacher {recipe.teacher_model}")
    models, named = _student_stage_models(recipe, arch)
    space.check_model(teacher.tokens, teacher.depth, teacher.prefix, teacher.name, cls_token=teacher.cls_token,
                      students=named)
    for problem in _technique_problems(space):
        problems = [problem(m) for m in models]
        if all(problems):
            raise ConfigError(f"impossible combination: {problems[0]}")

    kind = Target.parse(recipe.device).kind
    for t in techniques():
        if t.stage == "quantize" and space.can_choose(t) and (problem := quant_problem(t.name, kind)):
            raise ConfigError(f"impossible combination: {problem}")


def check_input_size(recipe: Recipe, arch: nn.Module) -> None:
    """Refuse an image size the teacher's patches do not tile (timm builds such a ViT, then fails on
    the first image)."""
    embed = getattr(arch, "patch_embed", None)
    size, patch = getattr(embed, "img_size", None), getattr(embed, "patch_size", None)
    if size is None or patch is None or getattr(embed, "dynamic_img_pad", False):
        return
    if any(s % p for s, p in zip(size, patch)):
        s, p = size[0] if size[0] % patch[0] else size[1], patch[0] if size[0] % patch[0] else patch[1]
        near = " or ".join(str(v) for v in (s // p * p, s // p * p + p) if v > 0)
        raise ConfigError(f"the image size {s} px of {recipe.teacher_model} is not a multiple of its patch size {p}; "
                          f"set data.img_size (or teacher.kwargs.img_size) to a multiple of {p}, e.g. {near}")


# what timm's pretrained loading adapts itself (the classifier, the position grid, the patch kernel's
# size): a difference there is expected; any other tensor must have the architecture's shape
_ADAPTED = ("head.", "head_dist.", "fc_norm.", "pos_embed", "patch_embed.proj.weight")


def check_checkpoint_fits(recipe: Recipe, arch: nn.Module) -> None:
    """Refuse a pretrained checkpoint whose tensors describe another architecture than the recipe's
    teacher (e.g. 192 wide for a 384-wide DeiT-Small), naming both values, before anything trains."""

    state = read_state_dict(recipe.teacher_checkpoint)
    own = arch.state_dict()
    width = lambda sd: next((int(sd[k].shape[-1]) for k in ("cls_token", "pos_embed") if k in sd), None)  # noqa: E731
    depth = lambda sd: len({k.split(".")[1] for k in sd if k.startswith("blocks.")})  # noqa: E731
    name = recipe.teacher_model
    fix = f"pass --model with the checkpoint's architecture, or a checkpoint of {name}"
    if width(state) and width(own) and width(state) != width(own):
        raise ConfigError(f"checkpoint {recipe.teacher_checkpoint} holds a model {width(state)} wide (embed_dim) but "
                          f"{name} is {width(own)} wide; {fix}")
    if depth(state) != depth(own):
        raise ConfigError(f"checkpoint {recipe.teacher_checkpoint} holds {depth(state)} blocks (depth) but {name} "
                          f"has {depth(own)}; {fix}")
    wrong = [k for k in own if k in state and not k.startswith(_ADAPTED) and state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise ConfigError(f"checkpoint {recipe.teacher_checkpoint} does not fit {name}: {k} is "
                          f"{tuple(state[k].shape)} there and {tuple(own[k].shape)} in the model; {fix}")


def _student_stage_models(recipe: Recipe, teacher: nn.Module) -> tuple[list[nn.Module], dict[str, Any]]:
    """The models leaving the student stage that the space can produce (the teacher, the deepest custom
    student, each timm-named student: students on the meta device), and the named students' shapes."""

    space = recipe.space
    stage = [t for t in techniques() if t.stage_configs is not None]
    # the teacher leaves the student stage where the space can choose none of its techniques
    models: list[nn.Module] = [teacher] if space.can_skip(stage) else []
    named: dict[str, Any] = {}
    for t in stage:
        for key, values in t.stage_configs(space.values_of):
            config = space.config_of(values)
            model, name = stage_model(teacher, config)  # ConfigError: a timm name not buildable for this input
            if key is not None:
                if t.model_problem is not None and (problem := t.model_problem(model, t.settings(config))):
                    raise ConfigError(f"impossible combination: {space.param(t.choice)}={key!r}: {problem}")
                named[key] = model_shape(model, name)
            models.append(model)
    return models, named


def _technique_problems(space) -> list[Callable[[nn.Module], str | None]]:
    """One check per technique the space can switch on and per value that switches it on (so its
    strongest setting too): each technique's own `model_problem`, asked of the models leaving the
    student stage (the student technique's precondition is asked of the teacher, elsewhere)."""
    checks: list[Callable[[nn.Module], str | None]] = []
    for t in techniques():
        if t.model_problem is None or t.stage == "student":
            continue
        for key in space.choosing_keys(t):
            for v in space.values_of(key):
                if K.chosen(t, {key: v}):
                    own = t.settings_of({**t.switch_on({key: v}), key: v})
                    checks.append(lambda m, t=t, own=own: t.model_problem(m, own))
    return checks


def context_for(recipe: Recipe) -> SearchContext:
    """The process-wide context of `recipe` (data and teacher loaded once per process)."""
    return _context_cached(json.dumps(recipe.to_dict(), sort_keys=True))


class TrialFailed(RuntimeError):
    """A trial that cannot produce valid objectives (the reason is stored on the trial)."""


def sample_config(trial: optuna.Trial, recipe: Recipe) -> CompressionConfig:
    override = trial.user_attrs.get(CONFIG_OVERRIDE_ATTR)
    if override is not None:
        # teacher / reference warm starts: suggest what the space can represent, then use the config as is
        config = CompressionConfig.from_dict(override)
        recipe.space.record(trial, config)
        return config
    return recipe.space.sample(trial)


def run_trial(trial: optuna.Trial, recipe: Recipe, artifact_dir: str | Path, ctx: SearchContext | None = None
              ) -> tuple[float, ...]:
    """The objective: returns the values of `recipe.objectives` in their order (by default val
    accuracy, latency ms, size bytes); failures are recorded with their reason."""
    ctx = ctx or context_for(recipe)
    start = t0 = time.perf_counter()
    t_screen = None
    trial.set_user_attr(WORKER_ATTR, this_worker())
    if FAIL_REASON_ATTR in trial.user_attrs:  # a retried trial starts clean
        trial.set_user_attr(FAIL_REASON_ATTR, None)
    try:
        config = _sample_or_prune(trial, recipe, ctx)
        t0 = time.perf_counter()
        monitor = _efficiency_hooks(trial, config, recipe, ctx)  # may end the trial PRUNED (screened)
        t_screen = time.perf_counter() - t0
        t0 = time.perf_counter()
        result = build(ctx.teacher, config, ctx.data, seed=recipe.seed, teacher_logits=ctx.teacher_logits,
                       kd_limit=recipe.kd_limit, on_epoch=monitor, train_device=ctx.training.device,
                       train_precision=ctx.training.precision)
        t1 = time.perf_counter()
        acc_result = accuracy(result.model, ctx.data.val)
        lat, cached = measure_latency_cached(result.model, ctx.example_shape, ctx.target, ctx.protocol,
                                             extra=latency_extra(config))
        size = int(size_bytes(result.model))
        latency = latency_attrs(lat, cached, latency_baseline(trial.study))
        macs = next((r["macs_after"] for r in reversed(result.records) if r.get("macs_after")), None)
        macs = macs if macs is not None else _macs(result.float_model, ctx)
        acc = float(acc_result.accuracy)
        candidate = Candidate(result.model, result.float_model, val_images(ctx), lat,
                              latency[LATENCY_ATTR]["objective_ms"], size, recipe.throughput_batch, acc, macs)
        try:
            measured = objective_values(recipe.objectives, candidate)
        except ValueError as exc:
            raise TrialFailed(str(exc)) from None
        values = tuple(measured.values())
        if not all(math.isfinite(v) for v in values):
            raise TrialFailed(f"non-finite objective values {measured}")
        t2 = time.perf_counter()
        artifact_id = save_trial_artifact(trial, result.float_model, acc_result.logits, config, artifact_dir)
        t3 = time.perf_counter()
        trial.set_user_attr(ARTIFACT_ATTR, artifact_id)
        trial.set_user_attr(RECORDS_ATTR, result.records)
        set_user_attrs(trial, latency)
        if lat.noisy:
            log.debug("trial %d: latency spread %.1f %% after %d runs is above the %.1f %% target (latency_noisy)",
                        trial.number, 100 * latency[LATENCY_SPREAD_ATTR], lat.batches[0].runs, 100 * ctx.protocol.target_cv)
        trial.set_user_attr(PARAMS_ATTR, sum(p.numel() for p in result.float_model.parameters()))
        trial.set_user_attr(MACS_ATTR, macs)
        # every metric measured, objectives or not: tables read a metric that is not an objective here
        trial.set_user_attr(METRICS_ATTR, {"accuracy": acc, "latency_ms": candidate.latency_ms,
                                           "size_bytes": float(size), "macs": macs} | measured)
        trial.set_user_attr(ACCURACY_DROP_ATTR, ctx.teacher_accuracy - acc)
        for name, value in constraint_values(recipe, ctx.teacher_accuracy, acc, candidate.latency_ms, size).items():
            trial.set_constraint(name, value)
        # build: the transforms; measure: accuracy, latency, size; save: the artifact upload; total: all of
        # run_trial (the rest is sampling and storage writes: benchmarks/overhead.py reads these)
        trial.set_user_attr(SECONDS_ATTR, {"screen": round(t_screen, 4), "build": round(t1 - t0, 4),
                                           "measure": round(t2 - t1, 4),
                                           "save": round(t3 - t2, 4), "total": round(time.perf_counter() - start, 4)})
        return values
    except optuna.TrialPruned:  # impossible, screened or stopped: not a failure; the reason is stored already
        if t_screen is not None:  # stopped in training: what it cost before it stopped
            trial.set_user_attr(SECONDS_ATTR, {"screen": round(t_screen, 4),
                                               "build": round(time.perf_counter() - t0, 4),
                                               "total": round(time.perf_counter() - start, 4)})
        raise
    except BaseException as exc:  # record every failure (KeyboardInterrupt too), then let Optuna mark FAIL
        reason = _reason(exc)
        try:
            trial.set_user_attr(FAIL_REASON_ATTR, reason)
            trial.set_user_attr(FINISHED_AT_ATTR, time.time())  # the end of its busy time (hypervolume_history)
        except Exception:  # noqa: BLE001 - the storage itself may be what failed
            log.warning("could not record the failure reason of trial %d", trial.number)
        log.warning("trial %d failed: %s", trial.number, reason)
        log.debug("".join(traceback.format_exception(exc)))
        if isinstance(exc, KeyboardInterrupt):
            _enqueue_retry(trial)
        raise


def _efficiency_hooks(trial: optuna.Trial, config: CompressionConfig, recipe: Recipe, ctx: SearchContext):
    """Screen a sampled candidate by its untrained structure, then return the per-epoch rung monitor
    of its training (None when neither is on). Warm starts are never screened nor stopped, but
    record their rungs: they are the peers sampled trials are compared with. A retry (of a crashed,
    killed or interrupted trial) is not screened again: its configuration passed once, and a resumed
    search must run what the uninterrupted one would have."""
    warm = trial.user_attrs.get(CONFIG_OVERRIDE_ATTR) is not None
    if not (recipe.screening or recipe.rungs):
        return None
    structure = None if warm else screen(trial, config, recipe, ctx, exempt=is_retry(trial))
    return RungMonitor(trial, recipe, ctx, config, structure, may_stop=not warm) if recipe.rungs else None


def _sample_or_prune(trial: optuna.Trial, recipe: Recipe, ctx: SearchContext) -> CompressionConfig:
    """The trial's config, or optuna.TrialPruned when the sampled combination can never be built (student
    heads not dividing its width, a block index beyond a shallow student, ...): found from the config and
    the model's structure before anything trains, stored as `pruned_reason`. The sampler still sees the
    trial's parameters (TPE models pruned trials as bad ones; NSGA-II and GP skip them), and the search
    budget counts completed trials only, so the study still reaches its trials."""

    try:
        config = sample_config(trial, recipe)
    except ConfigError as exc:
        _prune(trial, str(exc))
    trial.set_user_attr(CONFIG_ATTR, config.to_dict())
    trial.set_user_attr(LABEL_ATTR, config.summary())
    proposal_of = getattr(trial.study.sampler, "proposal_of", None)  # the vitshrink sampler's prediction
    if proposal_of is not None and (prediction := proposal_of(trial.number)) is not None:
        trial.set_user_attr(PROPOSAL_ATTR, prediction)
    reason = impossible_reason(ctx.teacher, config)
    if reason:
        _prune(trial, f"impossible combination: {reason}")
    return config


def _prune(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(PRUNED_REASON_ATTR, reason[:500])
    log.info("trial %d pruned: %s", trial.number, reason)
    raise optuna.TrialPruned(reason)


def _enqueue_retry(trial: optuna.Trial) -> None:
    """Queue an interrupted trial's parameters (and warm-start config) to run first on resume."""
    keep = {k: v for k, v in trial.user_attrs.items() if k in (CONFIG_OVERRIDE_ATTR, ROLE_ATTR)}
    try:
        trial.study.enqueue_trial(dict(trial.params), user_attrs={**keep, RETRY_OF_ATTR: trial.number})
    except Exception as exc:  # noqa: BLE001 - resuming then samples afresh; nothing is lost
        log.warning("could not queue a retry of interrupted trial %d: %s", trial.number, exc)


def _macs(model: nn.Module, ctx: SearchContext) -> int | None:

    try:
        return count_macs(model, ctx.data.val.images([0]))
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
