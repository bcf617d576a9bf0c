"""Weight-only W8A16 GEMM for large M with the convert in warps of its own (warp specialization), in Gluon.

out = x @ dequant(w_q).T for x bf16 (M, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise scales.
gluon_rs converts each weight tile in the MMA warps' registers: at M >= 256 those warps alternate between the
convert chain and issuing wgmma, and reach 0.8-0.95x cuBLAS. Here two partitions share a program:
  - a converter warp group (CVT_WARPS warps) reads each int8 / fp8 weight tile from a STAGES-deep TMA ring,
    converts it (times its group scale: bf16(w * s), as gluon_rs does it) and writes a bf16 tile into a
    WSTAGES-deep buffer;
  - the MMA warps (the default partition, one or two warp groups) wait and issue wgmma on two shared-memory
    operands, as a bf16 GEMM does, keeping one in flight; once it has run they free its bf16 buffer and refill
    its ring slot by TMA (one thread's few instructions). A producer warp of its own, as gluon_rs has, would take
    a fourth warp group's registers: 128 a thread at launch, too few for a 64 x 256 accumulator (ptxas caps every
    partition at the launch count).
Swap-AB as in gluon_rs: weight rows are the MMA's M (64 per MMA warp group), tokens its N; the accumulator is
out.T. Split-K partials are summed inside the launch (gluon_w8a16.split_k_sum).
Measured (H100, BENCHMARKS.md): the converter bounds it. One converter warp group for two MMA warp groups ran
0.8-0.9x gluon_rs; eight converter warps as two partitions (even and odd K tiles, CVT_SPLIT) for one MMA warp
group beat gluon_rs on group-wise weights at M=1024 by up to 19 %, and lost at M=128 and M=4096.
"""
from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from qexp.kernels.gluon_skinny import _to_bf16
from qexp.kernels.gluon_w8a16 import (
    _fetch,
    _gdc_launch_dependents,
    barriers,
    plan,
    prologue,
    regs_at_launch,
)
from qexp.kernels.gluon_w8a16_rs import (
    _SCALE,
    _acc_layout,
    swap_ab_epilogue,
    swap_ab_program,
)

CVT_REGS = gl.constexpr(96)  # the converter's registers a thread (setmaxnreg)


@gluon.jit
def _ws_kernel(x_desc, w_desc, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr,
               M, N, K, stride_om, stride_wsn, stride_wsg, tiles_per_split,
               GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr,
               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
               PDL: gl.constexpr, num_warps: gl.constexpr, WSTAGES: gl.constexpr = 2, GROUP_M: gl.constexpr = 8,
               CVT_WARPS: gl.constexpr = 4, CVT_SPLIT: gl.constexpr = False):
    pid, pid_k, num_tiles, off_m, off_n, kt_begin, scale, bias, x_smem, w_smem, ready = swap_ab_program(
        x_desc, w_desc, ws_ptr, bias_ptr, M, N, stride_wsn, tiles_per_split, GROUPED, HAS_BIAS, BLOCK_M, BLOCK_N,
        BLOCK_K, STAGES, GROUP_M, num_warps)
    wb_smem = gl.allocate_shared_memory(gl.bfloat16, [WSTAGES, BLOCK_N, BLOCK_K],
                                        gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.bfloat16))
    wready = barriers(WSTAGES)  # bf16 tile written
    wempty = barriers(WSTAGES)  # bf16 tile read by its wgmma
    prologue(STAGES, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, BLOCK_K,
             STAGES, PDL)
    if CVT_SPLIT:  # two converter partitions, even and odd tiles (WSTAGES even: each has its own buffers), so one
        # tile's wait / store / fence / barrier chain runs beside the other's
        acc = gl.warp_specialize([
            (_mma_loop, (x_desc, w_desc, x_smem, w_smem, wb_smem, ready, wready, wempty, off_m, off_n, kt_begin,
                         tiles_per_split, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, WSTAGES, num_warps)),
            (_convert_loop, (w_smem, wb_smem, ready, wready, wempty, ws_ptr, off_n, N, stride_wsn, stride_wsg,
                             kt_begin, tiles_per_split, GROUPED, GROUP_SIZE, BLOCK_N, BLOCK_K, STAGES, WSTAGES,
                             CVT_WARPS // 2, 0, 2)),
            (_convert_loop, (w_smem, wb_smem, ready, wready, wempty, ws_ptr, off_n, N, stride_wsn, stride_wsg,
                             kt_begin, tiles_per_split, GROUPED, GROUP_SIZE, BLOCK_N, BLOCK_K, STAGES, WSTAGES,
                             CVT_WARPS // 2, 1, 2)),
        ], [CVT_WARPS // 2, CVT_WARPS // 2], [CVT_REGS, CVT_REGS])[0]
    else:  # (the default partition's results come back as a tuple)
        acc = gl.warp_specialize([
            (_mma_loop, (x_desc, w_desc, x_smem, w_smem, wb_smem, ready, wready, wempty, off_m, off_n, kt_begin,
                         tiles_per_split, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, WSTAGES, num_warps)),
            (_convert_loop, (w_smem, wb_smem, ready, wready, wempty, ws_ptr, off_n, N, stride_wsn, stride_wsg,
                             kt_begin, tiles_per_split, GROUPED, GROUP_SIZE, BLOCK_N, BLOCK_K, STAGES, WSTAGES,
                             CVT_WARPS, 0, 1)),
        ], [CVT_WARPS], [CVT_REGS])[0]
    if PDL:  # after the main loop: see qexp.kernels.pdl.launch_next
        _gdc_launch_dependents()
    for st in gl.static_range(STAGES):  # their shared memory may be reused by the epilogue
        mbarrier.invalidate(ready.index(st))
    for st in gl.static_range(WSTAGES):
        mbarrier.invalidate(wready.index(st))
        mbarrier.invalidate(wempty.index(st))

    swap_ab_epilogue(acc, out_ptr, part_ptr, count_ptr, pid, pid_k, num_tiles, scale, bias, off_m, off_n, M, N,
                     stride_om, GROUPED, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N, num_warps)


@gluon.jit
def _mma_loop(x_desc, w_desc, x_smem, w_smem, wb_smem, ready, wready, wempty, off_m, off_n, kt_begin, tiles,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
              WSTAGES: gl.constexpr, num_warps: gl.constexpr):
    """Default partition: wgmma i on bf16 tile i and x tile i while wgmma i - 1 finishes; then frees the bf16
    buffer wgmma i - 1 read and refills its ring slot with tile i - 1 + STAGES. Results as a tuple."""
    mma: gl.constexpr = _acc_layout(BLOCK_M, num_warps)
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    # step 0 zero-fills the accumulator (use_acc=False): no plain instruction may write wgmma's accumulator
    # registers while one is in flight, or ptxas serializes every wgmma (C7515)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    mbarrier.wait(ready.index(0), 0)  # (x's TMA: waited here too, for its writes to be visible to these warps)
    mbarrier.wait(wready.index(0), 0)
    acc = warpgroup_mma(wb_smem.index(0), x_smem.index(0).permute((1, 0)), acc, use_acc=False, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))  # returns at once: wgmma 0 stays in flight
    for i in range(1, tiles):
        mbarrier.wait(ready.index(i % STAGES), (i // STAGES) & 1)
        mbarrier.wait(wready.index(i % WSTAGES), (i // WSTAGES) & 1)
        acc = warpgroup_mma(wb_smem.index(i % WSTAGES), x_smem.index(i % STAGES).permute((1, 0)), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        # wgmma i - 1 is done in every warp (the barrier: an arrive is one thread's, and both warp groups read the
        # x tile), and its shared-memory reads come before the next writes there (the fence)
        gl.thread_barrier()
        fence_async_shared()
        mbarrier.arrive(wempty.index((i - 1) % WSTAGES), count=1)
        # the converter read weight tile i - 1 before writing the bf16 tile wgmma i - 1 read: the slot is free
        _fetch(i - 1 + STAGES, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles, nbytes,
               BLOCK_K, STAGES)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    return (acc, )


@gluon.jit
def _convert_loop(w_smem, wb_smem, ready, wready, wempty, ws_ptr, off_n, N, stride_wsn, stride_wsg, kt_begin, tiles,
                  GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                  STAGES: gl.constexpr, WSTAGES: gl.constexpr, WARPS: gl.constexpr, FIRST: gl.constexpr,
                  STEP: gl.constexpr):
    """Converter warps: weight tiles i = FIRST, FIRST + STEP, ... (int8 / fp8, ring slot) -> bf16 tile (buffer
    i % WSTAGES), 16 bytes a thread a load; group scales (a tile lies in one group) as bf16(w * s)."""
    cvt: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 16], threads_per_warp=[512 // BLOCK_K, BLOCK_K // 16],
                                         warps_per_cta=[WARPS, 1], order=[1, 0])
    offs_sn = (off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, cvt))) % N
    for i in range(FIRST, tiles, STEP):
        if GROUPED:  # issued before the barrier wait: the load's latency hides behind it
            sc = gl.load(ws_ptr + offs_sn * stride_wsn + (((kt_begin + i) * BLOCK_K) // GROUP_SIZE) * stride_wsg)
        mbarrier.wait(ready.index(i % STAGES), (i // STAGES) & 1)
        wb = _to_bf16(w_smem.index(i % STAGES).load(cvt))
        if GROUPED:  # a bf16x2 FMA pair per two weights (gluon_rs's _SCALE), not a float32 round trip each
            hi = sc.to(gl.bfloat16)
            lo = (sc - hi.to(gl.float32)).to(gl.bfloat16)
            wb = gl.inline_asm_elementwise(_SCALE, "=r,r,r,r", [wb, gl.expand_dims(hi, 1) + gl.zeros_like(wb),
                                                                gl.expand_dims(lo, 1) + gl.zeros_like(wb)],
                                           dtype=gl.bfloat16, is_pure=True, pack=2)
        mbarrier.wait(wempty.index(i % WSTAGES), ((i // WSTAGES) & 1) ^ 1)  # (starts out free: phase 1)
        wb_smem.index(i % WSTAGES).store(wb)
        fence_async_shared()  # generic-proxy stores before wgmma's async-proxy reads
        gl.thread_barrier()
        mbarrier.arrive(wready.index(i % WSTAGES), count=1)


def launch_regs(num_warps: int, cvt_warps: int = 4) -> int:
    """maxnreg of a launch with num_warps MMA warps and cvt_warps converter warps (regs_at_launch)."""
    return regs_at_launch(num_warps + cvt_warps)


def w8a16_ws(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
             group_size: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as gluon_w8a16.w8a16_gluon (TMA-able x and w_q). Returns bf16 (M, N)."""
    p = plan(x, w_q, w_scale, cfg, group_size, bias)
    _ws_kernel[p.grid](*p.args, p.tiles_per_split, GROUP_SIZE=group_size if p.grouped else 1,
                       WSTAGES=cfg.get("WSTAGES", 2), GROUP_M=cfg.get("GROUP_M", 8), CVT_WARPS=cfg.get("CVT_WARPS", 4),
                       CVT_SPLIT=cfg.get("CVT_SPLIT", False),
                       maxnreg=launch_regs(cfg["num_warps"], cfg.get("CVT_WARPS", 4)), **p.constexprs)
    return p.out
