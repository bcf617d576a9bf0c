"""Benchmark the engine's prefill attention (paged, varlen, causal, GQA); torch's flash varlen_attn too where it
takes a block table (not in torch 2.11). --decode: the split-KV decode kernel at each launch config of
DECODE_CANDIDATES against paged_attention.DECODE_CONFIG (batch 1 / 16 / 100 at the seed benchmark's contexts),
with the K/V bytes it streams per second.

Cases: the engine's prefill step of the seed benchmark (16 fresh prompts x 1000 tokens, Qwen3-1.7B heads, block
size 256) and prompts behind a cached prefix. Other backends' outputs are compared with the Triton kernel's; the
time is the median replay of one CUDA graph. JSON out, device named.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from cuda_timing import graph_replay_ms  # noqa: E402  (scripts/, beside this file)
from paged_cases import paged_case  # noqa: E402  (tests/: the GPU tests' cases)


def causal_flops(ctx_lens, new_lens, H, D) -> float:
    """QK^T and PV over the keys each query row sees (row j of n new tokens sees ctx - n + j + 1 keys)."""
    keys = sum(n * (c - n) + n * (n + 1) / 2 for c, n in zip(ctx_lens, new_lens))
    return 4.0 * H * D * keys


# (num_stages 2 and 3 compile to the same sm_90a code: the key loop is not software-pipelined)
DECODE_CANDIDATES = [{"BLOCK_N": n, "num_warps": w, "num_stages": 3} for n in (32, 64, 128) for w in (4, 8)]


def bench_decode(block_size: int, replays: int) -> dict:
    """Decode attention per launch config: us per call, K/V GB/s, max relative error against the reference (the
    default config twice: split partials merged in the kernel, and by a second launch, key suffix _launch)."""
    from qexp.engine.attention import paged_attention_reference
    from qexp.engine.kernels.paged_attention import DECODE_CONFIG, decode_attention
    H, KV, D, scale = 16, 8, 128, 128 ** -0.5
    cases = {"bs1_ctx500": [500], "bs16_ctx1000": [1000] * 16, "bs100_ctx532": [532] * 100,
             "bs100_ctx1500": [1500] * 100}
    out = {"default": DECODE_CONFIG, "cases": {}}
    for name, ctx in cases.items():
        q, kc, vc, meta = paged_case(ctx, [1] * len(ctx), block_size, H, KV, D)
        ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, scale)
        kv_bytes = 2 * sum(ctx) * KV * D * kc.element_size()
        rows = {}
        # the default config also with its split partials merged by a second launch (the in-kernel merge's A/B)
        runs = [(DECODE_CONFIG, False), (DECODE_CONFIG, True)] + [(c, True) for c in DECODE_CANDIDATES
                                                                  if c != DECODE_CONFIG]
        for cfg, merge in runs:
            key = "n{BLOCK_N}_w{num_warps}_s{num_stages}".format(**cfg) + ("" if merge else "_launch")
            try:
                fn = lambda cfg=cfg, merge=merge: decode_attention(  # noqa: E731
                    q, kc, vc, meta.context_lens, meta.block_tables, scale, config=cfg, merge_in_kernel=merge)
                o = fn().float()
                err = max(((o[i] - ref[i]).norm() / ref[i].norm()).item() for i in range(len(ctx)))
                ms = graph_replay_ms(fn, replays=replays, warmup=2)
                rows[key] = {"config": cfg, "us": ms * 1e3, "kv_gb_s": kv_bytes / ms / 1e6, "rel_err": err}
                print(f"decode {name:14s} {key:12s} {ms * 1e3:7.1f} us {kv_bytes / ms / 1e6:6.0f} GB/s "
                      f"err {err:.1e}", flush=True)
            except Exception as e:  # noqa: BLE001 - recorded, the other configs still run
                rows[key] = {"config": cfg, "error": f"{type(e).__name__}: {e}"[:300]}
                print(f"decode {name:14s} {key:12s} error {rows[key]['error']}", flush=True)
        out["cases"][name] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--json", default="benchmarks/attention.json")
    ap.add_argument("--decode", action="store_true", help="time the decode kernel's launch configs instead")
    args = ap.parse_args()
    if args.decode:
        import triton
        res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "block_size": args.block_size, "decode": bench_decode(args.block_size, args.replays)}
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        return
    from qexp.engine.kernels.paged_attention import prefill_attention
    H, KV, D, scale = 16, 8, 128, 128 ** -0.5
    cases = {"fresh_16x1000": ([1000] * 16, [1000] * 16), "fresh_4x1000": ([1000] * 4, [1000] * 4),
             "prefix_16x500_after_500": ([1000] * 16, [500] * 16),
             "ragged": ([1, 77, 300, 513, 129, 1000, 2000, 640], [1, 77, 45, 200, 129, 1000, 2000, 640])}
    import triton
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "block_size": args.block_size, "cases": {}}
    varlen = None
    try:
        from torch.nn.attention.varlen import varlen_attn
        varlen = varlen_attn if "block_table" in inspect.signature(varlen_attn).parameters else None
    except ImportError:
        pass
    res["torch_varlen_paged"] = varlen is not None
    for name, (ctx_l, new_l) in cases.items():
        q, kc, vc, meta = paged_case(ctx_l, new_l, args.block_size, H, KV, D)
        cu, ctx, bt = meta.cu_seqlens_q, meta.context_lens, meta.block_tables
        max_q, max_k = max(new_l), max(ctx_l)
        fns = {"triton": lambda: prefill_attention(q, kc, vc, cu, ctx, bt, max_q, scale)}
        if varlen is not None:
            fns["torch_varlen_paged"] = lambda: varlen(q, kc, vc, cu, None, max_q, max_k, scale=scale,
                                                       window_size=(-1, 0), enable_gqa=True, seqused_k=ctx,
                                                       block_table=bt)
        ref = prefill_attention(q, kc, vc, cu, ctx, bt, max_q, scale).float()
        flops = causal_flops(ctx_l, new_l, H, D)
        out = {}
        for key, fn in fns.items():
            try:
                o = fn()
                torch.cuda.synchronize()
                err = ((o.float() - ref).norm() / ref.norm()).item()
                ms = graph_replay_ms(fn, replays=args.replays, warmup=2)
                out[key] = {"ms": ms, "tflops": flops / ms / 1e9, "rel_err_vs_triton": err}
                print(f"{name:26s} {key:22s} {ms * 1e3:8.1f} us {flops / ms / 1e9:6.1f} TFLOP/s err {err:.2e}",
                      flush=True)
            except Exception as e:  # noqa: BLE001 - recorded, the other variants still run
                out[key] = {"error": f"{type(e).__name__}: {e}"[:300]}
                print(f"{name:26s} {key:22s} error {out[key]['error']}", flush=True)
        res["cases"][name] = out
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
