"""Fake (simulated) weight quantization as a TorchAO config: quantize -> dequantize, weight stays bf16."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler

from qexp.quant import qdq


@dataclass
class FakeQuantWeightConfig(AOBaseConfig):
    dtype: str = "int8"  # int8 | fp8
    granularity: str = "row"  # tensor | row | group
    group_size: int | None = None


@register_quantize_module_handler(FakeQuantWeightConfig)
def _fake_quant_linear(module: torch.nn.Linear, config: FakeQuantWeightConfig) -> torch.nn.Linear:
    w = module.weight.detach()
    module.weight = torch.nn.Parameter(qdq.fake_quantize(w, config.dtype, config.granularity, config.group_size),
                                       requires_grad=False)
    module.qexp_recipe = f"fake-{config.dtype}-{config.granularity}"
    return module
