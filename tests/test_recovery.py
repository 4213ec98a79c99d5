"""Stronger KD recovery (issue 12.3): augmented KD with the teacher run on each augmented batch, and
block-output (token feature) distillation; both opt-in, the defaults training exactly as before."""

from __future__ import annotations

import copy
import hashlib
import json

import optuna
import pytest
import torch

from vitshrink.compress import distill
from vitshrink.compress._registry import BuildContext
from vitshrink.compress.recovery import OnlineTeacher, block_pairs
from vitshrink.data import DataBundle
from vitshrink.models import TINY_VIT_KWARGS, TeacherSpec, TrainSettings, create_model
from vitshrink.spaces import CompressionConfig, ConfigError, SearchSpace

torch.set_num_threads(2)

FAST = TrainSettings(epochs=1, batch_size=64, lr=5e-4, weight_decay=0.01, device="cpu", precision="fp32")


def _small(data: DataBundle, n: int = 128) -> DataBundle:
    return DataBundle(f"{data.name}-{n}", data.train.head(n), data.val, data.test, data.num_classes)


def _digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _record_inputs(model: torch.nn.Module, into: list) -> None:
    # deepcopy keeps hooks and shares this closure's list: the online teacher's copy records here too
    model.register_forward_hook(lambda _m, args, _out: into.append(args[0].detach().clone()))


def test_kd_augment_runs_the_teacher_on_each_augmented_batch(tiny_vit, tiny_data):
    data = _small(tiny_data)
    teacher = copy.deepcopy(tiny_vit)
    student = copy.deepcopy(tiny_vit)
    seen_by_teacher, seen_by_student = [], []
    _record_inputs(teacher, seen_by_teacher)
    _record_inputs(student, seen_by_student)
    distill.distill_train(student, data, None, FAST, 4.0, 0.7, teacher=teacher, augment="flip")
    assert len(seen_by_teacher) == len(seen_by_student) == 2  # 128 images, batches of 64
    for t, s in zip(seen_by_teacher, seen_by_student):
        assert torch.equal(t, s)  # the teacher saw exactly the batch the student trained on
    train = data.train.x.flatten(1)
    shown = torch.cat(seen_by_teacher).flatten(1)
    unseen = [not (train == row).all(1).any() for row in shown]
    assert sum(unseen) > 10  # flipped digits: images that are not in the un-augmented train split


def test_default_kd_reads_the_cached_logits_and_never_runs_the_teacher(tiny_vit, tiny_data):
    data = _small(tiny_data)
    teacher = copy.deepcopy(tiny_vit)
    logits = distill.teacher_logits(teacher, data)
    calls = []
    _record_inputs(teacher, calls)
    distill.distill_train(copy.deepcopy(tiny_vit), data, logits, FAST, 4.0, 0.7, teacher=teacher)
    assert calls == []


def test_feature_loss_is_zero_for_the_teacher_itself_and_positive_otherwise(tiny_vit, tiny_data):
    x = tiny_data.val.x[:8]
    twin = copy.deepcopy(tiny_vit)
    online = OnlineTeacher(tiny_vit, twin, "cpu", feature_weight=1.0)
    online(x)  # the teacher's forward and the student's fill the block taps
    twin(x)
    assert float(online.extra_loss().detach()) == pytest.approx(0.0, abs=1e-5)

    torch.manual_seed(1)
    other = create_model(TeacherSpec("vit_tiny_patch16_224", dict(TINY_VIT_KWARGS)))
    online = OnlineTeacher(tiny_vit, other, "cpu", feature_weight=1.0)
    online(x)
    other(x)
    assert float(online.extra_loss().detach()) > 0.01


def test_feature_loss_projects_a_narrower_shallower_student(tiny_vit, tiny_data):
    cfg = CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 16, "heads": 2, "epochs": 1}})
    student = distill.make_student(tiny_vit, cfg)
    online = OnlineTeacher(tiny_vit, student, "cpu", feature_weight=0.5)
    assert online.pairs == [(0, 1)] == block_pairs(1, 2)  # its one block against the teacher's last
    x = tiny_data.val.x[:4]
    online(x)
    student(x)  # the student's forward fills its taps
    loss = online.extra_loss()
    loss.backward()
    assert float(loss.detach()) > 0 and online.projections[0].weight.grad.abs().sum() > 0


def test_defaults_train_bit_identically(tiny_vit, tiny_data):
    """At the default settings the new code path is never taken: the same weights as a plain KD call."""
    data = _small(tiny_data)
    logits = distill.teacher_logits(tiny_vit, data)
    plain, explicit = copy.deepcopy(tiny_vit), copy.deepcopy(tiny_vit)
    distill.distill_train(plain, data, logits, FAST, 4.0, 0.7, seed=3)
    distill.distill_train(explicit, data, logits, FAST, 4.0, 0.7, seed=3, teacher=tiny_vit, augment="none",
                          feature_weight=0.0)
    assert _digest(plain) == _digest(explicit)
    # an old stored config (no recovery keys) is today's default config, and fine-tunes to the same weights
    old = json.loads(CompressionConfig({"finetune": {"epochs": 1}}).flat.to_json())
    del old["kd_augment"], old["kd_feature_weight"]
    cfg = CompressionConfig.from_dict(old)
    assert cfg == CompressionConfig({"finetune": {"epochs": 1}})
    a = distill.finetune(tiny_vit, cfg, BuildContext(data=data, teacher=tiny_vit, seed=0))
    b = distill.finetune(tiny_vit, CompressionConfig({"finetune": {"epochs": 1}}),
                         BuildContext(data=data, teacher=tiny_vit, seed=0))
    assert _digest(a) == _digest(b)
    on = distill.finetune(tiny_vit, CompressionConfig({"finetune": {"epochs": 1}}, distill={"feature_weight": 1.0}),
                          BuildContext(data=data, teacher=tiny_vit, seed=0))
    assert _digest(on) != _digest(a)


def test_recovery_finetune_keeps_rung_callbacks_and_notes(tiny_vit, tiny_data):
    epochs = []
    ctx = BuildContext(data=_small(tiny_data), teacher=tiny_vit, seed=0,
                       on_epoch=lambda stage, e, total, model: epochs.append((stage, e, total)))
    cfg = CompressionConfig({"finetune": {"epochs": 2}}, distill={"augment": "flip+shift", "feature_weight": 0.5})
    distill.finetune(copy.deepcopy(tiny_vit), cfg, ctx)
    assert epochs == [("finetune", 1, 2), ("finetune", 2, 2)]
    assert ctx.notes["kd_augment"] == "flip+shift" and ctx.notes["kd_teacher"] == "online"
    assert ctx.teacher_logits is None  # the online path never computed the cached logits


def test_recovery_settings_round_trip_and_validate():
    cfg = CompressionConfig({"prune": {"heads": 0.3}, "finetune": {"epochs": 2}}, distill={"augment": "flip+shift",
                             "feature_weight": 0.25})
    assert CompressionConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="invalid DistillConfig: augment='rotate' is not one of"):
        CompressionConfig({"finetune": {"epochs": 1}}, distill={"augment": "rotate"})
    with pytest.raises(ConfigError, match=r"distill feature_weight=1.0 is only used by a technique that distils "
                       r"\(student, finetune\)"):
        CompressionConfig({"dynamic_int8": {}}, distill={"feature_weight": 1.0})
    with pytest.raises(ConfigError, match="feature_weight=-1.0 must be >= 0"):
        CompressionConfig({"finetune": {"epochs": 1}}, distill={"feature_weight": -1.0})


def test_space_searches_and_fixes_recovery_only_where_something_is_distilled():
    space = SearchSpace.from_dict({"finetune.epochs": [0, 2], "distill.augment": ["none", "flip"]},
                                  {"distill.feature_weight": 0.5})
    off = space.sample(optuna.trial.FixedTrial({"finetune.epochs": 0}))
    assert off == CompressionConfig()  # no KD: the fixed recovery setting keeps its default
    on = space.sample(optuna.trial.FixedTrial({"finetune.epochs": 2, "distill.augment": "flip"}))
    assert (on.distill.augment, on.distill.feature_weight) == ("flip", 0.5)
    with pytest.raises(ConfigError, match="'mixup' is not one of"):
        SearchSpace.from_dict({"finetune.epochs": [1, 2], "distill.augment": ["none", "mixup"]})
