"""Pieces shared by the quantized GEMM / GEMV kernels: the int8 -> float convert and the epilogue."""
import triton
import triton.language as tl


@triton.jit
def epilogue(out, out_ptr, ws_ptr, xs_ptr, bias_ptr, offs_m, offs_n, offs_m_ld, offs_n_ld, M, N, stride_om,
             stride_wsn, pid_k, A8: tl.constexpr, GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr,
             SPLIT_K: tl.constexpr):
    """out (BLOCK_M, BLOCK_N) fp32: apply row/tensor weight scale, per-token x scale, bias; store or add."""
    if not GROUPED:
        out = out * tl.load(ws_ptr + offs_n_ld * stride_wsn)[None, :]
    if A8:
        out = out * tl.load(xs_ptr + offs_m_ld)[:, None]
    if HAS_BIAS:
        if pid_k == 0:
            out += tl.load(bias_ptr + offs_n_ld)[None, :].to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out_ptrs, out, mask=mask, sem="relaxed")


@triton.jit
def to_float(w):
    """int8 / fp8 weight tile -> float32. int8 skips the slow I2F converter: (v + 128) as the low mantissa bits
    of 2^23 gives 2^23 + 128 + v exactly (one XOR, one OR), then one subtraction."""
    if w.dtype == tl.int8:
        u = (w.to(tl.uint8, bitcast=True) ^ 0x80).to(tl.int32)
        return (u | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    else:
        return w.to(tl.float32)
