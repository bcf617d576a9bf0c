"""Report figures (matplotlib, Agg): accuracy vs throughput, PPL change by granularity, per-layer SQNR.

Each function writes one PNG and returns its path, or None when the store lacks the data (nothing is drawn
from invented values).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from qexp.compare.runs import GRANULARITIES, parse_recipe  # noqa: E402
from qexp.compare.tables import BASELINE, GRANULARITY_LABELS, value  # noqa: E402

SERIES = [(d, m) for d in ("int8", "fp8") for m in ("fake", "real")]


def accuracy_vs_throughput(df: pd.DataFrame, path: Path) -> Path | None:
    """MMLU accuracy against decode tokens/s, one labelled point per recipe that logged both."""
    pts = [(r, value(df, r, "throughput.decode_tok_s"), value(df, r, "mmlu.acc")) for r in df.index]
    pts = [(r, x, y * 100) for r, x, y in pts if x is not None and y is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for r, x, y in pts:
        ax.scatter(x, y, marker="*" if r == BASELINE else "o", s=80 if r == BASELINE else 30)
        ax.annotate(r, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("decode tokens/s")
    ax.set_ylabel("MMLU accuracy (%)")
    ax.set_title("Accuracy vs throughput per recipe")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ppl_delta_by_granularity(df: pd.DataFrame, path: Path) -> Path | None:
    """Change of WikiText-2 perplexity vs BF16 (%), grouped by granularity, one bar per dtype x mode."""
    metric = "ppl.token_ppl" if value(df, BASELINE, "ppl.token_ppl") is not None else "ppl.seed_ppl"
    base = value(df, BASELINE, metric)
    if not base:
        return None
    grans = [g for g in GRANULARITIES if any(value(df, f"{d}-{g}-{m}", metric) is not None for d, m in SERIES)]
    if not grans:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(SERIES)
    for k, (d, m) in enumerate(SERIES):
        deltas = [value(df, f"{d}-{g}-{m}", metric) for g in grans]
        xs = [i + (k - (len(SERIES) - 1) / 2) * width for i in range(len(grans))]
        ax.bar([x for x, v in zip(xs, deltas) if v is not None],
               [(v / base - 1) * 100 for v in deltas if v is not None], width, label=f"{d.upper()} {m}")
    ax.set_xticks(range(len(grans)), [GRANULARITY_LABELS[g] for g in grans], rotation=15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"{metric} vs BF16 (%)")
    ax.set_title("Perplexity change by granularity")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def per_layer_sqnr(layers: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Output SQNR (dB) of each decoder layer, one line per recipe; `layers` = recipe -> {layer index: dB}."""
    layers = {r: v for r, v in layers.items() if v and parse_recipe(r) is not None}
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for recipe in sorted(layers, key=lambda r: parse_recipe(r).sort_key()):
        xs = [int(k) for k in layers[recipe]]
        ax.plot(xs, list(layers[recipe].values()), marker=".", lw=1, label=recipe)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title("Per-layer SQNR vs BF16")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
