"""Benchmark the engine's memory-bound kernels at a prefill step's size (and a decode step's): residual + RMSNorm,
q/k norm + rotary into the paged cache, SiLU * up, each with and without the W8A8 per-token quant, and the
standalone activation quant (o_proj's input); and the weight dequantization the dequant_mm backend runs before
cuBLAS (every weight-only prefill step over 8192 tokens), per layer shape and scale granularity. Median replay of a
CUDA graph; GB/s from the bytes each must move.
JSON out, device named. Run at two commits (PYTHONPATH) for an A/B.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graph_replay_ms  # noqa: E402  (scripts/, beside this file)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="16000,100", help="comma list of T (rows)")
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--json", default="benchmarks/elementwise.json")
    args = ap.parse_args()
    import triton
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    import qexp
    from qexp.engine.kernels import qk_norm_rope, rms_norm, silu_mul
    from qexp.kernels.triton_act_quant import quantize_activation
    hidden, inter, H, KV, D = 2048, 6144, 16, 8, 128  # Qwen3-1.7B
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "qexp": str(Path(qexp.__file__).parent), "rows": {}}
    g = torch.Generator(device="cuda").manual_seed(0)
    norm = Qwen3RMSNorm(hidden).cuda().bfloat16()
    qn, kn = Qwen3RMSNorm(D).cuda().bfloat16(), Qwen3RMSNorm(D).cuda().bfloat16()
    for T in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(T, hidden, device="cuda", generator=g).bfloat16()
        r = torch.randn(T, hidden, device="cuda", generator=g).bfloat16()
        gu = (torch.randn(T, 2 * inter, device="cuda", generator=g) * 3).bfloat16()
        a, b = gu[:, :inter], gu[:, inter:]
        qkv = torch.randn(T, (H + 2 * KV) * D, device="cuda", generator=g).bfloat16()
        q, k, v = (t.view(T, -1, D) for t in qkv.split([H * D, KV * D, KV * D], -1))
        cos, sin = torch.randn(T, D, device="cuda").bfloat16(), torch.randn(T, D, device="cuda").bfloat16()
        kc = torch.zeros(T // 256 + 1, 256, KV, D, device="cuda").bfloat16()
        vc = torch.zeros_like(kc)
        slots = torch.arange(T, device="cuda", dtype=torch.int32)
        e = 2  # bf16 bytes
        cases = {"rms_norm+res": (lambda: rms_norm(x, norm, r), T * hidden * e * 4)}
        cases["qk_norm_rope->cache"] = (lambda: qk_norm_rope(q, k, qn, kn, cos, sin, v, kc, vc, slots),
                                        T * (H + 2 * KV) * D * e * 2)
        cases["silu_mul"] = (lambda: silu_mul(a, b), T * inter * e * 3)
        for act in ("int8", "fp8"):
            cases[f"rms_norm+res+{act}"] = (lambda act=act: rms_norm(x, norm, r, quant=act), T * hidden * (e * 3 + 1))
            cases[f"silu_mul+{act}"] = (lambda act=act: silu_mul(a, b, quant=act), T * inter * (e * 2 + 1))
            cases[f"act_quant_{act}"] = (lambda act=act: quantize_activation(x, act), T * hidden * (e + 1))
        out = {}
        for name, (fn, nbytes) in cases.items():
            ms = graph_replay_ms(fn, replays=args.replays, warmup=2)
            out[name] = {"us": ms * 1e3, "gb_s": nbytes / ms / 1e6}
            print(f"T={T:6d} {name:22s} {ms * 1e3:8.1f} us {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
        res["rows"][str(T)] = out
    res["dequant"] = dequant_rows(args.replays)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)


def dequant_rows(replays: int) -> dict:
    """triton_dequant.dequantize of Qwen3-1.7B's merged layer weights (N x K), row-wise and group-wise."""
    from qexp.kernels.triton_dequant import dequantize
    from qexp.quant import qdq
    out = {}
    g = torch.Generator(device="cuda").manual_seed(1)
    for n, k in ((4096, 2048), (12288, 2048), (2048, 6144)):
        w = torch.randn(n, k, device="cuda", generator=g)
        for wd in ("int8", "fp8"):
            for gs in (None, 64, 128, 256, 512):
                q, s = qdq.quantize(w, wd, "row" if gs is None else "group", gs)
                ms = graph_replay_ms(lambda q=q, s=s, gs=gs: dequantize(q, s, gs), replays=replays, warmup=2)
                nbytes = n * k * 3 + s.numel() * 4  # 8-bit in, bf16 out, fp32 scales
                name = f"dequant_{wd}_{'row' if gs is None else f'group{gs}'}_{n}x{k}"
                out[name] = {"us": ms * 1e3, "gb_s": nbytes / ms / 1e6}
                print(f"{name:32s} {ms * 1e3:8.1f} us {nbytes / ms / 1e6:7.0f} GB/s", flush=True)
    return out


if __name__ == "__main__":
    main()
