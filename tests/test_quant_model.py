"""quantize_model on a Qwen3: every recipe of the grid active on every target linear, memory, clear errors."""
import copy
import json

import pytest
import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler

from qexp.config import GROUP_SIZES, ConfigError, RunConfig
from qexp.models.loader import load_model
from qexp.quant import apply as quant_apply
from qexp.quant import qdq
from qexp.quant.apply import QuantizationError, quantize_model
from qexp.quant.fake import FakeQuantActWeight
from qexp.quant.real import QuantizedWeight

WEIGHT_RECIPES = [(d, q, gs) for d in ("int8", "fp8") for q, gs in
                  [("tensor", None), ("row", None), *[("group", g) for g in GROUP_SIZES]]]


@pytest.fixture(scope="session")
def small_qwen3(tmp_path_factory, tiny_model_dir):
    """Tiny Qwen3 widened to K = 512 / 1024 so every group size divides; small vocab keeps it fast."""
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    cfg.update(hidden_size=512, intermediate_size=1024, head_dim=128, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=1, vocab_size=512)
    d = tmp_path_factory.mktemp("small-qwen3")
    (d / "config.json").write_text(json.dumps(cfg))
    return load_model(str(d), "dummy", "cpu", seed=0)


@pytest.fixture(scope="session")
def tokens():
    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))


def _cfg(dtype, quant, gs=None, mode="real", **kw):
    return RunConfig(dtype=dtype, quant=quant, group_size=gs, mode=mode, **kw).validate()


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits.float()


@pytest.mark.parametrize("dtype,quant,gs", WEIGHT_RECIPES)
def test_weight_recipe_fake_and_real_active_on_every_linear(small_qwen3, tokens, dtype, quant, gs):
    base = _logits(small_qwen3, tokens)
    outs, reports = {}, {}
    for mode in ("fake", "real"):
        m = copy.deepcopy(small_qwen3)
        reports[mode] = r = quantize_model(m, _cfg(dtype, quant, gs, mode))
        assert r.expected == r.quantized == 7 == len(r.modules)
        outs[mode] = _logits(m, tokens)
        assert not torch.equal(outs[mode], base)  # active: the recipe changed the model's output
        lin = m.model.layers[0].mlp.down_proj
        if mode == "real":
            assert isinstance(lin.weight, QuantizedWeight) and lin.weight.qdata.dtype == qdq.STORAGE[dtype]
            stored = sum(mod.weight.scale.numel() for mod in m.modules()
                         if isinstance(getattr(mod, "weight", None), QuantizedWeight))
            assert r.num_scales == stored
            assert r.weight_bytes_ratio <= 0.55  # int8/fp8 storage + float32 scales vs bf16
        else:
            assert type(lin.weight) is torch.nn.Parameter and lin.weight.dtype == torch.bfloat16
        assert m.model.embed_tokens.weight.dtype == torch.bfloat16 and type(m.lm_head.weight) is torch.nn.Parameter
    assert reports["fake"].num_scales == reports["real"].num_scales
    assert reports["real"].metrics()["quant.num_scales"] == reports["real"].num_scales
    torch.testing.assert_close(outs["real"], outs["fake"], rtol=1.6e-2, atol=2e-2)


def test_per_row_real_weight_memory(small_qwen3):
    r = quantize_model(copy.deepcopy(small_qwen3), _cfg("int8", "row"))
    n_weights = sum(m.weight.numel() for n, m in small_qwen3.named_modules() if quant_apply.is_target(m, n))
    assert r.weight_bytes_before == 2 * n_weights
    assert r.weight_bytes_after == n_weights + 4 * r.num_scales  # int8 codes + one float32 scale per row
    assert r.weight_bytes_ratio <= 0.55


def test_include_lm_head_quantizes_the_tied_head_only(small_qwen3):
    m = copy.deepcopy(small_qwen3)
    r = quantize_model(m, _cfg("int8", "row", include_lm_head=True))
    assert r.quantized == 8 and "lm_head" in r.modules
    assert isinstance(m.lm_head.weight, QuantizedWeight)
    assert type(m.model.embed_tokens.weight) is torch.nn.Parameter  # embeddings stay bf16


def test_bf16_baseline_is_untouched(small_qwen3):
    m = copy.deepcopy(small_qwen3)
    r = quantize_model(m, RunConfig().validate())
    assert r.quantized == 0 and all(type(p) is torch.nn.Parameter for p in m.parameters())


def test_group_size_not_dividing_k_names_the_layer(tiny_model_dir):
    m = load_model(str(tiny_model_dir), "dummy", "cpu", 0)  # hidden 64
    with pytest.raises(ConfigError, match=r"group_size 128 .* in_features 64 of layer model\.layers\.0\.self_attn\.q_proj"):
        quantize_model(m, _cfg("int8", "group", 128))


def test_fp8_w8a8_real_on_cpu_is_a_clear_error(small_qwen3):
    with pytest.raises(ConfigError, match="compute capability >= 8.9.*--mode fake"):
        quantize_model(copy.deepcopy(small_qwen3), _cfg("fp8", "smooth"), calibration_batches=[])


def test_fake_fp8_w8a8_runs_on_cpu(small_qwen3, tokens):
    m = copy.deepcopy(small_qwen3)
    r = quantize_model(m, _cfg("fp8", "smooth", mode="fake"), calibration_batches=[tokens])
    assert r.quantized == 7 and isinstance(m.model.layers[0].self_attn.q_proj.weight, FakeQuantActWeight)
    assert torch.isfinite(_logits(m, tokens)).all()


def test_no_target_linear_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)).to(torch.bfloat16)
    with pytest.raises(QuantizationError, match="no target linear"):
        quantize_model(model, _cfg("int8", "row"))


def test_fewer_quantized_than_expected_is_an_error(small_qwen3, monkeypatch):
    class SkipDownProj(AOBaseConfig):
        pass

    @register_quantize_module_handler(SkipDownProj)
    def _skip(module, config):  # quantizes everything but the down projections (a silent partial no-op)
        if module.in_features == 1024:  # down_proj
            return module
        module.weight = torch.nn.Parameter(qdq.fake_quantize(module.weight.detach(), "int8", "row"), requires_grad=False)
        return module

    monkeypatch.setattr(quant_apply, "recipe_config", lambda cfg, device=None: SkipDownProj())
    with pytest.raises(QuantizationError, match=r"quantized 6 of 7 .*down_proj"):
        quantize_model(copy.deepcopy(small_qwen3), _cfg("int8", "row"))
