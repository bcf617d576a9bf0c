"""Seeded random ("dummy") weights, drawn once per (config, seed, dtype) and cached on disk as safetensors.

Drawing 1.7B normal numbers on the CPU takes ~15 s; a sweep loads the same dummy model in every point (and again
for the fidelity reference), so later loads read the cached tensors instead: the same bits, in a few seconds.
The key covers everything the drawn bits depend on: the config, seed and dtype, the source of the init below,
and the torch (RNG) and transformers (parameter order) versions. QEXP_DUMMY_CACHE=0 turns the cache off.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path

import torch

from qexp.evals.data import atomic_file, cache_dir


@torch.no_grad()
def init_random(model: torch.nn.Module, seed: int, std: float) -> None:
    """Deterministic, device-independent parameters: normal(0, std) matrices from a CPU generator seeded with
    `seed`, unit norms, zero vectors."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std))
        else:
            p.zero_()


INIT_SOURCE = inspect.getsource(init_random)  # part of the cache key: editing the init invalidates the cache


@torch.no_grad()
def finish(model: torch.nn.Module) -> None:
    """Non-persistent buffers (rotary inv_freq) were left uninitialised by to_empty: rebuild them on the CPU;
    then tie the embeddings."""
    for mod in model.modules():
        if "inv_freq" in dict(mod.named_buffers(recurse=False)) and hasattr(mod, "config"):
            fresh = type(mod)(mod.config)
            for bname, buf in fresh.named_buffers(recurse=False):
                getattr(mod, bname).copy_(buf)
    model.tie_weights()


def cache_key(config, seed: int, dtype: torch.dtype) -> str:
    import transformers

    parts = {"config": json.loads(config.to_json_string(use_diff=False)), "seed": seed, "dtype": str(dtype),
             "init": INIT_SOURCE, "torch": torch.__version__,
             "transformers": transformers.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(config, seed: int, dtype: torch.dtype) -> Path | None:
    if os.environ.get("QEXP_DUMMY_CACHE", "1") == "0":
        return None
    return cache_dir("dummy_weights", cache_key(config, seed, dtype)) / "model.safetensors"


@torch.no_grad()
def fill_dummy(model: torch.nn.Module, config, seed: int, dtype: torch.dtype) -> bool:
    """Give `model` (materialised, uninitialised) its seeded dummy weights; True when read from the cache."""
    from safetensors.torch import load_file, save_file

    path = cache_path(config, seed, dtype)
    params = dict(model.named_parameters())  # tied weights appear once
    cached = path is not None and path.is_file()
    if cached:
        # read on the CPU: no transient second copy in GPU memory before the engine sizes its KV cache
        tensors = load_file(str(path))
        if tensors.keys() != params.keys():
            raise RuntimeError(f"dummy weight cache {path} does not match the model's parameters; delete it")
        for name, p in params.items():
            p.copy_(tensors[name])
    else:
        init_random(model, seed, config.initializer_range)
        if path is not None:
            with atomic_file(path) as tmp:
                save_file({n: p.detach().cpu().contiguous() for n, p in params.items()}, str(tmp))
    finish(model)
    return cached
