"""MMLU, seed protocol: the reference study's, kept so its tables compare like for like.

cais/mmlu "all" test shuffled with datasets' shuffle(seed), the first num_samples questions (0 = all); the same
five shots for every question (the first 5 rows of "all" dev, i.e. abstract_algebra's); the prediction is the
argmax of the next-token logits after "Answer:" over the four letter tokens " A", " B", " C", " D".
Unlike lm-eval's mmlu: no per-subject header line, shots not from the question's own subject, and the letters are
compared by raw logit rather than by log-likelihood of each choice string.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from qexp.evals.data import LETTERS, load_mmlu
from qexp.evals.lm_adapter import CALL_TOKENS, _rows_budget
from qexp.evals.lm_tasks import STOCK_TASKS

NUM_SHOTS = 5


def format_question(doc: dict, with_answer: bool) -> str:
    text = doc["question"].strip() + "".join(f"\n{L}. {c}" for L, c in zip(LETTERS, doc["choices"])) + "\nAnswer:"
    return text + f" {LETTERS[doc['answer']]}\n\n" if with_answer else text


def subject_categories() -> dict[str, str]:
    """subject -> stem / humanities / social_sciences / other, as lm-eval's mmlu task tags define them."""
    out = {}
    for p in sorted((Path(STOCK_TASKS) / "mmlu" / "default").glob("mmlu_*.yaml")):
        tag = yaml.safe_load(p.read_text()).get("tag", "")
        out[p.stem.removeprefix("mmlu_")] = tag.removeprefix("mmlu_").removesuffix("_tasks")
    return out


def letter_ids(tokenizer) -> list[int]:
    ids = [tokenizer.encode(" " + L, add_special_tokens=False) for L in LETTERS]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"answer letters are not single tokens for this tokenizer: {ids}")
    return [i[0] for i in ids]


def evaluate_mmlu_seed(scorer, tokenizer, cfg, start_progress=None, progress=None) -> tuple[dict[str, float], dict]:
    test = load_mmlu(cfg, "all", "test")
    test = test.add_column("all_index", list(range(len(test)))).shuffle(seed=cfg.seed)
    if cfg.num_samples:
        test = test.select(range(min(cfg.num_samples, len(test))))
    shots = "".join(format_question(d, True) for d in load_mmlu(cfg, "all", "dev").select(range(NUM_SHOTS)))
    docs = list(test)
    prompts = [tokenizer.encode(shots + format_question(d, False), add_special_tokens=False) for d in docs]
    letters = letter_ids(tokenizer)
    preds = [0] * len(docs)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    if start_progress:
        start_progress("mmlu (seed)", len(order))
    for chunk in _rows_budget([(prompts[i], i) for i in order], CALL_TOKENS):
        idx = [i for _, i in chunk]
        rows = scorer.next_token_logits([prompts[i] for i in idx], [len(prompts[i]) for i in idx])
        for i, logits in zip(idx, rows):
            preds[i] = int(logits[-1, letters].argmax())
        if progress:
            progress(len(chunk))
    cats = subject_categories()
    table = pd.DataFrame({"subject": [d["subject"] for d in docs], "target": [d["answer"] for d in docs],
                          "pred": preds})
    table["acc"] = (table["pred"] == table["target"]).astype(float)
    table["category"] = table["subject"].map(cats)
    metrics = {"mmlu.acc": table["acc"].mean(), "mmlu.num_questions": float(len(table))}
    for cat, acc in table.groupby("category")["acc"].mean().items():
        metrics[f"mmlu.acc_{cat}"] = acc
    per_subject = table.groupby("subject")["acc"].agg(["mean", "size"]).reset_index()
    per_subject.columns = ["subject", "acc", "n"]
    return {k: float(v) for k, v in metrics.items()}, {
        "per_subject": per_subject, "predictions": table.to_dict("records"),
        "sampled_ids": {"all_test_index": [d["all_index"] for d in docs]}}
