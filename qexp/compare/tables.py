"""The reference study's report tables from per-recipe metrics (qexp.compare.runs.by_recipe).

Each table is a DataFrame of display strings, index = row label. A value never logged shows as "—";
deltas and ratios are against the BF16 run and are left out (value only, or "—") when BF16 is missing.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from qexp.compare.runs import GRANULARITIES, parse_recipe

MISSING = "—"
DTYPE_COLUMNS = {"int8": "INT8", "fp8": "FP8"}
GRANULARITY_LABELS = {"tensor": "per-tensor", "row": "per-row", "group64": "group-64", "group128": "group-128",
                      "group256": "group-256", "group512": "group-512", "smooth": "SmoothQuant (W8A8)"}
BASELINE = "bf16"


def value(df: pd.DataFrame, recipe: str, metric: str) -> float | None:
    if recipe not in df.index or metric not in df.columns:
        return None
    v = df.at[recipe, metric]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def fmt(v: float | None, spec: str) -> str:
    return MISSING if v is None else format(v, spec)


def pct(v: float | None) -> str:
    return MISSING if v is None else f"{v * 100:.2f}%"


def rel_change(v: float | None, base: float | None) -> str:
    return MISSING if v is None or not base else f"{(v / base - 1) * 100:+.2f}%"


def speedup(v: float | None, base: float | None) -> str:
    return MISSING if v is None or not base else f"{v / base:.2f}x"


def _frame(rows: dict[str, dict[str, str]], columns: list[str], index_name: str = "Recipe") -> pd.DataFrame:
    df = pd.DataFrame.from_dict(rows, orient="index", columns=columns) if rows else pd.DataFrame(columns=columns)
    df.index.name = index_name
    return df


def _rows_with(df: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Recipes (in study order) that logged at least one of `metrics`."""
    return [r for r in df.index if any(value(df, r, m) is not None for m in metrics)]


# -- the tables ------------------------------------------------------------------------------------------
def mmlu_accuracy(df: pd.DataFrame, mode: str) -> pd.DataFrame:
    """Rows = granularity, columns = INT8/FP8, cells "50.70% (+0.10%)": accuracy and its change vs BF16 in points."""
    base = value(df, BASELINE, "mmlu.acc")
    rows = {"BF16": {col: pct(base) for col in DTYPE_COLUMNS.values()}}
    for gran in GRANULARITIES:
        row = {}
        for dtype, col in DTYPE_COLUMNS.items():
            acc = value(df, f"{dtype}-{gran}-{mode}", "mmlu.acc")
            row[col] = pct(acc) if acc is None or base is None else f"{pct(acc)} ({(acc - base) * 100:+.2f}%)"
        rows[GRANULARITY_LABELS[gran]] = row
    return _frame(rows, list(DTYPE_COLUMNS.values()), "Granularity")


def mmlu_categories(df: pd.DataFrame) -> pd.DataFrame:
    metrics = {"All": "mmlu.acc", "STEM": "mmlu.acc_stem", "Humanities": "mmlu.acc_humanities",
               "Social sciences": "mmlu.acc_social_sciences", "Other": "mmlu.acc_other"}
    rows = {r: {c: pct(value(df, r, m)) for c, m in metrics.items()} | {"Questions": fmt(value(df, r, "mmlu.num_questions"), ".0f")}
            for r in _rows_with(df, list(metrics.values()))}
    return _frame(rows, [*metrics, "Questions"])


def perplexity(df: pd.DataFrame) -> pd.DataFrame:
    base_tok, base_seed = value(df, BASELINE, "ppl.token_ppl"), value(df, BASELINE, "ppl.seed_ppl")
    rows = {}
    for r in _rows_with(df, ["ppl.token_ppl", "ppl.seed_ppl", "ppl.word_perplexity"]):
        tok, seed = value(df, r, "ppl.token_ppl"), value(df, r, "ppl.seed_ppl")
        rows[r] = {"PPL": fmt(tok, ".3f"), "vs BF16": rel_change(tok, base_tok),
                   "Seed PPL": fmt(seed, ".3f"), "Seed vs BF16": rel_change(seed, base_seed),
                   "Word PPL": fmt(value(df, r, "ppl.word_perplexity"), ".3f"),
                   "Bits/byte": fmt(value(df, r, "ppl.bits_per_byte"), ".4f")}
    return _frame(rows, ["PPL", "vs BF16", "Seed PPL", "Seed vs BF16", "Word PPL", "Bits/byte"])


def throughput(df: pd.DataFrame) -> pd.DataFrame:
    """The MLflow-run throughput table: wall time of each test, samples/s, speedup over BF16."""
    rows = {}
    for r in _rows_with(df, ["throughput.prefill_time_s", "throughput.decode_time_s"]):
        row = {}
        for test in ("prefill", "decode"):
            sps = value(df, r, f"throughput.{test}_samples_s")
            row |= {f"{test.capitalize()} time (s)": fmt(value(df, r, f"throughput.{test}_time_s"), ".2f"),
                    f"{test.capitalize()} samples/s": fmt(sps, ".2f"),
                    f"{test.capitalize()} speedup": speedup(sps, value(df, BASELINE, f"throughput.{test}_samples_s"))}
        rows[r] = row
    return _frame(rows, [f"{t} {c}" for t in ("Prefill", "Decode") for c in ("time (s)", "samples/s", "speedup")])


def tokens_per_second(df: pd.DataFrame) -> pd.DataFrame:
    tests = {"Prefill": "prefill_tok_s", "Decode": "decode_tok_s", "BS-1 decode": "bs1_decode_tok_s"}
    rows = {}
    for r in _rows_with(df, [f"throughput.{m}" for m in tests.values()]):
        row = {}
        for label, m in tests.items():
            v = value(df, r, f"throughput.{m}")
            row |= {f"{label} tok/s": fmt(v, ",.0f"), f"{label} vs BF16": speedup(v, value(df, BASELINE, f"throughput.{m}"))}
        rows[r] = row | {"Peak mem (GB)": fmt(value(df, r, "throughput.peak_mem_gb"), ".2f")}
    return _frame(rows, [f"{label} {c}" for label in tests for c in ("tok/s", "vs BF16")] + ["Peak mem (GB)"])


def matmul_error(df: pd.DataFrame) -> pd.DataFrame:
    cols = {"Max abs error": ("matmul.max_abs_error", ".4g"), "Mean abs error": ("matmul.mean_abs_error", ".4g"),
            "Relative error": ("matmul.relative_error", ".4g"), "SQNR (dB)": ("matmul.sqnr_db", ".2f"),
            "Frobenius rel. error": ("matmul.frobenius_rel_error", ".4g")}
    rows = {r: {c: fmt(value(df, r, m), spec) for c, (m, spec) in cols.items()}
            for r in _rows_with(df, [m for m, _ in cols.values()])}
    return _frame(rows, list(cols))


def smoothquant_vs_weight_only(df: pd.DataFrame) -> pd.DataFrame:
    """Each SmoothQuant recipe against the best weight-only recipe of its dtype (highest MMLU, else lowest PPL)."""
    metrics = {"MMLU": ("mmlu.acc", pct), "PPL": ("ppl.token_ppl", lambda v: fmt(v, ".3f")),
               "Prefill tok/s": ("throughput.prefill_tok_s", lambda v: fmt(v, ",.0f")),
               "Decode tok/s": ("throughput.decode_tok_s", lambda v: fmt(v, ",.0f"))}
    rows = {}
    for r in df.index:
        rec = parse_recipe(r)
        if rec.granularity != "smooth":
            continue
        best = best_weight_only(df, rec.dtype)
        row = {"Best weight-only": best or MISSING}
        for label, (m, f) in metrics.items():
            row |= {f"{label} SQ": f(value(df, r, m)), f"{label} WO": f(value(df, best, m) if best else None)}
        sq, wo = value(df, r, "mmlu.acc"), value(df, best, "mmlu.acc") if best else None
        row["MMLU SQ − WO"] = MISSING if sq is None or wo is None else f"{(sq - wo) * 100:+.2f}%"
        rows[r] = row
    return _frame(rows, ["Best weight-only", *[f"{m} {w}" for m in metrics for w in ("SQ", "WO")], "MMLU SQ − WO"],
                  "SmoothQuant recipe")


def best_weight_only(df: pd.DataFrame, dtype: str) -> str | None:
    candidates = [r for r in df.index if parse_recipe(r).dtype == dtype and parse_recipe(r).granularity != "smooth"]
    by_acc = [(value(df, r, "mmlu.acc"), r) for r in candidates if value(df, r, "mmlu.acc") is not None]
    if by_acc:
        return max(by_acc, key=lambda t: t[0])[1]  # max keeps the first (study order) among ties
    by_ppl = [(value(df, r, "ppl.token_ppl"), r) for r in candidates if value(df, r, "ppl.token_ppl") is not None]
    return min(by_ppl, key=lambda t: t[0])[1] if by_ppl else None


def memory(df: pd.DataFrame) -> pd.DataFrame:
    """The measured memory / scale-count table (the seed's "system implementation" table, from quant.* metrics)."""
    rows = {}
    for r in _rows_with(df, ["quant.modules_expected", "throughput.peak_mem_gb"]):
        expected = value(df, r, "quant.modules_expected")
        # bf16 logs an empty report (0 modules, 0 bytes): nothing was measured, so nothing is shown
        quant = {m: value(df, r, f"quant.{m}") if expected else None
                 for m in ("modules_quantized", "weight_bytes_before", "weight_bytes_after", "weight_bytes_ratio",
                           "num_scales")}
        mib = {k: None if quant[k] is None else quant[k] / 2**20 for k in ("weight_bytes_before", "weight_bytes_after")}
        done = quant["modules_quantized"]
        rows[r] = {"Modules quantized": MISSING if done is None else f"{done:.0f}/{expected:.0f}",
                   "Weights before (MiB)": fmt(mib["weight_bytes_before"], ",.1f"),
                   "Weights after (MiB)": fmt(mib["weight_bytes_after"], ",.1f"),
                   "Ratio": fmt(quant["weight_bytes_ratio"], ".3f"),
                   "Scales": fmt(quant["num_scales"], ",.0f"),
                   "Peak mem (GB)": fmt(value(df, r, "throughput.peak_mem_gb"), ".2f")}
    return _frame(rows, ["Modules quantized", "Weights before (MiB)", "Weights after (MiB)", "Ratio", "Scales",
                         "Peak mem (GB)"])


def fidelity(df: pd.DataFrame) -> pd.DataFrame:
    cols = {"KL mean": ("fidelity.kl_mean", lambda v: fmt(v, ".4g")), "KL p99": ("fidelity.kl_p99", lambda v: fmt(v, ".4g")),
            "Top-1 agree": ("fidelity.top1_agree", pct), "SQNR mean (dB)": ("fidelity.sqnr_db_mean", lambda v: fmt(v, ".2f"))}
    rows = {r: {c: f(value(df, r, m)) for c, (m, f) in cols.items()} for r in _rows_with(df, [m for m, _ in cols.values()])}
    return _frame(rows, list(cols))


TABLES: dict[str, tuple[str, Callable[[pd.DataFrame], pd.DataFrame]]] = {
    "mmlu_fake": ("MMLU accuracy, fake quantization (vs BF16)", lambda df: mmlu_accuracy(df, "fake")),
    "mmlu_real": ("MMLU accuracy, real quantization (vs BF16)", lambda df: mmlu_accuracy(df, "real")),
    "mmlu_categories": ("MMLU accuracy by category", mmlu_categories),
    "perplexity": ("WikiText-2 perplexity", perplexity),
    "throughput": ("Throughput of the MLflow runs (seed tests)", throughput),
    "tokens_per_second": ("Prefill / decode tokens per second", tokens_per_second),
    "matmul_error": ("Matmul error", matmul_error),
    "smoothquant": ("SmoothQuant vs the best weight-only recipe", smoothquant_vs_weight_only),
    "memory": ("Measured weight memory and scale count", memory),
    "fidelity": ("Fidelity vs BF16 (next-token distributions)", fidelity),
}


def all_tables(df: pd.DataFrame) -> dict[str, tuple[str, pd.DataFrame]]:
    return {name: (title, fn(df)) for name, (title, fn) in TABLES.items()}
