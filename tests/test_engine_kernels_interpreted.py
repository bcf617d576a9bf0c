"""Some of the engine's Triton kernel tests (tests/test_engine_kernels.py, GPU-marked) run in Triton's CPU
interpreter too: the ones that compare a kernel with another kernel or with exact bookkeeping (qk_norm_rope's KV
store at each token's slot, padding skipped, strided views; rms_norm / silu_mul quantizing their output as
quantize_activation does). The ones against HF's modules stay GPU-only: the interpreter rounds fp32 -> bf16 by
truncation. A subprocess, as TRITON_INTERPRET must be set before Triton is imported."""
from triton_interpreter import run_interpreted  # (tests/, beside this file)

SCRIPT = r"""
import interpret_attention  # noqa: F401  (its interpreter patches)
import test_engine_kernels as t
t.DEV = "cpu"
t.test_qk_norm_rope_stores_kv_at_slots_and_skips_padding(7)
for act in ("int8", "fp8"):
    t.test_norm_and_silu_mul_quantize_their_output_bit_for_bit(act)
print("ok")
"""


def test_engine_kernels_in_the_interpreter():
    assert run_interpreted(SCRIPT).strip().endswith("ok")
