"""Reference quantize / dequantize math in plain torch (float32), the numerics every recipe is checked against.

Weights are (out_features N, in_features K). Granularity: "tensor" one scale; "row" one scale per output row;
"group" one scale per `group_size` consecutive inputs of a row. Symmetric absmax: int8 maps amax to 127,
fp8 e4m3fn maps amax to 448 (its largest finite value).
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


def quantize(w: torch.Tensor, dtype: str, granularity: str, group_size: int | None = None):
    """Return (q, scale): q in int8/float8 with w's shape; scale float32 with one entry per span."""
    w32 = w.float()
    g = _grouped(w32, granularity, group_size)
    scale = g.abs().amax(dim=-1, keepdim=True).clamp_min(EPS) / QMAX[dtype]
    x = g / scale
    if dtype == "int8":
        q = x.round().clamp(-QMAX["int8"], QMAX["int8"]).to(torch.int8)
    else:
        q = x.clamp(-QMAX["fp8"], QMAX["fp8"]).to(torch.float8_e4m3fn)
    return q.reshape(w.shape), scale.reshape(-1)


def dequantize(q: torch.Tensor, scale: torch.Tensor, granularity: str, group_size: int | None = None,
               out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = _grouped(q.float(), granularity, group_size)
    return (g * scale.reshape(-1, 1)).reshape(q.shape).to(out_dtype)


def fake_quantize(w: torch.Tensor, dtype: str, granularity: str, group_size: int | None = None) -> torch.Tensor:
    """quantize -> dequantize, returned in w's dtype."""
    q, s = quantize(w, dtype, granularity, group_size)
    return dequantize(q, s, granularity, group_size, out_dtype=w.dtype)


def num_scales(shape: tuple[int, int], granularity: str, group_size: int | None = None) -> int:
    n, k = shape
    return {"tensor": 1, "row": n, "group": n * (k // group_size) if group_size else 0}[granularity]
