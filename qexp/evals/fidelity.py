"""Fidelity vs BF16: next-token distributions and per-layer outputs of the quantized model against the BF16 one.

On NUM_WINDOWS disjoint WikiText-2 test windows of WINDOW_LEN tokens, both models' next-token distributions after
every prefix are compared: KL(P_bf16 || P_quant) per position (mean and p99) and top-1 agreement. On the first
CALIB_TOKENS tokens, each decoder layer's output is compared: SQNR = 10 log10(|ref|^2 / |quant - ref|^2).
Both sides are plain HF forwards of the same model code, so the differences are the quantization's alone.

The BF16 side (logits and layer outputs, in the model's dtype: lossless) is cached on disk under a key of the model,
the device type and the token ids, so a sweep over recipes computes it once (~1.2 GB for Qwen3's vocabulary).
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch

from qexp.evals.data import atomic_file, cache_dir
from qexp.evals.scoring import HFScorer

NUM_WINDOWS = 4
WINDOW_LEN = 1024
CALIB_TOKENS = 512
ROW_CHUNK = 128


def fidelity_windows(ids: list[int]) -> list[list[int]]:
    """NUM_WINDOWS disjoint windows of WINDOW_LEN tokens from the start of the text."""
    windows = [ids[k * WINDOW_LEN:(k + 1) * WINDOW_LEN] for k in range(NUM_WINDOWS)]
    return [w for w in windows if len(w) >= 2]


def model_key(cfg) -> dict:
    """What identifies the BF16 model's outputs: its source, and for dummy weights the config and seed."""
    key = {"model": cfg.model, "load_format": cfg.load_format}
    if cfg.load_format == "dummy":
        p = Path(cfg.model)
        cfg_file = p if p.is_file() else p / "config.json"
        key["config_sha"] = hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.is_file() else cfg.model
        key["seed"] = cfg.seed
    return key


def cache_path(cfg, device: str, windows: list[list[int]], calib: list[int]) -> Path:
    h = hashlib.sha256(json.dumps({"model": model_key(cfg), "device": torch.device(device).type,
                                   "torch": torch.__version__, "windows": windows, "calib": calib}).encode())
    return cache_dir("fidelity", h.hexdigest()[:24] + ".pt")


@torch.no_grad()
def layer_outputs(model, ids: list[int]) -> list[torch.Tensor]:
    """Each decoder layer's output hidden states on one sequence (hooks on model.model.layers)."""
    outs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda m, a, o: outs.append((o[0] if isinstance(o, tuple) else o).detach()))
             for layer in model.base_model.layers]
    try:
        model.base_model(input_ids=torch.tensor([ids], device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return outs


@torch.no_grad()
def reference(model, windows: list[list[int]], calib: list[int]) -> dict:
    """The BF16 side: per window the next-token logits, kept in the model's dtype (lossless: its lm_head
    computes them in that dtype), and each layer's output on the calibration tokens."""
    scorer = HFScorer(model)
    dtype = next(model.parameters()).dtype
    logits = [scorer.next_token_logits([w], [1])[0].to(dtype).cpu() for w in windows]
    return {"logits": logits, "layers": [h.cpu() for h in layer_outputs(model, calib)]}


def load_or_build_reference(cfg, device: str, windows, calib, load_bf16) -> tuple[dict, bool]:
    """(reference, was_cached). load_bf16() gives the BF16 model when the cache misses."""
    path = cache_path(cfg, device, windows, calib)
    if path.is_file():
        return torch.load(path, map_location="cpu"), True
    model = load_bf16()
    ref = reference(model, windows, calib)
    del model
    with atomic_file(path) as tmp:
        torch.save(ref, tmp)
    return ref, False


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    noise = (out - ref).pow(2).sum().item()
    return 10 * math.log10(ref.pow(2).sum().item() / noise) if noise > 0 else math.inf


@torch.no_grad()
def compare(model, ref: dict, windows, calib) -> tuple[dict[str, float], dict]:
    """Metrics of `model` (the quantized one) against the BF16 reference."""
    scorer = HFScorer(model)
    device = next(model.parameters()).device
    kls, agree = [], []
    for w, ref_logits in zip(windows, ref["logits"]):
        q_logits = scorer.next_token_logits([w], [1])[0]
        # float64 in row chunks: KL is a small difference of log-probs near log(1/vocab), where float32
        # leaves ~1e-6 per position; chunks bound the memory next to the engine's KV cache
        for q_rows, p_rows in zip(q_logits.split(ROW_CHUNK), ref_logits.split(ROW_CHUNK)):
            q_lp = torch.log_softmax(q_rows.double(), -1)
            p_lp = torch.log_softmax(p_rows.to(device).double(), -1)
            kls.append((p_lp.exp() * (p_lp - q_lp)).sum(-1).clamp_min(0).cpu())
            agree.append((p_lp.argmax(-1) == q_lp.argmax(-1)).cpu())
    kl = torch.cat(kls).double()
    layers = [sqnr_db(r.to(device), o) for r, o in zip(ref["layers"], layer_outputs(model, calib))]
    metrics = {"fidelity.kl_mean": kl.mean().item(), "fidelity.kl_p99": torch.quantile(kl, 0.99).item(),
               "fidelity.top1_agree": torch.cat(agree).double().mean().item()}
    finite = [s for s in layers if math.isfinite(s)]
    if len(finite) == len(layers):  # identical outputs (a BF16 run) have no finite SQNR: left out, not faked
        metrics["fidelity.sqnr_db_mean"] = sum(finite) / len(finite)
    return metrics, {"positions": kl.numel(), "windows": len(windows), "window_len": len(windows[0]),
                     "calib_tokens": len(calib), "per_layer_sqnr_db": [s if math.isfinite(s) else "inf"
                                                                       for s in layers]}
