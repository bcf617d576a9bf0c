"""SmoothQuant: calibration statistics, smoothing math, folding, quantized outputs, against TorchAO's prototype."""
import copy

import pytest
import torch
from torchao.prototype.smoothquant import SmoothQuantConfig as AOSmoothQuantConfig
from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

from qexp.config import ConfigError, RunConfig
from qexp.models.loader import load_model, load_tokenizer
from qexp.quant import qdq
from qexp.quant.apply import quantize_model
from qexp.quant.calibration import calibration_batches
from qexp.quant.real import QuantizedWeight
from qexp.quant.smoothquant import (
    SmoothQuantConfig,
    collect_act_absmax,
    smooth_model,
    smoothing_factor,
)

GEN = torch.Generator().manual_seed(0)


def _outlier_acts(n_batches=3, k=256):
    """Activations with a few large channels, the case SmoothQuant exists for."""
    gain = torch.ones(k)
    gain[[3, 50, 200]] = 40.0
    return [(torch.randn(16, k, generator=GEN) * gain).to(torch.bfloat16) for _ in range(n_batches)]


def _bare_linear(k=256, n=128):
    lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=GEN) * 0.05)
    return lin


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), "dummy", "cpu", seed=1)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


@pytest.fixture(scope="session")
def calib(tokenizer, shared_data):
    cfg = RunConfig(calib_samples=4, data_dir=str(shared_data)).validate()
    return calibration_batches(cfg, tokenizer, "cpu", seq_len=48, batch_size=2)


def _targets(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.endswith("_proj")}


def _cfg(dtype="int8", mode="real", alpha=0.5):
    return RunConfig(dtype=dtype, quant="smooth", mode=mode, smoothquant_alpha=alpha).validate()


def test_activation_absmax_is_collected_per_channel(tiny, calib):
    acts = _outlier_acts()
    lin = _bare_linear()
    stats = collect_act_absmax(lin, {"": lin}, acts)
    assert torch.equal(stats[""], torch.cat(acts).float().abs().amax(dim=0))
    # model: q/k/v see input_layernorm's output; compare with a hook of our own on the norm
    seen = []
    layer = tiny.model.layers[1]
    h = layer.input_layernorm.register_forward_hook(lambda m, a, out: seen.append(out.float().abs().amax(dim=(0, 1))))
    try:
        stats = collect_act_absmax(tiny, _targets(tiny), calib)
    finally:
        h.remove()
    assert len(stats) == 14
    ref = torch.stack(seen).amax(dim=0)
    for n in "qkv":
        assert torch.equal(stats[f"model.layers.1.self_attn.{n}_proj"], ref)


def test_smoothing_factor_matches_torchao_prototype():
    acts = [a.float() for a in _outlier_acts()]  # float32 throughout: TorchAO computes s in the input dtype
    lin = _bare_linear().float()
    ao = torch.nn.Sequential(copy.deepcopy(lin))  # TorchAO swaps child modules, not the root
    quantize_(ao, AOSmoothQuantConfig(base_config=Int8DynamicActivationInt8WeightConfig(), step="prepare", alpha=0.5))
    for a in acts:
        ao(a)
    quantize_(ao, AOSmoothQuantConfig(base_config=Int8DynamicActivationInt8WeightConfig(), step="convert", alpha=0.5))
    ours = smoothing_factor(collect_act_absmax(lin, {"": lin}, acts)[""], [lin.weight], 0.5)
    torch.testing.assert_close(1.0 / ours, ao[0].weight.act_pre_scale.float(), rtol=1e-5, atol=0)


def test_smoothed_weight_times_unsmoothed_activation_is_the_linear():
    acts = _outlier_acts()
    w = torch.randn(128, 256, generator=GEN, dtype=torch.float64)
    x = torch.cat(acts).double()
    s = smoothing_factor(x.abs().amax(dim=0).float(), [w.float()], 0.5).double()
    assert s.max() / s.min() > 5  # the outlier channels really get migrated
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-12, atol=1e-12)
    # and it flattens the activation outliers the per-token quantizer sees
    assert (x / s).abs().amax(0).max() / (x / s).abs().amax(0).median() < x.abs().amax(0).max() / x.abs().amax(0).median()


def test_smoothing_folds_into_norms_and_up_proj_and_keeps_the_model(tiny, calib):
    m = copy.deepcopy(tiny)
    targets = _targets(m)
    stats = collect_act_absmax(m, targets, calib)
    pre_scales = smooth_model(m, targets, stats, alpha=0.5)
    assert sorted(pre_scales) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]  # the only unfolded ones
    assert not torch.equal(m.model.layers[0].input_layernorm.weight, tiny.model.layers[0].input_layernorm.weight)
    assert not torch.equal(m.model.layers[0].mlp.up_proj.weight, tiny.model.layers[0].mlp.up_proj.weight)
    for name, p in pre_scales.items():  # apply x * pre_scale the way the quantized weight does
        targets[name].register_forward_pre_hook(lambda mod, args, p=p: ((args[0].float() * p).to(args[0].dtype),))
    with torch.no_grad():
        ref, out = tiny(calib[0]).logits.float(), m(calib[0]).logits.float()
    assert qdq.sqnr_db(ref, out) > 30  # equal up to bf16 rounding of the folded weights
    assert not torch.equal(ref, out)


@pytest.mark.parametrize("dtype,mode", [("int8", "real"), ("int8", "fake"), ("fp8", "fake")])
def test_smoothquant_model_is_active_and_close(tiny, calib, dtype, mode):
    m = copy.deepcopy(tiny)
    r = quantize_model(m, _cfg(dtype, mode), calibration_batches=lambda: calib)
    assert r.quantized == r.expected == 14 and r.calibration["batches"] == len(calib)
    assert r.num_pre_scales == 2 * 64  # o_proj of each layer keeps its 1/s
    with torch.no_grad():
        ref, out = tiny(calib[1]).logits.float(), m(calib[1]).logits.float()
    assert not torch.equal(ref, out)  # quantization is active
    assert qdq.sqnr_db(ref, out) > 15


def test_smoothquant_fake_and_real_agree(tiny, calib):
    outs, weights = {}, {}
    for mode in ("fake", "real"):
        m = copy.deepcopy(tiny)
        quantize_model(m, _cfg("int8", mode), calibration_batches=calib)
        weights[mode] = {n: mod.weight for n, mod in _targets(m).items()}
        if mode == "real":
            q = m.model.layers[0].self_attn.q_proj.weight
            assert isinstance(q, QuantizedWeight) and q.act_dtype == "int8" and q.pre_scale is None
            assert m.model.layers[0].self_attn.o_proj.weight.pre_scale is not None
        with torch.no_grad():
            outs[mode] = m(calib[1]).logits.float()
    assert qdq.sqnr_db(outs["real"], outs["fake"]) > 30
    for name, real in weights["real"].items():  # same smoothing, same codes: dequantized weights bit-identical
        fake = weights["fake"][name]
        assert torch.equal(real.dequantize(), fake.weight)
        assert (real.pre_scale is None) == (fake.pre_scale is None)


def test_alpha_changes_the_result_and_alpha_zero_ignores_activations(tiny, calib):
    def quantized_q_proj(alpha, batches):
        m = copy.deepcopy(tiny)
        quantize_model(m, _cfg(alpha=alpha), calibration_batches=batches)
        return m.model.layers[0].self_attn.q_proj.weight

    a, b = quantized_q_proj(0.5, calib[:1]), quantized_q_proj(0.8, calib[:1])
    assert not torch.equal(a.qdata, b.qdata)
    # alpha = 0: s = 1 / max|W_j| whatever the calibration data says
    z1, z2 = quantized_q_proj(0.0, calib[:1]), quantized_q_proj(0.0, calib[1:])
    assert torch.equal(z1.qdata, z2.qdata) and torch.equal(z1.scale, z2.scale)


def test_no_smoothing_is_plain_dynamic_w8a8():
    """s = 1 (TorchAO's alpha=None) degenerates to plain W8A8; it matches TorchAO's dynamic int8 up to its
    127.5-vs-127 scale convention."""
    acts = _outlier_acts()
    lin = _bare_linear()
    w0 = lin.weight.detach().clone()
    assert smooth_model(lin, {"": lin}, collect_act_absmax(lin, {"": lin}, acts), alpha=None)[""].eq(1).all()
    assert torch.equal(lin.weight, w0)
    quantize_(lin, SmoothQuantConfig("int8", "real", alpha=0.0))
    plain = QuantizedWeight.from_float(w0, "int8", "row", act_dtype="int8")
    assert torch.equal(lin.weight.qdata, plain.qdata)
    ao = _bare_linear()
    with torch.no_grad():
        ao.weight.copy_(w0)
    quantize_(ao, Int8DynamicActivationInt8WeightConfig())
    x = acts[0]
    with torch.no_grad():
        ref = x.double() @ w0.double().T
        ours, theirs = lin(x), ao(x)
    assert abs(qdq.sqnr_db(ref, ours) - qdq.sqnr_db(ref, theirs)) < 1.0
    assert qdq.sqnr_db(theirs, ours) > 25


def test_smoothing_helps_int8_on_outlier_activations():
    acts = _outlier_acts()
    lin = _bare_linear()
    x = torch.cat(acts)
    ref = x.double() @ lin.weight.double().T
    errs = {}
    for alpha in (None, 0.5):
        m = copy.deepcopy(lin)
        pre = smooth_model(m, {"": m}, collect_act_absmax(m, {"": m}, acts), alpha=alpha)[""]
        m.qexp_pre_scale = pre
        quantize_(m, SmoothQuantConfig("int8", "real", alpha=alpha or 0.0))
        with torch.no_grad():
            errs[alpha] = qdq.sqnr_db(ref, m(x))
    assert errs[0.5] > errs[None] + 3, errs


def test_calibration_batches_come_from_unevaluated_splits(tokenizer, shared_data):
    cfg = RunConfig(calib_samples=5, data_dir=str(shared_data)).validate()
    batches = calibration_batches(cfg, tokenizer, "cpu", seq_len=32, batch_size=2)
    assert [tuple(b.shape) for b in batches] == [(2, 32), (2, 32), (1, 32)]
    valid = (shared_data / "wikitext-2-raw" / "wiki.valid.raw").read_text()
    text = tokenizer.decode(batches[0][0])
    assert text in valid and text not in (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text()
    assert torch.equal(torch.cat(batches), torch.cat(calibration_batches(cfg, tokenizer, "cpu", seq_len=32)))
    mmlu = RunConfig(calib_samples=3, calib_data="mmlu", data_dir=str(shared_data)).validate()
    prompts = [tokenizer.decode(b[0]) for b in calibration_batches(mmlu, tokenizer)]
    assert len(prompts) == 3 and all("\nAnswer: " in p for p in prompts)
    with pytest.raises(ConfigError, match="calib_samples 10000 exceeds the 285 MMLU dev questions"):
        calibration_batches(RunConfig(calib_samples=10000, calib_data="mmlu", data_dir=str(shared_data)), tokenizer)


def test_smoothing_a_tied_lm_head_leaves_the_embedding_alone(tiny, calib):
    m = copy.deepcopy(tiny)
    assert m.lm_head.weight is m.model.embed_tokens.weight  # tied, as in Qwen3-1.7B
    cfg = RunConfig(dtype="int8", quant="smooth", include_lm_head=True).validate()
    r = quantize_model(m, cfg, calibration_batches=calib)
    assert r.quantized == 15 and m.lm_head.weight.pre_scale is not None
    assert torch.equal(m.model.embed_tokens.weight, tiny.model.embed_tokens.weight)
