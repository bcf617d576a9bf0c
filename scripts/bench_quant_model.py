"""Model-level check of the real quantization recipes on Qwen3-1.7B shapes (dummy weights): memory, output
sanity vs BF16, fake vs real agreement, forward latency. Writes JSON (--out) and prints a table.

    python3 scripts/bench_quant_model.py --out bench.json [--recipes int8-row-real,...]

Every recipe starts from one copy of the same seeded BF16 model. Sanity is measured on WikiText-2 *test*
windows (SmoothQuant calibrates on *validation*): KL(bf16 || quant) per token, top-1 agreement, logits SQNR.
Latency: eager HF forward, CUDA events, median of repeats after warm-up, prefill batch 4 x 512 tokens and
one step of 8 single-token sequences (no KV cache: the GEMM shapes of decode, M = 8).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_timing import graph_replay_ms  # noqa: E402  (scripts/, beside this file)
from qexp.config import RunConfig  # noqa: E402
from qexp.models.loader import load_model, load_tokenizer
from qexp.quant import qdq
from qexp.quant.apply import quantize_model, tensor_bytes
from qexp.quant.calibration import calibration_batches
from qexp.tracking import library_versions

MODEL = "configs/models/qwen3-1.7b"
# fakes first: each real recipe is then also compared with its fake twin
DEFAULT = ("int8-row-fake,int8-smooth-fake,fp8-smooth-fake,int8-tensor-real,int8-row-real,int8-group128-real,"
           "fp8-tensor-real,fp8-row-real,fp8-group128-real,int8-smooth-real,fp8-smooth-real")
TORCHAO = ("torchao-int8wo-row", "torchao-fp8wo-row", "torchao-fp8dq-row")


def parse(recipe: str, model: str) -> RunConfig:
    dtype, gran, mode = recipe.split("-")
    gs = int(gran[5:]) if gran.startswith("group") else None
    return RunConfig(model=model, load_format="dummy", dtype=dtype, quant="group" if gs else gran, group_size=gs,
                     mode=mode, calib_samples=16, data_dir=os.environ.get("QEXP_DATA_DIR")).validate()


def torchao_config(name: str):
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        PerRow,
    )

    return {"torchao-int8wo-row": Int8WeightOnlyConfig(granularity=PerRow()),
            "torchao-fp8wo-row": Float8WeightOnlyConfig(granularity=PerRow()),
            "torchao-fp8dq-row": Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())}[name]


@torch.no_grad()
def fidelity(ref_logits: torch.Tensor, logits: torch.Tensor) -> dict:
    lp, lq = ref_logits.float().log_softmax(-1), logits.float().log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1).flatten()
    return {"kl_mean": kl.mean().item(), "kl_p99": kl.quantile(0.99).item(),
            "top1_agree": (ref_logits.argmax(-1) == logits.argmax(-1)).float().mean().item(),
            "logits_sqnr_db": qdq.sqnr_db(ref_logits, logits)}


def _param_bytes(model) -> int:
    """Bytes of every parameter and buffer (tied weights once), quantized tensors by their inner storage."""
    return sum(tensor_bytes(t) for t in [*model.parameters(), *model.buffers()])


def _linear_bytes(model) -> int:
    return sum(tensor_bytes(mod.weight) for n, mod in model.named_modules() if n.endswith("_proj"))


@torch.no_grad()
def graph_latency_ms(model, x: torch.Tensor, reps: int = 20) -> float | str:
    """One decode-shaped forward (no KV cache) captured in a CUDA graph: kernel time without Python overhead."""
    try:
        static = x.clone()
        return graph_replay_ms(lambda: model(static, use_cache=False), replays=reps, warmup=2)
    except Exception as e:  # noqa: BLE001  (report why capture failed, keep the other numbers)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def _sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def latency_ms(model, inputs: list[torch.Tensor], reps: int = 10) -> float:
    dev = inputs[0].device.type
    for x in inputs[:2]:
        model(x)
    times = []
    for i in range(reps):
        x = inputs[i % len(inputs)]
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model(x)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def cuda_graph_check() -> dict:
    """Each real weight kind on Qwen3-1.7B's gate_proj shape: moved to CUDA by .to(), agrees with the CPU
    reference, and replays correctly from a captured CUDA graph (no host sync in the forward)."""
    from qexp.quant.real import QuantizedWeight

    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(6144, 2048, generator=gen) * 0.02).to(torch.bfloat16)
    pre = torch.rand(2048, generator=gen) + 0.5
    x = torch.randn(16, 2048, generator=gen).to(torch.bfloat16)
    out = {}
    for dtype, gran, gs, act in [("int8", "row", None, None), ("fp8", "row", None, None), ("int8", "group", 128, None),
                                 ("fp8", "tensor", None, None), ("int8", "row", None, "int8"), ("fp8", "row", None, "fp8")]:
        name = f"{dtype}-{gran}{gs or ''}-{act or 'wo'}"
        try:
            lin = torch.nn.Linear(2048, 6144, bias=False, dtype=torch.bfloat16)
            lin.weight = torch.nn.Parameter(QuantizedWeight.from_float(w, dtype, gran, gs, act_dtype=act,
                                                                       pre_scale=pre if act else None),
                                            requires_grad=False)
            cpu = lin(x)
            lin = lin.to("cuda")
            xc = x.cuda()
            gpu = lin(xc)
            static = xc.clone()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = lin(static)
            static.copy_(-xc)
            graph.replay()
            torch.cuda.synchronize()
            out[name] = {"sqnr_gpu_vs_cpu_db": qdq.sqnr_db(cpu, gpu.cpu()),
                         "graph_replay_equal": bool(torch.equal(y, lin(-xc))), "on_cuda": lin.weight.qdata.is_cuda}
        except Exception as e:  # noqa: BLE001  (one failing variant must not hide the others)
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
        print(name, out[name], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_quant_model.json")
    ap.add_argument("--recipes", default=DEFAULT)
    ap.add_argument("--torchao", action="store_true", help="also time TorchAO's own eager configs")
    ap.add_argument("--model", default=MODEL, help="config dir (dummy weights)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    dev = args.device
    graph_check = cuda_graph_check() if dev == "cuda" else {}
    tok = load_tokenizer(args.model, os.environ.get("QEXP_TOKENIZER"))
    data_dir = os.environ.get("QEXP_DATA_DIR", "/work/shared/data")
    test_ids = torch.tensor(tok(Path(data_dir, "wikitext-2-raw", "wiki.test.raw").read_text(), verbose=False)["input_ids"])
    gen = torch.Generator().manual_seed(0)
    windows = test_ids[: len(test_ids) // 512 * 512].reshape(-1, 512)
    eval_x = windows[torch.randperm(len(windows), generator=gen)[:2]].to(dev)
    prefill = [windows[torch.randperm(len(windows), generator=gen)[:4]].to(dev) for _ in range(3)]
    decode = [torch.randint(0, 150000, (8, 1), generator=gen).to(dev) for _ in range(3)]

    t0 = time.perf_counter()
    base = load_model(args.model, "dummy", dev, seed=0)
    load_s = time.perf_counter() - t0
    with torch.no_grad():
        ref_logits = base(eval_x).logits.float()
    bf16_bytes = _param_bytes(base)
    rows = [{"recipe": "bf16", "prefill_ms": latency_ms(base, prefill, args.reps),
             "decode_ms": latency_ms(base, decode, args.reps),
             "decode_graph_ms": graph_latency_ms(base, decode[0]) if dev == "cuda" else None,
             "model_bytes": bf16_bytes, "model_bytes_vs_bf16": 1.0}]
    fake_logits = {}
    names = [r for r in args.recipes.split(",") if r] + (list(TORCHAO) if args.torchao else [])
    for name in names:
        row = {"recipe": name}
        try:
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            if name.startswith("torchao"):
                from torchao.quantization import quantize_

                quantize_(m, torchao_config(name), filter_fn=lambda mod, fqn: fqn.endswith("_proj"))
            else:
                cfg = parse(name, args.model)
                rep = quantize_model(m, cfg, calibration_batches=lambda cfg=cfg: calibration_batches(cfg, tok, dev))
                row.update(modules=rep.quantized, expected=rep.expected, weight_bytes_ratio=rep.weight_bytes_ratio,
                           num_scales=rep.num_scales, calibration=rep.calibration)
            _sync(dev)
            row["quantize_s"] = time.perf_counter() - t0
            row["linear_bytes_vs_bf16"] = _linear_bytes(m) / _linear_bytes(base)
            row["model_bytes"] = _param_bytes(m)
            row["model_bytes_vs_bf16"] = row["model_bytes"] / bf16_bytes
            with torch.no_grad():
                logits = m(eval_x).logits.float()
            row.update(fidelity(ref_logits, logits))
            if name.endswith("-fake"):
                fake_logits[name[:-5]] = logits
            elif name.endswith("-real") and name[:-5] in fake_logits:
                row["fake_vs_real"] = fidelity(fake_logits[name[:-5]], logits)
            row["prefill_ms"] = latency_ms(m, prefill, args.reps)
            row["decode_ms"] = latency_ms(m, decode, args.reps)
            if dev == "cuda":
                row["decode_graph_ms"] = graph_latency_ms(m, decode[0])
            del m, logits
            gc.collect()
            torch.cuda.empty_cache() if dev == "cuda" else None
        except Exception as e:  # noqa: BLE001  (one failing recipe must not hide the others' numbers)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.append({"recipe": "bf16-again", "prefill_ms": latency_ms(base, prefill, args.reps),
                 "decode_ms": latency_ms(base, decode, args.reps),
                 "decode_graph_ms": graph_latency_ms(base, decode[0]) if dev == "cuda" else None,
                 "model_bytes": bf16_bytes, "model_bytes_vs_bf16": 1.0})
    for row in rows[1:]:
        if isinstance(row.get("decode_graph_ms"), float) and isinstance(rows[0].get("decode_graph_ms"), float):
            row["decode_graph_vs_bf16"] = row["decode_graph_ms"] / rows[0]["decode_graph_ms"]
        if "prefill_ms" in row:
            row["prefill_vs_bf16"] = row["prefill_ms"] / rows[0]["prefill_ms"]
            row["decode_vs_bf16"] = row["decode_ms"] / rows[0]["decode_ms"]
    out = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "versions": library_versions(), "model": args.model,
           "dummy_load_s": load_s, "cuda_graph_check": graph_check, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\n{out['device']} | torch {torch.__version__} | {args.model} dummy weights")
    print(f"{'recipe':22} {'linB':>6} {'modelB':>6} {'KLmean':>8} {'top1':>6} {'sqnr':>6} {'prefill':>8} {'x bf16':>6} "
          f"{'decode':>7} {'x bf16':>6} {'graph':>6} {'x bf16':>6} {'fvr_dB':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['recipe']:22} ERROR {r['error'][:90]}")
            continue
        print(f"{r['recipe']:22} {r.get('linear_bytes_vs_bf16', 1.0):6.3f} {r.get('model_bytes_vs_bf16') or 0:6.3f} "
              f"{r.get('kl_mean', 0):8.5f} "
              f"{r.get('top1_agree', 1):6.3f} {r.get('logits_sqnr_db', float('inf')):6.1f} {r['prefill_ms']:8.2f} "
              f"{r.get('prefill_vs_bf16', 1):6.2f} {r['decode_ms']:7.2f} {r.get('decode_vs_bf16', 1):6.2f} "
              f"{_num(r.get('decode_graph_ms')):>6} {_num(r.get('decode_graph_vs_bf16', 1.0)):>6} "
              f"{_num(r.get('fake_vs_real', {}).get('logits_sqnr_db')):>7}")


def _num(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "err" if v else "-"


if __name__ == "__main__":
    main()
