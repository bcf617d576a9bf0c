"""Fused Triton kernels for the memory-bound parts of a Qwen3 layer: residual add + RMSNorm, per-head q/k RMSNorm +
rotary embedding, SiLU(gate) * up. Each reproduces the bf16 rounding points of the HF modules it replaces
(value rounded to the model dtype wherever HF materialises a tensor), so outputs match HF to within the rounding
of float32 reductions."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, out_ptr, res_out_ptr, w_ptr, N, eps,
                     HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x = x + tl.load(res_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    x = x.to(out_ptr.dtype.element_ty)  # HF: residual + hidden is a bf16 tensor
    tl.store(res_out_ptr + row * N + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(out_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + cols, (w * y).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, norm: torch.nn.Module, residual: torch.Tensor | None = None):
    """(norm(x + residual), x + residual) for rows of x; `norm` is an HF Qwen3RMSNorm (its weight and eps)."""
    x = x.contiguous()
    n = x.shape[-1]
    out, res_out = torch.empty_like(x), torch.empty_like(x)
    _rms_norm_kernel[(x.numel() // n,)](x, residual if residual is not None else x, out, res_out, norm.weight, n,
                                        norm.variance_epsilon, HAS_RES=residual is not None,
                                        BLOCK=triton.next_power_of_2(n), num_warps=8 if n >= 2048 else 4)
    return out, res_out


@triton.jit
def _norm_rope_heads(src, dst, w_ptr, c1, c2, s1, s2, t, eps, NH: tl.constexpr, NH_PAD: tl.constexpr,
                     D: tl.constexpr):
    """RMSNorm over D then rotary, for all NH heads of token t: a (NH_PAD, D/2) tile per half."""
    heads = tl.arange(0, NH_PAD)
    half = tl.arange(0, D // 2)
    mask = (heads < NH)[:, None]
    off = (t * NH + heads[:, None]) * D + half[None, :]
    x1 = tl.load(src + off, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + off + D // 2, mask=mask, other=0.0).to(tl.float32)
    dt = dst.dtype.element_ty
    r = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D + eps)[:, None]
    w1 = tl.load(w_ptr + half).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + D // 2 + half).to(tl.float32)[None, :]
    x1 = (w1 * (x1 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    x2 = (w2 * (x2 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    # HF: q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1), each product rounded
    y1 = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
    y2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    tl.store(dst + off, y1.to(dt), mask=mask)
    tl.store(dst + off + D // 2, y2.to(dt), mask=mask)


@triton.jit
def _qk_norm_rope_kernel(q_ptr, k_ptr, q_out, k_out, qw_ptr, kw_ptr, cos_ptr, sin_ptr, eps,
                         H: tl.constexpr, KV: tl.constexpr, H_PAD: tl.constexpr, KV_PAD: tl.constexpr,
                         D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # one token: all its q and k heads
    half = tl.arange(0, D // 2)
    c1 = tl.load(cos_ptr + t * D + half).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + t * D + D // 2 + half).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + t * D + half).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + t * D + D // 2 + half).to(tl.float32)[None, :]
    _norm_rope_heads(q_ptr, q_out, qw_ptr, c1, c2, s1, s2, t, eps, H, H_PAD, D)
    _norm_rope_heads(k_ptr, k_out, kw_ptr, c1, c2, s1, s2, t, eps, KV, KV_PAD, D)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_norm, k_norm, cos: torch.Tensor, sin: torch.Tensor):
    """q (T, H, D), k (T, KV, D): per-head RMSNorm (HF q_norm / k_norm weights) then rotary with cos/sin (T, D)."""
    T, H, D = q.shape
    KV = k.shape[1]
    q, k = q.contiguous(), k.contiguous()
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    _qk_norm_rope_kernel[(T,)](q, k, q_out, k_out, q_norm.weight, k_norm.weight, cos.contiguous(),
                               sin.contiguous(), q_norm.variance_epsilon, H=H, KV=KV,
                               H_PAD=triton.next_power_of_2(H), KV_PAD=triton.next_power_of_2(KV), D=D,
                               num_warps=4)
    return q_out, k_out


@triton.jit
def _silu_mul_kernel(a_ptr, b_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    s = (a * tl.sigmoid(a)).to(dt).to(tl.float32)
    tl.store(out_ptr + offs, (s * b).to(dt), mask=mask)


def silu_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """HF Qwen3MLP's act_fn(gate_proj(x)) * up_proj(x) in one pass."""
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty_like(a)
    n = a.numel()
    _silu_mul_kernel[(triton.cdiv(n, 2048),)](a, b, out, n, BLOCK=2048, num_warps=8)
    return out
