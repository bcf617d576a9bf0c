"""Continuous batching: each step is either one packed prefill of waiting sequences or one decode step of all
running ones. When the cache runs out during decode, the most recently admitted sequence is preempted: its blocks
are freed and it goes back to the front of the queue to be recomputed (prompt + tokens generated so far)."""
from __future__ import annotations

from collections import deque

from qexp.engine.block_manager import BlockManager
from qexp.engine.sequence import Sequence, Status


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, eos_token_ids: set[int]) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def is_finished(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The sequences of the next step and whether it is a prefill."""
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(scheduled) < self.max_num_seqs:
            seq = self.waiting[0]
            if not self._fits(seq, num_tokens):
                break
            self.block_manager.allocate(seq, max_cached_tokens=first_output_position(seq))
            num_tokens += len(seq) - seq.num_cached_tokens
            seq.status = Status.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        if scheduled:
            return scheduled, True
        if not self.running:
            raise RuntimeError("the KV cache cannot hold the next waiting sequence even with nothing running")

        while self.running and len(scheduled) < self.max_num_seqs:
            seq = self.running.popleft()
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.may_append(seq)
                scheduled.append(seq)
        if not scheduled:
            raise RuntimeError("the KV cache cannot hold a single running sequence; raise its size")
        self.running.extendleft(reversed(scheduled))
        return scheduled, False

    def can_run_ahead(self, batch: list[Sequence]) -> bool:
        """Whether the decode step after `batch`'s is known before its sampled tokens are: it is a decode step of
        the same sequences in the same order whatever they drew. That holds when nothing waits (no prefill comes
        first), every running sequence is in `batch`, none ends by length on this token (only EOS, which the run
        ahead tolerates: one token computed past it and dropped), and the cache grows each by a token without a
        preemption."""
        if self.waiting or len(self.running) != len(batch) or any(s.status != Status.RUNNING for s in batch):
            return False
        if any(s.num_completion_tokens + 1 >= s.params.max_tokens or len(s) + 1 >= self.max_model_len
               for s in batch):
            return False
        bs = self.block_manager.block_size
        needed = sum(max(0, (len(s) + bs) // bs - len(s.block_table)) for s in batch)  # blocks at len + 1
        return needed <= self.block_manager.num_free_blocks

    def next_is_prefill(self) -> bool:
        """Whether schedule() would now return a prefill (its first waiting sequence fits in tokens and blocks):
        one that needs nothing from the step before, so it may be launched before that step's tokens are read."""
        return bool(self.waiting) and self._fits(self.waiting[0], 0)

    def _fits(self, seq: Sequence, num_tokens: int) -> bool:
        """Whether a waiting sequence joins a prefill batch already holding num_tokens tokens."""
        return num_tokens + len(seq) <= self.max_num_batched_tokens and self.block_manager.can_allocate(seq)

    def preempt(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.block_manager.deallocate(seq)
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        self.block_manager.deallocate(seq)
        self.running.remove(seq)

    def postprocess(self, seqs: list[Sequence], token_ids: list[int], replace_last: bool = False) -> list[Sequence]:
        """Append each sampled token (replace_last: it replaces the stand-in a run-ahead step appended); finish
        sequences at EOS, max_tokens or max_model_len. Returns the finished. A sequence already finished (a
        run-ahead step ran one token past its EOS) keeps its tokens as they are."""
        finished = []
        for seq, tok in zip(seqs, token_ids):
            if seq.status == Status.FINISHED:
                continue
            if replace_last:
                seq.token_ids[-1] = tok
            else:
                seq.append_token(tok)
            p = seq.params
            if ((not p.ignore_eos and tok in self.eos_token_ids) or seq.num_completion_tokens >= p.max_tokens
                    or len(seq) >= self.max_model_len):
                self.finish(seq)
                finished.append(seq)
        return finished


def first_output_position(seq: Sequence) -> int:
    """First position whose hidden state the step must produce: the last one when generating, score_from-1 when
    scoring. Prefix-cached tokens must stop before it."""
    return len(seq) - 1 if seq.score_from is None else seq.score_from - 1
