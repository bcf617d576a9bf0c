"""GEMV-style kernel for decode (M of 1 to a few): CUDA cores, no tensor-core tile padding.

Each program streams a BLOCK_N x K strip of the 8-bit weight with wide loads, converts it in registers and
multiplies by BLOCK_M activation rows; the M tiles that share one strip run side by side, so the strip comes
from HBM once and from L2 after. BLOCK_M == 1 keeps a (BLOCK_N, BLOCK_K) partial-sum tile and reduces once at
the end; BLOCK_M > 1 reduces each K tile. W8A8 (A8): the per-token activation quantization is fused in: a
first pass over the program's x rows finds the scale, the main loop quantizes x tiles on the fly (the values
act_quant would store), so decode pays one launch and no x_q round trip.
"""
from __future__ import annotations

import triton
import triton.language as tl

from qexp.kernels.triton_common import epilogue, to_float


@triton.jit(do_not_specialize=["M", "stride_wsn", "stride_wsg", "group_size", "tiles_per_split"])
def qgemv_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, bias_ptr, pre_ptr,
                 M, N, K, stride_xm, stride_wn, stride_om, stride_wsn, stride_wsg, group_size, tiles_per_split,
                 GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SPLIT_K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 A8: tl.constexpr, ACT_FP8: tl.constexpr, HAS_PRE: tl.constexpr, QMAX: tl.constexpr,
                 QMAX_INV: tl.constexpr):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n_ld = offs_n % N
    offs_m_ld = offs_m % M
    offs_k = tl.arange(0, BLOCK_K)
    kt_begin = pid_k * tiles_per_split
    w_ptrs = w_ptr + offs_n_ld[:, None] * stride_wn + (kt_begin * BLOCK_K + offs_k)[None, :]
    x_ptrs = x_ptr + offs_m_ld[:, None] * stride_xm + (kt_begin * BLOCK_K + offs_k)[None, :]
    if A8:  # first pass over the whole rows (L2-resident at decode sizes): per-token scale, as act_quant computes it
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for kt in range(tl.cdiv(K, BLOCK_K)):
            kmask = offs_k < K - kt * BLOCK_K
            xr = tl.load(x_ptr + offs_m_ld[:, None] * stride_xm + (kt * BLOCK_K + offs_k)[None, :],
                         mask=kmask[None, :], other=0.0)
            xv = xr.to(tl.float32)
            if HAS_PRE:
                xv = (xv * tl.load(pre_ptr + kt * BLOCK_K + offs_k, mask=kmask, other=0.0)[None, :]).to(xr.dtype)
                xv = xv.to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xv), axis=1))
        x_scale = tl.maximum(amax, 1e-12) * QMAX_INV
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for i in range(tiles_per_split):
        kt = kt_begin + i
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs)
        else:
            w = tl.load(w_ptrs, mask=offs_k[None, :] < K - kt * BLOCK_K, other=0)
            x = tl.load(x_ptrs, mask=offs_k[None, :] < K - kt * BLOCK_K, other=0)
        wf = to_float(w)
        xf = x.to(tl.float32)
        if A8:  # quantize x on the fly: same values as act_quant's x_q, products exact in fp32
            if HAS_PRE:
                p = tl.load(pre_ptr + kt * BLOCK_K + offs_k, mask=offs_k < K - kt * BLOCK_K, other=0.0)
                xf = (xf * p[None, :]).to(x.dtype).to(tl.float32)
            y = tl.clamp(tl.div_rn(xf, x_scale[:, None]), -QMAX, QMAX)
            if ACT_FP8:
                xf = y.to(tl.float8e4nv).to(tl.float32)
            else:
                xf = (y + 12582912.0) - 12582912.0  # round half to even, as torch.round
        if GROUPED:
            wf = wf * tl.load(ws_ptr + offs_n_ld * stride_wsn + ((kt * BLOCK_K) // group_size) * stride_wsg)[:, None]
        if BLOCK_M == 1:
            acc += wf * xf
        else:
            acc += tl.sum(wf[None, :, :] * xf[:, None, :], axis=2)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if BLOCK_M == 1:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = acc
    if A8:
        out = out * x_scale[:, None]
    epilogue(out, out_ptr, ws_ptr, ws_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N, stride_om,
             stride_wsn, pid_k, False, GROUPED, HAS_BIAS, SPLIT_K)
