"""Probe: gluon_rs's TAIL_SPLIT (the tiles past the last whole wave of SMs split along K) against the same tile
without it and with a uniform split-K, where the tile count leaves the last wave part-empty (N = 6144: 192 tiles
of 128 x 256 at M = 1024, 96 of 64 x 256 at M = 256, on 132 SMs), with N = 4096 (128 tiles: one wave) beside it.

    python3 scripts/probe_tail_split.py --out benchmarks/probe_tail_split.json

Timing as bench_linear: one CUDA graph of n calls on n weight copies, median replay / n, in microseconds.
QEXP_PDL=0 turns programmatic dependent launch off for an A/B.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_timing import graph_replay_ms  # noqa: E402  (scripts/, beside this file)

from qexp.kernels import configs, fused, gluon_w8a16, pdl  # noqa: E402
from qexp.quant import qdq  # noqa: E402

BIG = dict(warps=8)  # the M=1024 N=6144 winner (128 weight rows x 256 tokens, one program per SM)
SMALL = dict(stages=4, producer=True)  # the M=256 N=6144 winner (64 x 256)
CASES = [  # (M, N, tile, variants)
    (1024, 6144, (128, 256, 64), {"plain": dict(BIG), "tail2": dict(BIG, tail_split=2),
                                  "tail4": dict(BIG, tail_split=4), "split2": dict(BIG, split_k=2)}),
    (1024, 4096, (128, 256, 64), {"plain": dict(BIG), "tail2": dict(BIG, tail_split=2)}),
    (256, 6144, (64, 256, 64), {"plain": dict(SMALL), "tail4": dict(SMALL, tail_split=4),
                                "split4": dict(SMALL, split_k=4), "plain_no_producer": dict(stages=4),
                                "tail4_no_producer": dict(stages=4, tail_split=4)}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/probe_tail_split.json")
    ap.add_argument("--copies", type=int, default=24)
    args = ap.parse_args()
    k, copies = 2048, args.copies
    rows = []
    for m, n, tile, variants in CASES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
        wb = [w.clone() for _ in range(copies)]
        q, s = qdq.quantize(w, "int8", "row", None)
        qs = [(q.contiguous().clone(), s.contiguous().clone()) for _ in range(copies)]
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        bf16 = graph_replay_ms(lambda: [F.linear(x, wb[i]) for i in range(copies)]) * 1000 / copies
        row = {"weights": "int8-row", "K": k, "N": n, "M": m, "bf16_us": round(bf16, 3)}
        for name, kw in variants.items():
            cfg = configs.gluon_rs_config(*tile, **kw)
            p = gluon_w8a16.plan(x, q, s, cfg, None, None, span_groups=True)
            us = graph_replay_ms(lambda cfg=cfg: [fused.quantized_linear(x, *qs[i], config=cfg)
                                                  for i in range(copies)]) * 1000 / copies
            row[name] = {"us": round(us, 3), "programs": p.grid[0] * p.grid[1], "tiles": p.tiles,
                         "full_tiles": p.full_tiles}
        rows.append(row)
        print(row, flush=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                          "sms": gluon_w8a16.sm_count(0), "pdl": pdl.enabled(torch.device("cuda")),
                                          "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
