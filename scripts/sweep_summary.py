"""One JSON record per run of a sweep (from the MLflow store alone): status, recipe, tasks, wall time, when it ran
relative to the sweep's start, and its time.* metrics. What BENCHMARKS.md's sweep section is built from.

    python scripts/sweep_summary.py --experiment qexp-reference --out benchmarks/sweep_reference_h100.json
"""
from __future__ import annotations

import argparse
import json

from mlflow.tracking import MlflowClient


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    client = MlflowClient()
    exp = client.get_experiment_by_name(args.experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=10000)
    t0 = min(r.info.start_time for r in runs)
    records = []
    for r in runs:
        tags, m = r.data.tags, r.data.metrics
        end = r.info.end_time or r.info.start_time
        records.append({
            "run_id": r.info.run_id, "role": tags.get("qexp.sweep.role", "point"),
            "parent": tags.get("mlflow.parentRunId"), "recipe": tags.get("qexp.recipe"), "status": r.info.status,
            "tasks": r.data.params.get("tasks"), "start_s": (r.info.start_time - t0) / 1000,
            "end_s": (end - t0) / 1000, "wall_s": (end - r.info.start_time) / 1000,
            "error": tags.get("qexp.error", "")[:300] or None,
            "times": {k: v for k, v in m.items() if k.startswith("time.") or k.startswith("sweep.")},
            "device": tags.get("qexp.device_name"),
        })
    with open(args.out, "w") as f:
        json.dump({"experiment": args.experiment, "runs": records}, f, indent=1)
    print(f"{len(records)} runs -> {args.out}")


if __name__ == "__main__":
    main()
