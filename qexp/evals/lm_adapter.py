"""lm-eval `LM` over a qexp scorer (engine or HFScorer), registered as model "qexp".

lm-eval's own task definitions, prompts and metrics run unchanged; every request goes to the scorer in large
batches. Tokenisation, context truncation and rolling windows follow lm-eval's HFLM so results are comparable.
"""
from __future__ import annotations

from typing import Callable

import torch
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from qexp.evals.token_cache import encode_batch

DEFAULT_MAX_LENGTH = 2048
CALL_TOKENS = 65536  # tokens per scorer call: large enough to fill a GPU, small enough to bound returned logits


def _rows_budget(queries, budget: int):
    """Split (seq, start) queries into consecutive chunks of about `budget` tokens."""
    chunk, size = [], 0
    for q in queries:
        if chunk and size + len(q[0]) > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(q)
        size += len(q[0])
    if chunk:
        yield chunk


@register_model("qexp")
class QexpLM(TemplateLM):
    def __init__(self, scorer, tokenizer, max_length: int | None = None,
                 on_start: Callable[[str, int], None] | None = None, on_advance: Callable[[int], None] | None = None):
        super().__init__()
        self.scorer = scorer
        self.tokenizer = tokenizer
        self._max_length = max_length or DEFAULT_MAX_LENGTH
        self._on_start = on_start or (lambda desc, total: None)
        self._on_advance = on_advance or (lambda n: None)
        self._encoded: dict[str, list[int]] = {}

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens is None and string in self._encoded:
            return self._encoded[string]
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        return self.tokenizer.encode(string, **kw)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM's, with every string its pair encoding will need encoded first in one batched call
        (parallel in the fast tokenizer, and cached on disk: every sweep point asks for the same strings)."""
        strings = set()
        for context, continuation in (req.args for req in requests):
            if context:
                strings.update((context.rstrip(), context + continuation))  # what _encode_pair encodes
        strings = sorted(strings)
        self._encoded = dict(zip(strings, encode_batch(self.tokenizer, strings)))
        try:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._encoded = {}

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- scoring --------------------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is the greedy one) per request.

        Each request becomes the query (tokens before its last one, left-truncated to max_length as HFLM does;
        start = first continuation position); identical queries are scored once, so the four answer letters of
        an MMLU question cost one forward of the question.
        """
        queries: dict[tuple, list[int]] = {}  # (seq, start) -> request indices
        conts = []
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:
                raise ValueError("lm-eval request with an empty continuation")
            seq = (ctx + cont)[-(self.max_length + 1):][:-1]
            start = len(seq) - len(cont) + 1
            if start < 1:
                raise ValueError(f"continuation of {len(cont)} tokens does not fit max_length {self.max_length}")
            queries.setdefault((tuple(seq), start), []).append(i)
            conts.append(cont)
        order = sorted(queries, key=lambda q: -len(q[0]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        self._on_start("loglikelihood", len(order))
        for chunk in _rows_budget(order, CALL_TOKENS):
            rows = self.scorer.next_token_logits([list(q[0]) for q in chunk], [q[1] for q in chunk])
            for q, logits in zip(chunk, rows):
                logprobs = torch.log_softmax(logits.float(), -1)
                greedy = logits.argmax(-1)
                for i in queries[q]:
                    target = torch.tensor(conts[i], device=logprobs.device)
                    ll = logprobs.gather(-1, target[:, None]).sum().item()
                    results[i] = (ll, bool((greedy == target).all()))
            self._on_advance(len(chunk))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each string over lm-eval's disjoint rolling windows of max_length tokens."""
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((ctx + cont, len(ctx)))
                owner.append(r)
        totals = [0.0] * len(requests)
        order = sorted(range(len(windows)), key=lambda w: -len(windows[w][0]))
        self._on_start("loglikelihood_rolling", len(order))
        for chunk in _rows_budget([(windows[w][0], w) for w in order], CALL_TOKENS):
            idx = [w for _, w in chunk]
            lps = self.scorer.score([windows[w][0] for w in idx], [windows[w][1] for w in idx])
            for w, lp in zip(idx, lps):
                totals[owner[w]] += lp.double().sum().item()
            self._on_advance(len(chunk))
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy generation of max_gen_toks tokens, cut at the first stop string (lm-eval's `until`)."""
        from qexp.evals.scoring import sampling_params

        out = []
        self._on_start("generate_until", len(requests))
        for req in requests:
            context, gen_kwargs = req.args
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", 256))
            ids = self.tok_encode(context)[-(self.max_length - max_new):]
            gen = self.scorer.generate([ids], sampling_params(temperature=0.0, max_tokens=max_new))[0]
            text = self.tok_decode(gen)
            for stop in until:
                text = text.split(stop)[0]
            out.append(text)
            self._on_advance(1)
        return out
