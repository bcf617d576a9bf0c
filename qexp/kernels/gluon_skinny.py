"""Weight-only W8A16 for skinny M (decode batches of a few to a few dozen tokens), written in Gluon.

out = x @ dequant(w_q).T for x bf16 (M, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise scales.
At small M the GEMM moves weight bytes and little else, so the aim is to stream the weight at HBM speed with as few
instructions per byte as possible (the Triton / wgmma kernels spend ~6 per weight element at M = 16):
  - weight rows are the MMA's M and tokens its N (swap-AB), with mma.sync (16 x 8 x 16), which, unlike wgmma,
    takes A from registers with no 64-row minimum;
  - x and weight tiles arrive by TMA in a ring of STAGES slots; a slot is refilled as soon as every warp has read
    it into registers, so STAGES tiles are in flight while one is multiplied;
  - each thread reads its A operand straight from the weight tile in shared memory, 16 consecutive bytes of one
    row (K_WIDTH = 16: the MMA's K order is permuted the same way in both operands, so 16 adjacent K values land in
    one thread), and converts them in registers with 2 integer / bf16 instructions per element (`_to_bf16`); nothing
    is written back to shared memory;
  - group-wise scales: a K tile holds whole groups (64-wide groups do not mean 64-byte tiles); each group's
    partial product is multiplied by its row scales in fp32;
  - split-K partials are summed inside the launch (last-arriving program of a tile adds them in order).
With PDL the weight tiles of the prologue are requested before waiting on the previous kernel (weights are
constant); when the grid covers every SM in one wave the next kernel is let launch at the start (its programs
then fetch their weights while this one runs), else after the main loop (`_early_trigger`).
"""
from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

from qexp.kernels.gluon_w8a16 import (
    _fetch,
    _gdc_launch_dependents,
    plan,
    program_tile,
    prologue,
    ring,
    split_k_sum,
)

SUB_K = 64  # K of one independent MMA chain
K_WIDTH = gl.constexpr(16)  # consecutive K elements per thread in both operands: 16-byte weight reads, 32-byte x
# reads (8 had the compiler move ~114 x registers per 512-wide K step into the MMA's operand pairs)


# int8 -> bf16 without the I2F converter, exact: byte b as the low mantissa byte of bf16 0x43__ gives
# 128 + (b & 0x7f), minus 128 or 256 for the sign bit.
def bf16_asm(n_out: int, fill: str = "0x43") -> str:
    """The bit-trick PTX: int8 bytes 0-1 of operand ${n_out} -> bf16x2 $0, bytes 2-3 -> $1 (n_out = 2). Both byte
    permutes come first, so an output may share a register with the input. `fill`: the 0x43 byte, an immediate
    or an operand ("$2")."""
    regs = ("lo", "hi")[:n_out]
    lines = [f".reg .b32 {', '.join(regs)};"]
    lines += [f"prmt.b32 {r}, ${n_out}, {fill}, {sel};" for r, sel in zip(regs, ("0x4140", "0x4342"))]
    for o, r in enumerate(regs):
        lines += [f"and.b32 ${o}, {r}, 0xff7fff7f;", f"and.b32 {r}, {r}, 0xff80ff80;", f"sub.bf16x2 ${o}, ${o}, {r};"]
    return "{\n" + "\n".join(lines) + "\n}"


_I8_TO_BF16 = gl.constexpr(bf16_asm(2))


def e4m3_asm(n_out: int) -> str:
    """e4m3 bytes 0-1 of operand ${n_out} -> bf16x2 $0, bytes 2-3 -> $1 (n_out = 2), through the converters:
    e4m3x2 -> f16x2, f16 -> f32, f32 pair -> bf16x2, each exact (2 instructions per element)."""
    halves = ", ".join(f"p{o}" for o in range(2)) if n_out == 2 else "p0, unused"
    lines = [".reg .b16 p0, p1, unused, a, b; .reg .b32 h; .reg .f32 f0, f1;", f"mov.b32 {{{halves}}}, ${n_out};"]
    for o in range(n_out):
        lines += [f"cvt.rn.f16x2.e4m3x2 h, p{o};", "mov.b32 {a, b}, h;", "cvt.f32.f16 f0, a;", "cvt.f32.f16 f1, b;",
                  f"cvt.rn.bf16x2.f32 ${o}, f1, f0;"]
    return "{\n" + "\n".join(lines) + "\n}"


_E4M3_TO_BF16 = gl.constexpr(e4m3_asm(2))


@gluon.jit
def _to_bf16(w):
    asm: gl.constexpr = _I8_TO_BF16 if w.dtype == gl.int8 else _E4M3_TO_BF16
    return gl.inline_asm_elementwise(asm, "=r,=r,r", [w], dtype=gl.bfloat16, is_pure=True, pack=4)


@gluon.jit
def _skinny_kernel(x_desc, w_desc, out_ptr, ws_ptr, bias_ptr, part_ptr, count_ptr,
                   M, N, K, stride_om, stride_wsn, stride_wsg, tiles_per_split,
                   GROUPED: gl.constexpr, GROUP_SIZE: gl.constexpr, HAS_BIAS: gl.constexpr,
                   SPLIT_K: gl.constexpr,
                   BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, SUB_K: gl.constexpr,
                   STAGES: gl.constexpr, PDL: gl.constexpr, EARLY_TRIGGER: gl.constexpr, num_warps: gl.constexpr):
    pid, pid_k, num_tiles, off_m, off_n, kt_begin = program_tile(M, N, tiles_per_split, BLOCK_M, BLOCK_N)
    if PDL and EARLY_TRIGGER:  # one full wave (see _early_trigger): the next kernel may start its prologue now
        _gdc_launch_dependents()

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=K_WIDTH)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=K_WIDTH)

    x_smem, w_smem, ready = ring(x_desc, w_desc, BLOCK_M, BLOCK_N, BLOCK_K, STAGES)
    nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes
    prologue(STAGES, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split, BLOCK_K,
             STAGES, PDL)

    offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, mma))
    offs_sn = offs_n % N
    scale, bias = epilogue_operands(ws_ptr, bias_ptr, offs_n, N, stride_wsn, GROUPED, HAS_BIAS)
    acc = gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)
    for i in range(tiles_per_split):
        s = i % STAGES
        mbarrier.wait(ready.index(s), (i // STAGES) & 1)
        # SUB_K-wide slices. At BLOCK_M 16 each is its own chain of dependent MMAs, added to acc after (one chain
        # over the tile would bound the loop by mma.sync latency; wider M tiles have enough independent ones).
        # Grouped: a slice lies in one group and takes its row scales in fp32.
        for j in gl.static_range(BLOCK_K // SUB_K):
            if GROUPED:
                sc = gl.load(ws_ptr + offs_sn * stride_wsn
                             + (((kt_begin + i) * BLOCK_K + j * SUB_K) // GROUP_SIZE) * stride_wsg)
            a = _to_bf16(w_smem.index(s).slice(j * SUB_K, SUB_K, dim=1).load(a_l))
            xt = x_smem.index(s).slice(j * SUB_K, SUB_K, dim=1).permute((1, 0)).load(b_l)
            if GROUPED:
                acc += mma_v2(a, xt, gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma)) * sc[:, None]
            elif BLOCK_M < 32:
                acc += mma_v2(a, xt, gl.zeros((BLOCK_N, BLOCK_M), dtype=gl.float32, layout=mma))
            else:
                acc = mma_v2(a, xt, acc)
        gl.thread_barrier()  # every warp has read slot s: refill it with tile i + STAGES
        _fetch(i + STAGES, x_desc, w_desc, x_smem, w_smem, ready, off_m, off_n, kt_begin, tiles_per_split,
               nbytes, BLOCK_K, STAGES)
    if PDL and not EARLY_TRIGGER:
        _gdc_launch_dependents()
    for st in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(st))

    offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, mma))
    last, total = split_k_sum(acc, part_ptr, count_ptr, pid, pid_k, num_tiles, BLOCK_N, BLOCK_M, SPLIT_K,
                              mma)
    if last:
        _epilogue_t(total, out_ptr, scale, bias, offs_m, offs_n, M, N, stride_om, GROUPED, HAS_BIAS)


@gluon.jit
def epilogue_operands(ws_ptr, bias_ptr, offs_n, N, stride_wsn, GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr):
    """The epilogue's row / tensor scales and bias (fp32, along offs_n; ones / zeros where unused). Loaded before
    the main loop, so their latency hides behind it (after it, it is on the kernel's critical path)."""
    nmask = offs_n < N
    scale = gl.full_like(offs_n, 1.0, dtype=gl.float32)
    bias = gl.zeros_like(offs_n, dtype=gl.float32)
    if not GROUPED:
        scale = gl.load(ws_ptr + offs_n * stride_wsn, mask=nmask, other=0.0)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(gl.float32)
    return scale, bias


@gluon.jit
def _scale_bias_t(acc, scale, bias, GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr):
    """acc (BLOCK_N, BLOCK_M) = out.T in fp32: times the row / tensor scale, plus bias (epilogue_operands)."""
    if not GROUPED:
        acc = acc * scale[:, None]
    if HAS_BIAS:
        acc += bias[:, None]
    return acc


@gluon.jit
def _epilogue_t(acc, out_ptr, scale, bias, offs_m, offs_n, M, N, stride_om, GROUPED: gl.constexpr,
                HAS_BIAS: gl.constexpr):
    """acc (BLOCK_N, BLOCK_M) = out.T: row/tensor scale, bias, store transposed."""
    acc = _scale_bias_t(acc, scale, bias, GROUPED, HAS_BIAS)
    mask = (offs_n < N)[:, None] & (offs_m[None, :] < M)
    gl.store(out_ptr + offs_m[None, :] * stride_om + offs_n[:, None], acc.to(out_ptr.dtype.element_ty), mask=mask)


@functools.cache
def _sms_and_slots(device: torch.device, smem_per_program: int) -> tuple[int, int]:
    """SM count, and programs of this kernel the GPU holds at once as bounded by shared memory."""
    props = torch.cuda.get_device_properties(device)
    sms = props.multi_processor_count
    return sms, sms * max(1, props.shared_memory_per_block_optin // (smem_per_program + 2048))


def _early_trigger(device: torch.device, grid: int, smem_per_program: int) -> bool:
    """Let the next kernel launch at our start only when our grid covers every SM and fits in one wave: with fewer
    programs than SMs the next kernel's weight prefetch takes bandwidth from a latency-bound grid (measured 1.5x
    slower at N=1024, M=64), with more than one wave its programs take slots ours still need."""
    sms, slots = _sms_and_slots(device, smem_per_program)
    return sms <= grid <= slots


def supported(k: int, group_size: int | None) -> bool:
    """K tiles of at least 64 (the operand layout's K extent: 4 threads x K_WIDTH) inside one scale group."""
    return k % 64 == 0 and (group_size is None or group_size % 64 == 0)


def w8a16_skinny(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
                 group_size: int | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as gluon_w8a16.w8a16_gluon (TMA-able x and w_q, K a multiple of 32). Returns bf16 (M, N)."""
    p = plan(x, w_q, w_scale, cfg, group_size, bias, span_groups=True)
    smem = cfg["num_stages"] * p.bk * (cfg["BLOCK_N"] * w_q.element_size() + cfg["BLOCK_M"] * x.element_size())
    _skinny_kernel[p.grid](*p.args, p.tiles_per_split, GROUP_SIZE=group_size if p.grouped else 1,
                           SUB_K=min(SUB_K, p.bk, group_size or p.bk),
                           EARLY_TRIGGER=_early_trigger(x.device, p.tiles * p.split_k, smem), **p.constexprs)
    return p.out
