"""Weight-only W8A16 for a few decode tokens (M = 2 ... 16): the one-token GEMV's loads, mma.sync's math.

out = x @ dequant(w_q).T for x bf16 (M, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise scales.
At M = 16 the weight bytes are those of M = 1, but the TMA-fed kernels (skinny, gluon_rs) ran ~1.5x slower than
the one-token GEMV on the same weight (H100, 2026-12-06): their ring keeps a program's warps in lock step (a CTA
barrier before each slot is refilled) and stages every byte through shared memory. Here, as in gluon_gemv:
  - each thread loads its mma.sync A operand straight from global memory: with the operands' K order permuted
    alike (K_WIDTH = 16, as gluon_skinny) a thread's fragment of a 16-row x 64-wide weight tile is 16
    consecutive bytes of two rows, one 128-bit load each; no shared memory, no barrier in the loop;
  - the next PREFETCH weight tiles are loaded while the current one is converted (gluon_skinny's 2-instruction
    int8 -> bf16 bit trick) and multiplied; with PDL they are requested before waiting for the kernel that
    writes x (weights are constant);
  - x's B operand (K x the token tile) comes from global memory too (it is small: L1 / L2 hits);
  - weight rows are the MMA's M, tokens its N (swap-AB): one warp owns 16 rows per repeat, all of the tokens;
  - each K tile's product starts its own accumulator, added to the total after (short dependent MMA chains);
    group-wise scales multiply that per-tile product (a tile lies in one group);
  - split-K partials are summed inside the launch (gluon_w8a16.split_k_sum).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from qexp.kernels import configs, pdl
from qexp.kernels.gluon_skinny import K_WIDTH, _epilogue_t, _to_bf16, epilogue_operands
from qexp.kernels.gluon_w8a16 import _gdc_launch_dependents, _gdc_wait, program_tile, split_k_sum
from qexp.kernels.triton_common import scale_layout
from qexp.kernels.triton_qmm_tma import split_k_buffers


@gluon.jit
def _w_tile(w_ptrs, i, BLOCK_K: gl.constexpr):
    return gl.load(w_ptrs + i * BLOCK_K)


@gluon.jit
def _gemv_mma_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr, M, N, stride_xm, stride_wn,
                     stride_om, stride_wsn, stride_wsg,
                     K_TILES: gl.constexpr, GROUP_SIZE: gl.constexpr, GROUPED: gl.constexpr,
                     HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     BLOCK_K: gl.constexpr, PREFETCH: gl.constexpr, PDL: gl.constexpr, num_warps: gl.constexpr):
    """K_TILES: BLOCK_K-wide tiles per split (a constexpr: the loop is unrolled, so the prefetched tiles stay in
    the registers they were loaded into)."""
    pid, pid_k, num_tiles, off_m, off_n, kt_begin = program_tile(M, N, K_TILES, BLOCK_M, BLOCK_N)
    if PDL:
        _gdc_launch_dependents()  # the next kernel may launch now; it waits for our stores itself
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=K_WIDTH)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=K_WIDTH)

    offs_wn = (off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, a_l))) % N
    offs_wk = kt_begin * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, a_l))
    w_ptrs = w_ptr + offs_wn[:, None].to(gl.int64) * stride_wn + offs_wk[None, :]
    offs_xk = kt_begin * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(1, b_l))
    offs_xm = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, b_l))
    x_ptrs = x_ptr + offs_xm[None, :] * stride_xm + offs_xk[:, None]
    x_mask = (offs_xm < M)[None, :]

    w0 = _w_tile(w_ptrs, 0, BLOCK_K)
    if PREFETCH >= 2 and K_TILES > 1:
        w1 = _w_tile(w_ptrs, 1, BLOCK_K)
    if PREFETCH >= 3 and K_TILES > 2:
        w2 = _w_tile(w_ptrs, 2, BLOCK_K)
    if PDL:
        _gdc_wait()  # x is the previous kernel's output

    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    scale, bias = epilogue_operands(ws_ptr, bias_ptr, offs_n, N, stride_wsn, GROUPED, HAS_BIAS)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    for i in gl.static_range(K_TILES):
        xt = gl.load(x_ptrs + i * BLOCK_K, mask=x_mask, other=0.0)
        if i + PREFETCH < K_TILES:  # the tile PREFETCH ahead takes the register slot tile i frees
            w_next = _w_tile(w_ptrs, i + PREFETCH, BLOCK_K)
        prod = mma_v2(_to_bf16(w0), xt, gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma))
        if GROUPED:
            g = ((kt_begin + i) * BLOCK_K) // GROUP_SIZE
            prod = prod * gl.load(ws_ptr + (offs_n % N) * stride_wsn + g * stride_wsg)[:, None]
        acc += prod
        # rotate the prefetched tiles: w0 <- w1 <- w2 <- w_next
        if PREFETCH == 1:
            if i + 1 < K_TILES:
                w0 = w_next
        elif PREFETCH == 2:
            if i + 1 < K_TILES:
                w0 = w1
            if i + 2 < K_TILES:
                w1 = w_next
        else:
            if i + 1 < K_TILES:
                w0 = w1
            if i + 2 < K_TILES:
                w1 = w2
            if i + 3 < K_TILES:
                w2 = w_next

    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    last, total = split_k_sum(acc, part_ptr, count_ptr, pid, pid_k, num_tiles, BLOCK_N, BLOCK_M, SPLIT_K, mma)
    if last:
        _epilogue_t(total, out_ptr, scale, bias, offs_m, offs_n, M, N, stride_om, GROUPED, HAS_BIAS)


def supported(k: int, group_size: int | None) -> bool:
    """K tiles of at least 64 (the operand layout's K extent: 4 threads x K_WIDTH) inside one scale group."""
    return k % 64 == 0 and (group_size is None or group_size % 64 == 0)


def gemv_mma(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
             group_size: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x bf16 (M, K) with 16-byte aligned rows, w_q (N, K) int8 / fp8 contiguous, K % 64 == 0 (supported);
    cfg: BLOCK_N (16 rows per warp and repeat), BLOCK_M (8 or 16 tokens), BLOCK_K, SPLIT_K, num_warps, PREFETCH.
    Returns (M, N) in x's dtype."""
    m, k = x.shape
    n = w_q.shape[0]
    grouped, stride_wsn, stride_wsg = scale_layout(w_scale, group_size, k)
    bk = max(64, configs.fit_block_k(k, cfg["BLOCK_K"], grouped, group_size))
    split_k = max(1, min(cfg.get("SPLIT_K", 1), k // bk))
    while (k // bk) % split_k:
        split_k -= 1
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    warps = max(1, min(cfg["num_warps"], bn // 16))
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    part, counts = split_k_buffers(x.device, split_k, tiles, bm * bn, w_scale)
    _gemv_mma_kernel[(tiles, split_k)](
        x, w_q, out, w_scale, bias if bias is not None else w_scale, part, counts, m, n, x.stride(0),
        w_q.stride(0), out.stride(0), stride_wsn, stride_wsg, K_TILES=k // bk // split_k,
        GROUP_SIZE=group_size if grouped else k, GROUPED=grouped, HAS_BIAS=bias is not None, SPLIT_K=split_k,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PREFETCH=cfg.get("PREFETCH", 2), num_warps=warps,
        **pdl.launch(x.device))
    return out
