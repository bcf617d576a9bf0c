"""Merged q/k/v and gate/up projections (qexp.engine.merge): one GEMM computes what the separate linears did."""
import pytest
import torch
import torch.nn.functional as F

from qexp.engine.merge import merge_linears
from qexp.quant.fake import FakeQuantActWeight
from qexp.quant.real import QuantizedWeight

SIZES = (64, 32, 32)  # q, k, v rows (out features) of a K=128 input


def _linears(seed=0, dtype=torch.float32, bias=False):
    g = torch.Generator().manual_seed(seed)
    mods = []
    for n in SIZES:
        m = torch.nn.Linear(128, n, bias=bias, dtype=dtype)
        with torch.no_grad():
            m.weight.copy_(torch.randn(n, 128, generator=g) / 10)
            if bias:
                m.bias.copy_(torch.randn(n, generator=g))
        mods.append(m)
    return mods


def _quantize(mods, dtype, gran, group_size=None, act_dtype=None):
    for m in mods:
        w = QuantizedWeight.from_float(m.weight.detach(), dtype, gran, group_size, act_dtype=act_dtype)
        m.weight = torch.nn.Parameter(w, requires_grad=False)
    return mods


def _check_merge(mods):
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(9))
    want = torch.cat([m(x) for m in mods], -1)
    merged = merge_linears(mods)
    assert merged is not None
    torch.testing.assert_close(F.linear(x, *merged), want, rtol=1e-5, atol=1e-5)
    # the modules still compute what they did, now from rows of the merged storage
    torch.testing.assert_close(torch.cat([m(x) for m in mods], -1), want, rtol=0, atol=0)
    return merged


def test_plain_weights_merge_into_one_storage():
    mods = _linears(bias=True)
    w, b = _check_merge(mods)
    assert w.shape == (sum(SIZES), 128) and b.shape == (sum(SIZES),)
    base = w.data_ptr()
    offsets = [m.weight.data_ptr() - base for m in mods]
    assert offsets == [0, 64 * 128 * 4, 96 * 128 * 4]  # views, not copies


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("gran,group_size", [("tensor", None), ("row", None), ("group", 32)])
def test_quantized_weights_merge_with_their_scales(dtype, gran, group_size):
    mods = _quantize(_linears(1), dtype, gran, group_size)
    old_scales = [m.weight.scale.clone() for m in mods]
    w, b = _check_merge(mods)
    assert isinstance(w, QuantizedWeight) and b is None
    assert w.qdata.dtype == mods[0].weight.qdata.dtype and w.group_size == group_size
    if gran == "tensor":  # each module keeps its own scale; the merged weight holds it once per row
        assert w.scale.shape == (sum(SIZES),)
        assert [m.weight.scale.numel() for m in mods] == [1, 1, 1]
        assert torch.equal(w.scale, torch.cat([s.expand(n) for s, n in zip(old_scales, SIZES)]))
    assert mods[1].weight.qdata.data_ptr() == w.qdata.data_ptr() + 64 * 128  # int8/fp8: one byte per element


def test_w8a8_weights_merge():
    mods = _quantize(_linears(2), "int8", "row", act_dtype="int8")
    w, _ = _check_merge(mods)
    assert w.act_dtype == "int8"


def test_unmergeable_sets_are_left_alone():
    mixed = _linears(3)
    _quantize(mixed[:1], "int8", "row")
    assert merge_linears(mixed) is None
    groups = _linears(4)
    _quantize(groups[:2], "int8", "group", 32)
    _quantize(groups[2:], "int8", "group", 64)
    assert merge_linears(groups) is None
    partial_bias = _linears(5)
    partial_bias[0].bias = torch.nn.Parameter(torch.zeros(64))
    assert merge_linears(partial_bias) is None
    fake_act = _linears(6)
    for m in fake_act:
        m.weight = torch.nn.Parameter(FakeQuantActWeight(m.weight.detach(), "int8"), requires_grad=False)
    assert merge_linears(fake_act) is None
    before = [m.weight for m in fake_act]
    assert all(m.weight is w for m, w in zip(fake_act, before))


def test_engine_with_merged_projections_matches_hf(tiny_model_dir):
    """The CPU engine with merging forced on: greedy tokens equal HF generate; int8 real scores equal HF's."""
    from qexp.config import RunConfig
    from qexp.engine import SamplingParams
    from qexp.models.loader import load_model
    from qexp.quant.apply import quantize_model

    from tests.test_engine import _engine, _hf_greedy, _hf_logits, _sharpened

    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in (5, 17, 9)]
    m = _sharpened(load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32))
    want = [_hf_greedy(m, p, 16) for p in prompts]
    llm = _engine(m, merge_projections=True)
    assert all(x is not None for x in llm.runner.qkv + llm.runner.gate_up)
    out = llm.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True))
    assert out == want

    q = _sharpened(load_model(str(tiny_model_dir), "dummy", "cpu", 0))
    cfg = RunConfig(model=str(tiny_model_dir), load_format="dummy", dtype="int8", quant="tensor", mode="real")
    quantize_model(q, cfg.validate())
    llm = _engine(q, merge_projections=True)
    assert isinstance(llm.runner.qkv[0][0], QuantizedWeight)
    for seq, got in zip(prompts, llm.score(prompts, [1] * len(prompts))):
        ref = _hf_logits(q, seq).log_softmax(-1)[:-1].gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
        torch.testing.assert_close(got, ref, atol=0.05, rtol=0.01)
