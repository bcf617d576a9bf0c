"""The engine's front door: LLM(model).generate / score / next_token_logits over token ids.

Requests become Sequences; the Scheduler forms each step (packed prefill or batched decode) under the
max_num_seqs / max_num_batched_tokens / KV-cache limits; the ModelRunner executes it on the model's device.
Scoring requests are prefill-only: the lm_head runs only on the positions asked for, a chunk at a time, so full
(seq_len, vocab) logits never exist for a whole batch.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from qexp.engine.block_manager import BlockManager
from qexp.engine.memory import memory_share
from qexp.engine.model_runner import ModelRunner
from qexp.engine.sampling import SamplingParams, sample
from qexp.engine.scheduler import Scheduler
from qexp.engine.sequence import Sequence

LM_HEAD_CHUNK = 512  # rows of (vocab,) float32 logits materialised at a time when scoring


class EngineError(ValueError):
    """A request the engine cannot serve (too long, empty, bad start); the message is one line for the user."""


class LLM:
    def __init__(self, model, *, block_size: int = 256, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 16384, max_model_len: int = 4096,
                 gpu_memory_utilization: float | None = None, enforce_eager: bool = False,
                 enable_prefix_caching: bool = False, num_kvcache_blocks: int | None = None,
                 merge_projections: bool | None = None, run_ahead: bool = True, tokenizer=None) -> None:
        """Wrap a (quantized) HF Qwen3ForCausalLM on its device. num_kvcache_blocks overrides the KV-cache size
        (default: what fits in gpu_memory_utilization of the card next to this process's own memory, the share
        from qexp.engine.memory when not given; on CPU, up to 2 GiB). On CUDA the cache
        holds that memory until the LLM is deleted, so build one engine per model and process. Generation also
        stops when a sequence reaches max_model_len tokens. Returned tensors live on the model's device.
        merge_projections: run q/k/v and gate/up as one GEMM each (qexp.engine.merge); default: on CUDA.
        run_ahead: launch each decode step before the host has read the previous step's sampled tokens (it feeds
        them to the step on the device), and a prefill of waiting sequences before the previous prefill's tokens
        are read, so the host's scheduling and input packing overlap the GPU's work instead of leaving it idle
        between steps; outputs are the same (`Scheduler.can_run_ahead`, `Scheduler.next_is_prefill`). On by
        default: +7-17 % decode tok/s at 100 sequences on an H200 (BENCHMARKS.md); False is the plain loop."""
        cfg = model.config
        max_model_len = min(max_model_len, cfg.max_position_embeddings)
        if max_num_batched_tokens < max_model_len:
            raise EngineError(f"max_num_batched_tokens ({max_num_batched_tokens}) must be >= max_model_len "
                              f"({max_model_len}): a prompt is prefilled in one step")
        if block_size < 1 or max_num_seqs < 1:
            raise EngineError("block_size and max_num_seqs must be >= 1")
        self.model = model
        self.tokenizer = tokenizer  # only for text prompts (generate_text)
        self.max_model_len = max_model_len
        self.block_size = block_size
        self.runner = ModelRunner(model, block_size=block_size, max_num_seqs=max_num_seqs,
                                  max_num_batched_tokens=max_num_batched_tokens, max_model_len=max_model_len,
                                  gpu_memory_utilization=memory_share(gpu_memory_utilization),
                                  enforce_eager=enforce_eager,
                                  num_kvcache_blocks=num_kvcache_blocks, merge_projections=merge_projections)
        n_blocks = self.runner.num_kvcache_blocks
        if n_blocks * block_size < max_model_len:
            raise EngineError(f"the KV cache holds {n_blocks * block_size} tokens < max_model_len "
                              f"({max_model_len}); lower max_model_len or give the cache more memory")
        self.block_manager = BlockManager(n_blocks, block_size, enable_prefix_caching)
        # like HF generate: stop at any of the generation config's EOS ids (Qwen3 lists two)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) or cfg.eos_token_id
        eos_ids = set(eos) if isinstance(eos, (list, tuple)) else ({eos} if eos is not None else set())
        self.scheduler = Scheduler(self.block_manager, max_num_seqs, max_num_batched_tokens, max_model_len,
                                   eos_ids)
        self.device = self.runner.device
        self.run_ahead = run_ahead
        self.num_steps_run_ahead = 0
        self._token_copies: list[tuple[torch.Tensor, torch.cuda.Event]] = []  # see _start_copy_to_host
        self._num_token_copies = 0

    @property
    def num_kvcache_blocks(self) -> int:
        return self.runner.num_kvcache_blocks

    # -- public API ------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 progress: Callable[[int], None] | None = None) -> list[list[int]]:
        """Generated token ids per prompt, in input order. progress(n) is called as n requests finish."""
        params = sampling_params or SamplingParams()
        params = params if isinstance(params, list) else [params] * len(prompts)
        if len(params) != len(prompts):
            raise EngineError(f"got {len(params)} SamplingParams for {len(prompts)} prompts")
        for i, p in enumerate(prompts):
            self._check_request(i, p)
        seqs = [Sequence(p, sp, self.block_size) for p, sp in zip(prompts, params)]
        seeds = [sp.seed for sp in params if sp.seed is not None]
        generator = None
        if seeds:
            generator = torch.Generator(device=self.device).manual_seed(seeds[0])
        temps = {s.seq_id: s.params.temperature for s in seqs}
        top_ps = {s.seq_id: s.params.top_p for s in seqs}
        for s in seqs:
            self.scheduler.add(s)

        def draw(batch, logits):  # sampled tokens on the device, and their copy on its way to the host
            tokens = sample(logits, [temps[s.seq_id] for s in batch], [top_ps[s.seq_id] for s in batch], generator)
            return tokens, (self._start_copy_to_host(tokens) if self.run_ahead else tokens.tolist)

        def launch(batch, is_prefill):  # a step: (batch, draw(...), decode?)
            if is_prefill:
                logits = self.model.lm_head(self.runner.prefill(batch, [[len(s) - 1] for s in batch]))
            else:
                logits = self.runner.decode(batch)
            return batch, draw(batch, logits), not is_prefill

        step = None  # the launched step not yet read back
        while step is not None or not self.scheduler.is_finished():
            if step is None:
                step = launch(*self.scheduler.schedule())
            batch, (tokens, on_host), was_decode = step
            step, stand_ins = None, False
            if self.run_ahead and was_decode and self.scheduler.can_run_ahead(batch):
                # stand-in tokens until the host reads the real ones; the next step gets those on the device
                for s in batch:
                    s.append_token(0)
                nxt, is_prefill = self.scheduler.schedule()
                if is_prefill or nxt != batch:
                    raise RuntimeError("internal: a run-ahead step must be the decode step of the same batch")
                step, stand_ins = (batch, draw(batch, self.runner.decode(batch, input_ids=tokens)), True), True
                self.num_steps_run_ahead += 1
            elif self.run_ahead and not was_decode and self.scheduler.next_is_prefill():
                # the next step prefills other, waiting sequences: its inputs are packed while this one runs
                nxt, is_prefill = self.scheduler.schedule()
                if not is_prefill:
                    raise RuntimeError("internal: a prefill run ahead must prefill waiting sequences")
                step = launch(nxt, True)
                self.num_steps_run_ahead += 1
            finished = self.scheduler.postprocess(batch, on_host(), replace_last=stand_ins)
            if progress is not None and finished:
                progress(len(finished))
        return [s.completion_token_ids for s in seqs]

    def generate_text(self, prompts: list[str], sampling_params: SamplingParams | list[SamplingParams] | None = None,
                      progress: Callable[[int], None] | None = None) -> list[str]:
        """Text in, text out, through the LLM's tokenizer (no special tokens added, none skipped on decode)."""
        if self.tokenizer is None:
            raise EngineError("text prompts need a tokenizer: LLM(model, tokenizer=...)")
        ids = self.tokenizer(list(prompts), add_special_tokens=False).input_ids
        return self.tokenizer.batch_decode(self.generate(ids, sampling_params, progress))

    def score(self, seqs: list[list[int]], start: list[int],
              progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """float32 log p(seq[t] | seq[:t]) for t in [start_i, len_i), one tensor per sequence (model device)."""
        def logprobs(seq: Sequence, hidden: torch.Tensor) -> torch.Tensor:
            targets = torch.tensor(seq.token_ids[seq.score_from:], device=hidden.device)
            out = [self._logits(h).log_softmax(-1).gather(-1, t[:, None]).squeeze(-1)
                   for h, t in zip(hidden[:-1].split(LM_HEAD_CHUNK), targets.split(LM_HEAD_CHUNK))]
            return torch.cat(out) if out else torch.empty(0, device=hidden.device)
        return self._prefill_only(seqs, start, logprobs, progress=progress)

    def next_token_logits(self, seqs: list[list[int]], start: list[int],
                          progress: Callable[[int], None] | None = None) -> list[torch.Tensor]:
        """float32 (len_i - start_i + 1, vocab) logits after each prefix seq[:t], t = start_i .. len_i."""
        def logits(seq: Sequence, hidden: torch.Tensor) -> torch.Tensor:
            return torch.cat([self._logits(h) for h in hidden.split(LM_HEAD_CHUNK)])
        return self._prefill_only(seqs, start, logits, progress=progress)

    # -- internals -------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden).float()

    @torch.inference_mode()
    def _prefill_only(self, token_seqs, start, reduce, progress) -> list[torch.Tensor]:
        if len(start) != len(token_seqs):
            raise EngineError(f"got {len(start)} start positions for {len(token_seqs)} sequences")
        seqs = []
        for i, (toks, st) in enumerate(zip(token_seqs, start)):
            self._check_request(i, toks)
            if not 1 <= st <= len(toks):
                raise EngineError(f"request {i}: start {st} must be in [1, {len(toks)}]")
            seqs.append(Sequence(toks, SamplingParams(), self.block_size, score_from=st))
        results: dict[int, torch.Tensor] = {}
        for s in seqs:
            self.scheduler.add(s)
        while not self.scheduler.is_finished():
            batch, is_prefill = self.scheduler.schedule()
            assert is_prefill, "scoring sequences never decode"
            hidden = self.runner.prefill(batch, [list(range(s.score_from - 1, len(s))) for s in batch])
            for s, h in zip(batch, hidden.split([len(s) - s.score_from + 1 for s in batch])):
                results[s.seq_id] = reduce(s, h)
                self.scheduler.finish(s)
            if progress is not None:
                progress(len(batch))
        return [results[s.seq_id] for s in seqs]

    def _start_copy_to_host(self, tokens: torch.Tensor) -> Callable[[], list[int]]:
        """Queue the copy of sampled tokens to pinned host memory now; the returned call waits for that copy alone.
        (`tokens.tolist()` would queue it behind whatever was launched since, such as a run-ahead decode step.)
        Two pinned buffers are used in turn: generate() reads each step's tokens before it launches the step after
        the next, so at most two copies are ever unread."""
        if tokens.device.type != "cuda":
            return tokens.tolist
        if not self._token_copies:
            self._token_copies = [(torch.empty(self.runner.max_num_seqs, dtype=torch.int64, pin_memory=True),
                                   torch.cuda.Event()) for _ in range(2)]
        host, done = self._token_copies[self._num_token_copies % 2]
        self._num_token_copies += 1
        n = tokens.shape[0]
        host[:n].copy_(tokens, non_blocking=True)
        done.record()

        def read() -> list[int]:
            done.synchronize()
            return host[:n].tolist()
        return read

    def _check_request(self, i: int, token_ids: list[int]) -> None:
        if len(token_ids) == 0:
            raise EngineError(f"request {i} is empty")
        if len(token_ids) > self.max_model_len:
            raise EngineError(f"request {i} has {len(token_ids)} tokens > max_model_len ({self.max_model_len})")
