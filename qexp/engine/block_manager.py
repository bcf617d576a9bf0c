"""Paged KV-cache bookkeeping: fixed-size blocks, reference counts, optional prefix caching of full prompt blocks.

A block holds `block_size` token positions of every layer's K and V. A sequence owns a block table (list of block
ids); its token at position p lives in slot block_table[p // block_size] * block_size + p % block_size. With prefix
caching, each full prompt block is keyed by a hash chained over all tokens before it, so a later prompt with the
same prefix maps those blocks (ref_count + 1) instead of recomputing them.
"""
from __future__ import annotations

from collections import deque

from qexp.engine.sequence import Sequence


def _block_hash(token_ids: list[int], prefix_hash: int) -> int:
    # tuples of ints hash deterministically within a process; a hit is still confirmed by comparing the tokens
    return hash((prefix_hash, *token_ids)) & 0x7FFF_FFFF_FFFF_FFFF


class Block:
    __slots__ = ("block_id", "hash", "ref_count", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash = -1
        self.token_ids: list[int] = []


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        self.block_size = block_size
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_block_ids: deque[int] = deque(range(num_blocks))
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_to_block_id: dict[int, int] = {}
        self.num_prefix_hit_tokens = 0  # prompt tokens served from the prefix cache so far

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def _take_free_block(self) -> Block:
        block = self.blocks[self.free_block_ids.popleft()]
        if block.hash != -1 and self.hash_to_block_id.get(block.hash) == block.block_id:
            del self.hash_to_block_id[block.hash]  # its cached contents are about to be overwritten
        block.hash, block.token_ids, block.ref_count = -1, [], 1
        return block

    def can_allocate(self, seq: Sequence) -> bool:
        return self.num_free_blocks >= seq.num_blocks  # conservative: ignores prefix-cache hits

    def allocate(self, seq: Sequence, max_cached_tokens: int) -> None:
        """Give `seq` a block table; with prefix caching, reuse matching full blocks of its first
        `max_cached_tokens` tokens (the positions whose outputs are needed must be computed)."""
        assert not seq.block_table
        prefix_hash, cache_miss = 0, not self.enable_prefix_caching
        for i in range(seq.num_blocks):
            tokens = seq.block(i)
            full = len(tokens) == self.block_size
            h = _block_hash(tokens, prefix_hash) if full and self.enable_prefix_caching else -1
            cacheable = h != -1 and (i + 1) * self.block_size <= max_cached_tokens
            block_id = self.hash_to_block_id.get(h, -1) if cacheable and not cache_miss else -1
            if block_id == -1 or self.blocks[block_id].token_ids != tokens:
                cache_miss = True
                block = self._take_free_block()
            else:
                block = self.blocks[block_id]
                seq.num_cached_tokens += self.block_size
                self.num_prefix_hit_tokens += self.block_size
                if block.ref_count == 0:
                    self.free_block_ids.remove(block_id)
                block.ref_count += 1
            if h != -1:
                block.hash, block.token_ids = h, tokens
                self.hash_to_block_id[h] = block.block_id
            prefix_hash = h
            seq.block_table.append(block.block_id)

    def deallocate(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids.append(block_id)
        seq.block_table.clear()
        seq.num_cached_tokens = 0

    def can_append(self, seq: Sequence) -> bool:
        return self.num_free_blocks >= self._blocks_needed(seq)

    def may_append(self, seq: Sequence) -> None:
        """Before a decode step: make sure the block for position len(seq)-1 exists."""
        for _ in range(self._blocks_needed(seq)):
            seq.block_table.append(self._take_free_block().block_id)

    @staticmethod
    def _blocks_needed(seq: Sequence) -> int:
        return max(0, seq.num_blocks - len(seq.block_table))
