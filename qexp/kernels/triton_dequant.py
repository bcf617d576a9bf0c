"""Dequantize an 8-bit weight to bf16/fp16 in one pass: bf16(w_q * scale), bit for bit reference.dequantize_weight.

Used by the "dequant_mm" backend for weight-only recipes at large M, where cuBLAS on a transient dequantized
copy of one layer's weight (freed right after the call) beats the fused Triton GEMM; the tuner picks it per
shape only where it measures faster.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["stride_wsn", "stride_wsg", "group_size"])
def _dequant_kernel(w_ptr, ws_ptr, out_ptr, N, K, stride_wsn, stride_wsg, group_size,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    idx = offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
    w = tl.load(w_ptr + idx, mask=mask)  # masked lanes are never stored
    s = tl.load(ws_ptr + offs_n[:, None] * stride_wsn + (offs_k[None, :] // group_size) * stride_wsg, mask=mask,
                other=0.0)
    tl.store(out_ptr + idx, (w.to(tl.float32) * s).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize(w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None,
               out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    n, k = w_q.shape
    if w_scale.numel() == 1:
        strides = (0, 0)
    elif w_scale.dim() == 2 and group_size is not None:
        strides = (w_scale.stride(0), w_scale.stride(1))
    else:
        strides = (1, 0)
    out = torch.empty((n, k), device=w_q.device, dtype=out_dtype)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 256))
    _dequant_kernel[grid](w_q, w_scale, out, n, k, *strides, group_size or k, BLOCK_N=32, BLOCK_K=256,
                          num_warps=4)
    return out
