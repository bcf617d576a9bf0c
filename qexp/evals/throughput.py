"""Generation throughput, the reference study's two tests plus batch-1 decode, through the scorer's generate.

prefill: num_prompts distinct random prompts of prompt_length tokens, temperature 0, max_tokens 1.
decode:  num_prompts distinct one-token prompts, generate_length tokens each, ignore_eos.
bs1:     one one-token prompt, generate_length tokens, ignore_eos.
Each test: one warm-up run (CUDA graphs, autotuning, allocator; same shapes, at most WARMUP_DECODE generated tokens),
then REPEATS timed runs on fresh random inputs,
device-synchronised; the median time is reported. Token counts are what generate really returned.
"""
from __future__ import annotations

import statistics
import time

import torch

from qexp.evals.scoring import sampling_params

REPEATS = 3
WARMUP_DECODE = 32


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def random_prompts(gen: torch.Generator, n: int, length: int, vocab: int) -> list[list[int]]:
    """n distinct random prompts (distinct first tokens make them distinct even where a prefix cache is on)."""
    first = torch.randperm(vocab, generator=gen)[:n]
    rest = torch.randint(0, vocab, (n, length - 1), generator=gen)
    return torch.cat([first[:, None], rest], 1).tolist()


def timed_generate(scorer, device, prompts, params) -> tuple[float, int]:
    _sync(device)
    t0 = time.perf_counter()
    out = scorer.generate(prompts, params)
    _sync(device)
    return time.perf_counter() - t0, sum(len(o) for o in out)


def run_test(scorer, device, gen, vocab, n, prompt_len, max_tokens, ignore_eos, progress=None) -> dict:
    params = sampling_params(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
    # warm-up at the same batch and prompt shapes; a few decode steps reach every decode path it will take
    warm = sampling_params(temperature=0.0, max_tokens=min(max_tokens, WARMUP_DECODE), ignore_eos=ignore_eos)
    timed_generate(scorer, device, random_prompts(gen, n, prompt_len, vocab), warm)
    runs = []
    for _ in range(REPEATS):
        prompts = random_prompts(gen, n, prompt_len, vocab)
        seconds, generated = timed_generate(scorer, device, prompts, params)
        runs.append({"seconds": seconds, "prompt_tokens": n * prompt_len, "generated_tokens": generated})
        if progress:
            progress(1)
    median = statistics.median(r["seconds"] for r in runs)
    mid = min(runs, key=lambda r: abs(r["seconds"] - median))
    return {"median_s": median, "runs": runs, "prompt_tokens": mid["prompt_tokens"],
            "generated_tokens": mid["generated_tokens"], "num_prompts": n}


def measure_throughput(scorer, cfg, device: str, vocab: int, progress=None) -> tuple[dict[str, float], dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefill = run_test(scorer, device, gen, vocab, cfg.num_prompts, cfg.prompt_length, 1, False, progress)
    decode = run_test(scorer, device, gen, vocab, cfg.num_prompts, 1, cfg.generate_length, True, progress)
    bs1 = run_test(scorer, device, gen, vocab, 1, 1, cfg.generate_length, True, progress)
    metrics = {
        "throughput.prefill_tok_s": prefill["prompt_tokens"] / prefill["median_s"],
        "throughput.prefill_samples_s": prefill["num_prompts"] / prefill["median_s"],
        "throughput.prefill_time_s": prefill["median_s"],
        "throughput.decode_tok_s": decode["generated_tokens"] / decode["median_s"],
        "throughput.decode_samples_s": decode["num_prompts"] / decode["median_s"],
        "throughput.decode_time_s": decode["median_s"],
        "throughput.bs1_decode_tok_s": bs1["generated_tokens"] / bs1["median_s"],
    }
    if torch.device(device).type == "cuda":
        metrics["throughput.peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    raw = {"repeats": REPEATS, "prefill": prefill, "decode": decode, "bs1_decode": bs1,
           "scorer": type(scorer).__name__}
    return metrics, raw
