"""Fused dynamic per-token activation quantization for W8A8: one pass over x per row.

Same math as reference.quantize_activation (qdq.quantize, "row"): optional SmoothQuant pre-scale rounded back to
x's dtype, scale = max(amax, 1e-12) / qmax, q = round-half-even(x / scale) (int8) or RNE cast to e4m3 (fp8).
Bit for bit as torch computes it on CUDA: a tensor divided by a Python scalar is multiplied by the float32
reciprocal (ATen's div_true_kernel_cuda), a tensor by a tensor is an IEEE division. That division is done here as
a multiply by the token's correctly rounded reciprocal plus FMA corrections (Markstein), whose 8-bit values are the
IEEE division's: a division per value (MUFU.RCP, FCHK and a slow-path branch) made the fused SiLU * up + fp8 quant
issue-bound at prefill sizes, 218 us at 16k tokens against 144 us for the bf16 SiLU * up, which moves more bytes
(152 us now; benchmarks/elementwise_h200*.json).
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from qexp.kernels import pdl
from qexp.quant import qdq


@triton.jit
def _act_quant_kernel(x_ptr, pre_ptr, q_ptr, s_ptr, K, stride_xm, stride_qm,
                      HAS_PRE: tl.constexpr, IS_FP8: tl.constexpr, QMAX: tl.constexpr, QMAX_INV: tl.constexpr,
                      DIV_STEPS: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    pdl.start(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x_raw = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs, mask=mask, other=0.0)
    x = x_raw.to(tl.float32)
    if HAS_PRE:
        x = (x * tl.load(pre_ptr + offs, mask=mask, other=0.0)).to(x_raw.dtype).to(tl.float32)
    q, scale = quantize_row(x, IS_FP8, QMAX, QMAX_INV, DIV_STEPS)
    tl.store(q_ptr + row.to(tl.int64) * stride_qm + offs, q, mask=mask)
    tl.store(s_ptr + row, scale)


@triton.jit
def quantize_row(x, IS_FP8: tl.constexpr, QMAX: tl.constexpr, QMAX_INV: tl.constexpr, DIV_STEPS: tl.constexpr):
    """One token's float32 values (a 1-D block, masked lanes 0) -> (8-bit values, float32 scale). Also called
    by the kernels that produce a W8A8 linear's input (the engine's RMSNorm, SiLU * up), so their fused output
    is bit for bit this kernel's."""
    scale = row_scale(tl.max(tl.abs(x), axis=0), QMAX_INV)
    return quantize_with(x, scale, tl.div_rn(1.0, scale), IS_FP8, QMAX, DIV_STEPS), scale


@triton.jit
def row_scale(amax, QMAX_INV: tl.constexpr):
    """A token's scale from its absolute maximum (kernels that see the row in parts take the max of theirs)."""
    return tl.maximum(amax, 1e-12) * QMAX_INV


@triton.jit
def divide_by_scale(x, scale, rcp, DIV_STEPS: tl.constexpr):
    """x / scale for quantizing, given rcp = div_rn(1, scale) (once per token): x * rcp, then DIV_STEPS FMA
    corrections y + (x - y * scale) * rcp. For x with |x| <= the token's amax (every value this module
    quantizes), the 8-bit values equal those of the IEEE quotient: with one step for every bf16 and fp16 x
    (checked exhaustively; the quotient itself may be an ulp off), with two for float32 x (the quotient is then
    the IEEE one, Markstein's theorem; tested around every rounding boundary), tests/test_kernels.py. A token
    with an inf or NaN gets NaN values where the division gives zeros, but its scale is then inf or NaN and the
    linear's output for it non-finite either way."""
    y = x * rcp
    nrcp = -rcp
    for _ in tl.static_range(DIV_STEPS):
        # y + (x - y * scale) * rcp computed as y + (y * scale - x) * -rcp: the same value (round to nearest is
        # symmetric), but for x = -0 the sum is -0 + -0 and -0 / scale stays -0, as e4m3 keeps the sign of a
        # zero. No per-value select (3.3-3.5 more SASS instructions per value than this in SiLU * up + quant).
        y = tl.fma(tl.fma(y, scale, -x), nrcp, y)
    return y


@triton.jit
def quantize_with(x, scale, rcp, IS_FP8: tl.constexpr, QMAX: tl.constexpr, DIV_STEPS: tl.constexpr):
    """float32 values -> 8-bit values at a per-token scale (rcp = div_rn(1, scale))."""
    return to_8bit(divide_by_scale(x, scale, rcp, DIV_STEPS), IS_FP8, QMAX)


@triton.jit
def to_8bit(y, IS_FP8: tl.constexpr, QMAX: tl.constexpr):
    """Quotients x / scale -> int8 (round half to even) or e4m3 (RNE), clamped to +-QMAX."""
    if IS_FP8:
        q = tl.clamp(y, -QMAX, QMAX).to(tl.float8e4nv)
    else:
        q = round_half_even(tl.clamp(y, -QMAX, QMAX)).to(tl.int8)
    return q


@triton.jit
def round_half_even(y):
    """float32 |y| <= 2^22 rounded to the nearest integer, ties to even (torch.round), still float32: adding then
    subtracting 1.5 * 2^23 leaves no fraction bits."""
    return (y + 12582912.0) - 12582912.0


def div_steps(x_dtype: torch.dtype) -> int:
    """The FMA corrections divide_by_scale needs for values of this dtype."""
    return 1 if x_dtype in (torch.bfloat16, torch.float16) else 2


def quant_args(act_dtype: str, x_dtype: torch.dtype) -> dict:
    """The constexprs of quantize_row for an activation dtype and the dtype of the values quantized."""
    qmax = qdq.QMAX[act_dtype]
    return {"IS_FP8": act_dtype == "fp8", "QMAX": float(qmax), "QMAX_INV": float(np.float32(1.0) / np.float32(qmax)),
            "DIV_STEPS": div_steps(x_dtype)}


def quantize_activation(x: torch.Tensor, act_dtype: str, pre_scale: torch.Tensor | None = None):
    """x (M, K) -> (x_q (M, K) int8 | float8_e4m3fn, scale (M, 1) float32)."""
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=qdq.STORAGE[act_dtype])
    s = torch.empty((m, 1), device=x.device, dtype=torch.float32)
    block_k = triton.next_power_of_2(k)
    _act_quant_kernel[(m,)](x, pre_scale if pre_scale is not None else s, q, s, k, x.stride(0), q.stride(0),
                            HAS_PRE=pre_scale is not None, **quant_args(act_dtype, x.dtype), BLOCK_K=block_k,
                            num_warps=min(16, max(4, block_k // 512)), **pdl.launch(x.device))
    return q, s
