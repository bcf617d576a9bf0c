"""How much GPU memory an engine may size its KV cache into: a share of the card, set per process.

The default share is the engine's own; a sweep running several points on one GPU gives each worker
1/n of it, less a headroom for what a run allocates beside its engine, through QEXP_GPU_MEMORY_UTILIZATION.
"""
from __future__ import annotations

import os

MEMORY_ENV = "QEXP_GPU_MEMORY_UTILIZATION"
DEFAULT_MEMORY_SHARE = 0.85
# what a run allocates beside its engine (fidelity and PPL logits, CUDA graphs and context), as a share of the card:
# an H100 reference sweep measured ~5.3 GiB per worker above its engine's share (three workers then ran out)
WORKER_HEADROOM = 0.075


def shared_memory_share(workers: int) -> float:
    """Each of `workers` runs on one GPU: an equal part of the default share, less the headroom each needs."""
    return DEFAULT_MEMORY_SHARE if workers == 1 else DEFAULT_MEMORY_SHARE / workers - WORKER_HEADROOM


def memory_share(value: float | None = None) -> float:
    """`value` if given, else $QEXP_GPU_MEMORY_UTILIZATION, else the default share."""
    if value is not None:
        return value
    return float(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_SHARE))
