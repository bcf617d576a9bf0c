"""Task "fidelity": the run's model against the same model unquantized (BF16), on WikiText-2 windows."""
from __future__ import annotations

from qexp.evals.fidelity import CALIB_TOKENS, compare, fidelity_windows, load_or_build_reference
from qexp.evals.scoring import wikitext_ids
from qexp.models.loader import load_model
from qexp.tasks import register_task
from qexp.tracking import log_json


@register_task("fidelity")
def run(ctx) -> dict[str, float]:
    cfg = ctx.cfg
    windows = fidelity_windows(wikitext_ids(ctx))
    calib = windows[0][:CALIB_TOKENS]
    ref, cached = load_or_build_reference(cfg, ctx.device, windows, calib,
                                          lambda: load_model(cfg.model, cfg.load_format, ctx.device, cfg.seed))
    metrics, info = compare(ctx.model, ref, windows, calib)
    log_json({**info, "reference_cached": cached, "recipe": cfg.recipe, **metrics}, "fidelity/summary.json")
    return metrics
