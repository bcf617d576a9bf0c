"""The engine's paged attention kernels (Triton) in Triton's CPU interpreter against the SDPA reference, through
scripts/interpret_attention.py (a subprocess: it must set TRITON_INTERPRET before Triton is imported): prefill at
each autotune config, GQA groups of 1-3, block sizes 16 and 256, behind a cached prefix; decode at 1, 4 and 16
splits, the in-kernel merge equal to the merge launch. Their speed and compiled code are the GPU tests' part."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_paged_attention_kernels_match_sdpa_in_the_interpreter():
    pytest.importorskip("triton")  # a dev install brings it on Linux x86-64 (pyproject's dev extra)
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "interpret_attention.py")], capture_output=True,
                         text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1].endswith(": ok")
