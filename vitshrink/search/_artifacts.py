"""Rebuild a stored trial's model from its artifact (safetensors weights + JSON config), no pickle."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from safetensors import safe_open
from torch import nn

from ..compress import build
from ..data import DataBundle
from ..models import ModelError, TeacherSpec, create_model
from ..spaces import CompressionConfig
from ._schema import ARTIFACT_ATTR, ARTIFACT_DIR_ATTR, CONFIG_ATTR, RECIPE_ATTR, TEACHER_ATTR
from ._storage import artifact_store
from ._trial import LOGITS_KEY, logits_digest, state_digest


class ArtifactError(RuntimeError):
    """A trial artifact that is missing, truncated or tampered with."""


@dataclass
class LoadedTrial:
    model: nn.Module
    config: CompressionConfig
    val_logits: torch.Tensor  # the logits measured during the trial


def read_artifact(path: str | Path, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Weights and metadata of an artifact file; refuses anything that is not an intact safetensors file.

    `name` says which artifact it is in messages (default: the path)."""
    path = Path(path)
    label = name or str(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - every decode error means the file is unusable
        raise ArtifactError(f"artifact {label} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                            "it may be truncated or tampered with: re-run the trial or the search") from None
    if meta.get("format") != "1" or "config" not in meta or LOGITS_KEY not in state:
        raise ArtifactError(f"artifact {label} lacks vitshrink's metadata (format, config, logits); it was not written by vitshrink")
    if logits_digest(state[LOGITS_KEY]) != meta.get("logits_sha256"):
        raise ArtifactError(f"artifact {label} fails its checksum: the stored logits were modified")
    if "weights_sha256" in meta and state_digest(state, meta["config"]) != meta["weights_sha256"]:
        raise ArtifactError(f"artifact {label} fails its checksum: its weights or config were modified after the "
                            "trial saved them; re-run the trial or the search")
    return state, meta


def artifact_dir_of(study: optuna.Study, artifact_dir: str | Path | None = None) -> Path:
    if artifact_dir:
        return Path(artifact_dir)
    stored = study.user_attrs.get(ARTIFACT_DIR_ATTR)
    if not stored:
        raise ArtifactError(f"study {study.study_name!r} records no artifact folder; pass artifact_dir=")
    return Path(stored)


def rebuild_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, teacher: nn.Module | None,
                  data: DataBundle, artifact_dir: str | Path | None = None) -> LoadedTrial:
    """Rebuild `trial`'s deployed model: the teacher's architecture (or the student's) shaped by the
    config's structural transforms, the saved float weights loaded, then quantized as in the trial."""
    artifact_id = trial.user_attrs.get(ARTIFACT_ATTR)
    if not artifact_id:
        raise ArtifactError(f"trial {trial.number} of {study.study_name!r} has no saved model "
                            f"(state {trial.state.name}); only completed trials have one")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        try:
            optuna.artifacts.download_artifact(artifact_store=artifact_store(artifact_dir_of(study, artifact_dir)),
                                               artifact_id=artifact_id, file_path=str(path))
        except Exception as exc:  # noqa: BLE001
            raise ArtifactError(f"artifact of trial {trial.number} cannot be read from "
                                f"{artifact_dir_of(study, artifact_dir)}: {exc}") from None
        state, meta = read_artifact(path, f"of trial {trial.number} ({artifact_dir_of(study, artifact_dir) / artifact_id})")
    config = CompressionConfig.from_json(meta["config"])
    logits = state.pop(LOGITS_KEY)
    if teacher is None:
        spec = TeacherSpec.from_dict(study.user_attrs[TEACHER_ATTR])
        teacher = create_model(spec, load_weights=False)
    seed = int(study.user_attrs.get(RECIPE_ATTR, {}).get("study", {}).get("seed", 0))
    try:
        result = build(teacher, config, data, seed=seed, train=False, float_state=state)
    except RuntimeError as exc:
        raise ModelError(f"saved weights of trial {trial.number} do not fit its rebuilt architecture: {exc}") from None
    return LoadedTrial(result.model, config, logits)


def config_of(trial: optuna.trial.FrozenTrial) -> CompressionConfig | None:
    raw = trial.user_attrs.get(CONFIG_ATTR)
    return CompressionConfig.from_dict(raw) if raw else None


def dumps(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
