"""Weight-only W8A16 GEMM for M >= 64 with the weight as wgmma's register operand ("RS" wgmma), in Gluon.

out = x @ dequant(w_q).T for x bf16 (M, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise scales.
gluon_w8a16 converts each weight tile and writes it back to shared memory for wgmma: a store, a fence and a CTA
barrier per K step. wgmma can take its A operand from registers instead (B must be in shared memory), so here, as
in CUTLASS's mixed-input mainloop and as gluon_skinny does with mma.sync:
  - weight rows are the MMA's M and tokens its N (swap-AB): the accumulator is out.T, stored transposed;
  - each thread reads its A fragment of the int8 / fp8 tile straight from the TMA ring and converts it in
    registers (`gluon_skinny.bf16_asm`; group scales by a bf16x2 FMA pair, `_SCALE`; a K tile may hold several
    whole groups, `_group_scale`);
  - wgmma i runs while tile i + 1 is read and converted; the registers it reads are not written again before
    it is waited on (`_step`);
  - split-K partials are summed inside the launch (`gluon_w8a16.split_k_sum`);
  - config PRODUCER: a warp of its own issues the TMA loads (`_produce`, Gluon warp specialization), so the
    consumer's K step has no TMA issue and no CTA-wide barrier (int8: ~220 instructions instead of ~260 per
    128-wide K step, `scripts/kernel_sass.py rs`). On the H200 at ~100 tokens it was 0-3 % faster (the tuner
    takes it where it wins): the consumer's convert chain and its wgmma, not the loads, bound each program
    (benchmarks/ncu_h200_m100_stalls.txt);
  - config PERSISTENT (with PRODUCER): one program per SM walks output tiles, its producer warp loading the next
    tile's K tiles under the current tile's last steps and store (`_rs_persistent_kernel`).
Weights are read as the recipes store them (row-major, no re-packing).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from qexp.kernels.gluon_skinny import (
    _scale_bias_t,
    bf16_asm,
    e4m3_asm,
    epilogue_operands,
)
from qexp.kernels.gluon_w8a16 import (
    _fetch,
    _gdc_launch_dependents,
    _gdc_wait,
    barriers,
    plan,
    program_tile,
    prologue,
    regs_at_launch,
    ring,
    split_k_sum,
    tile_offsets,
)
from qexp.kernels.triton_common import sm_count

# bf16(w * s) for a float32 group scale s = hi + lo (two bf16s), on a bf16x2 pair of weights: fma(w, hi, w * lo)
# rounds once, so it equals the reference's bf16(float(w) * s) but where w * s lies within ~2^-17 of a rounding
# boundary
_SCALE = gl.constexpr("{ .reg .b32 t; mul.rn.bf16x2 t, $1, $3; fma.rn.bf16x2 $0, $1, $2, t; }")


# float32 s -> (hi, lo) as bf16x2 operands of _SCALE (each in both halves): hi = bf16(s), lo = bf16(s - hi)
_SPLIT = gl.constexpr("{ .reg .b32 h; cvt.rn.bf16x2.f32 $0, $2, $2; and.b32 h, $0, 0xFFFF0000; "
                      "sub.f32 h, $2, h; cvt.rn.bf16x2.f32 $1, h, h; }")


@gluon.jit
def _group_scale(ws_ptr, offs_sn, stride_wsn, stride_wsg, t, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                 GROUP_SIZE: gl.constexpr, num_warps: gl.constexpr):
    """Row scales of K tile t as bf16x2 hi and lo operands of _SCALE, one per weight pair of the thread's A
    fragment (`_pair_layout`). A tile may hold several whole groups (64-wide groups in 128-wide tiles: 64-wide
    tiles cost K steps); each thread loads one scale per row and group and broadcasts it in registers."""
    GROUPS: gl.constexpr = _tile_groups(BLOCK_K, GROUP_SIZE)
    l3: gl.constexpr = _group_split(BLOCK_N, BLOCK_K, num_warps, GROUPS)
    g = (t * BLOCK_K) // GROUP_SIZE + gl.arange(0, GROUPS, layout=gl.SliceLayout(0, gl.SliceLayout(2, l3)))
    sc = gl.load(ws_ptr + offs_sn[:, None] * stride_wsn + g[None, :] * stride_wsg)
    hi, lo = gl.inline_asm_elementwise(_SPLIT, "=r,=r,r", [sc], dtype=(gl.int32, gl.int32), is_pure=True, pack=1)
    pairs: gl.constexpr = _pair_layout(BLOCK_N, BLOCK_K, num_warps)
    fill = gl.zeros([BLOCK_N, GROUPS, BLOCK_K // 2 // GROUPS], gl.int32, l3)
    hi2 = gl.reshape(gl.expand_dims(hi, 2) + fill, [BLOCK_N, BLOCK_K // 2])
    lo2 = gl.reshape(gl.expand_dims(lo, 2) + fill, [BLOCK_N, BLOCK_K // 2])
    return (gl.convert_layout(hi2, pairs, assert_trivial=True), gl.convert_layout(lo2, pairs, assert_trivial=True))


@triton.constexpr_function
def _tile_groups(block_k, group_size):
    """Scale groups per K tile (1 where a tile lies inside one group)."""
    return max(block_k // group_size, 1)


@triton.constexpr_function
def _group_split(block_n, block_k, num_warps, groups):
    """_pair_layout with its pair columns split as (group, pair within the group): shape
    (block_n, groups, block_k // 2 // groups). Its slice along dim 2 holds each thread's (row, group) scales once."""
    per = block_k // 2 // groups
    pairs = _pair_layout(block_n, block_k, num_warps)
    split = lambda bases: [[r, 0, c] if c < per else [r, c // per, 0] for r, c in bases]
    return gl.DistributedLinearLayout(reg_bases=split(pairs.reg_bases), lane_bases=split(pairs.lane_bases),
                                      warp_bases=split(pairs.warp_bases), block_bases=[],
                                      shape=[block_n, groups, per])


@triton.constexpr_function
def _pair_layout(block_n, block_k, num_warps):
    """Registers of the weight tile viewed as int16 byte pairs (block_n, block_k // 2) such that every thread holds
    the pairs of its bf16 wgmma A fragment: lane (g, t) of warp w, rows 16 w + g (+ 8), pairs t, t + 4 of each 8."""
    log2 = lambda v: v.bit_length() - 1
    reg = [[8, 0], [0, 4]] + [[0, 8 << i] for i in range(log2(block_k // 16))] + \
        [[(16 * num_warps) << i, 0] for i in range(log2(block_n // (16 * num_warps)))]
    return gl.DistributedLinearLayout(reg_bases=reg, lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=[[16 << i, 0] for i in range(log2(num_warps))], block_bases=[],
                                      shape=[block_n, block_k // 2])


# One 16-bit byte pair (two K-adjacent weights) -> bf16x2, exact, by gluon_skinny's bit tricks (2 instructions per
# element; the pair arrives as one register, so the compiler never takes bytes apart and repacks them). int8's
# 0x43 fill byte comes in a register (`_fill_byte`): given two immediates, ptxas put the permute's selector in a
# register and copied it from a uniform register before every permute: ~15-18 more instructions per K step.
_I8X2_TO_BF16X2 = gl.constexpr(bf16_asm(1, fill="$2"))
_E4M3X2_TO_BF16X2 = gl.constexpr(e4m3_asm(1))


@gluon.jit
def _fill_byte():
    """0x43 as a value ptxas cannot fold into an immediate (%smid >> 16 is 0: SM ids fit in 16 bits)."""
    return gl.inline_asm_elementwise("{ .reg .b32 t; mov.u32 t, %smid; shr.u32 t, t, 16; or.b32 $0, t, 0x43; }",
                                     "=r", [], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _load_a(w_tile, a_l: gl.constexpr, s_hi, s_lo, GROUPED: gl.constexpr, BLOCK_N: gl.constexpr,
            BLOCK_K: gl.constexpr, num_warps: gl.constexpr):
    """Weight tile (shared memory, int8 / fp8) -> bf16 A fragment, read as the byte pairs each thread owns (one
    16-bit load per pair: a thread's pairs are 8 bytes apart), converted and (GROUPED) scaled a pair at a time."""
    w16: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_tile.layout.swizzle_byte_width,
                                             element_bitwidth=16, rank=2)
    pairs = w_tile._reinterpret(gl.int16, [BLOCK_N, BLOCK_K // 2], w16).load(
        _pair_layout(BLOCK_N, BLOCK_K, num_warps))
    p32 = pairs.to(gl.int32)
    if w_tile.dtype == gl.int8:
        v = gl.inline_asm_elementwise(_I8X2_TO_BF16X2, "=r,r,r", [p32, gl.zeros_like(p32) + _fill_byte()],
                                      dtype=gl.int32, is_pure=True, pack=1)
    else:  # e4m3x2 -> f16x2 (the converter), each f16 -> f32 (exact), the two f32 -> bf16x2 (exact: 4 bits)
        v = gl.inline_asm_elementwise(_E4M3X2_TO_BF16X2, "=r,r", [p32], dtype=gl.int32, is_pure=True, pack=1)
    if GROUPED:
        v = gl.inline_asm_elementwise(_SCALE, "=r,r,r,r", [v, s_hi, s_lo], dtype=gl.int32, is_pure=True, pack=1)
    lo = v.to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    w = gl.reshape(gl.join(lo, hi), [BLOCK_N, BLOCK_K])
    return gl.convert_layout(w, a_l, assert_trivial=True)


@gluon.jit
def _rs_kernel(x_desc, w_desc, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr,
               M, N, K, stride_om, stride_wsn, stride_wsg, tiles_per_split,
               GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr,
               BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
               PDL: gl.constexpr, num_warps: gl.constexpr, PRODUCER: gl.constexpr = False,
               GROUP_M: gl.constexpr = 8, ACC_SCALE: gl.constexpr = False):
    pid, pid_k, num_tiles, off_m, off_n, kt_begin, scale, bias, x_smem, w_smem, ready = swap_ab_program(
        x_desc, w_desc, ws_ptr, bias_ptr, M, N, stride_wsn, tiles_per_split, GROUPED, HAS_BIAS, BLOCK_M, BLOCK_N,
        BLOCK_K, STAGES, GROUP_M, num_warps)
    if PRODUCER:
        # a producer warp issues every TMA load (the consumers free ring slots through 'empty' barriers), so the
        # consumer warp group's K step carries no TMA issue and no CTA-wide barrier
        empty = barriers(STAGES)
        acc = gl.warp_specialize([  # (the default partition's results come back as a tuple)
            (_consume, (x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n,
                        N, kt_begin, tiles_per_split, GROUPED, GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, PDL,
                        ACC_SCALE, num_warps)),
            (_produce, (x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, kt_begin, tiles_per_split,
                        BLOCK_K, STAGES, PDL)),
        ], [1], [40])[0]
    else:  # (no 'empty' barriers: `ready` stands in for the unused argument)
        acc = _mainloop(x_desc, w_desc, x_smem, w_smem, ready, ready, ws_ptr, stride_wsn, stride_wsg, off_m, off_n, N,
                        kt_begin, tiles_per_split, GROUPED, GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, PDL, False,
                        ACC_SCALE, num_warps)
    if PDL:  # after the main loop: see qexp.kernels.pdl.launch_next
        _gdc_launch_dependents()
    for st in gl.static_range(STAGES):  # their shared memory may be reused by the epilogue
        mbarrier.invalidate(ready.index(st))
        if PRODUCER:  # (the producer's last barrier operation came before the consumer's last wait)
            mbarrier.invalidate(empty.index(st))

    swap_ab_epilogue(acc, out_ptr, part_ptr, count_ptr, pid, pid_k, num_tiles, scale, bias, off_m, off_n, M, N,
                     stride_om, GROUPED, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N, num_warps)


@gluon.jit
def _rs_persistent_kernel(x_desc, w_desc, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr,
                          M, N, K, stride_om, stride_wsn, stride_wsg, tiles_per_split,
                          GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, HAS_BIAS: gl.constexpr,
                          SPLIT_K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                          STAGES: gl.constexpr, PDL: gl.constexpr, num_warps: gl.constexpr, GROUP_M: gl.constexpr = 8,
                          ACC_SCALE: gl.constexpr = False):
    """_rs_kernel with PRODUCER, persistent: one program per SM walks output tiles pid, pid + programs, ...
    (program_tile's order), and the producer warp loads the next tile's first K tiles while the consumers finish
    and store the current one, so no tile waits for its ring to fill (at M=4096 a tile of the non-persistent
    kernel took ~24.5 us a wave whatever the wave count; cuBLAS, persistent, 23.9 us for one wave and ~22.5 us a
    wave for six). Tuned on the H100 it won 27 of 53 cells at M=4096, by 1.00-1.06x over the best non-persistent
    config in the same run (BENCHMARKS.md). The ring's slots and barrier phases restart at each tile: the wrapper
    only launches it where a tile's K steps are a multiple of 2 x STAGES (every phase back where it began). No
    split-K."""
    x_smem, w_smem, ready = ring(x_desc, w_desc, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    empty = barriers(STAGES)
    num_tiles = gl.cdiv(M, BLOCK_M) * gl.cdiv(N, BLOCK_N)
    gl.warp_specialize([
        (_consume_tiles, (x_desc, w_desc, x_smem, w_smem, ready, empty, out_ptr, ws_ptr, bias_ptr, M, N, stride_om,
                          stride_wsn, stride_wsg, num_tiles, tiles_per_split, GROUPED, GROUP_SIZE, HAS_BIAS, BLOCK_M,
                          BLOCK_N, BLOCK_K, STAGES, PDL, GROUP_M, ACC_SCALE, num_warps)),
        (_produce_tiles, (x_desc, w_desc, x_smem, w_smem, ready, empty, M, N, num_tiles, tiles_per_split, BLOCK_M,
                          BLOCK_N, BLOCK_K, STAGES, PDL, GROUP_M)),
    ], [1], [40])
    for st in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(st))
        mbarrier.invalidate(empty.index(st))


@gluon.jit
def _produce_tiles(x_desc, w_desc, x_smem, w_smem, ready, empty, M, N, num_tiles, tiles, BLOCK_M: gl.constexpr,
                   BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr,
                   GROUP_M: gl.constexpr):
    """Producer warp of the persistent kernel: _produce over this program's tiles."""
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = tile_offsets(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        _produce(x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, 0, tiles, BLOCK_K, STAGES, PDL)


@gluon.jit
def _consume_tiles(x_desc, w_desc, x_smem, w_smem, ready, empty, out_ptr, ws_ptr, bias_ptr, M, N, stride_om,
                   stride_wsn, stride_wsg, num_tiles, tiles, GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr,
                   HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                   STAGES: gl.constexpr, PDL: gl.constexpr, GROUP_M: gl.constexpr, ACC_SCALE: gl.constexpr,
                   num_warps: gl.constexpr):
    """Consumer warps of the persistent kernel: per tile, the main loop, the last ring slot freed (the next
    tile's loads wait for it), then scale, bias and store."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
        off_m, off_n = tile_offsets(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        scale, bias = _tile_epilogue_operands(ws_ptr, bias_ptr, off_n, N, stride_wsn, GROUPED, HAS_BIAS, BLOCK_M,
                                              BLOCK_N, num_warps)
        acc = _mainloop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n,
                        N, 0, tiles, GROUPED, GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, PDL, True, ACC_SCALE,
                        num_warps)
        _release(tiles, x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, 0, tiles, nbytes, BLOCK_K,
                 STAGES, True)
        # (swap_ab_epilogue without its split-K sum: called here, it put two more CTA barriers in each tile's SASS)
        _store_t(_scale_bias_t(acc, scale, bias, GROUPED, HAS_BIAS), out_ptr, off_m, off_n, M, N, stride_om,
                 BLOCK_N, BLOCK_M, num_warps)
    if PDL:  # after the last main loop: see qexp.kernels.pdl.launch_next
        _gdc_launch_dependents()


@gluon.jit
def swap_ab_program(x_desc, w_desc, ws_ptr, bias_ptr, M, N, stride_wsn, tiles_per_split, GROUPED: gl.constexpr,
                    HAS_BIAS: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                    STAGES: gl.constexpr, GROUP_M: gl.constexpr, num_warps: gl.constexpr):
    """What a swap-AB program (out.T tiles: gluon_rs, gluon_ws) starts with: its tile (program_tile), its epilogue's
    scales and bias (loaded before the main loop) and its TMA ring."""
    pid, pid_k, num_tiles, off_m, off_n, kt_begin = program_tile(M, N, tiles_per_split, BLOCK_M, BLOCK_N, GROUP_M)
    scale, bias = _tile_epilogue_operands(ws_ptr, bias_ptr, off_n, N, stride_wsn, GROUPED, HAS_BIAS, BLOCK_M, BLOCK_N,
                                          num_warps)
    x_smem, w_smem, ready = ring(x_desc, w_desc, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    return pid, pid_k, num_tiles, off_m, off_n, kt_begin, scale, bias, x_smem, w_smem, ready


@gluon.jit
def _tile_epilogue_operands(ws_ptr, bias_ptr, off_n, N, stride_wsn, GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr,
                            BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """The out.T tile's row / tensor scales and bias along its weight rows (epilogue_operands), in the
    accumulator's row layout."""
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, _acc_layout(BLOCK_M, num_warps)))
    return epilogue_operands(ws_ptr, bias_ptr, offs_n, N, stride_wsn, GROUPED, HAS_BIAS)


@gluon.jit
def swap_ab_epilogue(acc, out_ptr, part_ptr, count_ptr, pid, pid_k, num_tiles, scale, bias, off_m, off_n, M, N,
                     stride_om, GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr,
                     BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """Split-K sum of the out.T tile (split_k_sum); the last split scales, adds the bias and stores it."""
    last, total = split_k_sum(acc, part_ptr, count_ptr, pid, pid_k, num_tiles, BLOCK_N, BLOCK_M, SPLIT_K,
                              _acc_layout(BLOCK_M, num_warps))
    if last:
        _store_t(_scale_bias_t(total, scale, bias, GROUPED, HAS_BIAS), out_ptr, off_m, off_n, M, N, stride_om,
                 BLOCK_N, BLOCK_M, num_warps)


@triton.constexpr_function
def _acc_layout(block_m, num_warps):
    """wgmma accumulator of out.T: weight rows over the warps (64 per warp group), block_m tokens."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, block_m, 16])


@gluon.jit
def _mainloop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n, N,
              kt_begin, tiles_per_split, GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, BLOCK_M: gl.constexpr,
              BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr,
              PRODUCER: gl.constexpr, ACC_SCALE: gl.constexpr, num_warps: gl.constexpr):
    """acc (out.T tile, fp32) over this split's K tiles. The warps issue their own TMA loads, or with PRODUCER
    a producer warp does (_produce) and each step frees its slot through `empty`. Group scales go on each weight
    pair (`_weight_scaled_loop`) or, with ACC_SCALE, on the accumulator (`_acc_scaled_loop`)."""
    mma: gl.constexpr = _acc_layout(BLOCK_M, num_warps)
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    if not PRODUCER:
        prologue(STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split,
                 BLOCK_K, STAGES, PDL)
    if ACC_SCALE:
        acc = _acc_scaled_loop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m,
                               off_n, N, kt_begin, tiles_per_split, mma, a_l, nbytes, GROUP_SIZE, BLOCK_M, BLOCK_N,
                               BLOCK_K, STAGES, PRODUCER, num_warps)
    else:
        acc = _weight_scaled_loop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m,
                                  off_n, N, kt_begin, tiles_per_split, mma, a_l, nbytes, GROUPED, GROUP_SIZE, BLOCK_M,
                                  BLOCK_N, BLOCK_K, STAGES, PRODUCER, num_warps)
    return acc


@gluon.jit
def _weight_scaled_loop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n,
                        N, kt_begin, tiles_per_split, mma: gl.constexpr, a_l: gl.constexpr, nbytes: gl.constexpr,
                        GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                        BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PRODUCER: gl.constexpr, num_warps: gl.constexpr):
    """The K loop with group scales (GROUPED) applied to each weight pair as it is converted."""
    s_hi = 0
    s_lo = 0
    offs_sn = 0
    if GROUPED:
        l3: gl.constexpr = _group_split(BLOCK_N, BLOCK_K, num_warps, _tile_groups(BLOCK_K, GROUP_SIZE))
        offs_sn = (off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, gl.SliceLayout(2, l3)))) % N
        s_hi, s_lo = _group_scale(ws_ptr, offs_sn, stride_wsn, stride_wsg, kt_begin, BLOCK_N, BLOCK_K, GROUP_SIZE,
                                  num_warps)
    mbarrier.wait(ready.index(0), 0)
    a = _load_a(w_smem.index(0), a_l, s_hi, s_lo, GROUPED, BLOCK_N, BLOCK_K, num_warps)
    # step 0 zero-fills the accumulator (use_acc=False): no plain instruction may write wgmma's accumulator
    # registers while one is in flight, or ptxas serializes every wgmma (C7515)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    acc = warpgroup_mma(a, x_smem.index(0).permute((1, 0)), acc, use_acc=False, is_async=True)
    acc, a = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a))  # returns at once: wgmma 0 stays in flight
    if not PRODUCER:
        _fetch(STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes,
               BLOCK_K, STAGES)  # the one slot the prologue left free
    # Unrolled by two: the registers wgmma i reads are written again only after a wait that covers it. (With one
    # loop-carried fragment, each iteration rewrote the PTX registers the still-running wgmma i - 1 read: wrong
    # results on the larger tiles.)
    for i in range(1, tiles_per_split - 1, 2):
        acc, a1 = _step(i, acc, a, x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, offs_sn, stride_wsn,
                        stride_wsg, off_m, off_n, kt_begin, tiles_per_split, a_l, nbytes, GROUPED, GROUP_SIZE, BLOCK_N,
                        BLOCK_K, STAGES, PRODUCER, num_warps)
        acc, a = _step(i + 1, acc, a1, x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, offs_sn, stride_wsn,
                       stride_wsg, off_m, off_n, kt_begin, tiles_per_split, a_l, nbytes, GROUPED, GROUP_SIZE, BLOCK_N,
                       BLOCK_K, STAGES, PRODUCER, num_warps)
    if tiles_per_split % 2 == 0:  # one tile left
        acc, a1 = _step(tiles_per_split - 1, acc, a, x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, offs_sn,
                        stride_wsn, stride_wsg, off_m, off_n, kt_begin, tiles_per_split, a_l, nbytes, GROUPED,
                        GROUP_SIZE, BLOCK_N, BLOCK_K, STAGES, PRODUCER, num_warps)
        acc, a1 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a1))
    else:
        acc, a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, a))
    return acc


@gluon.jit
def _produce(x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, kt_begin, tiles, BLOCK_K: gl.constexpr,
             STAGES: gl.constexpr, PDL: gl.constexpr):
    """Producer warp: K tile j into slot j % STAGES once the consumer has freed it (empty barriers start out
    complete: phase 1)."""
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    if PDL:  # x is the previous kernel's output
        _gdc_wait()
    for j in range(tiles):
        mbarrier.wait(empty.index(j % STAGES), ((j // STAGES) & 1) ^ 1)
        _fetch(j, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles, nbytes, BLOCK_K, STAGES)


@gluon.jit
def _consume(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n, N, kt_begin,
             tiles, GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
             BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PDL: gl.constexpr, ACC_SCALE: gl.constexpr,
             num_warps: gl.constexpr):
    """Default partition (the consumer warp group) of the PRODUCER kernel; results as a tuple."""
    return (_mainloop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n, N,
                      kt_begin, tiles, GROUPED, GROUP_SIZE, BLOCK_M, BLOCK_N, BLOCK_K, STAGES, PDL, True, ACC_SCALE,
                      num_warps), )


@gluon.jit
def _step(i, acc, a_prev, x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, offs_sn, stride_wsn, stride_wsg,
          off_m, off_n, kt_begin, tiles_per_split, a_l: gl.constexpr, nbytes: gl.constexpr, GROUPED: gl.constexpr,
          GROUP_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
          PRODUCER: gl.constexpr, num_warps: gl.constexpr):
    """K step i >= 1: read and convert tile i while wgmma i - 1 (on a_prev) runs, issue wgmma i, wait for wgmma
    i - 1 and refill (or, with PRODUCER, free) its ring slot. Returns acc and tile i's fragment, which must stay
    live until the next wait."""
    s = i % STAGES
    s_hi = 0
    s_lo = 0
    if GROUPED:  # issued before the barrier wait: the load's latency hides behind it
        s_hi, s_lo = _group_scale(ws_ptr, offs_sn, stride_wsn, stride_wsg, kt_begin + i, BLOCK_N, BLOCK_K,
                                  GROUP_SIZE, num_warps)
    mbarrier.wait(ready.index(s), (i // STAGES) & 1)
    a = _load_a(w_smem.index(s), a_l, s_hi, s_lo, GROUPED, BLOCK_N, BLOCK_K, num_warps)
    acc = warpgroup_mma(a, x_smem.index(s).permute((1, 0)), acc, is_async=True)
    acc, a_prev = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a_prev))
    _release(i, x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, kt_begin, tiles_per_split, nbytes, BLOCK_K,
             STAGES, PRODUCER)
    return acc, a


@gluon.jit
def _release(i, x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, kt_begin, tiles_per_split,
             nbytes: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr, PRODUCER: gl.constexpr,
             MAYBE_FIRST: gl.constexpr = False):
    """After wgmma i - 1 is waited on: its ring slot takes tile i + STAGES - 1, or, with PRODUCER, is freed for
    the producer warp. MAYBE_FIRST: i may be 0 (no wgmma before it; the slot refilled is the one the prologue
    left free)."""
    if PRODUCER:
        if not MAYBE_FIRST or i > 0:
            # wgmma i - 1 is done in every warp of the group (the barrier: the arrive is one thread's). No proxy
            # fence: the slot's reads (ld.shared, wgmma) are complete, and a TMA write after a read needs only the
            # mbarrier's ordering (as CUTLASS's consumer_release); fence.proxy.async compiled to MEMBAR.ALL.CTA
            gl.thread_barrier()
            mbarrier.arrive(empty.index((i - 1) % STAGES), count=1)
    else:
        _fetch(i + STAGES - 1, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, nbytes,
               BLOCK_K, STAGES)


@gluon.jit
def _acc_scaled_loop(x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, stride_wsn, stride_wsg, off_m, off_n, N,
                     kt_begin, tiles_per_split, mma: gl.constexpr, a_l: gl.constexpr, nbytes: gl.constexpr,
                     GROUP_SIZE: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
                     STAGES: gl.constexpr, PRODUCER: gl.constexpr, num_warps: gl.constexpr):
    """The K loop for groups of T = GROUP_SIZE // BLOCK_K >= 2 tiles (the split holds whole groups), with the
    group scales on the accumulator instead of on every weight: a group's wgmmas sum the unscaled weight into
    `part` (converted as row-wise is), then acc += part * scale, one FMA per accumulator element per group instead
    of a bf16x2 FMA pair per weight pair per tile. The next group's first tile is converted while the group's last
    wgmma runs; only the wait for it and the FMAs are exposed. Not the reference's rounding (bf16(w * s) per
    element): fp32 products scaled once, as accurate or more."""
    T: gl.constexpr = GROUP_SIZE // BLOCK_K
    offs_sn = (off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))) % N
    mbarrier.wait(ready.index(0), 0)
    a = _load_a(w_smem.index(0), a_l, 0, 0, False, BLOCK_N, BLOCK_K, num_warps)
    # `part` enters each group's first wgmma with use_acc=False (never zero-filled by plain moves: C7515);
    # acc is never a wgmma operand, so plain FMAs may write it
    part = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    for g in range(tiles_per_split // T):
        i = g * T
        sc = gl.load(ws_ptr + offs_sn * stride_wsn + ((kt_begin + i) // T) * stride_wsg)
        part = warpgroup_mma(a, x_smem.index(i % STAGES).permute((1, 0)), part, use_acc=False, is_async=True)
        part, a = warpgroup_mma_wait(num_outstanding=1, deps=(part, a))  # returns at once: wgmma i stays in flight
        _release(i, x_desc, w_desc, x_smem, w_smem, ready, empty, off_m, off_n, kt_begin, tiles_per_split, nbytes,
                 BLOCK_K, STAGES, PRODUCER, True)
        for j in gl.static_range(1, T):
            part, a = _step(i + j, part, a, x_desc, w_desc, x_smem, w_smem, ready, empty, ws_ptr, offs_sn,
                            stride_wsn, stride_wsg, off_m, off_n, kt_begin, tiles_per_split, a_l, nbytes, False,
                            GROUP_SIZE, BLOCK_N, BLOCK_K, STAGES, PRODUCER, num_warps)
        nxt = i + T
        if nxt < tiles_per_split:  # the next group's first tile, converted while wgmma nxt - 1 runs
            mbarrier.wait(ready.index(nxt % STAGES), (nxt // STAGES) & 1)
            a_next = _load_a(w_smem.index(nxt % STAGES), a_l, 0, 0, False, BLOCK_N, BLOCK_K, num_warps)
        else:
            a_next = a
        # every wgmma done at the loop's end: the loop-carried fragment is never one a running wgmma reads
        part, a = warpgroup_mma_wait(num_outstanding=0, deps=(part, a))
        acc += part * sc[:, None]
        a = a_next
    return acc


@gluon.jit
def _store_t(acc, out_ptr, off_m, off_n, M, N, stride_om, BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr,
             num_warps: gl.constexpr):
    """Store acc = out.T tile: through a layout with 8 consecutive n per thread and 8 threads along n, so each
    output row gets 128-byte runs (the MMA layout would write 16-byte pieces of 4 rows per instruction)."""
    st: gl.constexpr = gl.BlockedLayout([8, 1], [8, 4], [1, num_warps], [0, 1])
    y = gl.convert_layout(acc.to(out_ptr.dtype.element_ty), st)
    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, st))
    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, st))
    mask = (offs_n < N)[:, None] & (offs_m < M)[None, :]
    gl.store(out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], y, mask=mask)


def persistent_programs(cfg: dict, tiles: int, split_k: int, k_tiles: int, sms: int) -> int | None:
    """Programs of the persistent kernel (one per SM, or cfg's PROGRAMS: tests walk several tiles a program), or
    None where it does not apply: it needs a producer warp, no split-K, and K steps a multiple of 2 x STAGES (the
    ring's slots and phases back where they began after each tile)."""
    if not (cfg.get("PERSISTENT") and cfg.get("PRODUCER") and split_k == 1 and k_tiles % (2 * cfg["num_stages"]) == 0):
        return None
    return min(tiles, cfg.get("PROGRAMS", sms))


def w8a16_rs(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
             group_size: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as gluon_w8a16.w8a16_gluon (TMA-able x and w_q). Returns bf16 (M, N)."""
    p = plan(x, w_q, w_scale, cfg, group_size, bias, span_groups=True)
    producer = cfg.get("PRODUCER", False)
    # the producer's warp group (one warp working) takes 40 registers, but at launch every thread gets maxnreg:
    # eight consumer warps + four need it at 168 (65536 / 384), and ptxas holds the consumers to that
    regs = {"maxnreg": regs_at_launch(cfg["num_warps"] + 4)} if producer and cfg["num_warps"] == 8 else {}
    # scales on the accumulator: groups of two or more K tiles, each split holding whole groups; else per weight
    acc_scale = (cfg.get("ACC_SCALE", False) and p.grouped and group_size >= 2 * p.bk
                 and p.tiles_per_split % (group_size // p.bk) == 0)
    common = dict(GROUP_SIZE=group_size if p.grouped else 1, ACC_SCALE=acc_scale, GROUP_M=cfg.get("GROUP_M", 8))
    programs = persistent_programs(cfg, p.tiles, p.split_k, p.tiles_per_split,
                                   sm_count(x.device)) if cfg.get("PERSISTENT") else None
    if programs:
        _rs_persistent_kernel[(programs, )](*p.args, p.tiles_per_split, **common, **p.constexprs, **regs)
    else:
        _rs_kernel[p.grid](*p.args, p.tiles_per_split, PRODUCER=producer, **common, **p.constexprs, **regs)
    return p.out
