"""Benchmark the paged-attention engine against HF eager generate (seed method), dummy Qwen3-1.7B weights.

    python scripts/bench_engine.py --out benchmarks/engine.json [--recipes bf16,int8-row] [--profile DIR]

Seed method: prefill = N distinct random prompts x 1000 tokens, max_tokens=1; decode = N one-token prompts x 1000
generated tokens (ignore_eos); plus batch-1 decode. Warm-up runs first (Triton compile, CUDA-graph capture);
timings are wall clock around synchronized calls, token counts are the tokens actually returned.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from qexp.engine import LLM, SamplingParams
from qexp.models.loader import load_model

SETTINGS = {"on": [True], "off": [False], "both": [False, True]}  # --merge / --run-ahead: the values to run
VOCAB_LIMIT = 150000  # random prompt ids stay clear of the special tokens at the end of the vocab


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_LIMIT, (n, length), generator=g).tolist()


def _timed(fn, inputs: list) -> tuple[float, object]:
    """Median wall time of fn(x) over the inputs (built beforehand: making prompts is not the engine's time)."""
    times, out = [], None
    for x in inputs:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _prompt_sets(n: int, length: int, seed: int, repeats: int = 1) -> list[list[list[int]]]:
    """One distinct prompt set per repeat."""
    return [_prompts(n, length, seed + 1000 * r) for r in range(repeats)]


def quantize_recipe(model, recipe: str) -> None:
    """Quantize a (dummy-weight) model in place by a recipe name "<dtype>-<quant>[+head]", real mode, quant one of
    tensor, row, group<size> (e.g. int8-group128), smooth; +head also quantizes lm_head (RunConfig.include_lm_head)."""
    from qexp.config import RunConfig
    from qexp.quant.apply import quantize_model
    dtype, quant = recipe.removesuffix("+head").split("-")
    group_size = int(quant.removeprefix("group")) if quant.startswith("group") else None
    quant = "group" if group_size else quant
    # SmoothQuant calibrates on token batches; random ids suit dummy weights (only timing is measured)
    device = model.lm_head.weight.device
    calib = [torch.tensor(p, device=device)[None] for p in _prompts(4, 512, 11)] if quant == "smooth" else None
    quantize_model(model, RunConfig(dtype=dtype, quant=quant, group_size=group_size, mode="real",
                                    include_lm_head=recipe.endswith("+head")).validate(), calibration_batches=calib)


def bench_engine(llm: LLM, args, tag: str) -> dict:
    res = {}
    if "prefill" in args.sections:
        res |= _engine_prefill(llm, args)
    if "decode" in args.sections:
        res |= _engine_decode(llm, args)
    res["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    res["num_preemptions"] = llm.scheduler.num_preemptions
    res["graph_buckets_captured"] = sorted(llm.runner.graphs)
    from qexp.engine.kernels.paged_attention import _prefill_kernel
    res["prefill_attention_config"] = str(getattr(_prefill_kernel, "best_config", None))
    print(f"[{tag}] " + "  ".join(f"{k} {res[k]:.0f}" for k in ("prefill_tok_s", "decode_tok_s", "bs1_decode_tok_s")
                                  if k in res), flush=True)
    return res


def _engine_prefill(llm: LLM, args) -> dict:
    res = {}
    # prefill: max_tokens=1, each prompt yields exactly one sampled token after its prefill
    one = SamplingParams(max_tokens=1)
    _timed(lambda p: llm.generate(p, one), _prompt_sets(args.num_prompts, args.prompt_len, 1))
    t, out = _timed(lambda p: llm.generate(p, one),
                    _prompt_sets(args.num_prompts, args.prompt_len, 2, args.repeats))
    assert all(len(o) == 1 for o in out)
    res["prefill_tok_s"] = args.num_prompts * args.prompt_len / t
    res["prefill_time_s"] = t
    return res


def _engine_decode(llm: LLM, args) -> dict:
    res = {}
    # decode: N one-token prompts, gen_len tokens each (warm-up captures the batch's CUDA graph)
    dec, warm = SamplingParams(max_tokens=args.gen_len, ignore_eos=True), SamplingParams(max_tokens=8, ignore_eos=True)
    _timed(lambda p: llm.generate(p, warm), _prompt_sets(args.num_prompts, 1, 3))
    t, out = _timed(lambda p: llm.generate(p, dec), _prompt_sets(args.num_prompts, 1, 4))
    n = sum(len(o) for o in out)
    assert n == args.num_prompts * args.gen_len
    res["decode_tok_s"], res["decode_time_s"], res["decode_tokens"] = n / t, t, n
    # batch-1 decode
    bs1 = SamplingParams(max_tokens=args.bs1_len, ignore_eos=True)
    _timed(lambda p: llm.generate(p, warm), _prompt_sets(1, 1, 5))
    t, out = _timed(lambda p: llm.generate(p, bs1), _prompt_sets(1, 1, 6, args.repeats))
    res["bs1_decode_tok_s"] = len(out[0]) / t
    return res


def bench_hf(model, args) -> dict:
    res = {}
    pad = model.config.eos_token_id

    def gen(prompts, new):
        ids = torch.tensor(prompts, device="cuda")
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=pad)
    with torch.inference_mode():
        gen(_prompts(args.num_prompts, args.prompt_len, 1), 1)
        t, _ = _timed(lambda p: gen(p, 1), _prompt_sets(args.num_prompts, args.prompt_len, 2))
        res["prefill_tok_s"] = args.num_prompts * args.prompt_len / t
        if "decode" not in args.sections:
            print(f"[hf eager] prefill {res['prefill_tok_s']:.0f} tok/s", flush=True)
            return res
        gen(_prompts(args.num_prompts, 1, 3), 4)
        t, out = _timed(lambda p: gen(p, args.hf_gen_len), _prompt_sets(args.num_prompts, 1, 4))
        res["decode_tok_s"] = args.num_prompts * (out.shape[1] - 1) / t
        res["decode_tokens_per_seq"] = out.shape[1] - 1
        gen(_prompts(1, 1, 5), 4)
        t, out = _timed(lambda p: gen(p, args.hf_gen_len), _prompt_sets(1, 1, 6))
        res["bs1_decode_tok_s"] = (out.shape[1] - 1) / t
    print(f"[hf eager] prefill {res['prefill_tok_s']:.0f} tok/s  decode {res['decode_tok_s']:.0f} tok/s  "
          f"bs1 {res['bs1_decode_tok_s']:.0f} tok/s", flush=True)
    return res


def profile(llm: LLM, out_dir: str, key: str) -> None:
    """Where the time goes: one prefill batch and 32 decode steps at the benchmark's batch size (one file per
    engine: <out_dir>/engine_profile_<key>.txt)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        llm.generate(_prompts(16, 1000, 7), SamplingParams(max_tokens=1))
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p2:
        llm.generate(_prompts(100, 500, 8), SamplingParams(max_tokens=32, ignore_eos=True))
        torch.cuda.synchronize()
    table2 = p2.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p3:
        llm.generate(_prompts(1, 500, 9), SamplingParams(max_tokens=64, ignore_eos=True))
        torch.cuda.synchronize()
    table3 = p3.key_averages().table(sort_by="cuda_time_total", row_limit=20)
    with open(f"{out_dir}/engine_profile_{key}.txt", "w") as f:
        f.write("== prefill 16 x 1000 ==\n" + table + "\n== 100 seqs x 500 ctx, 32 decode steps ==\n" + table2
                + "\n== batch 1, 500 ctx, 64 decode steps ==\n" + table3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="configs/models/qwen3-1.7b")
    ap.add_argument("--num-prompts", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=1000)
    ap.add_argument("--gen-len", type=int, default=1000)
    ap.add_argument("--bs1-len", type=int, default=1000)
    ap.add_argument("--hf-gen-len", type=int, default=100, help="HF decode tokens per sequence (it is slow)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batched-tokens", default="16384", help="engine max_num_batched_tokens (comma list)")
    ap.add_argument("--recipes", default="bf16",
                    help="comma list: bf16, int8-row, fp8-row, int8-row+head (lm_head too), ... (real mode)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--merge", default="on", choices=["on", "off", "both"],
                    help="merged q/k/v and gate/up GEMMs (both: also time separate linears, key '<recipe>-unmerged')")
    ap.add_argument("--run-ahead", default="on", choices=["off", "on", "both"],
                    help="LLM(run_ahead=...): decode steps launched before the host reads the previous tokens "
                         "(off: key '<recipe>-sync')")
    ap.add_argument("--sections", default="prefill,decode", help="prefill and/or decode (decode includes batch-1)")
    ap.add_argument("--profile", default=None, help="write a torch.profiler table to this dir")
    ap.add_argument("--decode-attention", default=None,
                    help='decode attention launch config as JSON, e.g. \'{"BLOCK_N": 32, "num_warps": 8, '
                         '"num_stages": 3}\' (default: paged_attention.DECODE_CONFIG)')
    ap.add_argument("--attention-merge", default="kernel", choices=["kernel", "launch"],
                    help="split-KV decode partials merged by the last split program or by a second launch")
    ap.add_argument("--norm", default=None, choices=["apart", "fused"],
                    help="batch-1 RMSNorms: kernels of their own, or inside the one-token GEMVs after them "
                         "(model_runner.FUSE_NORM; default: as the engine has it)")
    ap.add_argument("--swiglu", default=None, choices=["apart", "fused"],
                    help="batch-1 SiLU * up: a launch of its own, or the gate/up GEMV's epilogue "
                         "(model_runner.FUSE_SWIGLU; default: as the engine has it)")
    ap.add_argument("--out", default="benchmarks/engine.json")
    args = ap.parse_args()
    import importlib  # the module itself: qexp.engine.kernels exports a function of the same name
    pa = importlib.import_module("qexp.engine.kernels.paged_attention")
    if args.decode_attention:
        pa.DECODE_CONFIG = json.loads(args.decode_attention)
    pa.MERGE_IN_KERNEL = args.attention_merge == "kernel"
    from qexp.engine import model_runner
    if args.swiglu:
        model_runner.FUSE_SWIGLU = args.swiglu == "fused"
    if args.norm:
        model_runner.FUSE_NORM = args.norm == "fused"

    import torchao
    import transformers
    import triton

    from qexp.kernels import configs, pdl
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "transformers": transformers.__version__, "torchao": torchao.__version__,
              "python": platform.python_version(), "config": vars(args), "engine": {}, "hf_eager": None,
              "pdl": pdl.enabled(torch.device("cuda")),  # programmatic dependent launch (QEXP_PDL=0: off)
              "fuse_norm": model_runner.FUSE_NORM, "fuse_swiglu": model_runner.FUSE_SWIGLU,
              "tables": configs.tables_in_use(0)}  # the tuned kernel tables the quantized linears chose from
    args.sections = args.sections.split(",")
    args.batched_tokens = [int(x) for x in args.batched_tokens.split(",")]
    for recipe in args.recipes.split(","):
        model = load_model(args.model, "dummy", "cuda", 0)
        if recipe != "bf16":
            try:
                quantize_recipe(model, recipe)
            except Exception as e:  # noqa: BLE001 - recorded, the other recipes still run
                result["engine"][recipe] = {"error": f"{type(e).__name__}: {e}"}
                print(f"[{recipe}] quantization failed: {e}", flush=True)
                continue
        elif not args.skip_hf:
            result["hf_eager"] = bench_hf(model, args)
        merges, aheads = SETTINGS[args.merge], SETTINGS[args.run_ahead]
        for bt, merge, ahead in [(bt, m, a) for bt in args.batched_tokens for m in merges for a in aheads]:
            key = ((recipe if len(args.batched_tokens) == 1 else f"{recipe}@{bt}") + ("" if merge else "-unmerged")
                   + ("" if ahead else "-sync"))
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            llm = None
            try:
                llm = LLM(model, max_num_seqs=256, max_model_len=2048, max_num_batched_tokens=bt,
                          merge_projections=merge, run_ahead=ahead)
                init_s = time.perf_counter() - t0
                res = bench_engine(llm, args, key) | {"init_s": init_s, "kv_blocks": llm.num_kvcache_blocks,
                                                      "max_num_batched_tokens": bt, "merged": merge,
                                                      "run_ahead": ahead, "steps_run_ahead": llm.num_steps_run_ahead}
                if args.profile:
                    profile(llm, args.profile, key)
            except Exception as e:  # noqa: BLE001
                res = {"error": f"{type(e).__name__}: {e}"}
                print(f"[{key}] engine failed: {e}", flush=True)
            result["engine"][key] = res
            del llm
            torch.cuda.empty_cache()
            with open(args.out, "w") as f:  # after every engine: a run cut short keeps what it measured
                json.dump(result, f, indent=2)
        del model
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
