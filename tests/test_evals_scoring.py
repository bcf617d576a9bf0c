"""The HF reference scorer against a plain unpadded HF forward, and the engine against the HF scorer."""
import pytest
import torch

from qexp.engine import LLM
from qexp.evals.scoring import HFScorer
from qexp.models.loader import load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32)


@pytest.fixture(scope="module")
def seqs():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 151000, (n,), generator=g).tolist() for n in (37, 5, 80, 12)], [3, 1, 50, 12]


def plain_logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].float()


def test_hf_scorer_matches_plain_forward(model, seqs):
    seqs, start = seqs
    scorer = HFScorer(model, max_batch_tokens=100)  # forces several padded batches
    logits = scorer.next_token_logits(seqs, start)
    scores = scorer.score(seqs, start)
    for s, st, lg, sc in zip(seqs, start, logits, scores):
        ref = plain_logits(model, s)
        assert lg.shape == (len(s) - st + 1, ref.shape[-1])
        torch.testing.assert_close(lg, ref[st - 1:], atol=1e-5, rtol=1e-5)
        ref_lp = torch.log_softmax(ref[:-1], -1).gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
        torch.testing.assert_close(sc, ref_lp[st - 1:], atol=1e-5, rtol=1e-5)


def test_hf_scorer_rejects_bad_start(model):
    with pytest.raises(ValueError):
        HFScorer(model).score([[1, 2, 3]], [0])


def test_engine_matches_hf_scorer(model, seqs):
    seqs, start = seqs
    llm, hf = LLM(model), HFScorer(model)
    for a, b in zip(llm.score(seqs, start), hf.score(seqs, start)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)
    for a, b in zip(llm.next_token_logits(seqs, start), hf.next_token_logits(seqs, start)):
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)


def test_hf_generate_is_greedy_continuation(model):
    from qexp.evals.scoring import GenerateParams

    prompts = [[5, 6, 7], [9]]
    out = HFScorer(model).generate(prompts, GenerateParams(max_tokens=4, ignore_eos=True))
    for p, gen in zip(prompts, out):
        assert len(gen) == 4
        seq = list(p)
        for tok in gen:  # each generated token is the argmax after the sequence so far
            assert tok == int(plain_logits(model, seq)[-1].argmax())
            seq.append(tok)


def test_lm_generate_until_is_greedy_text_cut_at_stop(model, tokenizer_dir):
    from lm_eval.api.instance import Instance

    from qexp.evals.lm_adapter import QexpLM
    from qexp.evals.scoring import GenerateParams
    from qexp.models.loader import load_tokenizer

    tok = load_tokenizer("unused", str(tokenizer_dir))
    lm = QexpLM(HFScorer(model), tok, max_length=64)
    ids = tok.encode("The capital of France is")
    full = tok.decode(HFScorer(model).generate([ids], GenerateParams(max_tokens=6))[0], skip_special_tokens=True)
    stop = full[len(full) // 2:][:2] or full
    req = Instance("generate_until", doc={}, idx=0,
                   arguments=("The capital of France is", {"until": [stop], "max_gen_toks": 6}))
    assert lm.generate_until([req]) == [full.split(stop)[0]]
