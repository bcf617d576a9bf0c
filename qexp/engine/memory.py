"""How much GPU memory an engine may size its KV cache into: a share of the card, set per process.

The default share is the engine's own; a sweep running several points on one GPU gives each worker
1/n of it through QEXP_GPU_MEMORY_UTILIZATION, so their engines fit side by side.
"""
from __future__ import annotations

import os

MEMORY_ENV = "QEXP_GPU_MEMORY_UTILIZATION"
DEFAULT_MEMORY_SHARE = 0.85


def memory_share(value: float | None = None) -> float:
    """`value` if given, else $QEXP_GPU_MEMORY_UTILIZATION, else the default share."""
    if value is not None:
        return value
    return float(os.environ.get(MEMORY_ENV, DEFAULT_MEMORY_SHARE))
