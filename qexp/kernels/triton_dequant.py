"""Dequantize an 8-bit weight to bf16/fp16 in one pass: bf16(w_q * scale), bit for bit reference.dequantize_weight.

Used by the "dequant_mm" backend for weight-only recipes at large M, where cuBLAS on a transient dequantized
copy of one layer's weight (freed right after the call) beats the fused Triton GEMM; the tuner picks it per
shape only where it measures faster, and past the largest tuned bucket (prefill) it is the weight-only path.
Scales are loaded once per (row, tile) or (row, group) and broadcast: a group size that is a power of two up to
the tile's width is a constexpr, so the tile reshapes into whole groups. Other group sizes take a scale gathered per
element (`k // group_size` at run time).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N, BLOCK_K = 16, 512


@triton.jit(do_not_specialize=["stride_wsn", "stride_wsg", "group_size"])
def _dequant_kernel(w_ptr, ws_ptr, out_ptr, N, K, stride_wsn, stride_wsg, group_size,
                    GROUPS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """GROUPS: 0 one scale per row (row-wise; tensor-wise with stride 0), n > 0 a tile holds n whole groups of
    BLOCK_K // n, -1 any other group size."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    nmask = offs_n < N
    mask = nmask[:, None] & (offs_k[None, :] < K)
    idx = offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    w = tl.load(w_ptr + idx, mask=mask).to(tl.float32)  # masked lanes are never stored
    if GROUPS == 0:
        v = w * tl.load(ws_ptr + offs_n * stride_wsn, mask=nmask, other=0.0)[:, None]
    elif GROUPS > 0:
        offs_g = tl.program_id(1) * GROUPS + tl.arange(0, GROUPS)
        s = tl.load(ws_ptr + offs_n[:, None] * stride_wsn + offs_g[None, :] * stride_wsg,
                    mask=nmask[:, None] & (offs_g[None, :] * (BLOCK_K // GROUPS) < K), other=0.0)
        v = tl.reshape(tl.reshape(w, (BLOCK_N, GROUPS, BLOCK_K // GROUPS)) * s[:, :, None], (BLOCK_N, BLOCK_K))
    else:
        v = w * tl.load(ws_ptr + offs_n[:, None] * stride_wsn + (offs_k[None, :] // group_size) * stride_wsg,
                        mask=mask, other=0.0)
    tl.store(out_ptr + idx, v.to(out_ptr.dtype.element_ty), mask=mask)


def _groups_per_tile(group_size: int | None) -> int:
    if group_size is None:
        return 0
    whole = group_size <= BLOCK_K and group_size & (group_size - 1) == 0
    return BLOCK_K // group_size if whole else -1


def dequantize(w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None,
               out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    n, k = w_q.shape
    if w_scale.numel() == 1:
        strides, group_size = (0, 0), None
    elif w_scale.dim() == 2 and group_size is not None and group_size < k:
        strides = (w_scale.stride(0), w_scale.stride(1))
    else:
        strides, group_size = (1, 0), None
    out = torch.empty((n, k), device=w_q.device, dtype=out_dtype)
    grid = (triton.cdiv(n, BLOCK_N), triton.cdiv(k, BLOCK_K))
    _dequant_kernel[grid](w_q, w_scale, out, n, k, *strides, group_size or k, GROUPS=_groups_per_tile(group_size),
                          BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4)
    return out
