"""Proof by addition: a technique added outside vitshrink (`RUNTIME`, a module of its own: its config
record, its technique and its handler, nothing else) is searched, stored, rebuilt and exported like a
built-in one. It runs in a subprocess, so this session's registry keeps only vitshrink's own (the
module is written at test time: pytest's doctest collection would import, and register, a file here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

RUNTIME = '''"""A runtime added outside vitshrink, for tests/test_addition.py: the model in float16 (weights and
activations) behind a wrapper that casts its float32 input in and its output back; its one setting,
`keep_head`, keeps the classifier head in float32. Its config record, its technique and its handler
are the whole addition: its setting is searched as ``torch_fp16.keep_head`` with no other name."""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from vitshrink.compress import register_handler
from vitshrink.compress.quantize import deploy
from vitshrink.techniques import Technique, TechniqueConfig, register_technique, setting


@dataclass(frozen=True)
class TorchFp16Config(TechniqueConfig):
    keep_head: bool = setting(False)  # the classifier head stays float32


register_technique(Technique(name="torch_fp16", stage="quantize", config=TorchFp16Config,
                             selector="torch_fp16", on={"runtime": "torch_fp16"}))


class Float32Head(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.float())


class Float16Model(nn.Module):
    def __init__(self, model: nn.Module, keep_head: bool) -> None:
        super().__init__()
        self.model = model.to(torch.float16)
        if keep_head:
            self.model.head = Float32Head(self.model.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float16)).to(torch.float32)


@register_handler(TorchFp16Config)
def torch_fp16(model: nn.Module, config, ctx) -> nn.Module:
    keep_head = config["torch_fp16"].keep_head
    return deploy(model, Float16Model(copy.deepcopy(model), keep_head), config, ctx)
'''

SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    import fp16_runtime  # noqa: F401  registers the technique and its handler: the whole addition
    from recipes import tiny_recipe
    import vitshrink
    from vitshrink.search import run_search
    from vitshrink.spaces import CompressionConfig, Recipe
    from vitshrink.techniques import selector_choices

    space = ('techniques = ["prune", "dynamic_int8", "torch_fp16"]\\nalways = ["quant"]\\n[space.prune]\\nheads = [0.0, 0.5]'
             '\\n[space.torch_fp16]\\nkeep_head = [false, true]')
    text = tiny_recipe("fp16", space, trials=8, sampler="random").replace("[study]\\n", "[study]\\nscreening = false\\n")
    recipe = Recipe.from_toml_text(text)
    storage = "sqlite:///{root}/s.db"
    summary = run_search(recipe, storage=storage)
    handle = vitshrink.open_study("fp16", storage=storage)
    out = {{"choices": list(selector_choices()["runtime"]), "trials": []}}
    for t in summary.study.trials:
        row = {{"state": t.state.name, "params": t.params, "reason": t.user_attrs.get("fail_reason")}}
        if t.state.name == "COMPLETE" and t.params.get("runtime") == "torch_fp16":
            config = CompressionConfig.from_dict(t.user_attrs["config"])
            row["names"] = list(config.names)
            row["keep_head"] = config["torch_fp16"].keep_head
            loaded = handle.load_model(t.number)
            row["model"] = type(loaded).__name__
            row["head"] = type(loaded.model.head).__name__
            row["export"] = str(handle.export(t.number, "onnx", "{root}/m%d.onnx" % t.number))
        out["trials"].append(row)
    print(json.dumps(out))
''')


def test_a_runtime_added_outside_vitshrink_is_searched_stored_rebuilt_and_exported(tmp_path) -> None:
    (tmp_path / "fp16_runtime.py").write_text(RUNTIME)
    script = SCRIPT.format(tests=str(TESTS), root=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["choices"][-1] == "torch_fp16"  # a choice of the runtime selector by being registered
    assert all(t["state"] == "COMPLETE" for t in out["trials"]), out["trials"]
    fp16 = [t for t in out["trials"] if "names" in t]
    assert fp16, out["trials"]  # the random sampler drew it among 4 sampled trials (seed 0)
    for t in fp16:
        assert t["names"][-1] == "torch_fp16" and t["model"] == "Float16Model"
        assert t["params"]["torch_fp16.keep_head"] == t["keep_head"]  # its setting: a parameter named by it
        assert t["head"] == ("Float32Head" if t["keep_head"] else "Linear")  # and rebuilt as stored
        assert Path(t["export"]).stat().st_size > 0
