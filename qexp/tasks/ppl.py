"""Task "ppl": WikiText-2 test perplexity, standard (sliding window + lm-eval wikitext) or seed protocol."""
from __future__ import annotations

from qexp.config import ConfigError
from qexp.evals.data import wikitext_rows
from qexp.evals.lm_adapter import QexpLM
from qexp.evals.ppl import lm_eval_wikitext, seed_ppl, token_ppl
from qexp.evals.scoring import max_length, scorer_for, wikitext_ids
from qexp.tasks import register_task
from qexp.tracking import log_json


@register_task("ppl")
def run(ctx) -> dict[str, float]:
    cfg, scorer = ctx.cfg, scorer_for(ctx)
    if cfg.ppl_protocol == "seed":
        ctx.start("ppl (seed lines)", cfg.ppl_lines)
        value, info = seed_ppl(scorer, ctx.tokenizer, wikitext_rows(cfg, "test"), cfg.ppl_lines, ctx.advance)
        log_json({"protocol": "seed", **info}, "ppl/config.json")
        return {"ppl.seed_ppl": value}
    limit = max_length(scorer, ctx.model)
    if cfg.ppl_context + 1 > limit:  # lm-eval's rolling windows are context + 1 tokens long
        raise ConfigError(f"ppl_context {cfg.ppl_context} needs sequences of {cfg.ppl_context + 1} tokens; the "
                          f"scorer takes at most {limit}")
    value, info = token_ppl(scorer, wikitext_ids(ctx), cfg.ppl_context, cfg.ppl_stride, ctx.start, ctx.advance)
    lm = QexpLM(scorer, ctx.tokenizer, max_length=cfg.ppl_context, on_start=ctx.start, on_advance=ctx.advance)
    metrics = {"ppl.token_ppl": value, **lm_eval_wikitext(lm, cfg)}
    log_json({"protocol": "standard", "text": '"\\n\\n".join(wikitext-2-raw-v1 test rows)', **info,
              "lm_eval_wikitext_max_length": cfg.ppl_context, **metrics}, "ppl/config.json")
    return metrics
