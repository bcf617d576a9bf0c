"""Weight-only W8A16 GEMM written in Gluon (Triton's explicit-layout dialect) with a hand-made Hopper pipeline.

out = x @ dequant(w_q).T for x bf16 (M, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise scales.
Why not Triton's pipeliner (triton_qmm_tma): there each K step runs TMA wait -> convert -> store to shared memory ->
fence -> barrier -> wgmma -> wait-for-wgmma in series, so the convert never overlaps the tensor cores. Here:
  - a ring of STAGES x/w tiles fed by TMA, STAGES - 1 tiles ahead;
  - the converted bf16 weight tile is double-buffered, so converting tile i+1 runs while wgmma i is in flight
    (warpgroup_mma_wait(1) keeps one MMA outstanding);
  - split-K reduced inside the launch, as in triton_qmm_tma (per-tile arrival counter, partials summed in order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from qexp.kernels import configs, pdl
from qexp.kernels.triton_common import scale_layout
from qexp.kernels.triton_qmm_tma import split_k_buffers


@triton.constexpr_function
def _mma_warps(block_m, num_warps):
    """Warps along M while a warp has >= 16 rows; the rest split N (two warp groups on a 64-row tile: each converts
    and multiplies half the weight tile, halving the per-step convert chain)."""
    along_m = min(num_warps, max(block_m // 16, 4))
    return [along_m, num_warps // along_m]


@triton.constexpr_function
def _instr_n(block_n, num_warps, block_m, max_n=256):
    """Largest wgmma N (multiple of 8, <= max_n) that tiles the N each warp group covers."""
    reps_n = _mma_warps(block_m, num_warps)[1]
    n = max_n
    while n > max(block_n // reps_n, 8) or (block_n // reps_n) % n:
        n -= 8
    return n


@gluon.jit
def _w8a16_kernel(x_desc, w_desc, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr,
                  M, N, K, stride_om, stride_wsn, stride_wsg, group_size, tiles_per_split,
                  GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
                  PDL: gl.constexpr, num_warps: gl.constexpr):
    pid, pid_k, num_tiles, off_m, off_n, kt_begin = program_tile(M, N, tiles_per_split, BLOCK_M, BLOCK_N)

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=_mma_warps(BLOCK_M, num_warps),
                                                  instr_shape=[16, _instr_n(BLOCK_N, num_warps, BLOCK_M), 16])
    # 16 weight bytes per thread per load, a row of BLOCK_K bytes over BLOCK_K // 16 threads
    cvt: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 16], threads_per_warp=[512 // BLOCK_K, BLOCK_K // 16],
                                         warps_per_cta=[num_warps, 1], order=[1, 0])
    wb_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.bfloat16)

    x_smem, w_smem, ready = ring(x_desc, w_desc, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    wb_smem = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_N, BLOCK_K], wb_layout)
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    prologue(STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, BLOCK_K,
             STAGES, PDL)

    offs_n_cvt = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, cvt))
    # step 0 zero-fills the accumulator (use_acc=False): no plain instruction may write wgmma's accumulator
    # registers while one is in flight, or ptxas serializes every wgmma (C7515)
    acc = gl.zeros((BLOCK_M, BLOCK_N), dtype=gl.float32, layout=mma)
    acc = _step(0, acc, False, x_desc, w_desc, x_smem, w_smem, wb_smem, ready, ws_ptr, offs_n_cvt, off_m, off_n, N,
                stride_wsn, stride_wsg, group_size, kt_begin, tiles_per_split, nbytes, cvt, GROUPED, BLOCK_K, STAGES)
    for i in range(1, tiles_per_split):
        acc = _step(i, acc, True, x_desc, w_desc, x_smem, w_smem, wb_smem, ready, ws_ptr, offs_n_cvt, off_m, off_n,
                    N, stride_wsn, stride_wsg, group_size, kt_begin, tiles_per_split, nbytes, cvt, GROUPED, BLOCK_K,
                    STAGES)
    acc = end_main_loop(acc, ready, STAGES, PDL)

    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, mma))
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, mma))
    last, total = split_k_sum(acc, part_ptr, count_ptr, pid, pid_k, num_tiles, BLOCK_M, BLOCK_N, SPLIT_K,
                              mma)
    if last:
        _epilogue(total, out_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_wsn, GROUPED, HAS_BIAS)


@gluon.jit
def end_main_loop(acc, ready, STAGES: gl.constexpr, PDL: gl.constexpr):
    """After the K loop: wait for the last wgmma, let the next kernel launch (see qexp.kernels.pdl.launch_next),
    release the ring's barriers."""
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    if PDL:
        _gdc_launch_dependents()
    for st in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(st))
    return acc


@gluon.jit
def program_tile(M, N, tiles_per_split, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr = 0):
    """(pid, pid_k, number of output tiles, off_m, off_n, first K tile) of this program. The M tiles of one
    weight tile run side by side (its bytes come from HBM once). GROUP_M > 0: programs walk GROUP_M token tiles x
    every weight tile, so a prefill's x (16k tokens: 64 MB, more than L2) is read from HBM about once instead of
    once per weight tile; 0: all token tiles at once (kernels tuned only where M spans a few tiles: no index
    arithmetic for a grouping that changes nothing there)."""
    pid = gl.program_id(0)
    pid_k = gl.program_id(1)
    off_m, off_n = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return pid, pid_k, gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N), off_m, off_n, pid_k * tiles_per_split


@gluon.jit
def tile_offsets(tile, M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """(off_m, off_n) of output tile `tile` in program_tile's order."""
    num_pid_m = gl.cdiv(M, BLOCK_M)
    if GROUP_M == 0:
        pid_m = tile % num_pid_m
        pid_n = tile // num_pid_m
    else:
        group = GROUP_M * gl.cdiv(N, BLOCK_N)
        first_m = (tile // group) * GROUP_M
        rows = gl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % group) % rows
        pid_n = (tile % group) // rows
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@gluon.jit
def split_k_sum(acc, part_ptr, count_ptr, pid, pid_k, num_tiles, R: gl.constexpr, C: gl.constexpr,
                SPLIT_K: gl.constexpr, layout: gl.constexpr):
    """In-launch split-K reduction of output tile `pid` (R x C, fp32 in `layout`): store this split's partial;
    the split that arrives last sums all partials in split order (deterministic) and re-arms the tile's arrival
    counter. Returns (last, total); total is the sum only where last. With SPLIT_K == 1: (True, acc), no memory
    traffic, so a kernel ends the same way with or without split-K.
    Partials are laid out thread-major (`_thread_major`), not as the tile's rows: written and read only here, in
    the same layout. In the wgmma accumulator's layout a warp's store touched 8 rows, 8 cache lines (ncu, 128 x 256
    tiles split in two: 47 % of the kernel's warp samples after the main loop, most on the load/store queue);
    thread-major, split-K cells of gluon_rs ran 1.08-1.10x faster at M = 64-256 (H100, BENCHMARKS.md).
    With two splits of a tile of <= 64 elements a thread, the last adds the other's partial to its own registers
    (fp32 addition commutes: the same sum whichever split is last; at 128 the live accumulator spills); else it
    reads the partials two per L2 round trip (a loop over splits took one round trip each, ~1.3 us per split on the
    H200; more in flight spill registers at 4 warps). It re-arms with a relaxed atomic (the default acq_rel put a
    GPU-wide fence before it): the next launch's arrivals come after its PDL wait, so after this launch has
    completed."""
    if SPLIT_K == 1:
        return True, acc
    ll: gl.constexpr = gl.to_linear_layout(layout, [R, C])
    rows: gl.constexpr = _thread_major(ll, 0)
    cols: gl.constexpr = _thread_major(ll, 1)
    tile = _bit_scatter(gl.arange(0, R, layout=gl.SliceLayout(1, layout)), rows)[:, None] + \
        _bit_scatter(gl.arange(0, C, layout=gl.SliceLayout(0, layout)), cols)[None, :]
    split_stride = (num_tiles * R * C).to(gl.int64)
    part = part_ptr + pid.to(gl.int64) * (R * C) + tile
    gl.store(part + pid_k * split_stride, acc)
    gl.thread_barrier()
    last = gl.atomic_add(count_ptr + pid, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1
    total = gl.zeros((R, C), dtype=gl.float32, layout=layout)
    if SPLIT_K == 2 and len(ll.reg_bases) <= 6:
        if last:  # its own partial from registers: half the loads (a + b == b + a)
            total = acc + gl.load(part + (1 - pid_k) * split_stride, cache_modifier=".cg")
            gl.atomic_xchg(count_ptr + pid, 0, sem="relaxed")
    elif last:
        for t in gl.static_range(0, SPLIT_K, 2):  # two partials per round trip
            p0 = gl.load(part + t * split_stride, cache_modifier=".cg")
            if t + 1 < SPLIT_K:
                p1 = gl.load(part + (t + 1) * split_stride, cache_modifier=".cg")
                total = (total + p0) + p1
            else:
                total += p0
            if t + 2 < SPLIT_K:
                gl.thread_barrier()  # loads cannot move above it: two partials in flight at most
        gl.atomic_xchg(count_ptr + pid, 0, sem="relaxed")
    return last, total


@triton.constexpr_function
def _thread_major(ll, dim):
    """Offset weights of dimension `dim`'s index bits such that element (r, c) of a tile in linear layout `ll` sits
    at rows[r] + cols[c] = (register index) * threads + (warp * 32 + lane): a warp's store of one register is 32
    consecutive words. Each layout basis moves one index bit (the wgmma / mma.sync accumulators); bases that move
    none (broadcast copies) take no offset bit, so the offsets fill [0, R * C)."""
    weights, bit = {}, 0
    for basis in [*ll.lane_bases, *ll.warp_bases, *ll.reg_bases]:
        moved = [(d, v) for d, v in enumerate(basis) if v]
        if not moved:
            continue
        assert len(moved) == 1 and moved[0][1] & (moved[0][1] - 1) == 0, f"not a bit permutation: {basis}"
        d, v = moved[0]
        if d == dim:
            weights[v.bit_length() - 1] = 1 << bit
        bit += 1
    return [weights.get(b, 0) for b in range(max(weights, default=-1) + 1)]


@gluon.jit
def _bit_scatter(idx, WEIGHTS: gl.constexpr):
    """sum over bits b of idx: bit b times WEIGHTS[b]."""
    out = idx * 0
    for b in gl.static_range(len(WEIGHTS)):
        out += ((idx >> b) & 1) * WEIGHTS[b]
    return out


@gluon.jit
def _step(i, acc, USE_ACC: gl.constexpr, x_desc, w_desc, x_smem, w_smem, wb_smem, ready, ws_ptr, offs_n_cvt,
          off_m, off_n, N, stride_wsn, stride_wsg, group_size, kt_begin, tiles_per_split, nbytes: gl.constexpr,
          cvt: gl.constexpr, GROUPED: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """K step i: convert weight tile i while wgmma i-1 runs, issue wgmma i, refill the slot wgmma i-1 used."""
    s = i % STAGES
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
    w = w_smem.index(s).load(cvt)
    if GROUPED:  # bf16(w * s) per element, exactly as the reference dequantizes
        g = ((kt_begin + i) * BLOCK_K) // group_size
        sc = gl.load(ws_ptr + (offs_n_cvt % N) * stride_wsn + g * stride_wsg)
        wb = (w.to(gl.float32) * sc[:, None]).to(gl.bfloat16)
    else:
        wb = w.to(gl.bfloat16)
    buf = wb_smem.index(i % 2)  # wgmma i-2 read this buffer; it finished at step i-1's wait
    buf.store(wb)
    fence_async_shared()
    gl.thread_barrier()
    acc = warpgroup_mma(x_smem.index(s), buf.permute((1, 0)), acc, use_acc=USE_ACC, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
    # wgmma i-1 is done: its x slot, and the w slot read at step i-1, take tile i + STAGES - 1
    _fetch(i + STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes,
           BLOCK_K, STAGES)
    return acc


@gluon.jit
def ring(x_desc, w_desc, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
         STAGES: gl.constexpr):
    """Shared-memory ring of STAGES x and weight tiles, and each slot's 'ready' mbarrier (TMA completion)."""
    x_smem = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
    w_smem = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
    return x_smem, w_smem, barriers(STAGES)


@gluon.jit
def barriers(n: gl.constexpr):
    """n mbarriers, each completed by one arrive (or one TMA transaction count)."""
    bars = gl.allocate_shared_memory(gl.int64, [n, 1], mbarrier.MBarrierLayout())
    for st in gl.static_range(n):
        mbarrier.init(bars.index(st), count=1)
    return bars


@gluon.jit
def prologue(TILES: gl.constexpr, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split,
             BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr):
    """TMA of K tiles 0 .. TILES - 1. With PDL the weight tiles go before waiting for the previous kernel (x is its
    output, the weights are constant)."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    for t0 in gl.static_range(TILES):
        _fetch(t0, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes, BLOCK_K,
               STAGES, True, not PDL)
    if PDL:
        _gdc_wait()
        for t0 in gl.static_range(TILES):
            _fetch(t0, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes,
                   BLOCK_K, STAGES, False, True)


@gluon.jit
def _fetch(j, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes: gl.constexpr,
           BLOCK_K: gl.constexpr, STAGES: gl.constexpr, W: gl.constexpr = True, X: gl.constexpr = True):
    """TMA of K tile j (weight if W, x if X; the slot's barrier expects both) into ring slot j % STAGES, if the
    split has a tile j."""
    p = j < tiles_per_split
    r = j % STAGES
    if W:
        mbarrier.expect(ready.index(r), nbytes, pred=p)
        tma.async_copy_global_to_shared(w_desc, [off_n, (kt_begin + j) * BLOCK_K], ready.index(r), w_smem.index(r),
                                        pred=p)
    if X:
        tma.async_copy_global_to_shared(x_desc, [off_m, (kt_begin + j) * BLOCK_K], ready.index(r), x_smem.index(r),
                                        pred=p)


@gluon.jit
def _gdc_wait():  # Triton's gdc_wait, for Gluon (see qexp.kernels.pdl)
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _gdc_launch_dependents():
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _epilogue(acc, out_ptr, ws_ptr, bias_ptr, offs_m, offs_n, M, N, stride_om, stride_wsn,
              GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr):
    nmask = offs_n < N
    if not GROUPED:
        acc = acc * gl.load(ws_ptr + offs_n * stride_wsn, mask=nmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += gl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(gl.float32)[None, :]
    mask = (offs_m[:, None] < M) & nmask[None, :]
    gl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


_GL_DTYPE = {torch.bfloat16: gl.bfloat16, torch.int8: gl.int8, torch.float8_e4m3fn: gl.float8e4nv}


def tma_descriptors(x: torch.Tensor, w_q: torch.Tensor, bm: int, bn: int, bk: int):
    """TMA descriptors of x (M, K) tiles (bm, bk) and w_q (N, K) tiles (bn, bk), in NVMMA-swizzled shared memory."""
    def desc(t, rows):
        return TensorDescriptor(t, list(t.shape), [t.stride(0), 1], [rows, bk],
                                gl.NVMMASharedLayout.get_default_for([rows, bk], _GL_DTYPE[t.dtype]))
    return desc(x, bm), desc(w_q, bn)


def regs_at_launch(warps: int) -> int:
    """maxnreg for a warp-specialized launch of `warps` warps (a one-warp partition counts as a warp group's four):
    each thread's registers at launch must fit the SM's 64k. ptxas caps every partition at this count, setmaxnreg
    or not (C7602)."""
    return min(65536 // (32 * warps), 255) // 8 * 8


@dataclass
class Launch:
    """What the Gluon W8A16 wrappers (gluon, skinny, gluon_rs, gluon_ws) share: tile sizes fitted to K and the scale groups,
    split-K, the output and split-K buffers, TMA descriptors, and the kernels' common leading arguments."""
    m: int
    n: int
    k: int
    grouped: bool
    bk: int
    split_k: int
    tiles: int
    out: torch.Tensor
    args: tuple  # x_desc, w_desc, out, w_scale, bias, part, counts, M, N, K, stride_om, stride_wsn, stride_wsg
    constexprs: dict  # GROUPED, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, num_warps, PDL, launch_pdl

    @property
    def grid(self) -> tuple[int, int]:
        return self.tiles, self.split_k

    @property
    def tiles_per_split(self) -> int:
        return (self.k // self.bk) // self.split_k


def plan(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, group_size: int | None,
         bias: torch.Tensor | None, span_groups: bool = False) -> Launch:
    m, k = x.shape
    n = w_q.shape[0]
    grouped, stride_wsn, stride_wsg = scale_layout(w_scale, group_size, k)
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    bk = configs.fit_block_k(k, cfg["BLOCK_K"], grouped, group_size, span_groups=span_groups)
    split_k = math.gcd(cfg["SPLIT_K"], k // bk)
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    part, counts = split_k_buffers(x.device, split_k, tiles, bm * bn, w_scale)
    x_desc, w_desc = tma_descriptors(x, w_q, bm, bn, bk)
    args = (x_desc, w_desc, out, w_scale, bias if bias is not None else w_scale, part, counts,
            m, n, k, out.stride(0), stride_wsn, stride_wsg)
    constexprs = dict(GROUPED=grouped, HAS_BIAS=bias is not None, SPLIT_K=split_k, BLOCK_M=bm, BLOCK_N=bn,
                      BLOCK_K=bk, STAGES=cfg["num_stages"], num_warps=cfg["num_warps"], **pdl.launch(x.device))
    return Launch(m, n, k, grouped, bk, split_k, tiles, out, args, constexprs)


def w8a16_gluon(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
                group_size: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x bf16 (M, K) with 16-byte aligned rows; same scales contract as triton_qmm.qmm. Returns bf16 (M, N)."""
    p = plan(x, w_q, w_scale, cfg, group_size, bias)
    _w8a16_kernel[p.grid](*p.args, group_size or p.k, p.tiles_per_split, **p.constexprs)
    return p.out
