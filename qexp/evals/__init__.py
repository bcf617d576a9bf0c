"""Evaluations: MMLU (lm-eval and seed protocols), WikiText-2 perplexity, throughput, fidelity vs BF16."""
