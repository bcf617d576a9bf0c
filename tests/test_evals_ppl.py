"""WikiText-2 perplexity against independent plain-transformers computations and lm-eval's HFLM."""
import math
from types import SimpleNamespace

import pytest
import torch

from qexp.evals.data import raw_to_rows, wikitext_rows
from qexp.evals.lm_adapter import QexpLM
from qexp.evals.ppl import lm_eval_wikitext, seed_ppl, sliding_windows, token_ppl, wikitext_test_ids
from qexp.evals.scoring import HFScorer
from qexp.models.loader import load_model


@pytest.fixture(scope="module")
def cfg(shared_data):
    return SimpleNamespace(data_dir=str(shared_data))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32)



def test_rows_match_hf_layout(cfg, shared_data):
    rows = wikitext_rows(cfg, "test")
    assert len(rows) == 4358 and sum(1 for r in rows if r) == 2891
    assert all(r == "" or r.endswith("\n") for r in rows)
    assert raw_to_rows(" \n = A = \n\n x\n") == ["", " = A = \n", "", " x\n"]


@pytest.mark.parametrize("n,context,stride", [(1000, 128, 64), (1000, 128, 128), (100, 128, 32), (129, 128, 50)])
def test_sliding_windows_score_every_token_once(n, context, stride):
    scored, begins = [], []
    for begin, end, start in sliding_windows(n, context, stride):
        assert end - begin <= context and start >= 1
        scored += range(begin + start, end)
        begins.append(begin)
    # with stride == context the windows are disjoint: a window's first token has no context (as in HF's recipe)
    unscored = {0} | (set(begins) if stride == context else set())
    assert scored == [t for t in range(n) if t not in unscored]


def hf_recipe_ppl(model, ids, context, stride):
    """The HF perplexity recipe (labels masked with -100), with each window's loss weighted by its exact count."""
    ids = torch.tensor([ids])
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + context, ids.size(1))
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target = input_ids.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(input_ids, labels=target).loss
        n_valid = int((target[:, 1:] != -100).sum())
        nll += loss.double().item() * n_valid
        count += n_valid
        prev_end = end
        if end == ids.size(1):
            break
    return math.exp(nll / count), count


def test_token_ppl_equals_hf_recipe(cfg, model, tokenizer):
    ids = wikitext_test_ids(cfg, tokenizer)
    assert len(ids) == 299078  # SOURCES.md: "\n\n".join(rows) is 299,078 Qwen3 tokens
    ids = ids[:700]
    ref, ref_count = hf_recipe_ppl(model, ids, 128, 48)
    for scorer in (HFScorer(model, max_batch_tokens=512), *engines(model)):
        value, info = token_ppl(scorer, ids, 128, 48)
        assert info["scored_tokens"] == ref_count == len(ids) - 1
        assert value == pytest.approx(ref, rel=1e-4)


def engines(model):
    try:
        from qexp.engine import LLM
    except ImportError:
        return []
    return [LLM(model)]


def test_seed_ppl_equals_per_line_losses(cfg, model, tokenizer):
    rows = wikitext_rows(cfg, "test")
    value, info = seed_ppl(HFScorer(model), tokenizer, rows, 12)
    losses = []
    for text in [r for r in rows if r.strip()][:12]:
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        if ids.size(1) >= 2:
            with torch.no_grad():
                losses.append(model(ids, labels=ids).loss.item())
    assert info["lines"] == 12 and info["scored_lines"] == len(losses)
    assert value == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)


def test_lm_eval_wikitext_equals_hflm(cfg, model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    ours = lm_eval_wikitext(QexpLM(HFScorer(model), tokenizer, max_length=256), cfg, limit=1)
    ref = lm_eval_wikitext(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16, max_length=256), cfg, limit=1)
    assert ours.keys() == {"ppl.word_perplexity", "ppl.byte_perplexity", "ppl.bits_per_byte"}
    for k in ours:
        assert ours[k] == pytest.approx(ref[k], rel=1e-4), k
