"""Run a handful of quantized-linear kernels (and bf16 cuBLAS) a few times each, for Nsight Compute to profile.

    ncu --section SpeedOfLight --section Occupancy --section WarpStateStats python3 scripts/profile_linear.py

Each case: K->N, M, recipe, config (see qexp.kernels.configs); weights and inputs random, as in bench_linear.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_linear import quantize, recipes  # noqa: E402  (scripts/, beside this file)
from qexp.kernels import configs, fused  # noqa: E402

DEFAULT = [
    [2048, 4096, 128, "bf16", None],
    [2048, 4096, 128, "int8-row-wo", configs.tma_config(64, 128, 64)],
    [2048, 4096, 128, "int8-row-wo", configs.tma_config(64, 128, 64, split_k=4)],
    [2048, 4096, 128, "int8-row-wo", configs.triton_config(64, 64, 64)],
    [2048, 4096, 128, "int8-row-dq", configs.tma_config(64, 128, 128)],
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=None, help="JSON list of [K, N, M, recipe, config]")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cases = json.loads(args.cases) if args.cases else DEFAULT
    by_name = {r["name"]: r for r in recipes()}
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k, n, m, name, cfg in cases:
        w = torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) / math.sqrt(k)
        x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
        if name == "bf16":
            call = lambda: F.linear(x, w)  # noqa: E731
        else:
            r = by_name[name]
            q, s = quantize(w, r)
            call = lambda: fused.quantized_linear(  # noqa: E731
                x, q, s, group_size=r["gs"], act_dtype=r["act"], config=cfg)
        for _ in range(args.reps):
            call()
        torch.cuda.synchronize()
        print("ran", k, n, m, name, json.dumps(cfg), flush=True)


if __name__ == "__main__":
    main()
