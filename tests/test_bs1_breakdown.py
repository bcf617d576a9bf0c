"""bs1_breakdown.by_role: the parts of a decode layer from one traced step, GEMMs named by their neighbours."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bs1_breakdown import by_role


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
