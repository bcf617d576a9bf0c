"""Reference quantize / dequantize math in plain torch (float32), the numerics every recipe is checked against.

Weights are (out_features N, in_features K). Granularity: "tensor" one scale; "row" one scale per output row;
"group" one scale per `group_size` consecutive inputs of a row. Symmetric absmax: int8 maps amax to 127
(range [-127, 127], so amax itself is exact and every element errs by at most scale/2), fp8 e4m3fn maps amax
to 448 (its largest finite value) and rounds with torch's own float8 cast.

Scales come back in the shape qexp.kernels.quantized_linear takes: (1,) tensor-wise, (N,) row-wise,
(N, K // group_size) group-wise. Dequantization is qexp.kernels.reference.dequantize_weight, the same function
the real-mode weight uses, so fake and real weights are one formula and agree bit for bit.

TorchAO convention difference: its symmetric int8 (Int8WeightOnlyConfig, Int8Tensor) uses
scale = amax / 127.5 with range [-128, 127] (amax clips to 127 * scale) and quantizes as x * (1 / scale); we
use amax / 127 and x / scale. Given the same scale the two agree except on rare exact-tie roundings (tested).
TorchAO's fp8 scale is amax / 448 computed in the weight's dtype (bf16); ours is computed in float32.
"""
from __future__ import annotations

import torch

QMAX = {"int8": 127.0, "fp8": torch.finfo(torch.float8_e4m3fn).max}
STORAGE = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
EPS = 1e-12


def _grouped(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View of w whose last dim is the span each scale covers."""
    n, k = w.shape
    if granularity == "tensor":
        return w.reshape(1, n * k)
    if granularity == "row":
        return w
    if granularity == "group":
        if group_size is None or k % group_size:
            raise ValueError(f"group_size {group_size} does not divide in_features {k}")
        return w.reshape(n * (k // group_size), group_size)
    raise ValueError(f"unknown granularity {granularity!r}")


def scale_shape(shape: tuple[int, int], granularity: str, group_size: int | None = None) -> tuple[int, ...]:
    n, k = shape
    return {"tensor": (1,), "row": (n,), "group": (n, k // group_size if group_size else 0)}[granularity]


def quantize(w: torch.Tensor, dtype: str, granularity: str, group_size: int | None = None):
    """Return (q, scale): q int8 / float8_e4m3fn with w's shape; scale float32 in the kernel's shape."""
    w32 = w.float()
    g = _grouped(w32, granularity, group_size)
    scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(EPS) / QMAX[dtype]
    x = g / scale
    if dtype == "int8":
        q = x.round().clamp(-QMAX["int8"], QMAX["int8"]).to(torch.int8)
    else:
        q = x.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn)
    return q.reshape(w.shape), scale.reshape(scale_shape(tuple(w.shape), granularity, group_size))


def dequantize(q: torch.Tensor, scale: torch.Tensor, group_size: int | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The real-mode weight's dequantization (the kernels' reference), so fake and real cannot drift apart."""
    # imported late: qexp.kernels.reference imports this module
    from qexp.kernels.reference import dequantize_weight

    return dequantize_weight(q, scale, group_size, out_dtype)


def fake_quantize(w: torch.Tensor, dtype: str, granularity: str, group_size: int | None = None) -> torch.Tensor:
    """quantize -> dequantize, returned in w's dtype."""
    q, s = quantize(w, dtype, granularity, group_size)
    return dequantize(q, s, group_size if granularity == "group" else None, out_dtype=w.dtype)


def fake_quantize_activation(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """Dynamic symmetric per-token quantize -> dequantize of activations (last dim = features), in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    q, s = quantize(x2, dtype, "row")
    return (q.float() * s.reshape(-1, 1)).to(x.dtype).reshape(x.shape)


def num_scales(shape: tuple[int, int], granularity: str, group_size: int | None = None) -> int:
    n, k = shape
    return {"tensor": 1, "row": n, "group": n * (k // group_size) if group_size else 0}[granularity]


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (float64)."""
    ref, approx = ref.double(), approx.double()
    noise = (ref - approx).pow(2).sum()
    return float("inf") if noise == 0 else (10 * torch.log10(ref.pow(2).sum() / noise)).item()
