import math

import pytest
import torch

from qexp.config import build_config
from qexp.tasks.matmul import error_metrics, matmul_error


def test_error_metrics_hand_computed():
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    ref = torch.tensor([[1.0, 1.0], [2.0, 4.0]])
    m = error_metrics(out, ref)  # delta = [[0, 1], [1, 0]]
    assert m["max_abs_error"] == 1.0
    assert m["mean_abs_error"] == 0.5
    assert m["relative_error"] == pytest.approx((0 + 1 / 1 + 1 / 2 + 0) / 4)
    assert m["sqnr_db"] == pytest.approx(10 * math.log10((1 + 1 + 4 + 16) / 2))
    assert m["frobenius_rel_error"] == pytest.approx(math.sqrt(2) / math.sqrt(22))


def _inputs(cfg):
    """The trial inputs matmul_error draws, re-drawn independently."""
    m, n, k = cfg.matmul_shape
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.num_tests):
        yield torch.randn(m, k, generator=gen).bfloat16(), torch.randn(n, k, generator=gen).bfloat16()


def test_bf16_baseline_equals_direct_computation():
    cfg = build_config(None, {"matmul_shape": [8, 24, 32], "num_tests": 3})
    got = matmul_error(cfg, "cpu")
    want = [error_metrics(a @ b.T, a.double() @ b.double().T) for a, b in _inputs(cfg)]
    for key in want[0]:
        assert got[f"matmul.{key}"] == pytest.approx(sum(w[key] for w in want) / len(want), rel=1e-9)


def _int8_rowwise(b):
    """Independent int8 per-row absmax fake quantization."""
    s = b.float().abs().amax(dim=1, keepdim=True) / 127
    return (torch.clamp(torch.round(b.float() / s), -127, 127) * s).bfloat16()


def test_int8_row_fake_matches_independent_quantization():
    cfg = build_config(None, {"dtype": "int8", "quant": "row", "mode": "fake", "matmul_shape": [8, 24, 64],
                              "num_tests": 2})
    got = matmul_error(cfg, "cpu")
    want = [error_metrics(a @ _int8_rowwise(b).T, a.double() @ b.double().T) for a, b in _inputs(cfg)]
    assert got["matmul.sqnr_db"] == pytest.approx(sum(w["sqnr_db"] for w in want) / 2, rel=1e-6)
    bf16 = matmul_error(build_config(None, {"matmul_shape": [8, 24, 64], "num_tests": 2}), "cpu")
    assert 30 < got["matmul.sqnr_db"] < bf16["matmul.sqnr_db"]  # int8 adds error on top of bf16 rounding
    assert (got["matmul.modules_quantized"], bf16["matmul.modules_quantized"]) == (1, 0)
