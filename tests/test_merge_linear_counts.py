"""scripts/merge_linear_counts.py: a later file's cells replace the count's, each keeps its own run's ratio and
names its file, and the bars are counted on the merged cells."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from merge_linear_counts import merge, ranges  # noqa: E402  (a script, not a package module)
from bench_linear import bars  # noqa: E402


def _cell(recipe, m, speedup, k=2048, n=4096):
    return {"recipe": recipe, "K": k, "N": n, "M": m, "us": 1.0, "bf16_us": speedup, "speedup": speedup}


def test_later_cells_replace_earlier_ones_and_the_bars_count_the_merge(tmp_path):
    count = tmp_path / "count.json"
    tune = tmp_path / "tune.json"
    count.write_text(json.dumps({"results": [_cell("bf16", 64, 1.0), _cell("int8-group64-wo", 64, 0.80),
                                             _cell("int8-group64-wo", 256, 0.70), _cell("int8-row-wo", 64, 1.20)]}))
    tune.write_text(json.dumps({"results": [_cell("int8-group64-wo", 64, 1.10)]}))
    merged = {(r["recipe"], r["M"]): r for r in merge([count, tune])}
    assert set(merged) == {("int8-group64-wo", 64), ("int8-group64-wo", 256), ("int8-row-wo", 64)}  # no bf16 row
    assert merged[("int8-group64-wo", 64)]["speedup"] == 1.10 and merged[("int8-group64-wo", 64)]["source"] == "tune.json"
    assert merged[("int8-group64-wo", 256)]["source"] == "count.json"
    assert "below 0.95x: 1 of 3 cells" in bars(list(merged.values()))
    table = ranges(list(merged.values()))
    assert "| int8-group64-wo | - | - | 1.10-1.10 | 0.70-0.70 | - | - |" in table
