"""Runs from the tracking store -> one row per recipe (the newest FINISHED value of each metric).

Recipes are read from the qexp.recipe tag ("bf16", "int8-row-real", "fp8-group128-fake", "int8-smooth-real"),
so nothing is re-computed and runs logged by any qexp version compare alike.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import mlflow
import pandas as pd

from qexp.tracking import tracking_uri

DTYPE_ORDER = ("bf16", "int8", "fp8")
GRANULARITIES = ("tensor", "row", "group64", "group128", "group256", "group512", "smooth")
MODE_ORDER = ("fake", "real")
_RECIPE = re.compile(r"^(int8|fp8)-(tensor|row|smooth|group\d+)-(fake|real)$")


class CompareError(RuntimeError):
    """Nothing to compare (unknown experiment or sweep, no finished runs); one line for the user."""


@dataclass(frozen=True)
class Recipe:
    dtype: str
    granularity: str  # "none" for bf16
    mode: str  # "" for bf16

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == "bf16" else f"{self.dtype}-{self.granularity}-{self.mode}"

    def sort_key(self) -> tuple:
        gran = GRANULARITIES.index(self.granularity) if self.granularity in GRANULARITIES else len(GRANULARITIES)
        return (DTYPE_ORDER.index(self.dtype), gran, MODE_ORDER.index(self.mode) if self.mode else -1)


def parse_recipe(name: str) -> Recipe | None:
    if name == "bf16":
        return Recipe("bf16", "none", "")
    m = _RECIPE.match(name or "")
    return Recipe(m.group(1), m.group(2), m.group(3)) if m else None


def search(experiment: str | None = None, sweep: str | None = None) -> pd.DataFrame:
    """FINISHED qexp runs of an experiment, or the children of a sweep's parent run."""
    mlflow.set_tracking_uri(tracking_uri())
    if sweep:
        parent = sweep_parent(sweep)
        df = mlflow.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                                max_results=50000)
    else:
        name = experiment or "qexp"
        if mlflow.get_experiment_by_name(name) is None:
            raise CompareError(f"no experiment named {name!r} in {tracking_uri()}")
        df = mlflow.search_runs(experiment_names=[name], max_results=50000)
    if df.empty or "tags.qexp.recipe" not in df:
        raise CompareError("no qexp runs found" + (f" under sweep {sweep}" if sweep else f" in experiment {experiment or 'qexp'}"))
    return df[(df["status"] == "FINISHED") & df["tags.qexp.recipe"].notna()]


def sweep_parent(ref: str):
    """A sweep's parent run from its run id, or from the sweep's name (its latest parent run)."""
    try:
        return mlflow.get_run(ref)
    except mlflow.exceptions.MlflowException:
        pass
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1,
                              filter_string=f"tags.`qexp.sweep.role` = 'parent' and tags.`qexp.sweep.name` = '{ref}'",
                              order_by=["attributes.start_time DESC"])
    if not runs:
        raise CompareError(f"no sweep parent run with id or sweep name {ref!r} in {tracking_uri()}")
    return runs[0]


def by_recipe(runs: pd.DataFrame) -> pd.DataFrame:
    """Index = recipe name in the study's order; columns = metric names; newest non-missing value per metric."""
    metric_cols = [c for c in runs.columns if c.startswith("metrics.")]
    df = runs.sort_values("start_time", ascending=False)[["tags.qexp.recipe", *metric_cols]]
    df = df.rename(columns={c: c[len("metrics."):] for c in metric_cols}).rename(columns={"tags.qexp.recipe": "recipe"})
    df = df[df["recipe"].map(parse_recipe).notna()]
    table = df.groupby("recipe", sort=False).first()  # first = newest non-null, per column
    order = sorted(table.index, key=lambda r: parse_recipe(r).sort_key())
    return table.loc[order]


def load(experiment: str | None = None, sweep: str | None = None) -> pd.DataFrame:
    table = by_recipe(search(experiment, sweep))
    if table.empty:
        raise CompareError("no FINISHED qexp runs to compare")
    return table
