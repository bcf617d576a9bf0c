"""qexp.kernels.triton_dequant's kernel run in Triton's CPU interpreter (a subprocess: TRITON_INTERPRET must be set
before Triton is imported) against reference.dequantize_weight: each scale path (one per row, whole groups per
tile, a gathered scale for other group sizes), ragged N and K tails. The interpreter rounds fp32 -> bf16 by
truncation, so the float32 output is compared, bit for bit; the GPU test compares the bf16 output
(tests/test_kernels.py::test_dequant_backend_is_the_reference_dequantization)."""
from triton_interpreter import run_interpreted  # (tests/, beside this file)

SCRIPT = r"""
import torch
from qexp.kernels.reference import dequantize_weight
from qexp.kernels.triton_dequant import dequantize
from qexp.quant import qdq
g = torch.Generator().manual_seed(9)
for dtype, gran, gs, k in [("int8", "tensor", None, 1024), ("fp8", "row", None, 1088), ("int8", "group", 64, 1088),
                           ("fp8", "group", 128, 1152), ("int8", "group", 512, 1536), ("fp8", "group", 384, 1152),
                           ("int8", "group", 16, 1040)]:
    n = 37
    q, s = qdq.quantize(torch.randn(n, k, generator=g) / k ** 0.5, dtype, gran, gs)
    out = dequantize(q.contiguous(), s, gs, out_dtype=torch.float32)
    assert torch.equal(out, dequantize_weight(q, s, gs, torch.float32)), (dtype, gran, gs, k)
print("ok")
"""


def test_dequant_kernel_matches_the_reference_in_the_interpreter():
    assert run_interpreted(SCRIPT).strip().endswith("ok")
