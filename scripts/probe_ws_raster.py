"""Probe: gluon_ws's token-tile grouping (GROUP_M), buffer depth and converter layout at M=1024 and M=4096, against
cuBLAS bf16 and the tuned table's choice, in one process (same clocks, same weights).

    python3 scripts/probe_ws_raster.py --out benchmarks/probe_ws_raster.json

Timing as bench_linear: one CUDA graph of n calls on n weight copies, median replay / n. QEXP_PDL=0 turns
programmatic dependent launch off for an A/B.
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

from qexp.kernels import configs, fused, pdl  # noqa: E402
from qexp.quant import qdq  # noqa: E402

SPLIT = dict(warps=4, stages=5, cvt_warps=8, cvt_split=True)
VARIANTS = {
    "split": configs.gluon_ws_config(64, 256, 64, **SPLIT),
    "split_group_m0": configs.gluon_ws_config(64, 256, 64, group_m=0, **SPLIT),
    "split_group_m2": configs.gluon_ws_config(64, 256, 64, group_m=2, **SPLIT),
    "split_wstages4": configs.gluon_ws_config(64, 256, 64, **{**SPLIT, "wstages": 4}),
    "split_stages4": configs.gluon_ws_config(64, 256, 64, **{**SPLIT, "stages": 4}),
    "one_converter": configs.gluon_ws_config(64, 256, 64, warps=4),
    "table": None,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/probe_ws_raster.json")
    ap.add_argument("--copies", type=int, default=24)
    args = ap.parse_args()
    k, n, copies = 2048, 2048, args.copies
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
    wb = [w.clone() for _ in range(copies)]
    rows = []
    for dt, gran, gs in [("fp8", "group", 64), ("int8", "row", None)]:
        q, s = qdq.quantize(w, dt, gran, gs)
        qs = [(q.contiguous().clone(), s.contiguous().clone()) for _ in range(copies)]
        for m in (1024, 4096):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            bf16 = graph_replay_ms(lambda: [F.linear(x, wb[i]) for i in range(copies)]) * 1000 / copies
            row = {"weights": f"{dt}-{gran}{gs or ''}", "K": k, "N": n, "M": m, "bf16_us": round(bf16, 3)}
            for name, cfg in VARIANTS.items():
                us = graph_replay_ms(lambda cfg=cfg: [fused.quantized_linear(x, *qs[i], group_size=gs, config=cfg)
                                                      for i in range(copies)]) * 1000 / copies
                row[name] = round(bf16 / us, 3)
            rows.append(row)
            print(row, flush=True)
    Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                          "pdl": pdl.enabled(torch.device("cuda")), "speedup_over_bf16": rows},
                                         indent=1))


if __name__ == "__main__":
    main()
