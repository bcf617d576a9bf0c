"""What the evals score with: the run's engine (qexp.engine.LLM), or a plain batched HF forward.

Both offer the engine contract's `score(seqs, start)` and `next_token_logits(seqs, start)` (and `generate`).
HFScorer is the independent reference the tests compare the engine with, and the fallback where no engine exists.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class GenerateParams:
    """The fields of qexp.engine.SamplingParams that HFScorer.generate honours."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16
    ignore_eos: bool = False
    seed: int | None = None


def sampling_params(**kw):
    """The engine's SamplingParams when it exists, else the same fields for HFScorer."""
    try:
        from qexp.engine import SamplingParams
    except ImportError:
        return GenerateParams(**kw)
    return SamplingParams(**kw)


class HFScorer:
    """score / next_token_logits / generate by plain HF forwards of right-padded batches.

    The decoder runs once per batch; the lm_head only on the positions asked for, so full-vocab logits of long
    sequences never exist at once.
    """

    def __init__(self, model, max_batch_tokens: int = 16384, pad_id: int = 0):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self.pad_id = pad_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _batches(self, seqs: list[list[int]]):
        """Index lists of similar-length sequences whose padded size fits max_batch_tokens."""
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) + 1) * len(seqs[batch[0]]) > self.max_batch_tokens:
                yield batch
                batch = []
            batch.append(i)
        if batch:
            yield batch

    @torch.no_grad()
    def _hidden(self, seqs: list[list[int]]) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        out = self.model.base_model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return out.last_hidden_state

    @torch.no_grad()
    def _per_sequence(self, seqs, start, reduce) -> list[torch.Tensor]:
        """reduce(i, float32 logits after prefixes seq[:t], t = start_i .. len_i) for each sequence."""
        lm_head = self.model.get_output_embeddings()
        out: list[torch.Tensor | None] = [None] * len(seqs)
        for batch in self._batches(seqs):
            hidden = self._hidden([seqs[i] for i in batch])
            for r, i in enumerate(batch):
                if not 1 <= start[i] <= len(seqs[i]):
                    raise ValueError(f"start {start[i]} outside [1, {len(seqs[i])}] for sequence {i}")
                out[i] = reduce(i, lm_head(hidden[r, start[i] - 1:len(seqs[i])]).float())
        return out  # type: ignore[return-value]

    def next_token_logits(self, seqs: list[list[int]], start: list[int]) -> list[torch.Tensor]:
        """(len_i - start_i + 1, vocab) logits of the next token after each prefix seq[:t], t = start_i .. len_i."""
        return self._per_sequence(seqs, start, lambda i, logits: logits)

    def score(self, seqs: list[list[int]], start: list[int]) -> list[torch.Tensor]:
        """log p(seq[t] | seq[:t]) for t in [start_i, len_i), float32."""
        def logprobs(i, logits):
            target = torch.tensor(seqs[i][start[i]:], device=logits.device)
            return torch.log_softmax(logits[:-1], -1).gather(-1, target[:, None])[:, 0]
        return self._per_sequence(seqs, start, logprobs)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params) -> list[list[int]]:
        """Generated ids per prompt with HF's generate (left-padded batch); the reference for the engine."""
        eos = self.model.generation_config.eos_token_id
        eos = set([eos] if isinstance(eos, int) else (eos or []))
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        sample = params.temperature > 0
        if sample and params.seed is not None:
            torch.manual_seed(params.seed)
        out = self.model.generate(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=params.max_tokens,
            min_new_tokens=params.max_tokens if params.ignore_eos else None, do_sample=sample,
            temperature=params.temperature if sample else None, top_p=params.top_p if sample else None, top_k=None,
            pad_token_id=self.pad_id, eos_token_id=None if params.ignore_eos else (sorted(eos) or None))
        result = []
        for row in out[:, width:].tolist():
            if not params.ignore_eos:
                cut = next((k + 1 for k, t in enumerate(row) if t in eos), len(row))
                row = row[:cut]
            result.append(row)
        return result


def scorer_for(ctx):
    """The run's scorer, built once: ctx.engine, else qexp.engine.LLM(ctx.model), else HFScorer(ctx.model).

    QEXP_EVAL_BACKEND=hf forces the plain HF forward (to compare the engine against it).
    """
    if "scorer" in ctx.extras:
        return ctx.extras["scorer"]
    scorer = None
    if os.environ.get("QEXP_EVAL_BACKEND", "").lower() == "hf":
        scorer = HFScorer(ctx.model)
    else:
        try:
            scorer = ctx.engine
        except (AttributeError, ImportError):
            scorer = None
        if scorer is None:
            try:
                from qexp.engine import LLM
            except ImportError:
                scorer = HFScorer(ctx.model)
            else:
                n = max(4096, ctx.cfg.ppl_context + 1)
                scorer = LLM(ctx.model, max_model_len=n, max_num_batched_tokens=max(16384, n))
    ctx.extras["scorer"] = scorer
    return scorer


def max_length(scorer, model) -> int:
    """Longest sequence the scorer takes: the engine's max_model_len, else the model's positions."""
    return getattr(scorer, "max_model_len", None) or model.config.max_position_embeddings


def wikitext_ids(ctx) -> list[int]:
    """The WikiText-2 test token ids (HF recipe string), tokenised once per run and shared by tasks."""
    if "wikitext_test_ids" not in ctx.extras:
        from qexp.evals.ppl import wikitext_test_ids

        ctx.extras["wikitext_test_ids"] = wikitext_test_ids(ctx.cfg, ctx.tokenizer)
    return ctx.extras["wikitext_test_ids"]
