"""Paged-attention serving engine for transformers' Qwen3ForCausalLM (continuous batching, paged KV cache,
Triton attention and CUDA-graph decode on GPU; plain-torch fallbacks on CPU)."""
from qexp.engine.llm import LLM, EngineError
from qexp.engine.sampling import SamplingParams

__all__ = ["LLM", "EngineError", "SamplingParams"]
