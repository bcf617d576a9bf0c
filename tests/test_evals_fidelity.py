"""Fidelity vs BF16 against KL / top-1 / SQNR computed directly from two plain HF forwards."""
import copy
from types import SimpleNamespace

import pytest
import torch

from qexp.evals import fidelity
from qexp.models.loader import load_model


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32)


@pytest.fixture(scope="module")
def noisy(base):
    """The model with perturbed q/up projections: a stand-in for quantization noise."""
    m = copy.deepcopy(base)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("q_proj.weight", "up_proj.weight")):
                p.add_(torch.randn(p.shape, generator=g) * 0.2 * p.std())
    return m


@pytest.fixture
def windows(monkeypatch, tmp_path):
    monkeypatch.setenv("QEXP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fidelity, "NUM_WINDOWS", 2)
    monkeypatch.setattr(fidelity, "WINDOW_LEN", 48)
    g = torch.Generator().manual_seed(0)
    ws = fidelity.fidelity_windows(torch.randint(0, 151000, (500,), generator=g).tolist())
    assert [len(w) for w in ws] == [48, 48]
    return ws, ws[0][:32]


def test_identical_model_is_perfect(base, windows):
    ws, calib = windows
    metrics, info = fidelity.compare(base, fidelity.reference(base, ws, calib), ws, calib)
    assert metrics["fidelity.top1_agree"] == 1.0
    assert metrics["fidelity.kl_mean"] < 1e-6 and metrics["fidelity.kl_p99"] < 1e-6
    assert "fidelity.sqnr_db_mean" not in metrics and info["per_layer_sqnr_db"] == ["inf", "inf"]
    assert info["positions"] == 2 * 48


def test_noisy_model_matches_direct_computation(base, noisy, windows):
    ws, calib = windows
    metrics, info = fidelity.compare(noisy, fidelity.reference(base, ws, calib), ws, calib)
    with torch.no_grad():
        p = torch.cat([torch.log_softmax(base(torch.tensor([w])).logits[0].double(), -1) for w in ws])
        q = torch.cat([torch.log_softmax(noisy(torch.tensor([w])).logits[0].double(), -1) for w in ws])
        kl = (p.exp() * (p - q)).sum(-1)
        h_ref = base(torch.tensor([calib]), output_hidden_states=True).hidden_states
        h_out = noisy(torch.tensor([calib]), output_hidden_states=True).hidden_states
    assert kl.mean() > 1e-4  # the perturbation is visible
    assert metrics["fidelity.kl_mean"] == pytest.approx(kl.mean().item(), rel=1e-4)
    assert metrics["fidelity.kl_p99"] == pytest.approx(torch.quantile(kl, 0.99).item(), rel=1e-4)
    assert metrics["fidelity.top1_agree"] == pytest.approx((p.argmax(-1) == q.argmax(-1)).double().mean().item())
    # hidden_states[1] is the first decoder layer's output (the last one is returned after the final norm)
    ref1, out1 = h_ref[1].double(), h_out[1].double()
    sqnr1 = 10 * torch.log10(ref1.pow(2).sum() / (out1 - ref1).pow(2).sum()).item()
    assert info["per_layer_sqnr_db"][0] == pytest.approx(sqnr1, rel=1e-4)
    assert metrics["fidelity.sqnr_db_mean"] == pytest.approx(sum(info["per_layer_sqnr_db"]) / 2)


def test_reference_is_cached_per_model_and_data(base, windows, tiny_model_dir):
    ws, calib = windows
    cfg = SimpleNamespace(model=str(tiny_model_dir), load_format="dummy", seed=0)
    ref, cached = fidelity.load_or_build_reference(cfg, "cpu", ws, calib, lambda: base)
    assert not cached

    def must_not_load():
        raise AssertionError("the BF16 model was loaded although its outputs are cached")

    again, cached = fidelity.load_or_build_reference(cfg, "cpu", ws, calib, must_not_load)
    assert cached and torch.equal(again["logits"][0], ref["logits"][0])
    other_seed = SimpleNamespace(model=str(tiny_model_dir), load_format="dummy", seed=1)
    other_data = [w[::-1] for w in ws]
    assert fidelity.cache_path(other_seed, "cpu", ws, calib) != fidelity.cache_path(cfg, "cpu", ws, calib)
    assert fidelity.cache_path(cfg, "cpu", other_data, calib) != fidelity.cache_path(cfg, "cpu", ws, calib)
