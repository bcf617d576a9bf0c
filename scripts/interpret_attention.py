"""The engine's paged attention kernels (Triton) in Triton's CPU interpreter against the SDPA reference: checks their
indexing, masking, GQA mapping and split-KV combine on a machine with no GPU (not their speed, nor the compiled
code: scripts/kernel_sass.py compiles for sm_90a on the CPU).

    python3 scripts/interpret_attention.py [--configs all]      # Triton 3.6: the dev install brings it

Prefill runs at each of its autotune configs (the interpreter cannot benchmark, so no autotuning), for GQA groups
of 2, 3 and 1 at head_dim 128 and the tests' tiny Qwen3 (4 heads, 2 kv heads, head_dim 16), block sizes 16 and 256,
on fresh prompts and prompts behind a cached prefix; decode at 1, 4 and 16 splits. Prints the relative error of
each case; exits non-zero if one exceeds 1e-2 (bf16 outputs: ~5e-3).
Two interpreter bugs are patched here, not in Triton: bf16 `tl.dot` operands multiplied as their raw uint16 bits
(Triton 3.6-3.9), and `range()` bounds loaded from memory failing `__index__` (3.6; fixed by 3.9).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported: @triton.jit reads it at decoration
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter  # noqa: E402

from paged_cases import paged_case  # noqa: E402  (tests/: the GPU tests' cases)
from qexp.engine.attention import paged_attention_reference  # noqa: E402

_dot = interpreter.InterpreterBuilder.create_dot


def _create_dot(self, a, b, d, *rest):
    def wide(h):  # bf16 is held as uint16 bits: widen to float32 values first
        if h.dtype.scalar != tl.bfloat16:
            return h
        f32 = interpreter._convert_float(h.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return interpreter.TensorHandle(f32, tl.float32)
    return _dot(self, wide(a), wide(b), d, *rest)


_patch_tensor = interpreter._patch_lang_tensor


def _patch_lang_tensor(tensor, scope):
    _patch_tensor(tensor, scope)
    scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))


interpreter.InterpreterBuilder.create_dot = _create_dot
interpreter._patch_lang_tensor = _patch_lang_tensor
pa = importlib.import_module("qexp.engine.kernels.paged_attention")


class _AtConfig:
    """Stands in for the autotuned prefill kernel: launches its JIT function at one config."""

    def __init__(self, autotuned):
        self.fn, self.configs, self.cfg = autotuned.fn, autotuned.configs, autotuned.configs[0]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = dict(self.cfg.kwargs)
            self.fn[grid(meta) if callable(grid) else grid](*args, **kwargs, **meta)
        return launch


def _rel(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="first", choices=["first", "all"], help="prefill autotune configs to run")
    args = ap.parse_args()
    scale, worst = 128 ** -0.5, 0.0
    prefill = _AtConfig(pa._prefill_kernel)
    pa._prefill_kernel = prefill
    for heads, kv, d in ((16, 8, 128), (12, 4, 128), (8, 8, 128), (4, 2, 16)):  # the last: tests' tiny Qwen3
        for block_size in (16, 256):
            ctx, new = [1, 77, 300, 513, 129], [1, 77, 45, 200, 129]  # fresh, and behind a cached prefix
            q, kc, vc, meta = paged_case(ctx, new, block_size, heads, kv, d, device="cpu")
            ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, scale)
            for cfg in prefill.configs if args.configs == "all" else prefill.configs[:1]:
                prefill.cfg = cfg
                t = time.time()
                out = pa.prefill_attention(q, kc, vc, meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
                                           meta.max_seqlen_q, scale)
                worst = max(worst, err := _rel(out, ref))
                print(f"prefill H={heads} KV={kv} D={d} block {block_size} {cfg.kwargs} warps {cfg.num_warps}: "
                      f"rel err {err:.2e} ({time.time() - t:.0f} s)", flush=True)
    ctx = [1, 5, 64, 300, 1000, 17]
    q, kc, vc, meta = paged_case(ctx, [1] * len(ctx), 16, 16, 8, seed=1, device="cpu")
    ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, scale)
    for splits in (1, 4, 16):
        out = pa.decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, scale, splits=splits)
        apart = pa.decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, scale, splits=splits,
                                    merge_in_kernel=False)
        err = max(_rel(out[i], ref[i]) for i in range(len(ctx)))
        if not torch.equal(out, apart):  # the in-kernel merge and the merge launch run the same code
            err = float("inf")
        worst = max(worst, err)
        print(f"decode splits {splits}: worst sequence rel err {err:.2e} (in-kernel merge == merge launch: "
              f"{torch.equal(out, apart)})", flush=True)
    print(f"worst {worst:.2e}: {'ok' if worst < 1e-2 else 'FAIL'}")
    return 0 if worst < 1e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
