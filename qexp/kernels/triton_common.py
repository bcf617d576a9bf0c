"""Pieces shared by the quantized GEMM / GEMV kernels: the int8 -> float convert, the epilogue, and the host-side
reading of a weight's scale layout and of the GPU's SM count."""
import functools

import torch
import triton
import triton.language as tl


@functools.cache
def sm_count(device: torch.device) -> int:
    """The GPU's SM count, cached (grid sizing reads it on every launch); 8 off CUDA (the interpreter's tests)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


def scale_layout(w_scale, group_size: int | None, k: int) -> tuple[bool, int, int]:
    """(grouped, stride along N, stride along K groups) of a (1,) tensor-, (N,) row- or (N, K // gs) group scale."""
    grouped = w_scale.dim() == 2 and group_size is not None and group_size < k
    if w_scale.numel() == 1:
        return grouped, 0, 0
    if grouped:
        return grouped, w_scale.stride(0), w_scale.stride(1)
    return grouped, 1, 0


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_N: tl.constexpr):
    """(pid_n, pid_m) of program pid: GROUP_N weight tiles sweep all M tiles together, so x and w tiles are
    reused from L2."""
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    width = GROUP_N * num_pid_m
    first_n = (pid // width) * GROUP_N
    group_n = min(num_pid_n - first_n, GROUP_N)
    return first_n + (pid % width) % group_n, (pid % width) // group_n


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
