"""Probe: does an L2 bulk prefetch of a linear's weight, issued on a side stream while latency-bound kernels run,
speed up the GEMV that follows? (Answer on the H200, benchmarks/l2_prefetch_h200.json: by at most 0.9 us.)

    python scripts/probe_l2_prefetch.py out.json

A CUDA graph of 24 "layers", each [side stream: cp.async.bulk.prefetch.L2 of W_l] then sleep(T) (a stand-in for
attention and the norms) then linear(x, W_l), M = 1, distinct weights per layer (> L2); us per layer, median of 10.
"""
import json
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from qexp.kernels import fused

@triton.jit
def _prefetch(ptr, nbytes, CHUNK: tl.constexpr, LANES: tl.constexpr):
    base = tl.program_id(0).to(tl.int64) * LANES * CHUNK
    off = base + tl.arange(0, LANES).to(tl.int64) * CHUNK
    size = tl.minimum(tl.maximum(nbytes - off, 0), CHUNK).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr + off, size], dtype=tl.int32, is_pure=False, pack=1)

def prefetch(t, chunk=4096, lanes=128):
    nb = t.numel() * t.element_size()
    _prefetch[(triton.cdiv(nb, chunk * lanes),)](t, nb, CHUNK=chunk, LANES=lanes, num_warps=lanes // 32)

def run(kind, n, k, L, sleep_cycles, use_pf, frac=1.0):
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    if kind == "bf16":
        ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(L)]
        lin = lambda w: F.linear(x, w)
    else:
        ws = [torch.randint(-127, 127, (n, k), device="cuda", dtype=torch.int8) for _ in range(L)]
        sc = torch.rand(n, device="cuda") * 0.01
        lin = lambda w: fused.quantized_linear(x, w, sc)
    side = torch.cuda.Stream()
    def body():
        for w in ws:
            if use_pf:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    prefetch(w.view(-1)[: int(w.numel() * frac)])
            if sleep_cycles:
                torch.cuda._sleep(sleep_cycles)
            lin(w)
        if use_pf:
            torch.cuda.current_stream().wait_stream(side)
    body(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        body()
    for _ in range(3): g.replay()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    times = []
    for _ in range(10):
        s.record(); g.replay(); e.record(); torch.cuda.synchronize()
        times.append(s.elapsed_time(e) * 1000 / L)
    return sorted(times)[5]


def main():
    res = {"device": torch.cuda.get_device_name()}
    for kind in ("int8", "bf16"):
        for (n, k) in ((2048, 2048), (4096, 2048), (12288, 2048), (2048, 6144)):
            L = 24
            for sc in (0, 6000, 12000):
                for pf in (False, True):
                    t = run(kind, n, k, L, sc, pf)
                    res[f"{kind} {n}x{k} sleep{sc} pf{int(pf)}"] = t
                    print(kind, n, k, "sleep", sc, "prefetch", pf, f"{t:.2f} us/layer", flush=True)
            for frac in (0.25, 0.5):
                t = run(kind, n, k, L, 12000, True, frac)
                res[f"{kind} {n}x{k} sleep12000 pf{frac}"] = t
                print(kind, n, k, "sleep 12000 prefetch frac", frac, f"{t:.2f} us/layer", flush=True)
    json.dump(res, open(sys.argv[1], "w"), indent=1)


if __name__ == "__main__":
    main()
