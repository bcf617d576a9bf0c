"""gluon_rs on a weight in packed K order (config PACKED, qexp.kernels.packing) against the same config on the
row-major weight: same GPU, same call, each checked against the reference on the row-major weight.

    python3 scripts/probe_packed_rs.py --json out.json                 # the H100 table's M=128 / 256 row-wise cells
    python3 scripts/probe_packed_rs.py --ms 64,128 --recipes int8-group128-wo --json out.json

Each case takes the config the GPU's table holds for it when that is a gluon_rs config, else --fallback. Timing as
in bench_linear.py (CUDA-graph replay over weight copies larger than L2, median of 10).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_linear as bl  # noqa: E402  (scripts/, beside this file)
from qexp.kernels import configs, fused, reference  # noqa: E402
from qexp.kernels.packing import pack_k64  # noqa: E402

SHAPES = [(2048, 4096), (2048, 2048), (2048, 12288), (6144, 2048)]  # the engine's merged q/k/v, o, gate/up, down


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ms", default="128,256")
    ap.add_argument("--recipes", default="int8-row-wo,fp8-row-wo")
    ap.add_argument("--fallback", default='{"backend": "gluon_rs", "BLOCK_N": 64, "BLOCK_M": 128, "BLOCK_K": 128, '
                    '"SPLIT_K": 1, "num_warps": 4, "num_stages": 4, "PRODUCER": true}')
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    by_name = {r["name"]: r for r in bl.recipes()}
    name = torch.cuda.get_device_name()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for k, n in SHAPES:
        w = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) / math.sqrt(k)
        n_copies = bl.copies_for(n, k)
        for m in (int(v) for v in args.ms.split(",")):
            x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
            bf16_us = bl.bf16_linear_us(x, w, n_copies)
            for rname in args.recipes.split(","):
                r = by_name[rname]
                q, s = bl.quantize(w, r)
                cfg = configs.config_for(bl.kind_of(r), n, k, m, x.device)
                cfg = cfg if cfg["backend"] == "gluon_rs" else json.loads(args.fallback)
                ref = reference.quantized_linear(x, q, s, group_size=r["gs"])
                row = {"recipe": rname, "K": k, "N": n, "M": m, "config": cfg, "bf16_us": round(bf16_us, 3)}
                for label, weight, c in (("row_major", q, cfg), ("packed", pack_k64(q), {**cfg, "PACKED": True})):
                    qs = [weight.clone() for _ in range(n_copies)]
                    timed = bl.checked_us(lambda i, qs=qs, c=c: fused.quantized_linear(
                        x, qs[i], s, group_size=r["gs"], config=c), ref, n_copies, f"{rname} K{k} N{n} M{m} {label}")
                    row[label] = None if timed is None else {"us": round(timed[0], 3), "rel_err": timed[1]}
                rows.append(row)
                pk, rm = row["packed"], row["row_major"]
                print(f"K{k} N{n} M{m} {rname}: bf16 {bf16_us:.2f} us, row-major {rm and rm['us']}, "
                      f"packed {pk and pk['us']}", flush=True)
    Path(args.json).write_text(json.dumps({"device": name, "torch": torch.__version__,
                                           "method": "CUDA-graph replay of n calls on n weight copies (> L2), "
                                                     "median of 10, us per call", "results": rows}, indent=1))


if __name__ == "__main__":
    main()
