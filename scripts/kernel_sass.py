"""Compile one of qexp's Gluon GEMM kernels for sm_90a and count its SASS instructions: no GPU needed.

    python3 scripts/kernel_sass.py rs --cfg "BLOCK_N=64, BLOCK_M=128, BLOCK_K=128, STAGES=4"
    python3 scripts/kernel_sass.py rs --w fp8 --cfg "PRODUCER=True, num_warps=8, BLOCK_N=128, BLOCK_K=64, STAGES=6"
    python3 scripts/kernel_sass.py skinny --cfg "BLOCK_N=32, BLOCK_M=16, BLOCK_K=512, STAGES=3, num_warps=2"
    python3 scripts/kernel_sass.py w8a8 --w fp8 --cfg "BLOCK_N=128, BLOCK_M=256, num_warps=8, STAGES=3, GROUP_M=8"
    python3 scripts/kernel_sass.py gemv --cfg "NORM=True, BLOCK_N=16, BLOCK_K=512, num_warps=4"

The instruction counts BENCHMARKS.md quotes (per 128-wide K step, per main loop) come from here. Needs Triton
(3.6: its bundled nvdisasm) and torch; a dev install (`.[dev]`) brings it on the CPU machine. Prints the total,
an opcode histogram, the instructions between consecutive --marker lines (for `rs`, the last wgmma of each K step:
the steady-state gaps are the per-step count), and local-memory spills. --sass writes the disassembly.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402

KERNELS = {"rs": ("qexp.kernels.gluon_w8a16_rs", "_rs_kernel", r"HGMMA.*gsb0"),
           "rs_persistent": ("qexp.kernels.gluon_w8a16_rs", "_rs_persistent_kernel", r"HGMMA.*gsb0"),
           "ws": ("qexp.kernels.gluon_w8a16_ws", "_ws_kernel", r"HGMMA.*gsb0"),
           "skinny": ("qexp.kernels.gluon_skinny", "_skinny_kernel", r"BAR\.SYNC"),
           "w8a8": ("qexp.kernels.gluon_w8a8", "_w8a8_kernel", r"[HI]GMMA.*gsb0"),
           "gemv": ("qexp.kernels.gluon_gemv", "_gemv_kernel", r"EXIT"),
           "gemv_swiglu": ("qexp.kernels.gluon_gemv", "_gemv_swiglu_kernel", r"EXIT")}
# the one-token GEMVs take K as a constexpr: Qwen3-1.7B's hidden size unless --cfg says otherwise
GEMV_DEFAULTS = dict(K=2048, BLOCK_N=16, BLOCK_K=512, PREFETCH=1, NORM=False)
DEFAULTS = dict(GROUPED=False, GROUP_SIZE=1, HAS_BIAS=False, SPLIT_K=1, BLOCK_M=128, BLOCK_N=64, BLOCK_K=128,
                STAGES=4, PDL=True, num_warps=4, SUB_K=64, EARLY_TRIGGER=False)
_OP = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)$")


def _desc(dtype: str, rows: int, cols: int, gdt) -> str:
    layout = gl.NVMMASharedLayout.get_default_for([rows, cols], gdt)
    return f"tensordesc<{dtype}[{rows}, {cols}],{layout!r}>"


def compile_kernel(kernel: str, w: str, cfg: dict, maxnreg: int | None, x: str = "bf16"):
    """x: the activations' dtype ("bf16"; "fp16" for scripts/probe_rs_variants.py's fp16-compute variant)."""
    import importlib
    mod, name, _ = KERNELS[kernel]
    fn = getattr(importlib.import_module(mod), name)
    own = {p.name: p.default for p in fn.params if p.has_default}  # the kernel's defaults, as its launcher leaves them
    const = {**DEFAULTS, **(GEMV_DEFAULTS if kernel.startswith("gemv") else {}), **own, **cfg}
    wdt, gw = ("i8", gl.int8) if w == "int8" else ("fp8e4nv", gl.float8e4nv)
    if kernel == "w8a8":  # x quantized to the weight's dtype
        x, xdt = wdt, gw
    else:
        xdt = {"bf16": gl.bfloat16, "fp16": gl.float16}[x]
    sig = {"x_desc": _desc(x, const["BLOCK_M"], const["BLOCK_K"], xdt), "xs_ptr": "*fp32",
           "w_desc": _desc(wdt, const["BLOCK_N"], const["BLOCK_K"], gw), "out_ptr": "*bf16", "ws_ptr": "*fp32",
           "bias_ptr": "*bf16", "part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
           "stride_om": "i32", "stride_wsn": "i32", "stride_wsg": "i32", "tiles_per_split": "i32",
           "x_ptr": "*bf16", "w_ptr": f"*{wdt}", "nw_ptr": "*bf16", "eps": "fp32", "stride_wn": "i32"}
    const = {c: v for c, v in const.items() if c in fn.arg_names}
    sig.update({c: "constexpr" for c in const})
    sig = {a: sig[a] for a in fn.arg_names}
    names = list(sig)
    aligned = [a for a in ("out_ptr", "ws_ptr", "xs_ptr", "bias_ptr", "part_ptr", "count_ptr", "N", "K", "stride_om",
                           "x_ptr", "w_ptr", "nw_ptr", "stride_wn")
               if a in names]  # as at launch
    src = GluonASTSource(fn=fn, signature=sig, constexprs={(names.index(c),): v for c, v in const.items()},
                         attrs={(names.index(a),): [["tt.divisibility", 16]] for a in aligned})
    opts = {"num_warps": const["num_warps"], **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def disassemble(compiled) -> str:
    nvdisasm = Path(triton.__file__).parent / "backends/nvidia/bin/nvdisasm"
    with tempfile.TemporaryDirectory() as d:
        cubin = os.path.join(d, "k.cubin")
        Path(cubin).write_bytes(compiled.asm["cubin"])
        return subprocess.run([str(nvdisasm), "-c", cubin], capture_output=True, text=True, check=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel", choices=sorted(KERNELS))
    ap.add_argument("--w", choices=["int8", "fp8"], default="int8", help="weight dtype")
    ap.add_argument("--cfg", default="", help='constexprs, e.g. "BLOCK_N=64, SPLIT_K=4, PRODUCER=True"')
    ap.add_argument("--maxnreg", type=int, default=None, help="as the launcher sets it (8-warp PRODUCER: 168)")
    ap.add_argument("--marker", default=None, help="regex of the line that ends a step (default per kernel)")
    ap.add_argument("--sass", default=None, help="write the disassembly here")
    args = ap.parse_args()
    cfg = eval(f"dict({args.cfg})")  # noqa: S307 - a developer's command line
    sass = disassemble(compile_kernel(args.kernel, args.w, cfg, args.maxnreg))
    if args.sass:
        Path(args.sass).write_text(sass)
    ops = [(m.group(1), m.group(0)) for line in sass.splitlines() if (m := _OP.match(line))]
    marker = re.compile(args.marker or KERNELS[args.kernel][2])
    ends = [i for i, (_, line) in enumerate(ops) if marker.search(line)]
    hist = collections.Counter(op for op, _ in ops)
    print(f"{args.kernel} {args.w} {cfg}: {len(ops)} instructions; local-memory spills "
          f"{sum(hist[o] for o in hist if o.startswith(('STL', 'LDL')))}")
    print("between markers:", [b - a for a, b in zip(ends, ends[1:])])
    print(", ".join(f"{op} {n}" for op, n in hist.most_common(24)))


if __name__ == "__main__":
    main()
