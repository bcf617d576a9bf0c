"""Real quantization: weights stored int8 / float8_e4m3fn + float32 scales in a TorchAO-style tensor subclass.

Why our own subclass instead of TorchAO's Int8Tensor / Float8Tensor: those run eagerly and were measured 3-60x
slower than bf16 per linear on H100, and Float8Tensor has no activation pre-scale (SmoothQuant fp8). Every
linear through a `QuantizedWeight` goes to `qexp.kernels.quantized_linear` (looked up at call time): the one
seam where fused kernels plug in. The forward has no host syncs (.item(), data-dependent shapes), so it can be
captured in CUDA graphs. Storage (qdata, scale, pre_scale) moves with `model.to()` and shows in state_dict
through TorchAOBaseTensor's flatten / _to_copy / detach / clone support.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler
from torchao.utils import TorchAOBaseTensor

from qexp import kernels
from qexp.quant import qdq

aten = torch.ops.aten


class QuantizedWeight(TorchAOBaseTensor):
    """A linear weight (N, K) stored as qdata (int8 / float8_e4m3fn) and float32 scales.

    scale: (1,) per-tensor, (N,) per-row, (N, K // group_size) per-group. act_dtype None = weight-only
    (W8A16); "int8" / "fp8" = dynamic per-token activation quantization (W8A8), x * pre_scale (K,) first.
    """

    tensor_data_names: ClassVar[list[str]] = ["qdata", "scale"]
    tensor_attribute_names: ClassVar[list[str]] = ["dtype"]
    optional_tensor_data_names: ClassVar[list[str]] = ["pre_scale"]
    optional_tensor_attribute_names: ClassVar[list[str]] = ["group_size", "act_dtype"]

    def __new__(cls, qdata, scale, dtype, pre_scale=None, group_size=None, act_dtype=None):
        return torch.Tensor._make_wrapper_subclass(cls, qdata.shape, dtype=dtype, device=qdata.device,
                                                   requires_grad=False)

    def __init__(self, qdata, scale, dtype, pre_scale=None, group_size=None, act_dtype=None):
        super().__init__()
        self.qdata, self.scale, self.pre_scale = qdata, scale, pre_scale
        self.group_size, self.act_dtype = group_size, act_dtype

    @classmethod
    def from_float(cls, w: torch.Tensor, dtype: str, granularity: str, group_size: int | None = None,
                   act_dtype: str | None = None, pre_scale: torch.Tensor | None = None,
                   out_dtype: torch.dtype | None = None) -> QuantizedWeight:
        q, s = qdq.quantize(w, dtype, granularity, group_size)
        return cls(q, s, out_dtype or w.dtype, pre_scale=pre_scale,
                   group_size=group_size if granularity == "group" else None, act_dtype=act_dtype)

    def dequantize(self, output_dtype: torch.dtype | None = None) -> torch.Tensor:
        return qdq.dequantize(self.qdata, self.scale, self.group_size, output_dtype or self.dtype)

    def describe(self) -> str:
        gran = ("tensor" if self.scale.numel() == 1 else "row") if self.group_size is None else f"group{self.group_size}"
        kind = f"W8A8 {self.act_dtype} per-token" + (" + pre_scale" if self.pre_scale is not None else "") \
            if self.act_dtype else "weight-only"
        return f"QuantizedWeight({self.qdata.dtype}, {gran}, {kind})"


@QuantizedWeight.implements(aten.linear.default)
@QuantizedWeight.implements_torch_function(torch.nn.functional.linear)
def _linear(func, types, args, kwargs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    return kernels.quantized_linear(x, w.qdata, w.scale, group_size=w.group_size, act_dtype=w.act_dtype,
                                    pre_scale=w.pre_scale, bias=bias)


torch.serialization.add_safe_globals([QuantizedWeight])


@dataclass
class RealQuantWeightConfig(AOBaseConfig):
    """Weight-only (W8A16) real quantization of nn.Linear weights."""

    dtype: str = "int8"  # int8 | fp8
    granularity: str = "row"  # tensor | row | group
    group_size: int | None = None


@register_quantize_module_handler(RealQuantWeightConfig)
def _real_quant_linear(module: torch.nn.Linear, config: RealQuantWeightConfig) -> torch.nn.Linear:
    w = QuantizedWeight.from_float(module.weight.detach(), config.dtype, config.granularity, config.group_size)
    module.weight = torch.nn.Parameter(w, requires_grad=False)
    module.qexp_recipe = w.describe()
    return module
