"""A runtime added outside vitshrink, for tests/test_addition.py: the model in float16 (weights and
activations) behind a wrapper that casts its float32 input in and its output back. Its config record,
its technique and its handler are the whole addition."""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from vitshrink.compress import register_handler
from vitshrink.compress.quantize import deploy
from vitshrink.techniques import Technique, TechniqueConfig, register_technique


@dataclass(frozen=True)
class TorchFp16Config(TechniqueConfig):
    pass


register_technique(Technique(name="torch_fp16", stage="quantize", config=TorchFp16Config, fields={},
                             selector=("quant", "torch_fp16"), on={"quant": "torch_fp16"}))


class Float16Model(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(torch.float16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float16)).to(torch.float32)


@register_handler(TorchFp16Config)
def torch_fp16(model: nn.Module, config, ctx) -> nn.Module:
    return deploy(model, Float16Model(copy.deepcopy(model)), config, ctx)
