"""Run code in Triton's CPU interpreter for a test (or, run_python, a script that compiles kernels): in a
subprocess, as TRITON_INTERPRET must be set before Triton is imported. The repo, tests/ and scripts/ are importable
there (scripts/interpret_attention.py patches two interpreter bugs when imported). Skips where Triton is absent (a
dev install brings it on Linux x86-64)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_interpreted(code: str | None = None, script: Path | None = None, timeout: int = 600) -> str:
    """stdout of `code` (or of `script`) run with TRITON_INTERPRET=1; fails the test on a non-zero exit."""
    return run_python(["-c", code] if script is None else [str(script)], interpret=True, timeout=timeout)


def run_python(args: list[str], interpret: bool, timeout: int = 600) -> str:
    """stdout of `python args...` in a subprocess with the repo, tests/ and scripts/ importable, in Triton's
    interpreter or not (not: compiling for a GPU target, as scripts/kernel_sass.py does, where a rejected layout
    can abort the process); fails the test on a non-zero exit, with the output's tail."""
    pytest.importorskip("triton")
    path = os.pathsep.join(str(p) for p in (ROOT, ROOT / "tests", ROOT / "scripts"))
    env = {**os.environ, "PYTHONPATH": path, **({"TRITON_INTERPRET": "1"} if interpret else {})}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout
