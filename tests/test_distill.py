"""Students and knowledge distillation: architecture, KD transfer, the teacher-logits cache, the loss,
the recovery fine-tune, rebuilding without training, timm-name and DeiT-distilled students."""

from __future__ import annotations

import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from vitshrink.compress import distill
from vitshrink.compress import BuildContext, handler_of, planned_handlers
from vitshrink.data import DataBundle, cache_dir
from vitshrink.models import TINY_VIT_KWARGS, TrainSettings, create_model, evaluate, train_classifier
from vitshrink.spaces import CompressionConfig, ConfigError

torch.set_num_threads(2)

STUDENT = dict(model="custom", depth=1, embed_dim=24, heads=3, mlp_ratio=3.0)  # the student technique's settings


def _subset(data: DataBundle, n: int) -> DataBundle:
    return DataBundle(f"{data.name}-{n}", data.train.head(n), data.val, data.test, data.num_classes)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def teacher(tiny_spec, tiny_data) -> torch.nn.Module:
    """The tiny ViT trained briefly on digits16 (about 0.75 val accuracy, a few seconds)."""
    torch.manual_seed(0)
    model = create_model(tiny_spec)
    train_classifier(model, tiny_data, TrainSettings(epochs=8, batch_size=32, lr=5e-3, weight_decay=0.0), seed=0)
    return model.eval()


def test_registered_stages():
    applied = lambda config: [(fn, [t.stage for t in ts]) for fn, ts in planned_handlers(config)]  # noqa: E731
    assert applied(CompressionConfig({"student": {**STUDENT, "epochs": 1}})) == [(handler_of("student"), ["student"])]
    assert applied(CompressionConfig({"finetune": {"epochs": 2}})) == [(handler_of("finetune"), ["finetune"])]
    assert applied(CompressionConfig()) == []


def test_custom_student_has_configured_shape_and_teacher_io(tiny_vit, tiny_data):
    before = _state(tiny_vit)
    cfg = CompressionConfig({"student": {**STUDENT, "epochs": 1}})
    ctx = BuildContext(data=tiny_data, teacher=tiny_vit, train=False)
    student = distill.student(tiny_vit, cfg, ctx)
    assert student is not tiny_vit and _same_state(before, _state(tiny_vit))  # input not mutated
    assert len(student.blocks) == 1 and student.embed_dim == 24
    assert student.blocks[0].attn.num_heads == 3 and student.blocks[0].mlp.fc1.out_features == 72
    assert student.num_classes == tiny_vit.num_classes == 10
    assert student.patch_embed.patch_size == tiny_vit.patch_embed.patch_size
    assert student.num_prefix_tokens == tiny_vit.num_prefix_tokens and student.global_pool == tiny_vit.global_pool
    assert student(tiny_data.val.x[:5]).shape == (5, 10)
    arch = ctx.notes["student_arch"]
    assert arch["depth"] == 1 and arch["embed_dim"] == 24 and arch["num_heads"] == 3 and arch["mlp_ratio"] == 3.0
    assert ctx.notes["student_params"] == sum(p.numel() for p in student.parameters())
    assert ctx.notes["kd_epochs"] == 0 and ctx.notes["final_loss"] is None


def test_identity_settings_return_an_equal_copy(tiny_vit, tiny_data):
    ctx = BuildContext(data=tiny_data, teacher=tiny_vit)
    x = tiny_data.val.x[:8]
    for fn in (distill.student, distill.finetune):
        out = fn(tiny_vit, CompressionConfig(), ctx)
        assert out is not tiny_vit and torch.equal(out(x), tiny_vit(x))


def test_kd_transfers_the_teachers_knowledge(teacher, tiny_data):
    teacher_acc, _ = evaluate(teacher, tiny_data.val.x, tiny_data.val.y)
    assert teacher_acc > 0.6
    # kd_alpha=1: the student never sees a label, so all it knows comes from the teacher's soft targets
    cfg = CompressionConfig({"student": {"model": "custom", "depth": 1, "embed_dim": 32, "heads": 2, "mlp_ratio": 2.0,
                                         "epochs": 15}}, distill={"alpha": 1.0})
    calls = []
    ctx = BuildContext(data=tiny_data, teacher=teacher, seed=0, progress=lambda *a: calls.append(a))
    student = distill.student(teacher, cfg, ctx)
    acc, logits = evaluate(student, tiny_data.val.x, tiny_data.val.y)
    assert acc > 0.5, f"student val accuracy {acc:.3f} after KD (teacher {teacher_acc:.3f}, chance 0.1)"
    _, t_logits = evaluate(teacher, tiny_data.val.x, tiny_data.val.y)
    assert (logits.argmax(1) == t_logits.argmax(1)).float().mean() > 0.5  # it agrees with its teacher
    assert [c[:3] for c in calls] == [("student", e, 15) for e in range(1, 16)]
    assert calls[-1][3] < calls[0][3]  # the KD loss went down
    assert ctx.notes["kd_epochs"] == 15 and math.isclose(ctx.notes["final_loss"], calls[-1][3], rel_tol=1e-4)
    assert ctx.teacher_logits is not None and ctx.teacher_logits.shape == (len(tiny_data.train), 10)


def test_teacher_logits_computed_once_and_cached_on_disk(tiny_spec, tiny_data):
    torch.manual_seed(1234)  # weights no other test uses: nothing cached for them yet
    model = create_model(tiny_spec)
    data = _subset(tiny_data, 300)
    with torch.no_grad():
        expected = model(data.train.x)
    forwards = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    key = distill.logits_cache_key(model, data)
    path = cache_dir() / "logits" / f"{key}.npy"
    assert not path.exists()

    first = distill.teacher_logits(model, data)
    ran = len(forwards)
    assert ran > 0 and path.exists() and first.shape == (300, 10)
    assert torch.allclose(first, expected, atol=1e-5)
    assert distill.teacher_logits(model, data) is first and len(forwards) == ran  # memory
    distill.clear_logits_memory()
    from_disk = distill.teacher_logits(model, data)
    assert len(forwards) == ran and torch.equal(from_disk, first)  # disk, the teacher not run again
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left no temporary file

    with torch.no_grad():
        model.head.bias.add_(1.0)
    assert distill.logits_cache_key(model, data) != key  # new weights, new entry
    assert distill.logits_cache_key(model, _subset(tiny_data, 299)) != distill.logits_cache_key(model, data)


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    T, alpha = 2.0, 0.3
    kl = 0.0
    for si, ti in zip(s.tolist(), t.tolist()):
        p = [math.exp(v / T) / sum(math.exp(w / T) for w in ti) for v in ti]
        q = [math.exp(v / T) / sum(math.exp(w / T) for w in si) for v in si]
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    ce = sum(-math.log(math.exp(si[yi]) / sum(math.exp(v) for v in si)) for si, yi in zip(s.tolist(), y.tolist()))
    expected = alpha * T * T * kl / 2 + (1 - alpha) * ce / 2
    assert math.isclose(float(distill.kd_loss(s, y, t, T, alpha)), expected, rel_tol=1e-5)
    # DeiT pair: cross-entropy on the class head, KL on the distillation head
    other = torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.0, 0.0]])
    pair = distill.kd_loss((other, s), y, t, T, alpha)
    assert math.isclose(float(pair), alpha * T * T * kl / 2 + (1 - alpha) * float(F.cross_entropy(other, y)), rel_tol=1e-5)
    assert float(distill.kd_loss(t, y, t, T, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_finetune_recovers_a_damaged_model(teacher, tiny_data):
    damaged = copy.deepcopy(teacher)
    with torch.no_grad():  # hand-made "pruning": half the MLP units of block 1 and one head of block 0
        damaged.blocks[1].mlp.fc1.weight[32:] = 0
        damaged.blocks[1].mlp.fc1.bias[32:] = 0
        d = damaged.embed_dim
        for part in range(3):
            damaged.blocks[0].attn.qkv.weight[part * d + d // 2 : (part + 1) * d] = 0
    before_state = _state(damaged)
    acc_before, _ = evaluate(damaged, tiny_data.val.x, tiny_data.val.y)
    ctx = BuildContext(data=tiny_data, teacher=teacher, seed=0)
    tuned = distill.finetune(damaged, CompressionConfig({"finetune": {"epochs": 3}}), ctx)
    acc_after, _ = evaluate(tuned, tiny_data.val.x, tiny_data.val.y)
    assert _same_state(before_state, _state(damaged))  # input not mutated
    assert acc_after >= acc_before, f"fine-tune lowered val accuracy {acc_before:.3f} -> {acc_after:.3f}"
    assert ctx.notes["kd_epochs"] == 3 and ctx.notes["lr"] == distill.FINETUNE_SETTINGS.lr
    rebuilt = distill.finetune(damaged, CompressionConfig({"finetune": {"epochs": 3}}),
                               BuildContext(data=tiny_data, teacher=teacher, train=False))
    assert _same_state(before_state, _state(rebuilt))  # rebuilding only shapes; the saved weights are loaded later


def test_untrained_rebuild_has_the_same_architecture(tiny_vit, tiny_data):
    data = _subset(tiny_data, 128)
    cfg = CompressionConfig({"student": {**STUDENT, "epochs": 1}})
    trained = distill.student(tiny_vit, cfg, BuildContext(data=data, teacher=tiny_vit, seed=3))
    rebuilt = distill.student(tiny_vit, cfg, BuildContext(data=data, teacher=tiny_vit, seed=3, train=False))
    shapes = {k: v.shape for k, v in trained.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert not _same_state(_state(trained), _state(rebuilt))  # only the trained one was trained
    rebuilt.load_state_dict(trained.state_dict())
    x = tiny_data.val.x[:16]
    assert torch.equal(rebuilt(x), trained(x))


def test_timm_name_student_builds_with_teacher_geometry(tiny_vit, tiny_data):
    cfg = CompressionConfig({"student": {"model": "deit_tiny_patch16_224", "epochs": 1}})
    ctx = BuildContext(data=tiny_data, teacher=tiny_vit, train=False)
    student = distill.student(tiny_vit, cfg, ctx)
    assert student.patch_embed.img_size == (16, 16) and student.patch_embed.patch_size == (4, 4)
    assert student.patch_embed.proj.in_channels == 1 and student.num_classes == 10
    assert len(student.blocks) == 12 and student.embed_dim == 192  # deit_tiny's own depth and width
    assert student(tiny_data.val.x[:2]).shape == (2, 10)
    assert ctx.notes["student_arch"]["depth"] == 12
    with pytest.raises(ConfigError, match="not_a_model"):
        distill.student(tiny_vit, CompressionConfig({"student": {"model": "not_a_model", "epochs": 1}}), ctx)


def test_deit_distilled_student_trains_both_heads(tiny_data):
    torch.manual_seed(0)
    teacher = timm.create_model("deit_tiny_distilled_patch16_224", **TINY_VIT_KWARGS).eval()
    data = _subset(tiny_data, 128)
    cfg = CompressionConfig({"student": {**STUDENT, "epochs": 1}})
    untrained = distill.student(teacher, cfg, BuildContext(data=data, teacher=teacher, train=False))
    student = distill.student(teacher, cfg, BuildContext(data=data, teacher=teacher))
    assert hasattr(student, "dist_token") and student.num_prefix_tokens == 2
    for head in ("head", "head_dist"):  # both heads learned
        assert not torch.equal(getattr(student, head).weight, getattr(untrained, head).weight)
    assert student.distilled_training is False  # inference averages the two heads
    assert student.train()(data.val.x[:4]).shape == (4, 10)
    assert math.isfinite(float(distill.kd_loss(torch.randn(4, 10), data.val.y[:4], torch.randn(4, 10))))


def test_teacher_init_copies_selected_blocks_and_leading_channels(teacher, tiny_data):
    x = tiny_data.val.x[:16]
    depth = len(teacher.blocks)
    dim, heads = teacher.embed_dim, teacher.blocks[0].attn.num_heads
    ratio = teacher.blocks[0].mlp.fc1.out_features / dim
    same = dict(model="custom", embed_dim=dim, heads=heads, mlp_ratio=ratio, epochs=1, init="teacher")
    ctx = BuildContext(data=tiny_data, teacher=teacher, train=False)
    # the teacher's own shape: weight selection copies every tensor, so it computes the same function
    clone = distill.student(teacher, CompressionConfig({"student": {**same, "depth": depth}}), ctx)
    assert torch.allclose(clone(x), teacher(x), atol=1e-6)
    assert ctx.notes["init"] == {"teacher_blocks": list(range(depth)), "tensors_copied": len(teacher.state_dict()),
                                 "tensors_kept": 0}
    # one block: block 0 of the teacher, exactly
    ctx = BuildContext(data=tiny_data, teacher=teacher, train=False)
    short = distill.student(teacher, CompressionConfig({"student": {**same, "depth": 1}}), ctx)
    assert ctx.notes["init"]["teacher_blocks"] == [0]
    for name, value in short.blocks[0].state_dict().items():
        assert torch.equal(value, teacher.blocks[0].state_dict()[name]), name
    # narrower: every tensor is the leading slice; q, k and v each keep their own leading rows
    narrow = distill.student(teacher, CompressionConfig({"student": {**STUDENT, "epochs": 1, "init": "teacher"}}), ctx)
    w, tw = narrow.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight
    for part in range(3):
        assert torch.equal(w[part * 24:(part + 1) * 24], tw[part * dim:part * dim + 24, :24])
    assert torch.equal(narrow.patch_embed.proj.weight, teacher.patch_embed.proj.weight[:24])
    assert torch.equal(narrow.head.weight, teacher.head.weight[:, :24])
    assert torch.equal(narrow.pos_embed, teacher.pos_embed[..., :24])
    # random init is untouched by the teacher
    rand = distill.student(teacher, CompressionConfig({"student": {**STUDENT, "epochs": 1}}), ctx)
    assert not torch.equal(rand.head.weight, teacher.head.weight[:, :24]) and ctx.notes["init"] == "random"


def test_teacher_init_needs_a_student() -> None:
    with pytest.raises(ConfigError, match="student init='teacher' is only used where student is chosen"):
        CompressionConfig({"student": {"init": "teacher"}})
    with pytest.raises(ConfigError, match="student_init='teacher' is only used with student other than 'none'; set"):
        CompressionConfig(student_init="teacher")  # the flat form, still read, refuses it in its own words
    with pytest.raises(ConfigError, match="invalid StudentConfig: init='copy' is not one of random, teacher"):
        CompressionConfig({"student": {**STUDENT, "epochs": 1, "init": "copy"}})
