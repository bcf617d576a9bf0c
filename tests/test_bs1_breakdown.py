"""bs1_breakdown's timeline figures: per kernel and per part of a decode layer (GEMMs named by their neighbours)
from traced [name, start, dur] rows."""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bs1_breakdown import by_role, summarize


def _layer(gemm: str, t: float) -> tuple[list, float]:
    """One layer in the engine's order, as [name, start, dur] rows; each kernel ends 1 us after it starts except
    the GEMMs (o 3, gate/up 5, down 4, qkv 2) and attention (10); the o_proj starts under attention (PDL)."""
    rows = []
    for name, dur in [("_decode_kernel", 10), (gemm, 3), ("_rms_norm_kernel", 1), (gemm, 5),
                      ("_silu_mul_kernel", 1), (gemm, 4), ("_rms_norm_kernel", 1), (gemm, 2),
                      ("_qk_norm_rope_kernel", 1)]:
        start = t - 2 if name == gemm and rows and rows[-1][0] == "_decode_kernel" else t
        rows.append([name, start, dur + (t - start)])
        t += dur
    return rows, t


def test_by_role_names_layer_gemms_by_neighbours_and_averages_their_advance():
    rows, t = [["void at::native::gather", 0.0, 1.0]], 1.0
    for gemm in ["nvjet_sm90_tst_64x56", "_rs_kernel"]:
        layer, t = _layer(gemm, t)
        rows += layer
    roles = by_role(rows)
    assert {r: v["advance"] for r, v in roles.items()} == {
        "attention": 10, "o_proj": 3, "rms_norm": 1, "gate_up": 5, "silu_mul": 1, "down": 4, "qkv": 2,
        "qk_norm_rope": 1}
    assert roles["rms_norm"]["calls"] == 4 and roles["o_proj"]["calls"] == 2
    # advances sum to the traced span after the first kernel
    total = sum(v["advance"] * v["calls"] for v in roles.values())
    assert total == rows[-1][1] + rows[-1][2] - (rows[0][1] + rows[0][2])


def test_summarize_sums_each_kernels_advance_per_step_whatever_the_trace_order():
    rows, t = [], 0.0
    for _ in range(2):  # two replays of a two-layer step
        for gemm in ["_rs_kernel", "_rs_kernel"]:
            layer, t = _layer(gemm, t)
            rows += layer
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    out = summarize(shuffled, replays=2)
    assert out["kernels_per_step"] == 18 and out["kernels_traced"] == 36
    assert out["step_us"] == t / 2 == 56
    # per step: 2 x attention 10 us; GEMMs 2 x (3 + 5 + 4 + 2); the o_proj's "dur" holds its 2 us under attention
    assert out["by_kernel"]["_decode_kernel"] == {"calls": 2, "dur": 20, "advance": 20}
    assert out["by_kernel"]["_rs_kernel"] == {"calls": 8, "dur": 32, "advance": 28}
    assert sum(p["advance"] for p in out["by_kernel"].values()) == out["step_us"]
    assert out["by_role"]["gate_up"] == {"calls": 2, "advance": 5}
    assert out["one_step"][0] == ["_decode_kernel", 0.0, 10]
