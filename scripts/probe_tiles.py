"""Time a list of tile configs on the engine's decode shapes, with the bytes each config moves from L2 to the SMs.

    python3 scripts/probe_tiles.py --ms 100 --json out.json                      # the M=128 bucket's candidates
    python3 scripts/probe_tiles.py --configs-from benchmarks/probe_m100_two_consumers_h200.json --json out.json

Unlike bench_linear.py --tune it keeps every config's time (not only the winner), so a tile change can be read
against the others. The traffic column is a model, not a measurement: each weight strip reads x once per K (x from
L2), the weight once (HBM), and split-K writes then reads its fp32 partials. Timing as in bench_linear.py.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from triton import cdiv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_linear as bl  # noqa: E402  (scripts/, beside this file)
from qexp.kernels import fused, reference, search_space  # noqa: E402

DECODE_SHAPES = [(2048, 4096), (2048, 2048), (2048, 12288), (6144, 2048)]  # merged q/k/v, o, merged gate/up, down
TILED = ("gluon_rs", "gluon", "tma", "triton")


def l2_traffic(cfg: dict, m: int, n: int, k: int) -> tuple[int, int] | tuple[None, None]:
    """(modelled bytes, programs) of a tiled config."""
    if cfg.get("backend") not in TILED:
        return None, None
    strips, sk = cdiv(n, cfg["BLOCK_N"]), cfg.get("SPLIT_K", 1)
    partials = 2 * sk * m * n * 4 if sk > 1 else 0
    return strips * m * k * 2 + n * k + partials, strips * cdiv(m, cfg["BLOCK_M"]) * sk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="100")
    ap.add_argument("--recipes", default="int8-row-wo")
    ap.add_argument("--shapes", default=None, help="comma list of KxN (default: the engine's decode shapes)")
    ap.add_argument("--configs-from", default=None, help="a JSON this script wrote: time the configs it holds")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    ms = [int(v) for v in args.ms.split(",")]
    shapes = DECODE_SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x"))
                                                        for s in args.shapes.split(",")]
    recs = [r for r in bl.recipes() if r["name"] in args.recipes.split(",")]
    if args.configs_from:
        cfgs = [r["cfg"] for r in json.loads(Path(args.configs_from).read_text())["results"]]
        cfgs = [c for i, c in enumerate(cfgs) if c not in cfgs[:i]]
        per_recipe = {r["name"]: cfgs for r in recs}
    else:
        per_recipe = {r["name"]: [c for c in search_space.candidates(bl.kind_of(r), max(ms)) if c["backend"] in TILED]
                      for r in recs}
    bl.precompile([(r, c, k, m) for r in recs for (k, _) in shapes for m in ms for c in per_recipe[r["name"]]], 16)
    results = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k, n in shapes:
        w = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) / math.sqrt(k)
        for m in ms:
            x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
            copies = bl.copies_for(n, k)
            bf16_us = bl.bf16_linear_us(x, w, copies)
            for r in recs:
                q, s = bl.quantize(w, r)
                ref = reference.quantized_linear(x, q, s, group_size=r["gs"])
                qs = [(q.clone(), s.clone()) for _ in range(copies)]
                rows = []
                for cfg in per_recipe[r["name"]]:
                    def call(i, cfg=cfg):
                        return fused.quantized_linear(x, *qs[i], group_size=r["gs"], config=cfg)
                    timed = bl.checked_us(call, ref, copies, f"{r['name']} K{k} N{n} M{m} {cfg}")
                    if timed is None:
                        continue
                    us = timed[0]
                    nbytes, programs = l2_traffic(cfg, m, n, k)
                    rows.append({"recipe": r["name"], "K": k, "N": n, "M": m, "us": round(us, 2),
                                 "bf16_us": round(bf16_us, 2), "x": round(bf16_us / us, 3), "cfg": cfg,
                                 "programs": programs, "model_MB": nbytes and round(nbytes / 1e6, 1),
                                 "TBps": nbytes and round(nbytes / us / 1e6, 2)})
                for d in sorted(rows, key=lambda d: d["us"]):
                    print(f"{d['recipe']} K{k} N{n} M{m}: bf16 {bf16_us:.1f} us | {d['us']:.1f} us {d['x']:.2f}x "
                          f"{json.dumps(d['cfg'])} programs {d['programs']} model {d['model_MB']} MB "
                          f"({d['TBps']} TB/s)", flush=True)
                results += rows
                del qs
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
