"""The tiny recipe the search tests share: 8x8 digits, patch 2 (16 patches + cls = 17 tokens), a
32-wide 2-block timm ViT teacher trained for a few epochs, quick latency. Each test picks its study
name, budget, sampler and space: the technique form of [space] (vitshrink/spaces/_space_form.py), its
fixed settings single values in their technique's table; the flat form (with `fixed`, a [fixed] table)
is still written by the tests of that form."""

from __future__ import annotations

TEMPLATE = """
[study]
name = "{name}"
trials = {trials}
{study}
[data]
dataset = "digits"

[teacher]
model = "vit_tiny_patch16_224"
{teacher}
[teacher.kwargs]
img_size = 8
patch_size = 2
in_chans = 1
embed_dim = 32
depth = 2
num_heads = 2
mlp_ratio = 2.0
{train}

[target]
{device}runs = 5
warmup = 1

[space]
{space}
{fixed}"""


def tiny_recipe(name: str = "tiny", space: str = 'techniques = ["dynamic_int8"]', *, trials: int = 2,
                sampler: str | None = None, fixed: str = "", teacher_extra: str = "", epochs: int | None = 1,
                device: str | None = None) -> str:
    """The recipe's TOML text. `space` is the body of [space] (its [space.<technique>] tables included);
    `sampler` also fixes seed 0; `fixed`, the body of a [fixed] table, goes with a flat-form `space` only;
    `epochs` None leaves out [teacher.train] (a teacher read as it is from a checkpoint is not trained)."""
    return TEMPLATE.format(
        name=name, trials=trials, study=f'sampler = "{sampler}"\nseed = 0\n' if sampler else "",
        teacher=teacher_extra, train=f"[teacher.train]\nepochs = {epochs}" if epochs is not None else "",
        device=f'device = "{device}"\n' if device else "", space=space,
        fixed=f"\n[fixed]\n{fixed}\n" if fixed else "")
