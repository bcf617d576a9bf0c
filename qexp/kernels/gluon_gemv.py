"""Weight-only W8A16 GEMV for one decode token (M = 1), written in Gluon so that every layout is chosen by hand.

out[n] = sum_k x[k] * dequant(w_q)[n, k] for x bf16 (1, K) and w_q int8 / fp8 (N, K); tensor-, row- or group-wise
scales. The Triton GEMV (triton_qgemv) spends ~6 instructions per weight byte at M = 1: Triton loads x in a layout
of its own and moves it through shared memory into the weight tile's layout every K step (two barriers per step,
which keep a program's warps in lock step), and converts int8 one byte at a time. Here:
  - a weight tile (BLOCK_N, BLOCK_K) is 16 consecutive bytes of K per thread (one 128-bit load), a warp spans
    512 bytes of one row, warps and repeats stack rows; x is loaded straight in the slice of that layout, so each
    thread converts its 16 x values once for all of its rows, with no shared memory and no barrier in the loop;
  - int8 -> fp32 takes one byte permute per element, which sets the byte under fp32 2^23's exponent (sign flipped
    once per 4 bytes), and one subtraction (an f16-magic and an I2FP variant ran no faster in the decode step,
    BENCHMARKS.md 2026-12-01); e4m3 goes through the f16x2 converter;
  - the next PREFETCH weight tiles are loaded while the current one is multiplied; with PDL the first ones are
    requested before waiting for the kernel that writes x (weights are constant);
  - group-wise scales: a K tile may span many groups; each product takes its (row, group) scale, loaded once per
    16-byte run of a thread (groups are multiples of 16 wide).
"""
from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from qexp.kernels import configs, pdl
from qexp.kernels.gluon_w8a16 import _gdc_launch_dependents, _gdc_wait
from qexp.kernels.triton_common import scale_layout

# int8x4 -> 4 fp32 with the value + 2^23 + 128 (exact): flip the sign bits, then put each byte under 0x4B000000
_I8_MAGIC_ASM = gl.constexpr("""{
.reg .b32 t, c;
xor.b32 t, $4, 0x80808080;
mov.b32 c, 0x4B000000;
prmt.b32 $0, t, c, 0x7440;
prmt.b32 $1, t, c, 0x7441;
prmt.b32 $2, t, c, 0x7442;
prmt.b32 $3, t, c, 0x7443;
}""")
_I8_OFFSET = gl.constexpr(8388736.0)  # 2^23 + 128


@gluon.jit
def _to_f32(w):
    if w.dtype == gl.int8:
        f = gl.inline_asm_elementwise(_I8_MAGIC_ASM, "=r,=r,=r,=r,r", [w], dtype=gl.float32, is_pure=True, pack=4)
        return f - _I8_OFFSET
    return w.to(gl.float16).to(gl.float32)


@gluon.jit
def _row_sums(x_ptr, w_ptr, ws_ptr, nw_ptr, eps, offs_n_ld, offs_k, stride_wn, stride_wsn, stride_wsg,
              K: gl.constexpr, GROUP_SIZE: gl.constexpr, GROUPED: gl.constexpr, NORM: gl.constexpr,
              BLOCK_K: gl.constexpr, PREFETCH: gl.constexpr, WAIT: gl.constexpr, layout: gl.constexpr):
    """sum_k x[k] * dequant(w)[n, k] for the rows offs_n_ld, scales applied: float32, one value per row. WAIT: wait
    for the kernel that writes x (PDL) after the first weight tiles are requested (weights are constant).
    NORM: x is RMS-normalised first (x / rms(x) * nw, nw the norm's weight): each program sums x^2 over the K it
    reads anyway and scales its row sums by 1 / rms at the end, so no norm kernel runs before the GEMV."""
    w_ptrs = w_ptr + offs_n_ld[:, None].to(gl.int64) * stride_wn + offs_k[None, :]
    K_TILES: gl.constexpr = K // BLOCK_K
    # K is a constexpr and the loop unrolled, so the weight tiles in flight stay in the registers they were loaded
    # into (a loop-carried int8 tile is held one byte per register and repacked for the convert)
    w_cur = gl.load(w_ptrs)
    if PREFETCH >= 2 and K_TILES > 1:
        w_nxt = gl.load(w_ptrs + BLOCK_K)
    if WAIT:
        _gdc_wait()  # x is the previous kernel's output
    acc = gl.zeros((offs_n_ld.shape[0], BLOCK_K), dtype=gl.float32, layout=layout)
    if NORM:
        sq = gl.zeros((BLOCK_K,), dtype=gl.float32, layout=gl.SliceLayout(0, layout))
    for i in gl.static_range(K_TILES):
        x = gl.load(x_ptr + i * BLOCK_K + offs_k).to(gl.float32)
        if NORM:
            sq += x * x
            x = x * gl.load(nw_ptr + i * BLOCK_K + offs_k).to(gl.float32)
        if PREFETCH >= 2:
            if i + 2 < K_TILES:
                w_far = gl.load(w_ptrs + (i + 2) * BLOCK_K)
        elif i + 1 < K_TILES:
            w_nxt = gl.load(w_ptrs + (i + 1) * BLOCK_K)
        prod = _to_f32(w_cur) * x[None, :]
        if GROUPED:  # K tiles hold whole groups: one scale per (row, group), broadcast over the group's bytes
            g = (i * BLOCK_K + offs_k) // GROUP_SIZE
            prod = prod * gl.load(ws_ptr + offs_n_ld[:, None] * stride_wsn + g[None, :] * stride_wsg)
        acc += prod
        if i + 1 < K_TILES:
            w_cur = w_nxt
        if PREFETCH >= 2 and i + 2 < K_TILES:
            w_nxt = w_far
    out = gl.sum(acc, axis=1)
    if not GROUPED:
        out = out * gl.load(ws_ptr + offs_n_ld * stride_wsn)
    if NORM:
        out = out * gl.rsqrt(gl.sum(sq, axis=0) / K + eps)
    return out


@triton.constexpr_function
def _gemv_layout(BLOCK_K, num_warps):
    """16 consecutive bytes of K per thread, a warp across up to 512 bytes of a row, warps stacked over rows."""
    tpw_k = min(32, BLOCK_K // 16)
    return gl.BlockedLayout(size_per_thread=[1, 16], threads_per_warp=[32 // tpw_k, tpw_k],
                            warps_per_cta=[num_warps, 1], order=[1, 0])


@gluon.jit
def _gemv_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, bias_ptr, nw_ptr, eps, N, stride_wn, stride_wsn, stride_wsg,
                 K: gl.constexpr, GROUP_SIZE: gl.constexpr, GROUPED: gl.constexpr, HAS_BIAS: gl.constexpr,
                 NORM: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, PREFETCH: gl.constexpr,
                 PDL: gl.constexpr, num_warps: gl.constexpr):
    if PDL:
        _gdc_launch_dependents()  # the next kernel may launch now; it waits for our stores itself
    layout: gl.constexpr = _gemv_layout(BLOCK_K, num_warps)
    offs_n = gl.program_id(0) * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
    offs_n_ld = offs_n % N
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, layout))
    out = _row_sums(x_ptr, w_ptr, ws_ptr, nw_ptr, eps, offs_n_ld, offs_k, stride_wn, stride_wsn, stride_wsg, K,
                    GROUP_SIZE, GROUPED, NORM, BLOCK_K, PREFETCH, PDL, layout)
    if HAS_BIAS:
        out += gl.load(bias_ptr + offs_n_ld).to(gl.float32)
    gl.store(out_ptr + offs_n, out.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@gluon.jit
def _gemv_swiglu_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, nw_ptr, eps, N, stride_wn, stride_wsn, stride_wsg,
                        K: gl.constexpr, GROUP_SIZE: gl.constexpr, GROUPED: gl.constexpr, NORM: gl.constexpr,
                        BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, PREFETCH: gl.constexpr, PDL: gl.constexpr,
                        num_warps: gl.constexpr):
    """silu(x @ gate.T) * (x @ up.T) for a merged gate/up weight (2N, K): each program computes BLOCK_N rows of
    gate, then the matching rows of up, and stores only their product, rounded as the two GEMV outputs in bf16
    and elementwise.silu_mul would round them (one launch and one pass over the gate/up output fewer)."""
    if PDL:
        _gdc_launch_dependents()
    layout: gl.constexpr = _gemv_layout(BLOCK_K, num_warps)
    offs_n = gl.program_id(0) * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, layout))
    offs_n_ld = offs_n % N
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, layout))
    dt: gl.constexpr = out_ptr.dtype.element_ty
    gate = _row_sums(x_ptr, w_ptr, ws_ptr, nw_ptr, eps, offs_n_ld, offs_k, stride_wn, stride_wsn, stride_wsg, K,
                     GROUP_SIZE, GROUPED, NORM, BLOCK_K, PREFETCH, PDL, layout).to(dt).to(gl.float32)
    up = _row_sums(x_ptr, w_ptr, ws_ptr, nw_ptr, eps, offs_n_ld + N, offs_k, stride_wn, stride_wsn, stride_wsg, K,
                   GROUP_SIZE, GROUPED, NORM, BLOCK_K, PREFETCH, False, layout).to(dt).to(gl.float32)
    act = (gate * (1 / (1 + gl.exp(-gate)))).to(dt).to(gl.float32)  # as tl.sigmoid: 1 / (1 + exp(-x))
    gl.store(out_ptr + offs_n, (act * up).to(dt), mask=offs_n < N)


def _launch_shape(n: int, k: int, w_scale: torch.Tensor, cfg: dict, group_size: int | None):
    """(grouped, stride_wsn, stride_wsg, BLOCK_N, BLOCK_K, warps): BLOCK_K shrinks to tile K whole as
    configs.fit_block_k has it, BLOCK_N grows to what one warp covers, warps shrink to what BLOCK_N fills."""
    grouped, stride_wsn, stride_wsg = scale_layout(w_scale, group_size, k)
    bk = configs.fit_block_k(k, cfg["BLOCK_K"], grouped, group_size, span_groups=True)
    rows_per_warp = 32 // min(32, bk // 16)
    bn = max(cfg["BLOCK_N"], rows_per_warp)
    return grouped, stride_wsn, stride_wsg, bn, bk, max(1, min(cfg["num_warps"], bn // rows_per_warp))


def gemv(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *, group_size: int | None = None,
         bias: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """x (1, K) bf16, w_q (N, K) int8 / fp8 contiguous, K % 16 == 0; cfg: BLOCK_N, BLOCK_K, num_warps, PREFETCH.
    norm_weight (K,): x RMS-normalised with it (and eps) first. Returns (1, N) in x's dtype."""
    n, k = w_q.shape
    grouped, stride_wsn, stride_wsg, bn, bk, warps = _launch_shape(n, k, w_scale, cfg, group_size)
    out = torch.empty((1, n), device=x.device, dtype=x.dtype)
    _gemv_kernel[(triton.cdiv(n, bn),)](
        x, w_q, out, w_scale, bias if bias is not None else w_scale, _or(norm_weight, x), eps, n, w_q.stride(0),
        stride_wsn, stride_wsg, K=k, GROUP_SIZE=group_size if grouped else k, GROUPED=grouped,
        HAS_BIAS=bias is not None, NORM=norm_weight is not None, BLOCK_N=bn, BLOCK_K=bk,
        PREFETCH=cfg.get("PREFETCH", 1), num_warps=warps, **pdl.launch(x.device))
    return out


def _or(t: torch.Tensor | None, unused: torch.Tensor) -> torch.Tensor:
    return t if t is not None else unused  # a pointer the kernel never reads when its switch is off


def gemv_swiglu(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *,
                group_size: int | None = None, norm_weight: torch.Tensor | None = None,
                eps: float = 0.0) -> torch.Tensor:
    """silu(gate) * up of a merged gate/up weight w_q (2I, K) (gate rows first, as the engine merges them) for one
    token: (1, I) in x's dtype, equal bit for bit to gemv then elementwise.silu_mul on its two halves."""
    n2, k = w_q.shape
    n = n2 // 2
    grouped, stride_wsn, stride_wsg, bn, bk, warps = _launch_shape(n2, k, w_scale, cfg, group_size)
    out = torch.empty((1, n), device=x.device, dtype=x.dtype)
    _gemv_swiglu_kernel[(triton.cdiv(n, bn),)](
        x, w_q, out, w_scale, _or(norm_weight, x), eps, n, w_q.stride(0), stride_wsn, stride_wsg, K=k,
        GROUP_SIZE=group_size if grouped else k, GROUPED=grouped, NORM=norm_weight is not None, BLOCK_N=bn,
        BLOCK_K=bk, PREFETCH=cfg.get("PREFETCH", 1), num_warps=warps, **pdl.launch(x.device))
    return out
