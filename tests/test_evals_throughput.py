"""Throughput bookkeeping: real token counts, rates derived from the median run."""
from types import SimpleNamespace

import pytest
import torch

from qexp.engine import LLM
from qexp.evals import throughput
from qexp.evals.scoring import HFScorer
from qexp.models.loader import load_model


def test_random_prompts_distinct():
    prompts = throughput.random_prompts(torch.Generator().manual_seed(0), 50, 3, 1000)
    assert len({tuple(p) for p in prompts}) == 50 and all(len(p) == 3 for p in prompts)


@pytest.mark.parametrize("backend", [HFScorer, LLM])
def test_throughput_counts_and_rates(tiny_model_dir, backend):
    model = load_model(str(tiny_model_dir), "dummy", "cpu", 0)
    cfg = SimpleNamespace(seed=0, num_prompts=3, prompt_length=6, generate_length=5)
    metrics, raw = throughput.measure_throughput(backend(model), cfg, "cpu", model.config.vocab_size)
    pre, dec, bs1 = raw["prefill"], raw["decode"], raw["bs1_decode"]
    assert len(pre["runs"]) == len(dec["runs"]) == throughput.REPEATS
    assert pre["prompt_tokens"] == 3 * 6 and pre["generated_tokens"] == 3
    assert dec["generated_tokens"] == 3 * 5 and bs1["generated_tokens"] == 5
    assert metrics["throughput.prefill_tok_s"] == pytest.approx(18 / pre["median_s"])
    assert metrics["throughput.prefill_samples_s"] == pytest.approx(3 / pre["median_s"])
    assert metrics["throughput.decode_tok_s"] == pytest.approx(15 / dec["median_s"])
    assert metrics["throughput.decode_time_s"] == dec["median_s"]
    assert metrics["throughput.bs1_decode_tok_s"] == pytest.approx(5 / bs1["median_s"])
    assert sorted(r["seconds"] for r in dec["runs"])[1] == dec["median_s"]
    assert "throughput.peak_mem_gb" not in metrics  # CUDA only
