"""Per-linear benchmark (and tuner) of every real 8-bit recipe vs bf16 F.linear (cuBLAS), same run, same GPU.

    python3 scripts/bench_linear.py --tune --json out.json --md out.md

For each Qwen3-1.7B linear shape (K -> N) and M, times bf16 F.linear and qexp.kernels' fused path per recipe
(plus "-xq" rows: the W8A8 GEMM alone on activations already quantized, as the engine's norms hand them over).
--tune tries each kind's candidate configs (qexp.kernels.search_space.candidates), keeps the fastest one whose output
matches the reference within tolerance, and writes qexp/kernels/tuned/<gpu>.json. Kernels are compiled up front
in parallel worker processes (Triton's disk cache), so tuning is not bound by one CPU core.

Timing: each measurement is one CUDA graph of n calls, each on its own copy of the weight (n copies exceed the
50 MB L2, as a model's layers do), replayed 10x after warm-up; time = median replay / n. Graph replay removes
Python launch overhead from both sides, as the engine's CUDA-graph decode does.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cuda_timing import graph_replay_ms  # noqa: E402  (scripts/, beside this file)

from qexp.kernels import configs, fused, pdl, reference, search_space
from qexp.kernels.triton_act_quant import quantize_activation
from qexp.quant import qdq

# (K, N): q (and the engine's merged q/k/v), k/v, o, gate/up, down, and the engine's merged gate/up
SHAPES = [(2048, 4096), (2048, 1024), (2048, 2048), (2048, 6144), (6144, 2048), (2048, 12288)]
MS = [1, 16, 64, 128, 256, 1024, 4096]  # 128: the engine's decode batches
ISSUE_SHAPES = SHAPES[:5]  # the bars count the issue's five shapes and six M
ISSUE_MS = (1, 16, 64, 256, 1024, 4096)
TOL = 1e-2  # ||out - ref|| / ||ref||: bf16 rounding of outputs / dequantized weights sits near 2e-3


def recipes() -> list[dict]:
    out = []
    for wd in ("int8", "fp8"):  # row before tensor: tensor-wise runs the row-wise kernel with its tuned config
        out.append({"name": f"{wd}-row-wo", "dtype": wd, "gran": "row", "gs": None, "act": None})
        out.append({"name": f"{wd}-tensor-wo", "dtype": wd, "gran": "tensor", "gs": None, "act": None})
        for gs in (64, 128, 256, 512):
            out.append({"name": f"{wd}-group{gs}-wo", "dtype": wd, "gran": "group", "gs": gs, "act": None})
    for wd in ("int8", "fp8"):
        out.append({"name": f"{wd}-row-dq", "dtype": wd, "gran": "row", "gs": None, "act": wd})
    for wd in ("int8", "fp8"):  # not recipes: the W8A8 GEMM alone, on x quantized by its producer (the engine's
        # norms and SiLU * up do that for q/k/v, gate/up and down); never tuned, never counted in the bars
        out.append({"name": f"{wd}-row-dq-xq", "dtype": wd, "gran": "row", "gs": None, "act": wd, "xq": True})
    return out


def kind_of(r: dict) -> str:
    return configs.kind(qdq.STORAGE[r["dtype"]], r["act"], r["gs"])


def quantize(w: torch.Tensor, r: dict):
    q, s = qdq.quantize(w, r["dtype"], r["gran"], r["gs"])  # the scale comes in the kernels' shape
    return q.contiguous(), s.contiguous()


def time_graph(call, n: int, replays: int = 10) -> float:
    """Median microseconds per call of call(i), i < n, captured as one CUDA graph."""
    def all_calls():
        for i in range(n):
            call(i)
    return graph_replay_ms(all_calls, replays) * 1000 / n


def copies_for(n: int, k: int, weight_mb: float = 192.0) -> int:
    """Weight copies per timing graph: at least weight_mb MB of them (more than L2, as a model's layers), 3-96."""
    return max(3, min(96, math.ceil(weight_mb * 2**20 / (n * k))))


def bf16_linear_us(x: torch.Tensor, w: torch.Tensor, n_copies: int) -> float:
    wb = [w.clone() for _ in range(n_copies)]
    return time_graph(lambda i: F.linear(x, wb[i]), n_copies)


def checked_us(call, ref: torch.Tensor, n_copies: int, label: str) -> tuple[float, float] | None:
    """(us, rel err) of call(i) if its output matches ref within TOL, else None, printed as REJECT (wrong) or FAIL
    (raised: a config this shape cannot take)."""
    try:
        err = rel_err(call(0), ref)
        if err > TOL:
            print(f"  REJECT {label}: rel err {err:.2e}", flush=True)
            return None
        return time_graph(call, n_copies), err
    except Exception as e:  # noqa: BLE001 - reported; the other configs still run
        print(f"  FAIL {label}: {repr(e)[:200]}", flush=True)
        return None


def variant(cfg: dict) -> str:
    """A config's kernel variant: its backend, plus the boolean switches that change the kernel's code."""
    return "+".join([cfg["backend"], *sorted(f for f, on in cfg.items() if on is True)])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def _compile_worker(tasks):
    """Run each (recipe, cfg) once on a small problem: fills Triton's on-disk cache for the main process."""
    torch.cuda.init()
    failed = []
    for r, cfg, k, m in tasks:
        try:
            gen = torch.Generator(device="cuda").manual_seed(0)
            w = torch.randn(256, k, device="cuda", generator=gen, dtype=torch.bfloat16)
            q, s = quantize(w, r)
            x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
            fused.quantized_linear(x, q, s, group_size=r["gs"], act_dtype=r["act"], config=cfg)
            torch.cuda.synchronize()
        except Exception as e:  # reported; the main process skips configs that fail
            failed.append((r["name"], json.dumps(cfg), repr(e)[:200]))
    return failed


def tune_candidates(kind: str, m: int, current: dict, backend: str | None = None, with_flag: str | None = None,
                    try_configs: list[dict] | None = None) -> list[dict]:
    """The configs --tune times for one cell: the search space's candidates; or only those of `backend` / that
    set `with_flag`, against `current` (the table's choice); or `try_configs` (probes outside the search space)
    against it."""
    if try_configs is not None:
        return [current] + [c for c in try_configs if c != current]
    cands = search_space.candidates(kind, m)
    if backend is None and with_flag is None:
        return cands
    picked = [c for c in cands if (backend is None or c["backend"] == backend)
              and (with_flag is None or bool(c.get(with_flag)))]
    return [current] + [c for c in picked if c != current]


def precompile(plan: list, workers: int):
    seen, tasks = set(), []
    for r, cfg, k, m in plan:
        bk = cfg.get("BLOCK_K", 0) if configs.spans_groups(cfg) else min(cfg.get("BLOCK_K", 0), r["gs"] or 1 << 30)
        per_shape = r["act"] or cfg.get("backend") == "gemv_gl"  # kernels specialised on K (gemv_gl: and the group)
        key = (r["dtype"], r["act"], r["gran"] == "group", json.dumps({**cfg, "BLOCK_K": bk}), k if per_shape else 0,
               r["gs"] if cfg.get("backend") == "gemv_gl" else None)
        if key not in seen:
            seen.add(key)
            tasks.append((r, cfg, k, m))
    chunks = [tasks[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        failed = [f for part in pool.map(_compile_worker, chunks) for f in part]
    print(f"precompiled {len(tasks)} kernels in {workers} processes; {len(failed)} failed", flush=True)
    for f in failed[:10]:
        print("  compile failed:", *f, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tune", action="store_true", help="search candidate configs and write the tuned table")
    ap.add_argument("--json", default="benchmarks/kernels.json")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--shapes", default=None,
                    help="comma list of KxN (default: the layer shapes; 2048x151936 is Qwen3-1.7B's lm_head)")
    ap.add_argument("--recipes", default=None, help="comma-separated recipe names (default: all)")
    ap.add_argument("--backend", default=None,
                    help="with --tune: try only this backend's candidates against the current tuned choice")
    ap.add_argument("--with-flag", default=None,
                    help="with --tune: try only the candidates that set this switch (e.g. PERSISTENT) against the "
                         "current tuned choice")
    ap.add_argument("--try-configs", default=None,
                    help="with --tune: a JSON list of configs to try against the current tuned choice (probes that "
                         "are not in the search space)")
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--weight-mb", type=float, default=192.0, help="weight copies per graph: at least this many MB")
    args = ap.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    shapes = SHAPES if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rs = [r for r in recipes() if args.recipes is None or r["name"] in args.recipes.split(",")]
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    cap = configs.device_capability(0)

    # the table this run writes holds only cells tuned on this GPU; the others keep falling back (configs.table_paths)
    tuned = json.loads(configs.tuned_path(name).read_text())["configs"] if configs.tuned_path(name).is_file() else {}

    def plan_cfgs(r, k, n, m):
        """Candidates when tuning (tensor-wise reuses the row-wise winner: same kernel), else the current choice."""
        kk = configs.key(kind_of(r), n, k, m)
        current = [tuned.get(kk) or configs.lookup(kind_of(r), n, k, configs.m_bucket(m), name, cap)]
        if r.get("xq"):
            return [] if current[0]["backend"] == "gemv" else current  # the GEMV quantizes x itself
        if args.tune and r["gran"] != "tensor":
            return tune_candidates(kind_of(r), m, current[0], args.backend, args.with_flag,
                                   json.loads(args.try_configs) if args.try_configs else None)
        return current

    plan = [(r, c, k, m) for r in rs for (k, n) in shapes for m in ms for c in plan_cfgs(r, k, n, m)]
    precompile(plan, args.workers)
    results = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for (k, n) in shapes:
        w = torch.randn(n, k, device=dev, generator=gen, dtype=torch.bfloat16) / math.sqrt(k)
        quant = {r["name"]: quantize(w, r) for r in rs}
        for m in ms:
            x = torch.randn(m, k, device=dev, generator=gen, dtype=torch.bfloat16)
            n_copies = copies_for(n, k, args.weight_mb)
            bf16_us = bf16_linear_us(x, w, n_copies)
            for r in rs:
                q, s = quant[r["name"]]
                ref = reference.quantized_linear(x, q, s, group_size=r["gs"], act_dtype=r["act"])
                qs = [(q.clone(), s.clone()) for _ in range(n_copies)]
                x_q, x_s = quantize_activation(x, r["act"]) if r.get("xq") else (None, None)
                best, by_variant = None, {}
                for cfg in plan_cfgs(r, k, n, m):
                    if r.get("xq"):
                        def call(i, cfg=cfg):
                            return fused.quantized_linear_prequantized(x_q, x_s, *qs[i], config=cfg)
                    else:
                        def call(i, cfg=cfg, r=r):
                            return fused.quantized_linear(x, *qs[i], group_size=r["gs"], act_dtype=r["act"],
                                                          config=cfg)
                    timed = checked_us(call, ref, n_copies, f"{r['name']} K{k} N{n} M{m} {cfg}")
                    if timed is None:
                        continue
                    us, err = timed
                    v = variant(cfg)
                    by_variant[v] = round(min(us, by_variant.get(v, us)), 3)
                    if best is None or us < best[0]:
                        best = (us, cfg, err)
                del qs
                if best is None:
                    continue
                us, cfg, err = best
                if args.tune and r["gran"] != "tensor" and not r.get("xq"):
                    tuned[configs.key(kind_of(r), n, k, m)] = cfg
                results.append({"recipe": r["name"], "K": k, "N": n, "M": m, "us": round(us, 3),
                                "bf16_us": round(bf16_us, 3), "speedup": round(bf16_us / us, 3),
                                "rel_err": err, "config": cfg,
                                **({"best_by_variant": by_variant} if len(by_variant) > 1 else {})})
            here = [x for x in results if (x["K"], x["N"], x["M"]) == (k, n, m)]
            print(f"K{k} N{n} M{m}: bf16 {bf16_us:.1f}us  " + "  ".join(
                f"{x['recipe']} {x['speedup']:.2f}x" for x in here), flush=True)
            for x in here:  # when tuning: how close each kernel variant came (the winner alone hides a near miss)
                if "best_by_variant" in x:
                    print(f"  {x['recipe']}: " + "  ".join(
                        f"{v} {bf16_us / us:.2f}x" for v, us in sorted(x["best_by_variant"].items(),
                                                                        key=lambda kv: kv[1])), flush=True)
        del quant
        torch.cuda.empty_cache()
        save(args, name, tuned, results)  # after every shape: a run cut short keeps what it measured
    table = markdown(results, ms)
    if args.md:
        Path(args.md).write_text(table)
    print(table)
    print(bars(results))


def save(args, name: str, tuned: dict, results: list[dict]) -> None:
    if args.tune:
        configs.TUNED_DIR.mkdir(exist_ok=True)
        configs.tuned_path(name).write_text(json.dumps(
            {"device": name, "capability": list(configs.device_capability(0)), "torch": torch.__version__,
             "triton": _triton_version(), "configs": tuned},
            indent=1, sort_keys=True))
    meta = {"device": name, "torch": torch.__version__, "triton": _triton_version(), "cuda": torch.version.cuda,
            "method": "CUDA-graph replay of n calls on n weight copies (> L2), median of 10, us per call",
            "pdl": pdl.enabled(torch.device("cuda")),  # programmatic dependent launch (QEXP_PDL=0: off)
            "tables": configs.tables_in_use(0)}  # where the untuned cells' configs came from
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({**meta, "results": results}, indent=1))


def _triton_version() -> str:
    import triton
    return triton.__version__


def markdown(results: list[dict], ms: list[int]) -> str:
    """recipe x shape rows, one column per M: speedup vs bf16 (bf16 us in the first rows)."""
    lines = ["| recipe | K->N | " + " | ".join(f"M={m}" for m in ms) + " |",
             "|---|---|" + "---|" * len(ms)]
    by = {(x["recipe"], x["K"], x["N"], x["M"]): x for x in results}
    shapes = sorted({(x["K"], x["N"]) for x in results}, key=lambda s: SHAPES.index(s) if s in SHAPES else len(SHAPES))
    for k, n in shapes:
        cells = [f"{by[(results[0]['recipe'], k, n, m)]['bf16_us']:.1f}us" if (results[0]["recipe"], k, n, m) in by
                 else "" for m in ms]
        lines.append(f"| bf16 (cuBLAS) | {k}->{n} | " + " | ".join(cells) + " |")
    for rname in dict.fromkeys(x["recipe"] for x in results):
        for k, n in shapes:
            cells = [f"{by[(rname, k, n, m)]['speedup']:.2f}x" if (rname, k, n, m) in by else "-" for m in ms]
            lines.append(f"| {rname} | {k}->{n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bars(results: list[dict]) -> str:
    """Issue 5's per-linear bars, checked on these numbers: on the issue's cells (its five shapes, its six M; the
    merged 2048->12288 and the M=128 bucket are extra rows here)."""
    results = [x for x in results if (x["K"], x["N"]) in ISSUE_SHAPES and x["M"] in ISSUE_MS
               and not x["recipe"].endswith("-xq")]
    if not results:
        return "no cell of the issue's shapes and M measured"
    worst = min(results, key=lambda x: x["speedup"])
    wo_small = [x for x in results if x["recipe"].endswith("-wo") and x["M"] <= 16]
    fp8dq_big = [x for x in results if x["recipe"] == "fp8-row-dq" and x["M"] >= 1024]
    out = [(f"min speedup over all: {worst['speedup']:.2f}x ({worst['recipe']} K{worst['K']} N{worst['N']} "
            f"M{worst['M']}); bar >= 0.95x: {'MET' if worst['speedup'] >= 0.95 else 'NOT MET'}"),
           f"below 0.95x: {sum(x['speedup'] < 0.95 for x in results)} of {len(results)} cells (issue's shapes and M)"]
    for name, cells, bar in (("W8A16 M<=16", wo_small, 1.6), ("fp8 W8A8 M>=1024", fp8dq_big, 1.5)):
        if cells:
            w = min(cells, key=lambda x: x["speedup"])
            out.append(f"{name}: {sum(x['speedup'] >= bar for x in cells)} of {len(cells)} cells >= {bar}x, min "
                       f"{w['speedup']:.2f}x ({w['recipe']} K{w['K']} N{w['N']} M{w['M']}), median "
                       f"{statistics.median(x['speedup'] for x in cells):.2f}x; bar: "
                       f"{'MET' if w['speedup'] >= bar else 'NOT MET'}")
    return "\n".join(out)

if __name__ == "__main__":
    main()
