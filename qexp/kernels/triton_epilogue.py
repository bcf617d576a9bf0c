"""Shared epilogue of the quantized GEMM / GEMV kernels."""
import triton  # noqa: F401 (triton.jit)
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
