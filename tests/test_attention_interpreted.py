"""The engine's paged attention kernels (Triton) in Triton's CPU interpreter against the SDPA reference, through
scripts/interpret_attention.py (a subprocess: it must set TRITON_INTERPRET before Triton is imported): prefill at
each autotune config, GQA groups of 1-3, block sizes 16 and 256, behind a cached prefix; decode at 1, 4 and 16
splits, the in-kernel merge equal to the merge launch. Their speed and compiled code are the GPU tests' part."""
import pytest
from triton_interpreter import ROOT, run_interpreted  # (tests/, beside this file)


@pytest.mark.slow
def test_paged_attention_kernels_match_sdpa_in_the_interpreter():
    out = run_interpreted(script=ROOT / "scripts" / "interpret_attention.py", timeout=900)
    assert out.strip().splitlines()[-1].endswith(": ok")
