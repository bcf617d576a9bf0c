"""Load transformers' Qwen3ForCausalLM: pretrained (hub id or local dir) or seeded random ("dummy") weights."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from qexp.models.dummy_weights import fill_dummy

DTYPE = torch.bfloat16
OFFLINE_HINT = ("no network access to the Hugging Face hub? pass a local dir, or --load-format dummy with a "
                "config.json for random weights (e.g. configs/models/tiny-qwen3), and --tokenizer DIR")


class ModelLoadError(RuntimeError):
    """The model or tokenizer could not be loaded; message is one line for the user."""


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError("device cuda requested but torch sees no CUDA GPU; use --device cpu")
    return device


def load_config(model: str):
    """The model's transformers config, from a config.json path, a dir holding one, or a hub id."""
    from transformers import AutoConfig

    p = Path(model)
    if p.is_file():
        p = p.parent
    try:
        return AutoConfig.from_pretrained(str(p) if p.exists() else model)
    except OSError as e:
        raise ModelLoadError(f"cannot load the config of {model!r}: {_first_line(e)}; {OFFLINE_HINT}") from None


def load_model(model: str, load_format: str = "auto", device: str = "cpu", seed: int = 0,
               dtype: torch.dtype = DTYPE) -> torch.nn.Module:
    """Qwen3ForCausalLM in eval mode on `device`.

    dummy weights follow transformers' own init (normal(0, initializer_range)), drawn from a generator seeded
    with `seed` on the CPU, so the same seed gives the same weights on every device (cached on disk after the
    first draw: qexp.models.dummy_weights).
    """
    from transformers import AutoModelForCausalLM

    if load_format == "dummy":
        config = load_config(model)
        torch.manual_seed(seed)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(config, dtype=dtype)
        m = m.to_empty(device=device)
        fill_dummy(m, config, seed, dtype)
        return m.eval()
    try:
        m = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
    except OSError as e:
        if Path(model).is_dir() and (Path(model) / "config.json").exists():
            raise ModelLoadError(f"{model} has a config but no weights; use --load-format dummy for random "
                                 "weights") from None
        raise ModelLoadError(f"cannot load model {model!r}: {_first_line(e)}; {OFFLINE_HINT}") from None
    return m.to(device).eval()


def load_tokenizer(model: str, tokenizer: str | None = None):
    """Tokenizer from --tokenizer, else $QEXP_TOKENIZER, else the model's dir or hub id."""
    from transformers import AutoTokenizer

    src = tokenizer or os.environ.get("QEXP_TOKENIZER") or model
    p = Path(src)
    if p.is_file():
        p, src = p.parent, str(p.parent)
    if p.is_dir() and not any((p / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        raise ModelLoadError(f"no tokenizer files in {p}; pass --tokenizer DIR (e.g. a Qwen3 tokenizer dir)")
    try:
        return AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load tokenizer from {src!r}: {_first_line(e)}; {OFFLINE_HINT}") from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
