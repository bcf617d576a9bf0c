"""Token ids of text batches, cached on disk by (tokenizer, call options, texts).

Every point of a sweep tokenises the same strings: MMLU's 5-shot prompts (~5,000 strings, seconds even in the
batched fast tokenizer) and the WikiText-2 test text (~1 s). The key hashes the tokenizer's full definition
(its tokenizers JSON: vocab, merges, normalizer, pre-tokenizer, post-processor) and library versions, so any
change re-tokenises. QEXP_TOKEN_CACHE=0 turns it off.
"""
from __future__ import annotations

import hashlib
import os
from itertools import pairwise
from pathlib import Path

import numpy as np

from qexp.evals.data import atomic_file, cache_dir

_FINGERPRINT_ATTR = "_qexp_token_cache_fingerprint"


def tokenizer_fingerprint(tokenizer) -> str | None:
    """Hash of what decides the ids: the backend definition, the wrapper class and versions; None when the
    tokenizer has no serialisable backend (a slow tokenizer: never cached)."""
    fp = getattr(tokenizer, _FINGERPRINT_ATTR, None)
    if fp is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        import tokenizers
        import transformers

        h = hashlib.sha256(backend.to_str().encode())
        h.update(f"{type(tokenizer).__qualname__}|{tokenizers.__version__}|{transformers.__version__}".encode())
        fp = h.hexdigest()
        setattr(tokenizer, _FINGERPRINT_ATTR, fp)
    return fp


def _key(fingerprint: str, texts: list[str], options: dict) -> str:
    h = hashlib.sha256(f"{fingerprint}|{sorted(options.items())!r}|{len(texts)}".encode())
    for t in texts:
        b = t.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:24]


def encode_batch(tokenizer, texts: list[str], **options) -> list[list[int]]:
    """tokenizer(texts, **options)["input_ids"], read from the cache when the same call was made before."""
    fp = tokenizer_fingerprint(tokenizer) if os.environ.get("QEXP_TOKEN_CACHE", "1") != "0" else None
    if fp is None or not texts:
        return tokenizer(texts, **options)["input_ids"] if texts else []
    path = cache_dir("tokens", f"{_key(fp, texts, options)}.npz")
    if path.is_file():
        with np.load(path) as f:
            ids, offsets = f["ids"], f["offsets"]
        return [ids[a:b].tolist() for a, b in pairwise(offsets)]
    out = tokenizer(texts, **options)["input_ids"]
    _save(path, out)
    return out


def _save(path: Path, seqs: list[list[int]]) -> None:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    ids = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(offsets[-1]))
    with atomic_file(path) as tmp:  # np.savez keeps a name ending in .npz as it is
        np.savez(tmp, ids=ids, offsets=offsets)
