"""Fused Triton kernels for the memory-bound parts of a Qwen3 layer: residual add + RMSNorm, per-head q/k RMSNorm +
rotary embedding, SiLU(gate) * up; the norm and SiLU * up optionally quantize their output per token for a W8A8 linear
(one pass instead of two). Each reproduces the bf16 rounding points of the HF modules it replaces
(value rounded to the model dtype wherever HF materialises a tensor), so outputs match HF to within the rounding
of float32 reductions."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qexp.kernels import pdl
from qexp.kernels.activation import QuantizedActivation
from qexp.kernels.triton_act_quant import quant_args, quantize_row
from qexp.quant import qdq


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, out_ptr, res_out_ptr, w_ptr, s_ptr, N, eps,
                     HAS_RES: tl.constexpr, QUANT: tl.constexpr, IS_FP8: tl.constexpr, QMAX: tl.constexpr,
                     QMAX_INV: tl.constexpr, DIV_STEPS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl.start(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    dt = res_out_ptr.dtype.element_ty  # the model dtype
    x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        x = x + tl.load(res_ptr + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    x = x.to(dt)  # HF: residual + hidden is a bf16 tensor
    tl.store(res_out_ptr + row * N + cols, x, mask=mask)
    xf = x.to(tl.float32)
    var = tl.sum(xf * xf, axis=0) / N
    y = (xf * tl.rsqrt(var + eps)).to(dt).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = (w * y).to(dt)
    if QUANT:  # the W8A8 linear's per-token quantization, on the bf16 value the unfused path would store
        q, scale = quantize_row(y.to(tl.float32), IS_FP8, QMAX, QMAX_INV, DIV_STEPS)
        tl.store(out_ptr + row * N + cols, q, mask=mask)
        tl.store(s_ptr + row, scale)
    else:
        tl.store(out_ptr + row * N + cols, y, mask=mask)


def rms_norm(x: torch.Tensor, norm: torch.nn.Module, residual: torch.Tensor | None = None,
             quant: str | None = None):
    """(norm(x + residual), x + residual) for rows of x; `norm` is an HF Qwen3RMSNorm (its weight and eps).
    quant "int8" | "fp8": the first output is the norm quantized per token for a W8A8 linear, a
    QuantizedActivation, bit for bit what quantize_activation makes of the unquantized output."""
    x = x.contiguous()
    n = x.shape[-1]
    res_out = torch.empty_like(x)
    out, scale = _outputs(x, quant)
    _rms_norm_kernel[(x.numel() // n,)](x, residual if residual is not None else x, out, res_out, norm.weight,
                                        scale, n, norm.variance_epsilon, HAS_RES=residual is not None,
                                        **_quant_args(quant, x.dtype), BLOCK=triton.next_power_of_2(n),
                                        num_warps=8 if n >= 2048 else 4, **pdl.launch(x.device))
    return (QuantizedActivation(out, scale) if quant else out), res_out


def _outputs(x: torch.Tensor, quant: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh output buffers for rows like x's: the model dtype (the scale pointer then unused), or 8-bit values
    and their per-token float32 scales."""
    if quant is None:
        out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
        return out, out
    return (torch.empty(x.shape, device=x.device, dtype=qdq.STORAGE[quant]),
            torch.empty((x.numel() // x.shape[-1], 1), device=x.device, dtype=torch.float32))


def _quant_args(quant: str | None, x_dtype: torch.dtype) -> dict:
    return {"QUANT": True, **quant_args(quant, x_dtype)} if quant else {
        "QUANT": False, "IS_FP8": False, "QMAX": 1.0, "QMAX_INV": 1.0, "DIV_STEPS": 1}


@triton.jit
def _norm_rope_heads(src, dst, w_ptr, c1, c2, s1, s2, eps, keep, NH: tl.constexpr, D: tl.constexpr):
    """RMSNorm over D then rotary, for the NH heads (a power of two) of one token row src -> dst (contiguous
    heads): an (NH, D/2) tile per half. Stores only if keep."""
    heads = tl.arange(0, NH)
    half = tl.arange(0, D // 2)
    col = heads[:, None] * D + half[None, :]
    src, dst = src + col, dst + col
    x1 = tl.load(src).to(tl.float32)
    x2 = tl.load(src + D // 2).to(tl.float32)
    dt = dst.dtype.element_ty
    r = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / D + eps)[:, None]
    w1 = tl.load(w_ptr + half).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + D // 2 + half).to(tl.float32)[None, :]
    x1 = (w1 * (x1 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    x2 = (w2 * (x2 * r).to(dt).to(tl.float32)).to(dt).to(tl.float32)
    # HF: q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1), each product rounded
    y1 = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
    y2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
    tl.store(dst, y1.to(dt), mask=keep)
    tl.store(dst + D // 2, y2.to(dt), mask=keep)


@triton.jit
def _qk_norm_rope_kernel(q_ptr, k_ptr, v_ptr, q_out, k_out, v_out, slot_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr,
                         q_row, k_row, v_row, eps, H: tl.constexpr, KV: tl.constexpr, QH: tl.constexpr,
                         KH: tl.constexpr, D: tl.constexpr, TO_CACHE: tl.constexpr, PDL: tl.constexpr):
    pdl.start(PDL)
    # one token, a part of its heads: parts below H // QH take QH q heads each, the rest KH k heads (and v);
    # several short programs instead of one long one, which batch-1 decode waits for
    t = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    half = tl.arange(0, D // 2)
    c1 = tl.load(cos_ptr + t * D + half).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + t * D + D // 2 + half).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + t * D + half).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + t * D + D // 2 + half).to(tl.float32)[None, :]
    if part < H // QH:
        h0 = part * QH * D
        _norm_rope_heads(q_ptr + t * q_row + h0, q_out + t * H * D + h0, qw_ptr, c1, c2, s1, s2, eps, True, QH, D)
    else:
        h0 = (part - H // QH) * KH * D
        if TO_CACHE:  # k and v go straight to their cache slot; padded decode rows carry slot -1 and store nothing
            slot = tl.load(slot_ptr + t).to(tl.int64)
            _norm_rope_heads(k_ptr + t * k_row + h0, k_out + slot * KV * D + h0, kw_ptr, c1, c2, s1, s2, eps,
                             slot >= 0, KH, D)
            offs = tl.arange(0, KH * D)
            tl.store(v_out + slot * KV * D + h0 + offs, tl.load(v_ptr + t * v_row + h0 + offs, mask=slot >= 0),
                     mask=slot >= 0)
        else:
            _norm_rope_heads(k_ptr + t * k_row + h0, k_out + t * KV * D + h0, kw_ptr, c1, c2, s1, s2, eps, True,
                             KH, D)


def _heads_per_program(n: int, most: int) -> int:
    """Largest power of two <= most that divides n heads."""
    p = most
    while n % p:
        p //= 2
    return p


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x itself if each row (dim 0) is contiguous inside (a column slice of a merged GEMM output), else a copy."""
    expected = 1
    for size, stride in zip(reversed(x.shape[1:]), reversed(x.stride()[1:])):
        if stride != expected and size > 1:
            return x.contiguous()
        expected *= size
    return x


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_norm, k_norm, cos: torch.Tensor, sin: torch.Tensor,
                 v: torch.Tensor | None = None, k_cache: torch.Tensor | None = None,
                 v_cache: torch.Tensor | None = None, slot_mapping: torch.Tensor | None = None):
    """q (T, H, D), k (T, KV, D): per-head RMSNorm (HF q_norm / k_norm weights) then rotary with cos/sin (T, D).
    q, k, v may be row-strided views (merged qkv output). Returns contiguous (q, k); given the caches
    (num_blocks, block_size, KV, D) and slot_mapping (T,), k and v (T, KV, D) are written there instead, at each
    token's slot (slots < 0 skipped), and (q, None) is returned: one launch instead of two."""
    T, H, D = q.shape
    KV = k.shape[1]
    q, k = rows_view(q), rows_view(k)
    q_out = torch.empty((T, H, D), device=q.device, dtype=q.dtype)
    to_cache = k_cache is not None
    if to_cache:
        v, k_out, v_out, slots = rows_view(v), k_cache, v_cache, slot_mapping
    else:
        k_out = torch.empty((T, KV, D), device=k.device, dtype=k.dtype)
        v, v_out, slots = k, k_out, cos  # unused
    # decode: 4 heads a program (short programs, which batch 1 waits on); prefill: up to 16 q / 8 k+v heads
    # a program, 0.6x the time at 16k tokens (benchmarks/elementwise_h200.json)
    most = (16, 8) if T >= 1024 else (4, 4)
    qh, kh = _heads_per_program(H, most[0]), _heads_per_program(KV, most[1])
    _qk_norm_rope_kernel[(T, H // qh + KV // kh)](
        q, k, v, q_out, k_out, v_out, slots, q_norm.weight, k_norm.weight, cos.contiguous(), sin.contiguous(),
        q.stride(0), k.stride(0), v.stride(0), q_norm.variance_epsilon, H=H, KV=KV, QH=qh, KH=kh, D=D,
        TO_CACHE=to_cache, num_warps=4, **pdl.launch(q.device))
    return q_out, (None if to_cache else k_out)


@triton.jit
def _silu_mul_kernel(a_ptr, b_ptr, out_ptr, s_ptr, n, a_row, b_row, QUANT: tl.constexpr, IS_FP8: tl.constexpr,
                     QMAX: tl.constexpr, QMAX_INV: tl.constexpr, DIV_STEPS: tl.constexpr, BLOCK: tl.constexpr,
                     PDL: tl.constexpr):
    pdl.start(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + row * a_row + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + row * b_row + offs, mask=mask, other=0.0).to(tl.float32)
    dt = a_ptr.dtype.element_ty
    s = (a * tl.sigmoid(a)).to(dt).to(tl.float32)
    y = (s * b).to(dt)
    if QUANT:  # one program holds the whole row (BLOCK >= n): its amax is the token's
        q, scale = quantize_row(y.to(tl.float32), IS_FP8, QMAX, QMAX_INV, DIV_STEPS)
        tl.store(out_ptr + row * n + offs, q, mask=mask)
        tl.store(s_ptr + row, scale)
    else:
        tl.store(out_ptr + row * n + offs, y, mask=mask)


def silu_mul(a: torch.Tensor, b: torch.Tensor, quant: str | None = None):
    """HF Qwen3MLP's act_fn(gate_proj(x)) * up_proj(x) in one pass; a, b (T, I), rows may be strided (the two
    halves of a merged gate/up output). quant "int8" | "fp8": a QuantizedActivation for a W8A8 down_proj."""
    shape = a.shape
    n = shape[-1]
    a, b = rows_view(a.reshape(-1, n)), rows_view(b.reshape(-1, n))
    out, scale = _outputs(a, quant)
    block = triton.next_power_of_2(n) if quant else min(2048, triton.next_power_of_2(n))
    # quant: 8 warps (16 were no faster for a 6144-wide row in an H200 probe)
    _silu_mul_kernel[(a.shape[0], triton.cdiv(n, block))](a, b, out, scale, n, a.stride(0), b.stride(0),
                                                          **_quant_args(quant, a.dtype), BLOCK=block,
                                                          num_warps=min(8 if quant else 16, max(4, block // 256)),
                                                          **pdl.launch(a.device))
    return QuantizedActivation(out, scale) if quant else out.view(shape)
