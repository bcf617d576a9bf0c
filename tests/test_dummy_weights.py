"""The on-disk cache of seeded dummy weights: a cache hit gives the bits of a fresh draw; keys follow the inputs."""
import pytest
import torch
from transformers import AutoConfig

from qexp.models import dummy_weights
from qexp.models.loader import load_model


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QEXP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QEXP_DUMMY_CACHE", raising=False)
    return tmp_path / "cache" / "dummy_weights"


def _same_model(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for (na, ba), (nb, bb) in zip(a.named_buffers(), b.named_buffers()):  # rotary inv_freq (not in state_dict)
        assert na == nb and torch.equal(ba, bb), na


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cache_hit_is_bit_identical_to_a_fresh_draw(tiny_model_dir, cache, monkeypatch, dtype):
    first = load_model(str(tiny_model_dir), "dummy", "cpu", seed=5, dtype=dtype)  # draws and writes the cache
    assert len(list(cache.glob("*/model.safetensors"))) == 1
    calls = []
    monkeypatch.setattr(dummy_weights, "init_random", lambda *a: calls.append(a))
    cached = load_model(str(tiny_model_dir), "dummy", "cpu", seed=5, dtype=dtype)
    assert not calls  # read from the cache, not drawn again
    _same_model(first, cached)
    monkeypatch.undo()
    monkeypatch.setenv("QEXP_DUMMY_CACHE", "0")
    _same_model(load_model(str(tiny_model_dir), "dummy", "cpu", seed=5, dtype=dtype), cached)
    assert cached.lm_head.weight.data_ptr() == cached.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 900, 151000, 7]])
    with torch.no_grad():
        assert torch.equal(first(ids).logits, cached(ids).logits)


def test_cache_key_follows_config_seed_dtype_and_versions(tiny_model_dir, monkeypatch):
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    key = dummy_weights.cache_key(cfg, 0, torch.bfloat16)
    assert key == dummy_weights.cache_key(AutoConfig.from_pretrained(tiny_model_dir), 0, torch.bfloat16)
    assert key != dummy_weights.cache_key(cfg, 1, torch.bfloat16)
    assert key != dummy_weights.cache_key(cfg, 0, torch.float32)
    wider = AutoConfig.from_pretrained(tiny_model_dir, intermediate_size=cfg.intermediate_size * 2)
    assert key != dummy_weights.cache_key(wider, 0, torch.bfloat16)
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert key != dummy_weights.cache_key(cfg, 0, torch.bfloat16)


def test_changed_seed_or_config_misses_the_cache(tiny_model_dir, cache):
    a = load_model(str(tiny_model_dir), "dummy", "cpu", seed=1)
    b = load_model(str(tiny_model_dir), "dummy", "cpu", seed=2)
    assert len(list(cache.glob("*/model.safetensors"))) == 2
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, b.model.layers[0].mlp.up_proj.weight)


def test_cache_off_writes_nothing(tiny_model_dir, cache, monkeypatch):
    monkeypatch.setenv("QEXP_DUMMY_CACHE", "0")
    load_model(str(tiny_model_dir), "dummy", "cpu", seed=1)
    assert not cache.exists()
