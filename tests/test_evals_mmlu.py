"""MMLU: local data conversion, our lm-eval adapter vs lm-eval's own HFLM, and the seed protocol."""
from types import SimpleNamespace

import datasets
import pytest
import torch

from qexp.evals.data import load_mmlu, mmlu_dataset_path, read_mmlu_csv
from qexp.evals.lm_adapter import QexpLM
from qexp.evals.mmlu import evaluate_mmlu, sample_questions
from qexp.evals.mmlu_seed import evaluate_mmlu_seed, format_question, letter_ids
from qexp.evals.scoring import HFScorer
from qexp.models.loader import load_model

SUBJECTS = ["abstract_algebra", "college_physics"]


@pytest.fixture(scope="module")
def cfg(shared_data, tmp_path_factory):
    import os
    os.environ.setdefault("QEXP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    return SimpleNamespace(data_dir=str(shared_data), num_samples=12, seed=42)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    # float32: lm-eval's HFLM takes log_softmax in the model's dtype; bf16 would round choices into ties
    return load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32)



def test_local_dataset_equals_csvs(cfg, shared_data):
    path = mmlu_dataset_path(cfg)
    ds = datasets.load_dataset(path, "college_physics")
    for local, split in (("dev", "dev"), ("val", "validation"), ("test", "test")):
        rows = read_mmlu_csv(shared_data / "mmlu" / local / f"college_physics_{local}.csv")
        assert ds[split].to_list() == rows
    assert len(load_mmlu(cfg, "all", "test")) == 14042
    assert len(load_mmlu(cfg, "all", "dev")) == 285


def test_sample_questions_seeded_and_spread():
    sizes = {"a": 100, "b": 10, "c": 300}
    s1, s2 = sample_questions(sizes, 50, 42), sample_questions(sizes, 50, 42)
    assert s1 == s2 and sum(map(len, s1.values())) == 50
    assert all(ids == sorted(set(ids)) and max(ids) < sizes[t] for t, ids in s1.items())
    assert sample_questions(sizes, 50, 7) != s1
    assert sample_questions(sizes, 0, 42) is None and sample_questions(sizes, 410, 42) is None


def _by_question(art):
    return {(p["subject"], p["doc_id"]): p for p in art["predictions"]}


@pytest.fixture(scope="module")
def hflm_result(cfg, model, tokenizer):
    from lm_eval.models.huggingface import HFLM

    return evaluate_mmlu(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), cfg, SUBJECTS)


def _scorers(model):
    yield "hf", HFScorer(model)
    try:
        from qexp.engine import LLM
    except ImportError:
        return
    yield "engine", LLM(model)


def test_adapter_predictions_equal_hflm(cfg, model, tokenizer, hflm_result):
    ref_metrics, ref_art = hflm_result
    assert ref_metrics["mmlu.num_questions"] == cfg.num_samples
    ref = _by_question(ref_art)
    for name, scorer in _scorers(model):
        lm = QexpLM(scorer, tokenizer, max_length=model.config.max_position_embeddings)
        metrics, art = evaluate_mmlu(lm, cfg, SUBJECTS)
        ours = _by_question(art)
        assert ours.keys() == ref.keys(), name
        assert [ours[k]["pred"] for k in ref] == [ref[k]["pred"] for k in ref], name
        got = torch.tensor([ours[k]["loglikelihoods"] for k in ref], dtype=torch.float64)
        want = torch.tensor([ref[k]["loglikelihoods"] for k in ref], dtype=torch.float64)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
        assert metrics["mmlu.acc"] == pytest.approx(ref_metrics["mmlu.acc"])
        assert metrics["mmlu.acc"] == pytest.approx(sum(p["acc"] for p in ours.values()) / len(ours))
        assert set(art["per_subject"]["subject"]) <= set(SUBJECTS)


def test_seed_protocol_matches_direct_forward(cfg, model, tokenizer):
    cfg = SimpleNamespace(**{**vars(cfg), "num_samples": 4})
    metrics, art = evaluate_mmlu_seed(HFScorer(model), tokenizer, cfg)
    test = load_mmlu(cfg, "all", "test").shuffle(seed=cfg.seed).select(range(4))
    shots = load_mmlu(cfg, "all", "dev").select(range(5))
    assert {d["subject"] for d in shots} == {"abstract_algebra"}
    letters = letter_ids(tokenizer)
    expected = []
    for doc in test:
        text = "".join(format_question(d, True) for d in shots) + format_question(doc, False)
        assert text.endswith("\nAnswer:") and text.count("Answer:") == 6
        with torch.no_grad():
            logits = model(torch.tensor([tokenizer.encode(text)])).logits[0, -1]
        expected.append(int(logits[letters].argmax()))
    assert [p["pred"] for p in art["predictions"]] == expected
    assert [p["subject"] for p in art["predictions"]] == test["subject"]
    assert metrics["mmlu.num_questions"] == 4
    assert metrics["mmlu.acc"] == pytest.approx(sum(e == d["answer"] for e, d in zip(expected, test)) / 4)
