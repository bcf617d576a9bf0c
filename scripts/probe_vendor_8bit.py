"""How fast can an 8-bit weight make the engine's decode GEMMs at ~100 tokens? cuBLAS's own 8-bit GEMMs as a bound.

    python3 scripts/probe_vendor_8bit.py --ms 104 --json benchmarks/vendor_8bit.json

The seed-decode bar (W8A16 >= 1.15x bf16 at 100 sequences) needs the layer GEMMs ~1.65x faster than cuBLAS bf16 in
the step (BENCHMARKS.md, twenty-fourth session). W8A16 is the harder problem of the two 8-bit ones: it moves the
same weight bytes as W8A8 but converts every weight to bf16 and runs bf16 MMAs. So cuBLAS's fp8 x fp8 GEMM
(`torch._scaled_mm`, row-wise scales, x already quantized) and int8 x int8 GEMM (`torch._int_mm`, int32 out, no
scales at all: flattering) say what the vendor's native 8-bit kernels reach at this M. Timed beside bf16 F.linear
and our W8A16 kernels (the tuned table's choice), as bench_linear times (one CUDA graph of calls, each on its own
weight copy, more than L2 in all; --hot: every call on one weight, so weights that fit stay in L2,
which says how much of each kernel's time is HBM).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_linear: scripts/, beside this file
from bench_linear import REPO, copies_for, rel_err, time_graph

sys.path.insert(0, str(REPO))
from qexp.kernels import fused
from qexp.kernels.triton_act_quant import quantize_activation
from qexp.quant import qdq

# (K, N) of the engine's decode GEMMs: merged q/k/v, o_proj, merged gate/up, down_proj
ENGINE_SHAPES = [(2048, 4096), (2048, 2048), (2048, 12288), (6144, 2048)]


def copies(make, n: int, hot: bool) -> list:
    """n weight copies from make(); hot: n references to one (the graph's calls then re-read it from L2)."""
    return [make()] * n if hot else [make() for _ in range(n)]


def cases(x: torch.Tensor, w: torch.Tensor, n: int, hot: bool) -> dict:
    """name -> (call(i) on the i-th of n weight copies, the reference it must match or None)."""
    ref = F.linear(x, w)
    bf16 = copies(w.clone, n, hot)
    out = {"bf16 (cuBLAS)": (lambda i: F.linear(x, bf16[i]), ref)}
    for wd in ("int8", "fp8"):
        q, s = qdq.quantize(w, wd, "row", None)
        qs = copies(lambda q=q, s=s: (q.contiguous().clone(), s.contiguous().clone()), n, hot)
        out[f"W8A16 {wd}-row (ours)"] = (lambda i, qs=qs: fused.quantized_linear(x, *qs[i]), ref)
    q8, s8 = qdq.quantize(w, "fp8", "row", None)
    f8 = copies(lambda: (q8.contiguous().clone(), s8.reshape(1, -1).float().contiguous().clone()), n, hot)
    xq8, xs8 = quantize_activation(x, "fp8")
    for fast in (False, True):
        out[f"W8A8 fp8 cuBLAS _scaled_mm{' fast-accum' if fast else ''} (x prequantized)"] = (
            lambda i, fast=fast: torch._scaled_mm(xq8, f8[i][0].t(), scale_a=xs8, scale_b=f8[i][1],
                                                  out_dtype=torch.bfloat16, use_fast_accum=fast), ref)
    if x.shape[0] > 16:  # torch._int_mm rejects M <= 16
        qi, _ = qdq.quantize(w, "int8", "row", None)
        i8 = copies(qi.contiguous().clone, n, hot)
        xqi, _ = quantize_activation(x, "int8")
        out["W8A8 int8 cuBLAS _int_mm (x prequantized, int32 out, unscaled)"] = (
            lambda i: torch._int_mm(xqi, i8[i].t()), None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="104")
    ap.add_argument("--json", default="benchmarks/vendor_8bit.json")
    ap.add_argument("--hot", action="store_true",
                    help="every call on one weight: it stays in L2 between calls where it fits (the cold default "
                         "cycles copies that exceed L2, as the model's layers do)")
    args = ap.parse_args()
    gen = torch.Generator(device="cuda").manual_seed(0)
    results = []
    for m in (int(v) for v in args.ms.split(",")):
        for k, n in ENGINE_SHAPES:
            w = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) / k ** 0.5
            x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
            n_copies = copies_for(n, k)
            row = {"M": m, "K": k, "N": n, "us": {}, "rel_err": {}}
            for name, (call, ref) in cases(x, w, n_copies, args.hot).items():
                try:
                    if ref is not None:  # recorded: a bound counts only if it computes the same product
                        row["rel_err"][name] = rel_err(call(0), ref)
                    row["us"][name] = round(time_graph(call, n_copies), 3)
                except Exception as e:  # noqa: BLE001 - reported; the other GEMMs still run
                    print(f"  FAIL {name} M{m} K{k} N{n}: {repr(e)[:200]}", flush=True)
                    row["us"][name] = float("nan")
            bf16 = row["us"]["bf16 (cuBLAS)"]
            row["x_bf16"] = {name: round(bf16 / us, 3) for name, us in row["us"].items()}
            print(f"M{m} K{k} N{n}: " + "  ".join(f"{name} {us:.2f}us ({row['x_bf16'][name]:.2f}x)"
                                                  for name, us in row["us"].items()), flush=True)
            results.append(row)
    layer = {}  # per layer (the four GEMMs summed), per M
    for m in sorted({r["M"] for r in results}):
        rows = [r for r in results if r["M"] == m]
        sums = {name: round(sum(r["us"][name] for r in rows), 2) for name in rows[0]["us"]}
        layer[m] = {"us": sums, "x_bf16": {name: round(sums["bf16 (cuBLAS)"] / us, 3) for name, us in sums.items()}}
        print(f"M{m} per layer: " + "  ".join(f"{name} {us:.1f}us ({layer[m]['x_bf16'][name]:.2f}x)"
                                              for name, us in sums.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                           "cublas": torch.backends.cuda.preferred_blas_library().name, "hot": args.hot,
                                           "results": results, "per_layer": layer}, indent=1))


if __name__ == "__main__":
    main()
