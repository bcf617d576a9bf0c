"""scripts/bench_linear.py's tuner plan: which configs --tune times for a cell, against the table's choice."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_linear import tune_candidates  # noqa: E402  (a script, not a package module)

from qexp.kernels import configs, search_space  # noqa: E402

KIND, M = "w8a16-int8-row", 4096
CURRENT = configs.gluon_rs_config(128, 256, 64, warps=8, producer=True, persistent=True, group_m=4)


def test_plain_tune_times_the_whole_search_space():
    assert tune_candidates(KIND, M, CURRENT) == search_space.candidates(KIND, M)


def test_a_flag_or_backend_narrows_the_search_space_against_the_current_choice():
    persistent = [c for c in search_space.candidates(KIND, M) if c.get("PERSISTENT")]
    got = tune_candidates(KIND, M, CURRENT, with_flag="PERSISTENT")
    assert got[0] == CURRENT and CURRENT in persistent  # the current choice once, first
    assert got[1:] == [c for c in persistent if c != CURRENT]
    ws = tune_candidates(KIND, M, CURRENT, backend="gluon_ws")
    assert ws[0] == CURRENT and len(ws) > 1 and all(c["backend"] == "gluon_ws" for c in ws[1:])
    both = tune_candidates(KIND, M, CURRENT, backend="gluon_ws", with_flag="PERSISTENT")
    assert both == [CURRENT]  # no persistent gluon_ws candidate


def test_try_configs_are_timed_against_the_current_choice_outside_the_search_space():
    probe = configs.gluon_rs_config(64, 256, 128, warps=4, stages=2, producer=True)
    assert probe not in search_space.candidates(KIND, M)
    assert tune_candidates(KIND, M, CURRENT, try_configs=[probe, CURRENT]) == [CURRENT, probe]
