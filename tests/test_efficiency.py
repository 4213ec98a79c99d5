"""Searching smarter than random: structure first (screening), training in rungs (stopping trials
clearly behind their peers), and the hypervolume of a study against wall-clock time."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from recipes import tiny_recipe
from vitshrink.compress import build
from vitshrink.objectives import LatencyProtocol, Target, size_bytes, structural_signature
from vitshrink.search._screening import ORT_SIZE_TOLERANCE, runs_onnx, untrained_structure
from vitshrink.spaces import CompressionConfig, ConfigError, Recipe

STUDENT = dict(student="custom", student_depth=2, student_embed_dim=16, student_heads=2, student_epochs=1)
EVERY_TECHNIQUE = {
    "student": CompressionConfig(**STUDENT),
    "student_from_teacher": CompressionConfig(**STUDENT, student_init="teacher"),
    "prune": CompressionConfig(prune_heads=0.5, prune_mlp=0.25, kd_epochs=1),
    "nystrom": CompressionConfig(lowrank="nystrom", landmarks=4, kd_epochs=1),
    "svd": CompressionConfig(lowrank="svd", svd_rank=0.5, kd_epochs=1),
    "tome": CompressionConfig(token_merge_r=2, kd_epochs=1),
    "patch_drop": CompressionConfig(token_drop=0.25, token_drop_at=(1,), kd_epochs=1),
    **{f"student_{q}": CompressionConfig(**STUDENT, quant=q, calib_size=32 if q == "static_int8" else 0)
       for q in ("dynamic_int8", "static_int8", "bf16", "ort_fp32", "ort_int8")},
}


@pytest.mark.parametrize("name", sorted(EVERY_TECHNIQUE))
def test_trained_model_has_the_untrained_structures_signature_and_size(name, tiny_vit, tiny_data) -> None:
    """Screening measures the untrained structure; the trained model must find that measurement in
    the latency cache (same signature) and have the same size, whatever the technique."""
    config = EVERY_TECHNIQUE[name]
    target, protocol = Target("cpu", 1), LatencyProtocol(runs=5, warmup=1)
    shape = tuple(tiny_data.val.x.shape[1:])
    untrained = untrained_structure(tiny_vit, config, tiny_data, seed=0)
    trained = build(tiny_vit, config, tiny_data, seed=0, train=True, kd_limit=64).model
    extra = {"quant": config.quant}
    assert (structural_signature(untrained, shape, target, protocol, extra)
            == structural_signature(trained, shape, target, protocol, extra))
    if runs_onnx(trained):  # the ONNX exporter shares equal constants: sizes differ slightly
        assert abs(size_bytes(untrained) - size_bytes(trained)) <= ORT_SIZE_TOLERANCE * size_bytes(trained)
    else:
        assert size_bytes(untrained) == size_bytes(trained)
