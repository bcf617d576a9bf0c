"""CUDA fast path of quantized_linear. Backends, chosen per (recipe, shape, M bucket) by the tuned table:
  triton      tensor-core GEMM, weight dequantized in registers (triton_qmm), W8A16 and W8A8
  tma         the same GEMM with its tiles fetched by the TMA engine (triton_qmm_tma, sm_90+)
  gluon       W8A16 GEMM with a hand-made pipeline: convert overlaps the tensor cores (gluon_w8a16, sm_90+)
  gluon_rs    W8A16 for M >= 64: wgmma with the weight converted in its operand registers (gluon_w8a16_rs)
  gluon_ws    W8A16 for large M: a converter warp group feeds bf16 weight tiles to wgmma-only warps
              (gluon_w8a16_ws)
  gluon_w8a8  W8A8 for M >= 64, one wgmma kept in flight also for int8 (gluon_w8a8, sm_90+)
  skinny      W8A16 for small M: mma.sync on the weight converted in its operand registers (gluon_skinny, sm_90+)
  gemv        CUDA-core GEMV for decode (triton_qgemv); for W8A8 the per-token activation quant is fused in
  gemv_gl     W8A16 CUDA-core GEMV for one token with hand-set layouts (gluon_gemv); also with the RMSNorm
              before it folded in (norm_linear), and for a merged gate/up weight with SiLU * up in its
              epilogue (gate_up_swiglu)
  scaled_mm   cuBLASLt fp8 with row-wise scales (torch._scaled_mm), W8A8 fp8; _fast = fast accumulation
  dequant_mm  W8A16 at large M: one-pass dequantize to a transient bf16 weight, then cuBLAS
W8A8 outside gemv quantizes activations with one fused per-token kernel (triton_act_quant) first.

On sm_90+ the Triton and Gluon kernels are launched with programmatic dependent launch (qexp.kernels.pdl).
No host synchronisation anywhere, so a CUDA graph can capture every call. Weights are consumed as the recipes
store them (w_q (N, K) row-major, w_scale float32 (1,) | (N,) | (N, K // group_size)): no re-packing needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qexp.kernels import configs
from qexp.kernels.triton_act_quant import quantize_activation
from qexp.kernels.triton_dequant import dequantize
from qexp.kernels.triton_qmm import qmm

try:  # host-side TMA descriptors: Triton 3.4+ (torch >= 2.11 brings 3.6); else tma/gluon configs run as triton
    from qexp.kernels import triton_qmm_tma
except ImportError:
    triton_qmm_tma = None
try:  # Gluon: Triton 3.5+; else gluon configs run as tma
    from qexp.kernels import gluon_w8a16
except ImportError:
    gluon_w8a16 = None
try:  # Gluon's mma.sync and Hopper TMA; else skinny configs take the heuristic's config
    from qexp.kernels import gluon_skinny
except ImportError:
    gluon_skinny = None

try:  # the one-token Gluon GEMV; else gemv_gl configs run as the Triton GEMV
    from qexp.kernels import gluon_gemv
except ImportError:
    gluon_gemv = None

try:  # the register-operand wgmma kernel (shares gluon_skinny's helpers); else gluon_rs configs run as tma
    from qexp.kernels import gluon_w8a16_rs
except ImportError:
    gluon_w8a16_rs = None

try:  # the warp-specialized W8A16 kernel; else gluon_ws configs run as tma
    from qexp.kernels import gluon_w8a16_ws
except ImportError:
    gluon_w8a16_ws = None

try:  # Gluon W8A8; else gluon_w8a8 configs run as tma
    from qexp.kernels import gluon_w8a8
except ImportError:
    gluon_w8a8 = None

_W_DTYPES = (torch.int8, torch.float8_e4m3fn)
# the Gluon W8A16 GEMMs by backend name (None where Gluon is missing: their configs run as tma)
_GLUON_W8A16 = {"gluon": gluon_w8a16, "gluon_rs": gluon_w8a16_rs, "gluon_ws": gluon_w8a16_ws}
_ACT = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


def supports(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None,
             act_dtype: str | None) -> bool:
    """Whether the fused path computes this call; anything else takes the reference path."""
    if not (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and w_q.dtype in _W_DTYPES
            and w_q.dim() == 2 and w_q.is_contiguous() and w_scale.dtype == torch.float32
            and w_scale.is_contiguous() and w_q.device == x.device):
        return False
    n, k = w_q.shape
    if k % 16 or x.shape[-1] != k:
        return False
    if act_dtype is not None:  # W8A8: activations quantized to the weight's own dtype, tensor/row weight scales
        return _ACT.get(act_dtype) == w_q.dtype and w_scale.dim() == 1 and w_scale.numel() in (1, n)
    if w_scale.dim() == 2:
        return group_size is not None and group_size % 16 == 0 and w_scale.shape == (n, k // group_size)
    return w_scale.numel() in (1, n)


def _scaled_mm(x_q, x_s, w_q, w_scale, out_dtype, fast_accum: bool):
    n = w_q.shape[0]
    w_s = w_scale.reshape(1, -1) if w_scale.numel() == n else w_scale.reshape(1, 1).expand(1, n).contiguous()
    return torch._scaled_mm(x_q, w_q.t(), scale_a=x_s, scale_b=w_s, out_dtype=out_dtype, use_fast_accum=fast_accum)


def quantized_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, *, group_size: int | None = None,
                     act_dtype: str | None = None, pre_scale: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, config: dict | None = None) -> torch.Tensor:
    """Same contract as reference.quantized_linear; `config` overrides the tuned choice (the tuner uses it)."""
    lead, k = x.shape[:-1], x.shape[-1]
    n = w_q.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m == 0:
        return x.new_empty(*lead, n)
    if group_size is not None and group_size >= k:
        group_size = None  # one group per row is row-wise
    kind = configs.kind(w_q.dtype, act_dtype, group_size if w_scale.dim() == 2 else None)
    cfg = _config(kind, n, k, m, x.device, config)
    if cfg["backend"] == "skinny" and not (
            gluon_skinny is not None and act_dtype is None and x.dtype == torch.bfloat16
            and gluon_skinny.supported(k, group_size if w_scale.dim() == 2 else None)
            and triton_qmm_tma is not None and triton_qmm_tma.supported(x2, w_q)):
        cfg = configs.heuristic(kind, n, k, m)
    if cfg["backend"] == "gemv_gl" and not (gluon_gemv is not None and act_dtype is None and m == 1
                                            and x.dtype == torch.bfloat16):
        cfg = {**cfg, "backend": "gemv"}  # the same tile in the Triton GEMV
    if cfg["backend"] in _GLUON_W8A16 and (
            _GLUON_W8A16[cfg["backend"]] is None or act_dtype is not None or x.dtype != torch.bfloat16):
        cfg = {**cfg, "backend": "tma"}
    if cfg["backend"] in ("tma", *_GLUON_W8A16) and (
            triton_qmm_tma is None or not triton_qmm_tma.supported(x2, w_q)):
        cfg = {**cfg, "backend": "triton"}  # same tiles, pointer loads
    if act_dtype is None:
        if pre_scale is not None:
            x2 = (x2.float() * pre_scale).to(x.dtype)
        gs = group_size if w_scale.dim() == 2 else None
        if cfg["backend"] == "dequant_mm":
            out = F.linear(x2, dequantize(w_q, w_scale, gs, x.dtype), bias)
        elif cfg["backend"] == "tma":
            out = triton_qmm_tma.qmm_tma(x2, w_q, w_scale, cfg, group_size=gs, bias=bias, out_dtype=x.dtype)
        elif cfg["backend"] == "gluon":
            out = gluon_w8a16.w8a16_gluon(x2, w_q, w_scale, cfg, group_size=gs, bias=bias)
        elif cfg["backend"] == "gluon_rs":
            out = gluon_w8a16_rs.w8a16_rs(x2, w_q, w_scale, cfg, group_size=gs, bias=bias)
        elif cfg["backend"] == "gluon_ws":
            out = gluon_w8a16_ws.w8a16_ws(x2, w_q, w_scale, cfg, group_size=gs, bias=bias)
        elif cfg["backend"] == "gemv_gl":
            out = gluon_gemv.gemv(x2, w_q, w_scale, cfg, group_size=gs, bias=bias)
        elif cfg["backend"] == "skinny":
            out = gluon_skinny.w8a16_skinny(x2, w_q, w_scale, cfg, group_size=gs, bias=bias)
        else:
            out = qmm(x2, w_q, w_scale, cfg, group_size=gs, bias=bias, out_dtype=x.dtype)
    elif cfg["backend"] == "gemv":  # decode: activation quantization fused into the GEMV
        out = qmm(x2, w_q, w_scale, cfg, act_dtype=act_dtype, pre_scale=pre_scale, bias=bias, out_dtype=x.dtype)
    else:
        x_q, x_s = quantize_activation(x2, act_dtype, pre_scale)
        out = _w8a8_gemm(x_q, x_s, w_q, w_scale, cfg, bias, x.dtype)
    return out.reshape(*lead, n)


def on_one_token_gemv(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None,
                      act_dtype: str | None, config: dict | None = None) -> bool:
    """Whether the fused forms of the one-token Gluon GEMV (norm_linear, gate_up_swiglu) compute
    this linear: one bf16 token, a weight-only weight, and no explicit config of another backend. Where the tuned
    table prefers another backend at M=1 (7 of the H100's 60 weight-only cells, within 10 % of the GEMV), they take
    ONE_TOKEN_FALLBACK: the launch a fusion saves is worth more."""
    return (gluon_gemv is not None and act_dtype is None and x.dtype == torch.bfloat16
            and x.numel() == x.shape[-1] and supports(x, w_q, w_scale, group_size, None)
            and (config is None or config["backend"] == "gemv_gl"))


def fuses_swiglu(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, group_size: int | None,
                 act_dtype: str | None, bias: torch.Tensor | None = None, config: dict | None = None) -> bool:
    """Whether gate_up_swiglu computes silu(gate) * up of this merged gate/up linear in one launch (no bias)."""
    return (bias is None and w_q.shape[0] % 2 == 0
            and on_one_token_gemv(x, w_q, w_scale, group_size, act_dtype, config))


def gate_up_swiglu(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, *, group_size: int | None = None,
                   norm_weight: torch.Tensor | None = None, eps: float = 0.0,
                   config: dict | None = None) -> torch.Tensor:
    """silu(x @ gate.T) * (x @ up.T) for a merged gate/up weight (gate rows first), one token, where fuses_swiglu:
    the GEMV's programs multiply their gate and up rows in the epilogue, so the (1, 2I) GEMM output and the
    silu_mul launch are skipped. norm_weight: x is RMS-normalised first, as in norm_linear. Returns x's shape with
    I features."""
    n, k = w_q.shape
    cfg, gs = _one_token_config(w_q, w_scale, group_size, x.device, config)
    out = gluon_gemv.gemv_swiglu(x.reshape(1, k), w_q, w_scale, cfg, group_size=gs, norm_weight=norm_weight,
                                 eps=eps)
    return out.reshape(*x.shape[:-1], n // 2)


def norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, w_q: torch.Tensor, w_scale: torch.Tensor,
                *, group_size: int | None = None, bias: torch.Tensor | None = None,
                config: dict | None = None) -> torch.Tensor:
    """linear(rms_norm(x) * norm_weight) for one token, where on_one_token_gemv: the GEMV normalises x as it reads
    it (its programs each sum x^2 over K), so no norm launch runs first. The normalised x is kept in float32, not
    rounded to bf16 as a separate norm's output would be."""
    n, k = w_q.shape
    cfg, gs = _one_token_config(w_q, w_scale, group_size, x.device, config)
    out = gluon_gemv.gemv(x.reshape(1, k), w_q, w_scale, cfg, group_size=gs, bias=bias, norm_weight=norm_weight,
                          eps=eps)
    return out.reshape(*x.shape[:-1], n)


# The one-token GEMV's config where the table's M=1 cell is another backend: the H100's tuned gemv_gl for the
# K2048 N12288 fp8 row-wise gate/up (the int8 cell went to skinny by 0.5 us)
ONE_TOKEN_FALLBACK = configs.gemv_gl_config(8, 1024)


def _one_token_config(w_q, w_scale, group_size, device, config) -> tuple[dict, int | None]:
    """(config, group size as the kernels take it: None when the scales are not group-wise) of a weight-only
    linear at M=1 on the one-token GEMV."""
    n, k = w_q.shape
    gs = group_size if w_scale.dim() == 2 and group_size is not None and group_size < k else None
    cfg = _config(configs.kind(w_q.dtype, None, gs), n, k, 1, device, config)
    return (cfg if cfg["backend"] == "gemv_gl" else ONE_TOKEN_FALLBACK), gs


def _config(kind_: str, n: int, k: int, m: int, device: torch.device, config: dict | None) -> dict:
    cfg = config or configs.config_for(kind_, n, k, m, device)
    if cfg["backend"].startswith("scaled_mm") and n % 16:  # cuBLASLt fp8 needs N % 16 == 0
        cfg = configs.heuristic("w8a8-int8", n, k, m)
    return cfg


def _w8a8_gemm(x_q, x_s, w_q, w_scale, cfg: dict, bias, out_dtype) -> torch.Tensor:
    if cfg["backend"] == "gluon_w8a8":
        if gluon_w8a8 is not None and triton_qmm_tma is not None and triton_qmm_tma.supported(x_q, w_q):
            return gluon_w8a8.w8a8_gluon(x_q, x_s, w_q, w_scale, cfg, bias=bias, out_dtype=out_dtype)
        cfg = {**cfg, "backend": "tma", "SWAP_AB": False}
    if cfg["backend"] == "triton":
        return qmm(x_q, w_q, w_scale, cfg, x_scale=x_s, bias=bias, out_dtype=out_dtype)
    if cfg["backend"] == "tma" and triton_qmm_tma is not None and triton_qmm_tma.supported(x_q, w_q):
        return triton_qmm_tma.qmm_tma(x_q, w_q, w_scale, cfg, x_scale=x_s, bias=bias, out_dtype=out_dtype)
    if cfg["backend"] == "tma":
        return qmm(x_q, w_q, w_scale, {**cfg, "backend": "triton"}, x_scale=x_s, bias=bias, out_dtype=out_dtype)
    out = _scaled_mm(x_q, x_s, w_q, w_scale, out_dtype, cfg["backend"] == "scaled_mm_fast")
    return out if bias is None else out + bias


def takes_quantized_input(w_q: torch.Tensor, w_scale: torch.Tensor, act_dtype: str | None, m: int) -> bool:
    """Whether a W8A8 linear over m rows runs on activations its producer has already quantized
    (quantized_linear_prequantized): every backend but the GEMV, which quantizes x inside itself."""
    if act_dtype is None or _ACT.get(act_dtype) != w_q.dtype or not w_q.is_cuda or w_scale.dim() != 1:
        return False
    n, k = w_q.shape
    return k % 16 == 0 and _config(configs.kind(w_q.dtype, act_dtype, None), n, k, m, w_q.device,
                                   None)["backend"] != "gemv"


def quantized_linear_prequantized(x_q: torch.Tensor, x_s: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor,
                                  *, bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.bfloat16,
                                  config: dict | None = None) -> torch.Tensor:
    """W8A8 on activations quantized per token by the kernel that produced them (x_q (M, K) in the weight's
    dtype, x_s (M, 1) float32): quantized_linear without its activation-quant pass, same kernels, same result."""
    m, k = x_q.shape
    n = w_q.shape[0]
    act_dtype = "int8" if w_q.dtype == torch.int8 else "fp8"
    cfg = _config(configs.kind(w_q.dtype, act_dtype, None), n, k, m, x_q.device, config)
    if cfg["backend"] == "gemv":
        raise ValueError("the GEMV quantizes its own input: call quantized_linear (see takes_quantized_input)")
    return _w8a8_gemm(x_q, x_s, w_q, w_scale, cfg, bias, out_dtype)
