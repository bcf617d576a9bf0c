"""WikiText-2 perplexity: sliding-window token PPL, lm-eval's `wikitext` metrics, and the seed protocol.

Standard (HF perplexity recipe): the raw test split joined as "\\n\\n".join(rows), tokenised once, scored in
windows of `context` tokens moved by `stride`; each token after the first is scored exactly once, with up to
`context - 1` tokens of left context. token_ppl = exp(total NLL / scored tokens). (The HF recipe weights each
window's mean loss by trg_len - 1; we sum the exact per-token NLLs instead.)
Seed: the first `lines` non-empty rows, each scored alone; seed_ppl = exp(mean over lines of the line's mean NLL).
"""
from __future__ import annotations

import logging
import math
from typing import Callable

from qexp.evals.data import wikitext_documents_dir, wikitext_rows
from qexp.evals.lm_adapter import CALL_TOKENS, _rows_budget
from qexp.evals.lm_tasks import task_manager
from qexp.evals.token_cache import encode_batch

Progress = Callable[[int], None]


def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, start) per window: tokens [begin, end) go in, positions begin+start .. end-1 are scored."""
    windows, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        windows.append((begin, end, max(1, prev_end - begin)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def score_total(scorer, seqs: list[list[int]], starts: list[int], progress: Progress | None = None):
    """(sum of log p, number of scored tokens) over all sequences, in scorer calls of about CALL_TOKENS."""
    total, count = 0.0, 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for chunk in _rows_budget([(seqs[i], i) for i in order], CALL_TOKENS):
        idx = [i for _, i in chunk]
        for lp in scorer.score([seqs[i] for i in idx], [starts[i] for i in idx]):
            total += lp.double().sum().item()
            count += lp.numel()
        if progress:
            progress(len(chunk))
    return total, count


def wikitext_test_ids(cfg, tokenizer) -> list[int]:
    """Token ids of "\\n\\n".join(test rows), the HF perplexity-recipe string (no special tokens)."""
    text = "\n\n".join(wikitext_rows(cfg, "test"))
    # longer than model_max_length (verbose=False: no warning about it); cached: every sweep point needs it
    return encode_batch(tokenizer, [text], add_special_tokens=False, verbose=False)[0]


def token_ppl(scorer, ids: list[int], context: int, stride: int, start_progress=None, progress=None):
    windows = sliding_windows(len(ids), context, stride)
    if start_progress:
        start_progress("ppl windows", len(windows))
    logp, n = score_total(scorer, [ids[b:e] for b, e, _ in windows], [s for _, _, s in windows], progress)
    return math.exp(-logp / n), {"tokens": len(ids), "scored_tokens": n, "windows": len(windows),
                                 "context": context, "stride": stride, "nll_sum": -logp}


def seed_ppl(scorer, tokenizer, rows: list[str], lines: int, progress=None):
    """The reference study's protocol: first `lines` non-empty rows, each its own sequence."""
    texts = [r for r in rows if r.strip()][:lines]
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    seqs = [s for s in seqs if len(s) >= 2]  # a one-token line has nothing to predict
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    nll = [0.0] * len(seqs)
    for chunk in _rows_budget([(seqs[i], i) for i in order], CALL_TOKENS):
        idx = [i for _, i in chunk]
        for i, lp in zip(idx, scorer.score([seqs[i] for i in idx], [1] * len(idx))):
            nll[i] = -lp.double().mean().item()
        if progress:
            progress(len(chunk))
    return math.exp(sum(nll) / len(nll)), {"lines": len(texts), "scored_lines": len(seqs), "line_nll": nll}


def lm_eval_wikitext(lm, cfg, limit: int | None = None) -> dict[str, float]:
    """lm-eval's `wikitext` task (word/byte perplexity, bits per byte) with `lm`, offline from the local copy.
    `limit`: only the first documents (tests)."""
    from lm_eval import simple_evaluate

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    local = wikitext_documents_dir(cfg)
    members = None
    if local is not None:  # datasets' packaged "arrow" builder reads the save_to_disk shards directly
        files = {split: str(local / split / "data-00000-of-00001.arrow") for split in ("test", "validation")}
        # (the local copy has no train split; the task is zero-shot and never reads it)
        members = [{"task": "wikitext", "dataset_path": "arrow", "dataset_name": None, "training_split": None,
                    "dataset_kwargs": {"data_files": files}}]
    manager, name = task_manager(["wikitext"], members, group="qexp_wikitext")
    out = simple_evaluate(model=lm, tasks=[name or "wikitext"], task_manager=manager, num_fewshot=0,
                          limit=limit, bootstrap_iters=0, log_samples=False)
    res = out["results"]["wikitext"]
    return {"ppl.word_perplexity": res["word_perplexity,none"], "ppl.byte_perplexity": res["byte_perplexity,none"],
            "ppl.bits_per_byte": res["bits_per_byte,none"]}
