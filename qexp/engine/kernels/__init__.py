"""Triton kernels of the engine's CUDA path (imported only when the model runs on a GPU)."""
from qexp.engine.kernels.elementwise import qk_norm_rope, rms_norm, silu_mul
from qexp.engine.kernels.paged_attention import (
    decode_attention,
    prefill_attention,
)

__all__ = [
    "decode_attention",
    "paged_attention",
    "prefill_attention",
    "qk_norm_rope",
    "rms_norm",
    "silu_mul",
]


def paged_attention(q, k_cache, v_cache, meta, scale: float):
    """The runner's entry point: prefill (varlen) or decode kernel by the step's metadata."""
    if meta.is_prefill:
        return prefill_attention(q, k_cache, v_cache, meta.cu_seqlens_q, meta.context_lens, meta.block_tables,
                                 meta.max_seqlen_q, scale)
    return decode_attention(q, k_cache, v_cache, meta.context_lens, meta.block_tables, scale)
