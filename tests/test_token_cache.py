"""The on-disk token-id cache: a hit returns exactly the tokenizer's ids; keys follow tokenizer, options, texts."""
import pytest

from qexp.evals import token_cache
from qexp.evals.token_cache import encode_batch

TEXTS = ["Question: 2+2?\nA. 4\nAnswer:", "Answer: B", "", " héllo wörld ✓\n\n", "x" * 5000]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QEXP_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("QEXP_TOKEN_CACHE", raising=False)
    return tmp_path / "tokens"


def test_cache_hit_equals_the_tokenizer(tokenizer, cache, monkeypatch):
    fresh = tokenizer(TEXTS)["input_ids"]
    assert encode_batch(tokenizer, TEXTS) == fresh  # miss: computed and stored
    assert len(list(cache.glob("*.npz"))) == 1
    monkeypatch.setattr(type(tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenised again"))
    assert encode_batch(tokenizer, TEXTS) == fresh  # hit


def test_key_follows_options_texts_and_tokenizer(tokenizer, cache):
    plain = encode_batch(tokenizer, TEXTS)
    raw = encode_batch(tokenizer, TEXTS, add_special_tokens=False)
    assert raw == tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    encode_batch(tokenizer, TEXTS[::-1])
    assert len(list(cache.glob("*.npz"))) == 3
    assert plain == encode_batch(tokenizer, TEXTS)


def test_changed_tokenizer_misses_the_cache(tokenizer_dir, cache):
    from qexp.models.loader import load_tokenizer

    a = load_tokenizer("unused", str(tokenizer_dir))
    b = load_tokenizer("unused", str(tokenizer_dir))
    b.add_tokens(["héllo"])
    assert token_cache.tokenizer_fingerprint(a) != token_cache.tokenizer_fingerprint(b)
    assert encode_batch(a, TEXTS) == a(TEXTS)["input_ids"]
    assert encode_batch(b, TEXTS) == b(TEXTS)["input_ids"] != a(TEXTS)["input_ids"]


def test_cache_off_and_tokenizers_without_a_backend_are_not_cached(tokenizer, cache, monkeypatch):
    class Plain:
        def __call__(self, texts, **kw):
            return {"input_ids": [[len(t)] for t in texts]}

    assert encode_batch(Plain(), ["ab", "c"]) == [[2], [1]]
    monkeypatch.setenv("QEXP_TOKEN_CACHE", "0")
    encode_batch(tokenizer, TEXTS)
    assert not cache.exists()


def test_atomic_file_publishes_whole_files_only(tmp_path):
    import pytest

    from qexp.evals.data import atomic_file

    path = tmp_path / "sub" / "cache.npz"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.endswith(".npz") and not path.exists()
        tmp.write_bytes(b"complete")
    assert path.read_bytes() == b"complete"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"complete" and list(path.parent.iterdir()) == [path]
