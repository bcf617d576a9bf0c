"""One Triton GEMM for every 8-bit recipe: out = x @ dequant(w_q).T, the weight dequantized in registers.

SWAP_AB (default) computes out.T = W @ x.T: the weight tile is the MMA's A operand, so the int8/fp8 -> bf16
convert stays in registers (Hopper's wgmma takes A from registers) and the weight's N dimension fills the 64-row
MMA even for small M; SWAP_AB=False computes x @ W.T (x as A, the converted weight as B), which the tuner picks
for some large-M cells. Modes:
  W8A16 (A8=False): x bf16/fp16, w int8 or fp8 converted to x's dtype, fp32 accumulation.
  W8A8  (A8=True):  x already quantized per token (int8 or fp8, same dtype as w), int32 / fp32 accumulation,
                    per-token x scale applied in the epilogue.
Scales: tensor-wise and row-wise apply once in the epilogue (stride 0 for tensor-wise); group-wise scales
dequantize the weight tile in registers, bf16(w * s) as the reference does (BLOCK_K divides group_size).
SPLIT_K > 1 splits K over programs that atomically add fp32 partials (decode shapes with few output tiles).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from qexp.kernels import configs, pdl
from qexp.kernels.triton_act_quant import quant_args
from qexp.kernels.triton_common import epilogue, grouped_tile, scale_layout, to_float
from qexp.kernels.triton_qgemv import qgemv_kernel


# runtime ints that vary between recipes/shapes are not specialised, so one compiled kernel serves them all
@triton.jit(do_not_specialize=["M", "stride_wsn", "stride_wsg", "group_size", "tiles_per_split"])
def _qmm_kernel(x_ptr, w_ptr, out_ptr, ws_ptr, xs_ptr, bias_ptr,
                M, N, K, stride_xm, stride_wn, stride_om, stride_wsn, stride_wsg, group_size, tiles_per_split,
                A8: tl.constexpr, INT_ACC: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
                EVEN_K: tl.constexpr,
                SPLIT_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_N: tl.constexpr, SWAP_AB: tl.constexpr, FAST_I8: tl.constexpr, PDL: tl.constexpr):
    pdl.wait(PDL)  # nothing constant to fetch early: tiles come through the pipelined loop
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_n, pid_m = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_N)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n_ld = offs_n % N  # wrapped rows/cols are loaded but never stored: no masks in the main loop
    offs_m_ld = offs_m % M
    offs_k = tl.arange(0, BLOCK_K)

    kt_begin = pid_k * tiles_per_split

    if SWAP_AB:  # acc = W @ x.T: the converted weight is the MMA's A operand, kept in registers
        w_ptrs = w_ptr + offs_n_ld[:, None] * stride_wn + (kt_begin * BLOCK_K + offs_k)[None, :]
        x_ptrs = x_ptr + offs_m_ld[None, :] * stride_xm + (kt_begin * BLOCK_K + offs_k)[:, None]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.int32 if INT_ACC else tl.float32)
    else:  # acc = x @ W.T: x is A, the converted weight tile goes back through shared memory as B
        w_ptrs = w_ptr + offs_n_ld[None, :] * stride_wn + (kt_begin * BLOCK_K + offs_k)[:, None]
        x_ptrs = x_ptr + offs_m_ld[:, None] * stride_xm + (kt_begin * BLOCK_K + offs_k)[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if INT_ACC else tl.float32)
    for i in range(tiles_per_split):
        kt = kt_begin + i
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs)
        elif SWAP_AB:
            w = tl.load(w_ptrs, mask=offs_k[None, :] < K - kt * BLOCK_K, other=0)
            x = tl.load(x_ptrs, mask=offs_k[:, None] < K - kt * BLOCK_K, other=0)
        else:
            w = tl.load(w_ptrs, mask=offs_k[:, None] < K - kt * BLOCK_K, other=0)
            x = tl.load(x_ptrs, mask=offs_k[None, :] < K - kt * BLOCK_K, other=0)
        if GROUPED:  # dequantize in registers exactly as the reference does: bf16(w * s)
            s = tl.load(ws_ptr + offs_n_ld * stride_wsn + ((kt * BLOCK_K) // group_size) * stride_wsg)
            if FAST_I8:
                wf = to_float(w)
            else:
                wf = w.to(tl.float32)
            if SWAP_AB:
                w = (wf * s[:, None]).to(x.dtype)
            else:
                w = (wf * s[None, :]).to(x.dtype)
        elif not A8:
            if FAST_I8:
                w = to_float(w).to(x.dtype)
            else:
                w = w.to(x.dtype)
        if SWAP_AB:
            acc = tl.dot(w, x, acc, out_dtype=acc.dtype)
        else:
            acc = tl.dot(x, w, acc, out_dtype=acc.dtype)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K

    pdl.launch_next(PDL)
    if SWAP_AB:
        out = tl.trans(acc.to(tl.float32))
    else:
        out = acc.to(tl.float32)
    epilogue(out, out_ptr, ws_ptr, xs_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N, stride_om,
              stride_wsn, pid_k, A8, GROUPED, HAS_BIAS, SPLIT_K)


def qmm(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, cfg: dict, *, group_size: int | None = None,
        x_scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
        out_dtype: torch.dtype = torch.bfloat16, out: torch.Tensor | None = None, act_dtype: str | None = None,
        pre_scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) contiguous rows; w_q (N, K) contiguous; w_scale float32 (1,) | (N,) | (N, K // group_size);
    x_scale float32 (M, 1) when x is quantized (W8A8). Returns (M, N) in out_dtype, written into `out` if given.
    The gemv backend instead takes bf16 x with act_dtype (and pre_scale) and quantizes x itself."""
    m, k = x.shape
    n = w_q.shape[0]
    grouped, stride_wsn, stride_wsg = scale_layout(w_scale, group_size, k)
    if grouped and x_scale is not None:
        raise ValueError("W8A8 takes tensor- or row-wise weight scales, not group-wise")
    block_k = configs.fit_block_k(k, cfg["BLOCK_K"], grouped, group_size, span_groups=configs.spans_groups(cfg))
    split_k = math.gcd(cfg["SPLIT_K"], triton.cdiv(k, block_k))
    final = out
    if split_k > 1:
        out = torch.zeros((m, n), device=x.device, dtype=torch.float32)
    elif out is None:
        out = torch.empty((m, n), device=x.device, dtype=out_dtype)
    grid = (triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(m, cfg["BLOCK_M"]), split_k)
    if cfg["backend"] == "gemv":
        if x_scale is not None:
            raise ValueError("the GEMV kernel quantizes x itself: pass act_dtype, not x_scale")
        qgemv_kernel[grid](
            x, w_q, out, w_scale, bias if bias is not None else w_scale,
            pre_scale if pre_scale is not None else w_scale,
            m, n, k, x.stride(0), w_q.stride(0), out.stride(0), stride_wsn, stride_wsg, group_size or k,
            triton.cdiv(k, block_k) // split_k, GROUPED=grouped, HAS_BIAS=bias is not None, SPLIT_K=split_k,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"], BLOCK_K=block_k,
            GROUP_TILE=min(group_size, block_k) if grouped else block_k,
            A8=act_dtype is not None, HAS_PRE=pre_scale is not None,
            **quant_args(act_dtype or "int8", x.dtype),  # (weight-only: unused)
            PREFETCH=cfg.get("PREFETCH", 1),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch(x.device))
    else:
        _qmm_kernel[grid](
            x, w_q, out, w_scale, x_scale if x_scale is not None else w_scale, bias if bias is not None else w_scale,
            m, n, k, x.stride(0), w_q.stride(0), out.stride(0), stride_wsn, stride_wsg, group_size or k,
            triton.cdiv(k, block_k) // split_k,
            A8=x_scale is not None, INT_ACC=x_scale is not None and w_q.dtype == torch.int8, GROUPED=grouped,
            HAS_BIAS=bias is not None,
            EVEN_K=k % block_k == 0, SPLIT_K=split_k,
            BLOCK_N=cfg["BLOCK_N"], BLOCK_M=cfg["BLOCK_M"], BLOCK_K=block_k, GROUP_N=cfg.get("GROUP_N", 8),
            SWAP_AB=cfg.get("SWAP_AB", True), FAST_I8=cfg.get("FAST_I8", True),
            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **pdl.launch(x.device))
    if split_k == 1:
        return out
    return out.to(out_dtype) if final is None else final.copy_(out)
