"""The Triton quantized GEMM and GEMV (qexp.kernels.triton_qmm: backends "triton" and "gemv") in Triton's CPU
interpreter against reference.quantized_linear: tensor-, row- and group-wise weights, int8 W8A8 (activations
quantized by triton_act_quant, or inside the GEMV), ragged N and M, a bias, split-K, the GEMV's prefetch. A
subprocess, as TRITON_INTERPRET must be set before Triton is imported; scripts/interpret_attention.py's patch makes
the interpreter's tl.dot take bf16 operands as values. fp8 activations are left to the GPU tests: the interpreter's
in-register fp32 -> e4m3 -> fp32 round trip differs from the hardware's (randn * 100 values: off by up to 64)."""
from triton_interpreter import run_interpreted  # (tests/, beside this file)

SCRIPT = r"""
import torch
import interpret_attention  # noqa: F401  (its interpreter patches)
from qexp.kernels import configs, fused, reference
from qexp.quant import qdq
g = torch.Generator().manual_seed(0)
for cfg in [configs.triton_config(32, 16, 64), configs.triton_config(64, 32, 64, split_k=2),
            configs.triton_config(32, 16, 64, swap=False), configs.gemv_config(8, 1, 256),
            configs.gemv_config(8, 1, 128, split_k=2, prefetch=2)]:
    for dtype, gran, gs, act in [("int8", "row", None, None), ("int8", "tensor", None, None),
                                 ("fp8", "group", 64, None), ("int8", "group", 128, None), ("fp8", "row", None, None),
                                 ("int8", "row", None, "int8")]:
        n, k = 72, 256
        m = 1 if cfg["BLOCK_M"] == 1 else 20
        q, s = qdq.quantize(torch.randn(n, k, generator=g) / k ** 0.5, dtype, gran, gs)
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        bias = torch.randn(n, generator=g).to(torch.bfloat16)
        out = fused.quantized_linear(x, q.contiguous(), s, group_size=gs, act_dtype=act, bias=bias, config=cfg)
        ref = reference.quantized_linear(x, q, s, group_size=gs, act_dtype=act, bias=bias)
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err < 1e-2, (cfg, dtype, gran, gs, act, err)
print("ok")
"""


def test_triton_gemm_and_gemv_match_the_reference_in_the_interpreter():
    assert run_interpreted(SCRIPT).strip().endswith("ok")
