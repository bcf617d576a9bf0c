import pytest
import torch

from qexp.models.loader import ModelLoadError, load_model, load_tokenizer


def test_dummy_weights_are_seeded_and_deterministic(tiny_model_dir):
    a = load_model(str(tiny_model_dir), "dummy", "cpu", seed=3)
    b = load_model(str(tiny_model_dir / "config.json"), "dummy", "cpu", seed=3)
    c = load_model(str(tiny_model_dir), "dummy", "cpu", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.up_proj.weight"], sc["model.layers.0.mlp.up_proj.weight"])
    w = sa["model.layers.0.self_attn.q_proj.weight"].float()
    assert w.std().item() == pytest.approx(a.config.initializer_range, rel=0.1)
    assert a.lm_head.weight.data_ptr() == a.model.embed_tokens.weight.data_ptr()  # tied, as in Qwen3-1.7B
    assert next(a.parameters()).dtype == torch.bfloat16


def test_dummy_model_matches_a_freshly_built_hf_model_forward(tiny_model_dir):
    """The meta-device build + our init gives a working HF model: same logits as an eager HF build with the
    same weights (catches uninitialised buffers such as the rotary inv_freq)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    m = load_model(str(tiny_model_dir), "dummy", "cpu", seed=0)
    ref = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir), dtype=torch.bfloat16)
    ref.load_state_dict(m.state_dict())
    ids = torch.tensor([[1, 5, 900, 151000, 7, 7]])
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, ref.eval()(ids).logits, rtol=0, atol=0)


def test_tokenizer_from_local_dir(tokenizer_dir):
    tok = load_tokenizer("Qwen/Qwen3-1.7B", str(tokenizer_dir))
    assert tok("Hello, world!").input_ids == [9707, 11, 1879, 0]


def test_missing_weights_and_offline_errors_are_clear(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("QEXP_TOKENIZER", raising=False)  # set on the GPU machine: it would be used instead
    with pytest.raises(ModelLoadError, match="has a config but no weights; use --load-format dummy"):
        load_model(str(tiny_model_dir), "auto", "cpu")
    with pytest.raises(ModelLoadError, match="--load-format dummy"):
        load_model("no-such-org/no-such-model", "auto", "cpu")
    with pytest.raises(ModelLoadError, match="no tokenizer files in"):
        load_tokenizer(str(tmp_path))
