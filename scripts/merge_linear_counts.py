"""Issue 5's per-linear count from a full count with later tunes laid over it, when no full count ran after them.

    python3 scripts/merge_linear_counts.py benchmarks/kernels_h100_s29_count.json \
        benchmarks/kernels_h100_s30_tune_*.json --json benchmarks/kernels_h100_s30_count_merged.json

Each later file's cells replace the earlier ones (files in the order given). Every cell keeps the ratio against
bf16 that its own run measured, and records which file it came from; the cells were not all measured in one run.
Prints the bars (bench_linear.bars) and each recipe's min-max over the issue's shapes, by M.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_linear import ISSUE_MS, ISSUE_SHAPES, bars  # noqa: E402


def merge(paths: list[Path]) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for p in paths:
        for r in json.loads(p.read_text())["results"]:
            if r["recipe"] != "bf16":
                cells[(r["recipe"], r["K"], r["N"], r["M"])] = {**r, "source": p.name}
    return list(cells.values())


def ranges(results: list[dict]) -> str:
    """recipe x M: min-max speedup over the issue's shapes."""
    issue = [r for r in results if (r["K"], r["N"]) in ISSUE_SHAPES and r["M"] in ISSUE_MS]
    lines = ["| recipe | " + " | ".join(f"M={m}" for m in ISSUE_MS) + " |", "|---|" + "---|" * len(ISSUE_MS)]
    for name in dict.fromkeys(r["recipe"] for r in issue):
        cells = []
        for m in ISSUE_MS:
            v = [r["speedup"] for r in issue if r["recipe"] == name and r["M"] == m]
            cells.append(f"{min(v):.2f}-{max(v):.2f}" if v else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+", type=Path, help="bench_linear JSON files, the full count first")
    ap.add_argument("--json", type=Path, help="write the merged cells here")
    args = ap.parse_args()
    results = merge(args.files)
    print(bars(results))
    print(ranges(results))
    if args.json:
        args.json.write_text(json.dumps({"merged_from": [p.name for p in args.files], "results": results}, indent=1))


if __name__ == "__main__":
    main()
