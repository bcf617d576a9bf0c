"""Batch-1 decode (or --batch B), where the time goes (dummy Qwen3-1.7B weights):

    python scripts/bs1_breakdown.py --recipes bf16,int8-row --out bs1.json [--ablate] [--batch 100]

Per recipe: generate() tok/s for a one-token prompt and 1000 new tokens (as bench_engine's batch-1 figure; batch 1
only), and the GPU time of one graph-replayed step at a context of ~504 tokens (300 replays between CUDA events, no
host work; random 500-token prompts, distinct per sequence: no prefix-cache sharing). --batch B replays the graph of
B sequences instead, e.g. 100 for the seed decode test's batch at its mean context.
--ablate: the replay time again with each non-GEMM part of a layer replaced by a no-op (attention, q/k norm + rope,
the two RMSNorms, SiLU * up) and with lm_head skipped, graphs recaptured each time: the difference to the full step
is what that part costs in wall time (timing only: the outputs are garbage). In the quantized engines the layers'
norms (and SiLU * up) run inside the one-token GEMVs (model_runner.FUSE_NORM / FUSE_SWIGLU), so their no-ops only
act with --fusions' switches off.
--fusions: the measurement again with each batch-1 fusion of the quantized engines switched off
(model_runner.FUSE_NORM, FUSE_SWIGLU, and both), graphs recaptured, keys "<recipe> <switch> off".
--timeline: a CUPTI trace (torch.profiler) of 5 back-to-back replays of the step. Per kernel name and step: its
calls' time from start to end ("dur"; under programmatic dependent launch a kernel starts while its predecessor
runs, so this includes its wait) and the time they advance the step's end ("advance": a kernel's end minus the
previous kernel's end; the advances sum to the step). The same per part of a layer ("by_role", layer GEMMs named
by their neighbours), and one step's kernel sequence. Key "<recipe> timeline".
--splits 16,8,4: the measurement again per split-KV count of batch-1 decode attention (paged_attention.decode_splits
overridden at batch 1, graphs recaptured), keys "<recipe> splits<n>".
"""
from __future__ import annotations

import argparse
import importlib
import itertools
import json
import time
import types
import warnings

import torch
from bench_engine import quantize_recipe  # scripts/, beside this file

from qexp.engine import LLM, SamplingParams, model_runner
from qexp.engine import kernels as K
from qexp.models.loader import load_model


def warm_graph(llm: LLM, batch: int) -> torch.cuda.CUDAGraph:
    """The engine's captured decode graph for `batch` sequences, after 20 replays."""
    graph, _ = llm.runner.graphs[model_runner.graph_bucket(llm.runner.max_num_seqs, batch)]
    for _ in range(20):
        graph.replay()
    torch.cuda.synchronize()
    return graph


def replay_us(llm: LLM, batch: int = 1, n: int = 300) -> float:
    """Mean us of n back-to-back replays of the engine's own graph for `batch` sequences, as decode replays it.
    (Not cuda_timing.graph_replay_ms: that captures a callable of its own and times one replay at a time.)"""
    graph = warm_graph(llm, batch)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / n


def prompts(batch: int) -> list[list[int]]:
    """batch distinct random prompts of 500 tokens: no sequence shares another's cached blocks."""
    return torch.randint(0, 150000, (batch, 500), generator=torch.Generator().manual_seed(7)).tolist()


def recaptured_replay_us(llm: LLM, batch: int = 1) -> float | str:
    """Replay time of a fresh graph for `batch` sequences at context ~504 (a new pool: the old graphs' memory is
    let go)."""
    llm.runner.graphs.clear()
    llm.runner.graph_pool = None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm.generate(prompts(batch), SamplingParams(max_tokens=4, ignore_eos=True))
    if not llm.runner.graphs:
        llm.runner.use_graphs = True
        return "capture failed: " + "; ".join(str(w.message)[:200] for w in caught)
    return replay_us(llm, batch)


NO_OPS = {  # part -> kernels replaced by no-ops
    "attention": {"paged_attention": lambda q, kc, vc, meta, scale: q},
    "qk_norm_rope": {"qk_norm_rope": lambda q, k, qn, kn, cos, sin, v, kc, vc, slots: (q, None)},
    "norms": {"rms_norm": lambda x, norm, residual=None, quant=None: (x, x if residual is None else residual)},
    "silu_mul": {"silu_mul": lambda gate, up, quant=None: up},
}


FUSIONS = {"norm": ["FUSE_NORM"], "swiglu": ["FUSE_SWIGLU"], "norm+swiglu": ["FUSE_NORM", "FUSE_SWIGLU"]}


NOT_GEMMS = ("_decode_kernel", "_rms_norm", "_qk_norm_rope", "_silu_mul", "void ")  # the step's other kernels
ROLES = {"_decode_kernel": "attention"}


def advances(rows: list) -> list[float]:
    """Each [name, start, dur] row's end minus the previous row's end (rows in order of end; the first: its dur)."""
    ends = [r[1] + r[2] for r in rows]
    return [rows[0][2]] + [b - a for a, b in itertools.pairwise(ends)]


def by_role(one_step: list) -> dict:
    """Mean advance (us) of each part of a decode layer over one traced step ([name, start, dur] rows): a kernel's
    end minus its predecessor's end, so overlap under PDL counts where it ends. The layer GEMMs, whatever their
    kernel, are named by their neighbours: o_proj after attention, down after SiLU * up, gate/up before it, q/k/v
    before q/k norm + rope. Other GEMMs (lm_head) and kernels are left out."""
    names, adv = [r[0] for r in one_step], advances(one_step)
    parts: dict[str, list] = {}
    for i in range(1, len(names)):
        name, prev, nxt = names[i], names[i - 1], names[i + 1] if i + 1 < len(names) else ""
        if name.startswith(NOT_GEMMS):
            role = None if name.startswith("void ") else ROLES.get(name, name.removesuffix("_kernel").lstrip("_"))
        else:
            role = ("o_proj" if prev.startswith("_decode_kernel") else "down" if prev.startswith("_silu_mul")
                    else "gate_up" if nxt.startswith("_silu_mul") else "qkv" if nxt.startswith("_qk_norm_rope")
                    else None)
        if role:
            parts.setdefault(role, []).append(adv[i])
    return {role: {"calls": len(v), "advance": round(sum(v) / len(v), 2)} for role, v in parts.items()}


def timeline(llm: LLM, batch: int, replays: int = 5) -> dict:
    """Per-kernel times of the engine's graph replays from a CUPTI trace (see the module doc)."""
    import os
    import tempfile

    from torch.profiler import ProfilerActivity, profile
    graph = warm_graph(llm, batch)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    path = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(path)
    with open(path) as f:
        return summarize([[e["name"], e["ts"], e["dur"]] for e in json.load(f)["traceEvents"]
                          if e.get("cat") == "kernel"], replays)


def summarize(rows: list, replays: int) -> dict:
    """The timeline's figures from the traced kernels of `replays` steps ([name, start, dur] rows, us)."""
    rows = sorted(rows, key=lambda r: r[1] + r[2])
    if not rows:
        return {"error": "no kernel traced"}
    per_step = len(rows) // replays  # not whole if the trace holds other kernels: then kernels_traced says so
    parts: dict[str, dict] = {}
    for (name, _, dur), adv in zip(rows, advances(rows)):
        p = parts.setdefault(name[:120], {"calls": 0, "dur": 0.0, "advance": 0.0})
        p["calls"] += 1
        p["dur"] += dur
        p["advance"] += adv
    for p in parts.values():
        p.update(calls=p["calls"] / replays, dur=round(p["dur"] / replays, 2), advance=round(p["advance"] / replays, 2))
    mid = rows[per_step * (replays // 2): per_step * (replays // 2 + 1)]
    one_step = [[name[:60], round(ts - mid[0][1], 2), round(dur, 2)] for name, ts, dur in mid]
    return {"kernels_per_step": per_step, "kernels_traced": len(rows),
            "step_us": round((rows[-1][1] + rows[-1][2] - rows[0][1]) / replays, 1),
            "by_kernel": dict(sorted(parts.items(), key=lambda kv: -kv[1]["advance"])),
            "by_role": by_role(one_step), "one_step": one_step}


def measure(llm: LLM, model, ablate: bool, batch: int = 1) -> dict:
    llm.generate([[5]], SamplingParams(max_tokens=8, ignore_eos=True))
    res = {"generate_tok_s": []}
    for rep in range(3 if batch == 1 else 0):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = llm.generate([[11 + rep]], SamplingParams(max_tokens=1000, ignore_eos=True))
        torch.cuda.synchronize()
        res["generate_tok_s"].append(len(out[0]) / (time.perf_counter() - t0))
    res["replay_us"] = recaptured_replay_us(llm, batch)
    if not ablate:
        return res
    for part, over in NO_OPS.items():
        llm.runner.kernels = types.SimpleNamespace(**{k: getattr(K, k) for k in K.__all__} | over)
        res[f"replay_us_no_{part}"] = recaptured_replay_us(llm, batch)
    llm.runner.kernels = K
    lm_head, model.lm_head = model.lm_head, torch.nn.Identity()
    res["replay_us_no_lm_head"] = recaptured_replay_us(llm, batch)
    model.lm_head = lm_head
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-1.7b")
    ap.add_argument("--recipes", default="bf16,int8-row")
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--batch", type=int, default=1, help="sequences in the replayed step (1: batch-1 decode)")
    ap.add_argument("--fusions", action="store_true", help="also time each batch-1 fusion switched off")
    ap.add_argument("--timeline", action="store_true", help="also a per-kernel CUPTI trace of the step")
    ap.add_argument("--splits", default=None, help="comma list of batch-1 split-KV counts to time")
    ap.add_argument("--out", default="benchmarks/bs1_breakdown.json")
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "config": vars(args)}
    for recipe in args.recipes.split(","):
        model = load_model(args.model, "dummy", "cuda", 0)
        if recipe != "bf16":
            quantize_recipe(model, recipe)
        llm = LLM(model, max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=16384)
        result[recipe] = measure(llm, model, args.ablate, args.batch)
        print(recipe, json.dumps(result[recipe]), flush=True)
        if args.timeline:
            recaptured_replay_us(llm, args.batch)
            result[f"{recipe} timeline"] = tl = timeline(llm, args.batch)
            print(recipe, "timeline", json.dumps({k: v for k, v in tl.items() if k != "one_step"})[:3000], flush=True)
        for name, switches in FUSIONS.items() if args.fusions else []:
            saved = {s: getattr(model_runner, s) for s in switches}
            for s in switches:
                setattr(model_runner, s, False)
            llm.runner.graphs.clear()
            llm.runner.graph_pool = None
            result[f"{recipe} {name} off"] = measure(llm, model, False)
            print(recipe, name, "off", json.dumps(result[f"{recipe} {name} off"]), flush=True)
            for s, v in saved.items():
                setattr(model_runner, s, v)
        attention = importlib.import_module("qexp.engine.kernels.paged_attention")
        default_splits = attention.decode_splits
        for n in [int(v) for v in args.splits.split(",")] if args.splits else []:
            attention.decode_splits = lambda b, kv, sms, n=n, d=default_splits: n if b == 1 else d(b, kv, sms)
            llm.runner.graphs.clear()
            llm.runner.graph_pool = None
            result[f"{recipe} splits{n}"] = measure(llm, model, False)
            print(recipe, "splits", n, json.dumps(result[f"{recipe} splits{n}"]), flush=True)
        attention.decode_splits = default_splits
        del llm, model
        torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
