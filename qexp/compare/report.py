"""Render the compare tables (md | csv | html), draw the plots, and log the whole report to a sweep's parent run."""
from __future__ import annotations

import contextlib
import html
import math
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from qexp.compare import plots
from qexp.compare.runs import by_recipe, parse_recipe, search, sweep_parent
from qexp.compare.tables import all_tables
from qexp.tracking import tracking_uri

FORMATS = ("md", "csv", "html")
FIDELITY_ARTIFACT = "fidelity/summary.json"  # the fidelity task's; per_layer_sqnr_db = output SQNR of each layer


def markdown(df: pd.DataFrame) -> str:
    header = [df.index.name or "", *map(str, df.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * len(df.columns)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(df.index, df.itertuples(index=False))]
    return "\n".join(lines)


def render(tables: dict[str, tuple[str, pd.DataFrame]], fmt: str) -> str:
    """All tables as one document; a table without rows says so instead of printing an empty grid."""
    parts = []
    for title, df in tables.values():
        empty = df.empty
        if fmt == "md":
            parts.append(f"## {title}\n\n" + ("_no runs with these metrics_" if empty else markdown(df)) + "\n")
        elif fmt == "csv":
            parts.append(f"# {title}\n" + df.to_csv())
        else:
            body = "<p><em>no runs with these metrics</em></p>" if empty else df.to_html(escape=True)
            parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    if fmt == "html":
        return "<!doctype html><html><head><meta charset='utf-8'><title>qexp compare</title></head><body>\n" \
               + "\n".join(parts) + "\n</body></html>\n"
    return "\n".join(parts)


def write(tables: dict[str, tuple[str, pd.DataFrame]], fmt: str, out: Path) -> list[Path]:
    """report.md / report.html, or one <table>.csv per table."""
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        paths = []
        for name, (_, df) in tables.items():
            (out / f"{name}.csv").write_text(df.to_csv())
            paths.append(out / f"{name}.csv")
        return paths
    path = out / f"report.{fmt}"
    path.write_text(render(tables, fmt))
    return [path]


def per_layer_sqnr(runs: pd.DataFrame) -> dict[str, dict[str, float]]:
    """recipe -> {layer: dB} from the newest run of each recipe that logged the per-layer artifact."""
    out: dict[str, dict[str, float]] = {}
    if "metrics.fidelity.kl_mean" not in runs:
        return out
    for _, run in runs.sort_values("start_time", ascending=False).iterrows():
        recipe = run["tags.qexp.recipe"]
        if recipe in out or pd.isna(run["metrics.fidelity.kl_mean"]) or parse_recipe(recipe) is None:
            continue
        with contextlib.suppress(Exception):  # runs without the artifact simply have no curve
            layers = mlflow.artifacts.load_dict(f"runs:/{run['run_id']}/{FIDELITY_ARTIFACT}")["per_layer_sqnr_db"]
            # identical outputs give "inf" (no finite SQNR): left off the curve
            out[recipe] = {str(i): float(v) for i, v in enumerate(layers) if v != "inf" and math.isfinite(float(v))}
    return out


def draw(runs: pd.DataFrame, df: pd.DataFrame, out: Path) -> list[Path]:
    made = [plots.accuracy_vs_throughput(df, out / "accuracy_vs_throughput.png"),
            plots.ppl_delta_by_granularity(df, out / "ppl_delta_by_granularity.png"),
            plots.per_layer_sqnr(per_layer_sqnr(runs), out / "per_layer_sqnr.png")]
    return [p for p in made if p is not None]


def compare(experiment: str | None, sweep: str | None, fmt: str, out: Path | None) -> tuple[str, list[Path]]:
    """The rendered tables and the files written under `out` (tables and plots)."""
    runs = search(experiment, sweep)
    df = by_recipe(runs)
    tables = all_tables(df)
    files: list[Path] = []
    if out is not None:
        files = write(tables, fmt, out) + draw(runs, df, out)
    return render(tables, fmt), files


def log_report(sweep: str) -> None:
    """Tables (md, html, csv) and plots of a sweep (parent run id or sweep name), logged under report/ of its
    parent run."""
    parent_run_id = sweep_parent(sweep).info.run_id
    with tempfile.TemporaryDirectory(prefix="qexp-report-") as d:
        out = Path(d)
        runs = search(sweep=parent_run_id)
        df = by_recipe(runs)
        if df.empty:
            return
        tables = all_tables(df)
        for fmt in FORMATS:
            write(tables, fmt, out)
        draw(runs, df, out)
        mlflow.MlflowClient(tracking_uri()).log_artifacts(parent_run_id, str(out), "report")
