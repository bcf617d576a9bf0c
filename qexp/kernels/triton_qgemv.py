"""GEMV-style kernel for decode (M of 1 to a few): CUDA cores, no tensor-core tile padding.

Each program streams a BLOCK_N x K strip of the 8-bit weight with wide loads, converts it in registers and
multiplies by BLOCK_M activation rows; the M tiles that share one strip run side by side, so the strip comes
from HBM once and from L2 after.
BLOCK_M == 1 keeps a (BLOCK_N, BLOCK_K) partial-sum tile, reduced once at the end, and loads the next weight tile
(PREFETCH = 2: the next two) before converting the current one. Group-wise scales: the tile is (BLOCK_N, groups,
GROUP_TILE), one scale per (row, group) broadcast in registers, so a K tile may span many groups (64-wide groups
no longer mean 64-wide loads). With PDL the first weight tile is requested before waiting for the previous kernel
(weights are constant).
BLOCK_M > 1 reduces each K tile; its K tile stays inside one group.
W8A8 (A8): the per-token activation quantization is fused in: a first pass over the program's x rows finds the
scale, the main loop quantizes x tiles on the fly (the values act_quant would store), so decode pays one launch
and no x_q round trip.
"""
from __future__ import annotations

import triton
import triton.language as tl

from qexp.kernels.pdl import gdc_launch_dependents, gdc_wait
from qexp.kernels.triton_act_quant import divide_by_scale, round_half_even, row_scale
from qexp.kernels.triton_common import epilogue, to_float


@triton.jit
def _quantize_x(xf, x, p_ptr, k_offs, x_scale, x_rcp, HAS_PRE: tl.constexpr, IS_FP8: tl.constexpr,
                QMAX: tl.constexpr, DIV_STEPS: tl.constexpr):
    """x tile (fp32 xf, original dtype x) -> the values act_quant stores for it, as fp32 (products exact):
    triton_act_quant.to_8bit's rounding without its final convert, since the GEMV multiplies in fp32."""
    if HAS_PRE:
        xf = (xf * tl.load(p_ptr + k_offs)).to(x.dtype).to(tl.float32)
    y = tl.clamp(divide_by_scale(xf, x_scale, x_rcp, DIV_STEPS), -QMAX, QMAX)
    if IS_FP8:
        return y.to(tl.float8e4nv).to(tl.float32)
    return round_half_even(y)


@triton.jit(do_not_specialize=["M", "stride_wsn", "stride_wsg", "group_size", "tiles_per_split"])
def qgemv_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, bias_ptr, pre_ptr,
                 M, N, K, stride_xm, stride_wn, stride_om, stride_wsn, stride_wsg, group_size, tiles_per_split,
                 GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_TILE: tl.constexpr,
                 A8: tl.constexpr, IS_FP8: tl.constexpr, HAS_PRE: tl.constexpr, QMAX: tl.constexpr,
                 QMAX_INV: tl.constexpr, DIV_STEPS: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr = 1):
    if PDL:
        gdc_launch_dependents()  # the next kernel may launch now; it waits for our stores itself
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    pid_m = pid % num_pid_m
    pid_n = pid // num_pid_m
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n_ld = offs_n % N
    offs_m_ld = offs_m % M
    k_begin = pid_k * tiles_per_split * BLOCK_K
    if BLOCK_M == 1:
        NG: tl.constexpr = BLOCK_K // GROUP_TILE
        offs_g = tl.arange(0, NG)
        k_in = offs_g[:, None] * GROUP_TILE + tl.arange(0, GROUP_TILE)[None, :]  # (NG, GROUP_TILE)
        w_ptrs = w_ptr + offs_n_ld[:, None, None] * stride_wn + (k_begin + k_in)[None, :, :]
        x_ptrs = x_ptr + pid_m * stride_xm + k_begin + k_in
        w = tl.load(w_ptrs)
        if PREFETCH == 2:
            w1 = tl.load(w_ptrs + BLOCK_K, mask=tiles_per_split > 1)
    if PDL:
        gdc_wait()  # x is the previous kernel's output
    if A8:  # first pass over the whole rows (L2-resident at decode sizes): per-token scale, as act_quant computes it
        offs_kr = tl.arange(0, BLOCK_K)
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for kt in range(tl.cdiv(K, BLOCK_K)):
            xr = tl.load(x_ptr + offs_m_ld[:, None] * stride_xm + (kt * BLOCK_K + offs_kr)[None, :])
            xv = xr.to(tl.float32)
            if HAS_PRE:
                xv = (xv * tl.load(pre_ptr + kt * BLOCK_K + offs_kr)[None, :]).to(xr.dtype).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xv), axis=1))
        x_scale = row_scale(amax, QMAX_INV)
        x_rcp = tl.div_rn(1.0, x_scale)
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, NG, GROUP_TILE), dtype=tl.float32)
        for i in range(tiles_per_split):
            k0 = k_begin + i * BLOCK_K
            x = tl.load(x_ptrs)
            if PREFETCH == 2:  # two tiles in flight during this one: more bytes in flight per program
                w_next = w1
                w1 = tl.load(w_ptrs + 2 * BLOCK_K, mask=i + 2 < tiles_per_split)
            else:
                w_next = tl.load(w_ptrs + BLOCK_K, mask=i + 1 < tiles_per_split)  # in flight during this tile
            wf = to_float(w)
            xf = x.to(tl.float32)
            if A8:
                xf = _quantize_x(xf, x, pre_ptr, k0 + k_in, x_scale[:, None], x_rcp[:, None], HAS_PRE, IS_FP8, QMAX,
                                 DIV_STEPS)
            if GROUPED:
                s = tl.load(ws_ptr + offs_n_ld[:, None] * stride_wsn + ((k0 + offs_g * GROUP_TILE) // group_size)[
                    None, :] * stride_wsg)
                wf = wf * s[:, :, None]
            acc += wf * xf[None, :, :]
            w = w_next
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        out = tl.sum(tl.sum(acc, axis=2), axis=1)[None, :]
    else:
        offs_k = tl.arange(0, BLOCK_K)
        w_ptrs = w_ptr + offs_n_ld[:, None] * stride_wn + (k_begin + offs_k)[None, :]
        x_ptrs = x_ptr + offs_m_ld[:, None] * stride_xm + (k_begin + offs_k)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for i in range(tiles_per_split):
            k0 = k_begin + i * BLOCK_K
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs)
            wf = to_float(w)
            xf = x.to(tl.float32)
            if A8:
                xf = _quantize_x(xf, x, pre_ptr, (k0 + offs_k)[None, :], x_scale[:, None], x_rcp[:, None], HAS_PRE,
                                 IS_FP8, QMAX, DIV_STEPS)
            if GROUPED:  # the K tile lies inside one group
                wf = wf * tl.load(ws_ptr + offs_n_ld * stride_wsn + (k0 // group_size) * stride_wsg)[:, None]
            acc += tl.sum(wf[None, :, :] * xf[:, None, :], axis=2)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        out = acc
    if A8:
        out = out * x_scale[:, None]
    epilogue(out, out_ptr, ws_ptr, ws_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N, stride_om,
             stride_wsn, pid_k, False, GROUPED, HAS_BIAS, SPLIT_K)
