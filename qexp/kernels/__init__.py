"""Quantized linear entry point used by the real-mode weight tensors (qexp.quant).

CUDA: fused Triton / cuBLASLt kernels (qexp.kernels.fused) for every 8-bit recipe, configs tuned per GPU and shape;
CPU, or anything the fused path does not cover: the plain-torch reference (qexp.kernels.reference).
"""
from __future__ import annotations

import torch

from qexp.kernels import reference

try:  # Triton ships with CUDA builds of torch only
    from qexp.kernels import fused
except ImportError:
    fused = None


def quantized_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, *, group_size: int | None = None,
                     act_dtype: str | None = None, pre_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    if fused is not None and fused.supports(x, w_q, w_scale, group_size, act_dtype):
        return fused.quantized_linear(x, w_q, w_scale, group_size=group_size, act_dtype=act_dtype,
                                      pre_scale=pre_scale, bias=bias)
    return reference.quantized_linear(x, w_q, w_scale, group_size=group_size, act_dtype=act_dtype,
                                      pre_scale=pre_scale, bias=bias)


__all__ = ["quantized_linear"]
