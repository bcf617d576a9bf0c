"""The quantized GEMM of triton_qmm with its tiles fetched by Hopper's bulk tensor copy engine (TMA).

Same math, modes and epilogue as triton_qmm._qmm_kernel; what changes is the main loop. Pointer loads issue one
cp.async per thread per vector and keep a warp busy with address arithmetic; a TMA descriptor moves a whole
(rows, BLOCK_K) tile per instruction into swizzled shared memory, zero-filling rows past M or N, so the loop needs
no modulo, no masks and leaves the issue slots to the convert and the MMA. (Triton's `warp_specialize` on this
loop changed nothing in the sm_90 SASS, so it is not offered.)
Split-K reduces inside the one launch: each split stores its fp32 partial tile, the last split of a tile to
arrive (a per-tile arrival counter, reset by that split) sums the partials in split order and runs the epilogue:
no zero-fill or cast kernels around it, and the same sum whatever order the splits finish in.
Needs compute capability 9.0+; the host builds the descriptors (CUDA-graph safe: they only hold pointers).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from qexp.kernels import configs, pdl
from qexp.kernels.triton_common import epilogue, grouped_tile, scale_layout, to_float


@triton.jit(do_not_specialize=["M", "stride_wsn", "stride_wsg", "group_size", "tiles_per_split"])
def _qmm_tma_kernel(x_desc, w_desc, out_ptr, ws_ptr, xs_ptr, bias_ptr, part_ptr, count_ptr,
                    M, N, K, stride_om, stride_wsn, stride_wsg, group_size, tiles_per_split,
                    A8: tl.constexpr, INT_ACC: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
                    SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                    GROUP_N: tl.constexpr, SWAP_AB: tl.constexpr, FAST_I8: tl.constexpr,
                    STAGES: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # nothing constant to fetch early: tiles come through the pipelined loop
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n, pid_m = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_N)
    off_n = pid_n * BLOCK_N
    off_m = pid_m * BLOCK_M
    offs_n = off_n + tl.arange(0, BLOCK_N)
    offs_m = off_m + tl.arange(0, BLOCK_M)
    offs_n_ld = offs_n % N
    offs_m_ld = offs_m % M
    kt_begin = pid_k * tiles_per_split

    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32 if INT_ACC else tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT_ACC else tl.float32)
    for i in tl.range(0, tiles_per_split, num_stages=STAGES):
        kt = kt_begin + i
        w = w_desc.load([off_n, kt * BLOCK_K])  # (BLOCK_N, BLOCK_K), K contiguous
        x = x_desc.load([off_m, kt * BLOCK_K])  # (BLOCK_M, BLOCK_K)
        if GROUPED:  # dequantize in registers exactly as the reference does: bf16(w * s)
            s = tl.load(ws_ptr + offs_n_ld * stride_wsn + ((kt * BLOCK_K) // group_size) * stride_wsg)
            wf = to_float(w) if FAST_I8 else w.to(tl.float32)
            w = (wf * s[:, None]).to(x.dtype)
        elif not A8:
            w = to_float(w).to(x.dtype) if FAST_I8 else w.to(x.dtype)
        if SWAP_AB:
            acc = tl.dot(w, x.T, acc, out_dtype=acc.dtype)
        else:
            acc = tl.dot(x, w.T, acc, out_dtype=acc.dtype)

    pdl.launch_next(PDL)
    if SWAP_AB:
        out = tl.trans(acc.to(tl.float32))
    else:
        out = acc.to(tl.float32)
    if SPLIT_K == 1:
        epilogue(out, out_ptr, ws_ptr, xs_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N, stride_om,
                 stride_wsn, 0, A8, GROUPED, HAS_BIAS, 1)
    else:
        tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        split_stride = (tl.cdiv(N, BLOCK_N) * tl.cdiv(M, BLOCK_M) * BLOCK_M * BLOCK_N).to(tl.int64)
        part = part_ptr + pid.to(tl.int64) * (BLOCK_M * BLOCK_N) + tile
        tl.store(part + pid_k * split_stride, out)
        tl.debug_barrier()  # every thread's partial is written before the arrival is published (release)
        arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT_K):  # one partial tile live at a time (unrolled, the loads spill)
                total += tl.load(part + s * split_stride, cache_modifier=".cg")  # from L2, not a stale L1
            tl.atomic_xchg(count_ptr + pid, 0, sem="relaxed")  # ready for the next launch (no fence needed: see
            # gluon_w8a16.split_k_sum)
            epilogue(total, out_ptr, ws_ptr, xs_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N,
                     stride_om, stride_wsn, 0, A8, GROUPED, HAS_BIAS, 1)


@functools.cache
def _has_tma(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


_COUNTS: dict[torch.device, torch.Tensor] = {}
_OUTGROWN: list[torch.Tensor] = []  # kept alive: CUDA graphs captured with them still point at them


def _arrival_counts(device: torch.device, tiles: int) -> torch.Tensor:
    """Per-tile split-K arrival counters, zero between launches (the last split resets its tile's)."""
    c = _COUNTS.get(device)
    if c is None or c.numel() < tiles:
        if c is not None:
            _OUTGROWN.append(c)
        c = _COUNTS[device] = torch.zeros(max(tiles, 1 << 16), dtype=torch.int32, device=device)
    return c


def split_k_buffers(device: torch.device, split_k: int, tiles: int, tile_numel: int, unused: torch.Tensor):
    """fp32 partial tiles (uninitialised: each split writes its own) and the arrival counters of an in-kernel
    split-K reduction; `unused` for both when split_k == 1 (the kernels compile that branch out)."""
    if split_k == 1:
        return unused, unused
    return (torch.empty(split_k * tiles * tile_numel, device=device, dtype=torch.float32),
            _arrival_counts(device, tiles))


def supported(x: torch.Tensor, w_q: torch.Tensor) -> bool:
    """TMA needs sm_90+, 16-byte aligned bases and row strides."""
    return (_has_tma(x.device.index or 0)
            and x.data_ptr() % 16 == 0 and w_q.data_ptr() % 16 == 0
            and (x.stride(0) * x.element_size()) % 16 == 0 and (w_q.stride(0) * w_q.element_size()) % 16 == 0)


def qmm_tma(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *, group_size: int | None = None,
            x_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
            out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Same contract as triton_qmm.qmm for the tensor-core backends (x: bf16, or int8/fp8 with x_scale)."""
    m, k = x.shape
    n = w_q.shape[0]
    grouped, stride_wsn, stride_wsg = scale_layout(w_scale, group_size, k)
    if grouped and x_scale is not None:
        raise ValueError("W8A8 takes tensor- or row-wise weight scales, not group-wise")
    block_k = configs.fit_block_k(k, cfg["BLOCK_K"], grouped, group_size)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    split_k = math.gcd(cfg["SPLIT_K"], k // block_k)
    out = torch.empty((m, n), device=x.device, dtype=out_dtype)
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    part, counts = split_k_buffers(x.device, split_k, tiles, bm * bn, w_scale)
    x_desc = TensorDescriptor(x, [m, k], [x.stride(0), 1], [bm, block_k])
    w_desc = TensorDescriptor(w_q, [n, k], [w_q.stride(0), 1], [bn, block_k])
    _qmm_tma_kernel[(tiles, split_k)](
        x_desc, w_desc, out, w_scale, x_scale if x_scale is not None else w_scale,
        bias if bias is not None else w_scale, part, counts,
        m, n, k, out.stride(0), stride_wsn, stride_wsg, group_size or k, (k // block_k) // split_k,
        A8=x_scale is not None, INT_ACC=x_scale is not None and w_q.dtype == torch.int8, GROUPED=grouped,
        HAS_BIAS=bias is not None, SPLIT_K=split_k, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=block_k,
        GROUP_N=cfg.get("GROUP_N", 8), SWAP_AB=cfg.get("SWAP_AB", True), FAST_I8=cfg.get("FAST_I8", True),
        STAGES=cfg["num_stages"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch(x.device))
    return out
