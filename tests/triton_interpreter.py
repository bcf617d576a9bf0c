"""Run code in Triton's CPU interpreter for a test: in a subprocess, as TRITON_INTERPRET must be set before Triton
is imported. The repo, tests/ and scripts/ are importable there (scripts/interpret_attention.py patches two
interpreter bugs when imported). Skips where Triton is absent (a dev install brings it on Linux x86-64)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_interpreted(code: str | None = None, script: Path | None = None, timeout: int = 600) -> str:
    """stdout of `code` (or of `script`) run with TRITON_INTERPRET=1; fails the test on a non-zero exit."""
    pytest.importorskip("triton")
    path = os.pathsep.join(str(p) for p in (ROOT, ROOT / "tests", ROOT / "scripts"))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-c", code]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout
