"""Task "mmlu": lm-eval's mmlu through the run's scorer (standard), or the reference study's protocol (seed)."""
from __future__ import annotations

import mlflow

from qexp.evals.lm_adapter import QexpLM
from qexp.evals.mmlu import evaluate_mmlu
from qexp.evals.mmlu_seed import evaluate_mmlu_seed
from qexp.evals.scoring import max_length, scorer_for
from qexp.tasks import register_task
from qexp.tracking import log_json


@register_task("mmlu")
def run(ctx) -> dict[str, float]:
    scorer = scorer_for(ctx)
    if ctx.cfg.mmlu_protocol == "seed":
        metrics, art = evaluate_mmlu_seed(scorer, ctx.tokenizer, ctx.cfg, ctx.start, ctx.advance)
    else:
        lm = QexpLM(scorer, ctx.tokenizer, max_length=max_length(scorer, ctx.model), on_start=ctx.start,
                    on_advance=ctx.advance)
        metrics, art = evaluate_mmlu(lm, ctx.cfg)
    mlflow.log_text(art["per_subject"].to_csv(index=False), "mmlu/per_subject.csv")
    log_json(art["predictions"], "mmlu/predictions.json")
    log_json(art["sampled_ids"], "mmlu/sampled_ids.json")
    return metrics
