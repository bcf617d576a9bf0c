"""Random paged-KV-cache cases for the attention kernels: test_engine_kernels (GPU) and
scripts/interpret_attention.py (Triton's CPU interpreter)."""
import math

import torch

from qexp.engine.attention import AttentionMetadata


def paged_case(ctx_lens, new_lens, block_size, H=16, KV=8, D=128, seed=0, device="cuda"):
    """A random paged cache holding each sequence's context in shuffled blocks, and q for its new tokens."""
    g = torch.Generator(device=device).manual_seed(seed)
    blocks_per = [math.ceil(c / block_size) for c in ctx_lens]
    num_blocks = sum(blocks_per) + 3
    kc = torch.randn(num_blocks, block_size, KV, D, device=device, generator=g).bfloat16()
    vc = torch.randn(num_blocks, block_size, KV, D, device=device, generator=g).bfloat16()
    perm = torch.randperm(num_blocks, device=device, generator=g).tolist()
    tables, i = [], 0
    for n in blocks_per:
        tables.append(perm[i:i + n])
        i += n
    width = max(blocks_per)
    bt = torch.tensor([t + [-1] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)
    q = torch.randn(sum(new_lens), H, D, device=device, generator=g).bfloat16()
    cu = torch.tensor([0] + list(torch.tensor(new_lens).cumsum(0)), dtype=torch.int32, device=device)
    meta = AttentionMetadata(is_prefill=True, slot_mapping=torch.empty(0, device=device), block_tables=bt,
                             context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=device), cu_seqlens_q=cu,
                             max_seqlen_q=max(new_lens), max_context_len=max(ctx_lens))
    return q, kc, vc, meta
