"""W8A8 GEMM (int8 or fp8 activations and weights, tensor- or row-wise weight scales) in Gluon, wgmma kept in flight.

out = (x_q @ w_q.T) * w_scale[n] * x_scale[m] (+ bias), x_q (M, K) quantized per token, w_q (N, K).
Why not Triton's pipeliner (triton_qmm_tma): it makes a wgmma asynchronous only if its accumulator is fp32
(WGMMAPipeline.cpp, "Rule 2.1"), so for int8 (int32 accumulators) every K step waits for its own wgmma before the
next is issued (`WARPGROUP.DEPBAR.LE gsb0, 0x0` in the loop; fp8 gets 0x1), and W8A8 int8 ran ~20 % slower than
fp8 at M = 64-256 on the same tiles (H200). Here, as in gluon_w8a16 but with no convert: a ring of STAGES x / w
tiles fed by TMA, STAGES - 1 ahead, one wgmma outstanding, split-K reduced inside the launch.
"""
from __future__ import annotations

import math

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

from qexp.kernels import configs, pdl
from qexp.kernels.gluon_w8a16 import (
    _fetch,
    _instr_n,
    _mma_warps,
    end_main_loop,
    program_tile,
    prologue,
    ring,
    split_k_sum,
    tma_descriptors,
)
from qexp.kernels.triton_qmm_tma import split_k_buffers


@gluon.jit
def _w8a8_kernel(x_desc, w_desc, out_ptr, ws_ptr, xs_ptr, bias_ptr, part_ptr, count_ptr,
                 M, N, K, stride_om, stride_wsn, tiles_per_split,
                 HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr, num_warps: gl.constexpr,
                 GROUP_M: gl.constexpr = 0):
    pid, pid_k, num_tiles, off_m, off_n, kt_begin = program_tile(M, N, tiles_per_split, BLOCK_M, BLOCK_N, GROUP_M)
    INT8: gl.constexpr = x_desc.dtype == gl.int8

    # wgmma N at most 128: Triton 3.6 fails to lower an s8 wgmma of N = 256 (ConvertNVGPUToLLVM)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=_mma_warps(BLOCK_M, num_warps),
                                                  instr_shape=[16, _instr_n(BLOCK_N, num_warps, BLOCK_M, 128), 32])
    x_smem, w_smem, ready = ring(x_desc, w_desc, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    prologue(STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, BLOCK_K,
             STAGES, PDL)

    # step 0 overwrites the accumulator (use_acc=False): see gluon_w8a16 (C7515)
    acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.int32 if INT8 else gl.float32, layout=mma)
    acc = _step(0, acc, False, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split,
                nbytes, BLOCK_K, STAGES, num_warps)
    for i in range(1, tiles_per_split):
        acc = _step(i, acc, True, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split,
                    nbytes, BLOCK_K, STAGES, num_warps)
    acc = end_main_loop(acc, ready, STAGES, PDL)

    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    last, total = split_k_sum(acc.to(gl.float32), part_ptr, count_ptr, pid, pid_k, num_tiles, BLOCK_M, BLOCK_N,
                              SPLIT_K, mma)
    if last:  # the order of triton_common.epilogue: (acc * w_scale) * x_scale + bias
        nmask = offs_n < N
        mmask = offs_m < M
        out = total * gl.load(ws_ptr + offs_n * stride_wsn, mask=nmask, other=0.0)[None, :]
        out = out * gl.load(xs_ptr + offs_m, mask=mmask, other=0.0)[:, None]
        if HAS_BIAS:
            out += gl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(gl.float32)[None, :]
        gl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


@gluon.jit
def _step(i, acc, USE_ACC: gl.constexpr, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin,
          tiles_per_split, nbytes: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
          num_warps: gl.constexpr):
    """K step i: issue wgmma i on ring slot i, wait for wgmma i-1, refill the slot it read with tile i + STAGES - 1."""
    s = i % STAGES
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
    acc = warpgroup_mma(x_smem.index(s), w_smem.index(s).permute((1, 0)), acc, use_acc=USE_ACC, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
    if num_warps > 4:  # the wait covers this warp group's wgmma only; the other may still read slot i-1
        gl.thread_barrier()
    _fetch(i + STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes,
           BLOCK_K, STAGES)
    return acc


def w8a8_gluon(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
               bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """x_q (M, K) in w_q's dtype with x_scale (M, 1) float32; w_scale (1,) or (N,). Returns out_dtype (M, N)."""
    m, k = x_q.shape
    n = w_q.shape[0]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    bk = configs.fit_block_k(k, cfg["BLOCK_K"], False, None)
    split_k = math.gcd(cfg["SPLIT_K"], k // bk)
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    out = torch.empty((m, n), device=x_q.device, dtype=out_dtype)
    part, counts = split_k_buffers(x_q.device, split_k, tiles, bm * bn, w_scale)
    x_desc, w_desc = tma_descriptors(x_q, w_q, bm, bn, bk)
    _w8a8_kernel[(tiles, split_k)](
        x_desc, w_desc, out, w_scale, x_scale, bias if bias is not None else w_scale, part, counts,
        m, n, k, out.stride(0), 1 if w_scale.numel() == n else 0, (k // bk) // split_k,
        HAS_BIAS=bias is not None, SPLIT_K=split_k, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STAGES=cfg["num_stages"],
        GROUP_M=cfg.get("GROUP_M", 0), num_warps=cfg["num_warps"], **pdl.launch(x_q.device))
    return out
