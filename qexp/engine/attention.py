"""Paged attention over a packed (varlen) batch: the metadata one forward step needs, and the plain-torch path.

Every step first writes the new tokens' K/V into the paged cache (slot_mapping), then each sequence's queries
attend to its whole context read back from the cache through its block table: cached prefix + new tokens. Query
row j of a sequence with n new tokens and context length c sits at position c - n + j (causal mask). Prefill and
decode are the same computation (decode: n = 1); on CUDA they are separate Triton kernels (qexp.engine.kernels).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    is_prefill: bool
    slot_mapping: torch.Tensor  # (T,) int32: cache slot of each new token
    block_tables: torch.Tensor  # (B, max_blocks) int32, padded with -1
    context_lens: torch.Tensor  # (B,) int32: cached + new tokens per sequence
    cu_seqlens_q: torch.Tensor  # (B+1,) int32: offsets of each sequence's new tokens in the packed batch
    max_seqlen_q: int
    max_context_len: int


def store_kv_reference(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slot_mapping: torch.Tensor) -> None:
    """k, v (T, KV, D) into caches (num_blocks, block_size, KV, D) at flat slots."""
    slots = slot_mapping.long()
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v


def paged_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q (T, H, D) -> (T, H, D); one SDPA call per sequence on K/V gathered from the cache."""
    num_heads, num_kv = q.shape[1], k_cache.shape[2]
    block_size = k_cache.shape[1]
    out = torch.empty_like(q)
    cu = meta.cu_seqlens_q.tolist()
    ctx_lens = meta.context_lens.tolist()
    tables = meta.block_tables.long()
    for i, ctx in enumerate(ctx_lens):
        qi = q[cu[i]:cu[i + 1]]
        n = qi.shape[0]
        blocks = tables[i, :(ctx + block_size - 1) // block_size]
        k = k_cache[blocks].flatten(0, 1)[:ctx]  # (ctx, KV, D)
        v = v_cache[blocks].flatten(0, 1)[:ctx]
        k = k.repeat_interleave(num_heads // num_kv, dim=1)
        v = v.repeat_interleave(num_heads // num_kv, dim=1)
        q_pos = torch.arange(ctx - n, ctx, device=q.device)
        mask = torch.arange(ctx, device=q.device)[None, :] <= q_pos[:, None]
        o = F.scaled_dot_product_attention(qi.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           attn_mask=mask, scale=scale)
        out[cu[i]:cu[i + 1]] = o.transpose(0, 1)
    return out
