"""Task "throughput": prefill, decode and batch-1 decode speed of the run's engine."""
from __future__ import annotations

from qexp.evals.scoring import scorer_for
from qexp.evals.throughput import REPEATS, measure_throughput
from qexp.tasks import register_task
from qexp.tracking import device_name, log_json


@register_task("throughput")
def run(ctx) -> dict[str, float]:
    scorer = scorer_for(ctx)
    ctx.start("throughput runs", 3 * REPEATS)
    metrics, raw = measure_throughput(scorer, ctx.cfg, ctx.device, ctx.model.config.vocab_size, ctx.advance)
    log_json({"device": device_name(ctx.device), **raw}, "throughput/raw.json")
    return metrics
