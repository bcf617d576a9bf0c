"""SmoothQuant W8A8 (Xiao et al. 2023) for int8 and fp8: calibrate, smooth, then quantize.

1. Calibrate: forward pre-hooks on the target linears record the per-input-channel max |x| over the
   calibration batches.
2. Smooth: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (per input channel j, as in the paper and TorchAO's
   prototype), W' = W * s and x' = x / s, so W' x' = W x exactly before rounding. Linears that read one input
   share one s (max over their weights). x / s is folded into the op that produces x, which makes it free:
   q/k/v -> input_layernorm, gate/up -> post_attention_layernorm (RMSNorm weight / s), down -> up_proj's rows
   (act(gate) * up / s). o_proj (its input is attention's output) and any other target (lm_head, a bare
   linear) keep x * (1 / s) as `pre_scale` inside the quantized weight: one elementwise multiply that the
   fused activation-quant kernel can absorb.
   alpha = 0 gives s = 1 / max|W_j| (all difficulty moved to the activations), not s = 1; smoothing off
   (s = 1, TorchAO's alpha=None) is `smooth_model(..., alpha=None)` and equals plain dynamic W8A8.
3. Quantize: per-row weights + dynamic per-token activations (int8 or fp8 e4m3), real (QuantizedWeight ->
   qexp.kernels.quantized_linear) or fake (bf16 weight, activations quantize->dequantized in bf16).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torchao.core.config import AOBaseConfig
from torchao.quantization.transform_module import register_quantize_module_handler

from qexp.quant import qdq
from qexp.quant.fake import FakeQuantActWeight
from qexp.quant.real import QuantizedWeight

MIN_SCALE = 1e-5  # floor on max|W_j| and on s (dead channels), as in the SmoothQuant reference code


@dataclass
class SmoothQuantConfig(AOBaseConfig):
    dtype: str = "int8"  # int8 | fp8: weights (per row) and activations (per token)
    mode: str = "real"  # real | fake
    alpha: float = 0.5


@register_quantize_module_handler(SmoothQuantConfig)
def _smoothquant_linear(module: torch.nn.Linear, config: SmoothQuantConfig) -> torch.nn.Linear:
    """Quantize an already smoothed linear; `module.qexp_pre_scale` (set by smooth_model's caller) rides along."""
    w = module.weight.detach()
    pre_scale = module.__dict__.pop("qexp_pre_scale", None)
    if config.mode == "real":
        qw = QuantizedWeight.from_float(w, config.dtype, "row", act_dtype=config.dtype, pre_scale=pre_scale)
    else:
        qw = FakeQuantActWeight(qdq.fake_quantize(w, config.dtype, "row"), config.dtype, pre_scale)
    module.weight = torch.nn.Parameter(qw, requires_grad=False)
    module.qexp_recipe = f"smoothquant alpha={config.alpha}: {qw.describe()}"
    return module


@torch.no_grad()
def collect_act_absmax(model: torch.nn.Module, modules: dict[str, torch.nn.Module],
                       batches: Iterable) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| (float32) seen by each module over `batches` (tensors, or dicts of kwargs)."""
    stats: dict[str, torch.Tensor] = {}

    def observe(fqn):
        def hook(mod, args):
            amax = args[0].detach().reshape(-1, args[0].shape[-1]).abs().amax(dim=0).float()
            stats[fqn] = torch.maximum(stats[fqn], amax) if fqn in stats else amax
        return hook

    handles = [m.register_forward_pre_hook(observe(fqn)) for fqn, m in modules.items()]
    try:
        for batch in batches:
            model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for h in handles:
            h.remove()
    return stats


@dataclass
class SmoothGroup:
    """Linears reading one input, and where x / s goes: a norm's weight, a linear's rows, or None (pre_scale)."""

    fqns: list[str]
    fold_into: torch.nn.Module | None = None


def smoothing_groups(model: torch.nn.Module, targets: dict[str, torch.nn.Module]) -> list[SmoothGroup]:
    """Groups for Llama/Qwen-style decoder layers; every other target is its own pre_scale group.

    down_proj comes first: folding into up_proj's rows must happen before gate/up's s reads up_proj's weight.
    """
    groups: list[SmoothGroup] = []
    for prefix, layer in model.named_modules():
        if not all(hasattr(layer, a) for a in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")):
            continue
        p = f"{prefix}." if prefix else ""
        candidates = [
            SmoothGroup([f"{p}mlp.down_proj"], layer.mlp.up_proj),
            SmoothGroup([f"{p}self_attn.{n}_proj" for n in "qkv"], layer.input_layernorm),
            SmoothGroup([f"{p}mlp.gate_proj", f"{p}mlp.up_proj"], layer.post_attention_layernorm),
        ]
        groups += [g for g in candidates if all(f in targets for f in g.fqns)]
    grouped = {f for g in groups for f in g.fqns}
    groups += [SmoothGroup([f]) for f in targets if f not in grouped]
    return groups


def smoothing_factor(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float | None) -> torch.Tensor:
    """s per input channel (float32); alpha None = no smoothing (s = 1)."""
    if alpha is None:
        return torch.ones_like(act_absmax)
    w_absmax = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    s = act_absmax.float().pow(alpha) / w_absmax.clamp_min(MIN_SCALE).pow(1 - alpha)
    return s.clamp_min(MIN_SCALE)


@torch.no_grad()
def smooth_model(model: torch.nn.Module, targets: dict[str, torch.nn.Module], act_absmax: dict[str, torch.Tensor],
                 alpha: float | None) -> dict[str, torch.Tensor]:
    """Apply W' = W * s to every target and fold x / s upstream; return {fqn: 1 / s} for unfolded targets.

    The model's function is unchanged up to bf16 rounding of the folded weights, once each returned
    pre_scale multiplies its linear's input.
    """
    pre_scales: dict[str, torch.Tensor] = {}
    for g in smoothing_groups(model, targets):
        mods = [targets[f] for f in g.fqns]
        act = torch.stack([act_absmax[f] for f in g.fqns]).amax(dim=0)
        s = smoothing_factor(act, [m.weight for m in mods], alpha).to(mods[0].weight.device)
        for m in mods:  # a new tensor, not copy_: a tied lm_head must not rescale the embedding it shares
            m.weight = torch.nn.Parameter((m.weight.float() * s).to(m.weight.dtype), requires_grad=False)
        if g.fold_into is None:
            pre_scales[g.fqns[0]] = 1.0 / s
        else:  # producer linear: divide its output rows (and bias); norm: y = weight * normalized(x) (+ bias)
            rows = isinstance(g.fold_into, torch.nn.Linear)
            for p in (g.fold_into.weight, getattr(g.fold_into, "bias", None)):
                if p is not None:
                    p.copy_((p.float() / (s[:, None] if rows and p.dim() == 2 else s)).to(p.dtype))
    return pre_scales
