"""Fake (simulated) quantization: quantize -> dequantize, computed in bf16, runs on any device.

Weight-only fake recipes leave a plain bf16 weight (same speed as bf16). Fake W8A8 (SmoothQuant fake) also
quantize->dequantizes each token's activation at run time, so its weight is a small tensor subclass holding the
fake-quantized bf16 weight, the activation dtype and the optional SmoothQuant pre-scale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler
from torchao.utils import TorchAOBaseTensor

from qexp.quant import qdq

aten = torch.ops.aten


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
    gran = f"group{config.group_size}" if config.granularity == "group" else config.granularity
    module.qexp_recipe = f"fake {config.dtype} {gran} (bf16 weight)"
    return module


class FakeQuantActWeight(TorchAOBaseTensor):
    """bf16 weight whose linear first fake-quantizes the activation per token (after x * pre_scale)."""

    tensor_data_names: ClassVar[list[str]] = ["weight"]
    tensor_attribute_names: ClassVar[list[str]] = ["act_dtype"]
    optional_tensor_data_names: ClassVar[list[str]] = ["pre_scale"]

    def __new__(cls, weight, act_dtype, pre_scale=None):
        return torch.Tensor._make_wrapper_subclass(cls, weight.shape, dtype=weight.dtype, device=weight.device,
                                                   requires_grad=False)

    def __init__(self, weight, act_dtype, pre_scale=None):
        super().__init__()
        self.weight, self.act_dtype, self.pre_scale = weight, act_dtype, pre_scale

    def dequantize(self, output_dtype: torch.dtype | None = None) -> torch.Tensor:
        return self.weight.to(output_dtype or self.dtype)

    def describe(self) -> str:
        return (f"fake W8A8 {self.act_dtype} per-token (bf16 weight"
                + (" + pre_scale)" if self.pre_scale is not None else ")"))


@FakeQuantActWeight.implements(aten.linear.default)
@FakeQuantActWeight.implements_torch_function(torch.nn.functional.linear)
def _fake_act_linear(func, types, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if w.pre_scale is not None:
        x = (x.float() * w.pre_scale).to(x.dtype)  # same rounding as the real path's pre-scale
    return torch.nn.functional.linear(qdq.fake_quantize_activation(x, w.act_dtype), w.weight, bias)
