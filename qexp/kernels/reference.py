"""Plain-torch quantized linear: the numerics every fused kernel must match, and the CPU path.

Weight w_q (N, K) int8 or float8_e4m3fn; w_scale float32 of shape (1,) tensor-wise, (N,) row-wise, or
(N, K // group_size) group-wise. act_dtype None = weight-only (W8A16); "int8"/"fp8" = dynamic per-token
activation quantization (W8A8), with x first multiplied by pre_scale (K,) when SmoothQuant folded one in.
"""
from __future__ import annotations

import torch

from qexp.quant import qdq


def dequantize_weight(w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None = None,
                      out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    n, k = w_q.shape
    w = w_q.float()
    if w_scale.numel() == 1:
        w = w * w_scale.reshape(1, 1)
    elif w_scale.dim() == 1:
        w = w * w_scale.reshape(n, 1)
    else:
        w = (w.reshape(n, k // group_size, group_size) * w_scale.reshape(n, -1, 1)).reshape(n, k)
    return w.to(out_dtype)


def quantize_activation(x: torch.Tensor, act_dtype: str):
    """Dynamic symmetric per-token quantization: (x_q, scale (tokens, 1) float32)."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = qdq.quantize(x2, act_dtype, "row")
    return q, s.reshape(-1, 1)


def quantized_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, *, group_size: int | None = None,
                     act_dtype: str | None = None, pre_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    out_dtype = x.dtype
    if pre_scale is not None:  # SmoothQuant's folded 1/s, rounded back to x's dtype as the previous op would
        x = (x.float() * pre_scale).to(x.dtype)
    if act_dtype is None:
        out = torch.nn.functional.linear(x, dequantize_weight(w_q, w_scale, group_size, x.dtype))
    else:
        x_q, x_s = quantize_activation(x, act_dtype)
        acc = x_q.float() @ w_q.float().T  # exact for int8 (|sum| < 2^24 for K <= 1040) and fp8 products
        ws = w_scale.reshape(1, -1) if w_scale.numel() > 1 else w_scale.reshape(1, 1)
        out = (acc * x_s * ws).to(out_dtype).reshape(*x.shape[:-1], w_q.shape[0])
    if bias is not None:
        out = out + bias
    return out
