"""The one registry: (dtype, quant, group_size, mode) -> TorchAO config. Nothing else branches on recipe names.

weight (tensor | row | group) x fake -> FakeQuantWeightConfig (bf16 weight, quantize->dequantize)
weight (tensor | row | group) x real -> RealQuantWeightConfig (int8 / fp8 storage, qexp.kernels seam)
smooth x fake | real                 -> SmoothQuantConfig (W8A8: per-row weight, per-token activation)
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torchao.core.config import AOBaseConfig

from qexp.config import ConfigError, RunConfig
from qexp.quant.fake import FakeQuantWeightConfig
from qexp.quant.real import RealQuantWeightConfig
from qexp.quant.smoothquant import SmoothQuantConfig

# (quant kind, mode) -> builder(cfg) -> AOBaseConfig; "weight" covers tensor/row/group.
_BUILDERS: dict[tuple[str, str], Callable[[RunConfig], AOBaseConfig]] = {}


def register(kind: str, mode: str):
    def deco(fn):
        _BUILDERS[(kind, mode)] = fn
        return fn
    return deco


def _kind(cfg: RunConfig) -> str:
    return "smooth" if cfg.quant == "smooth" else "weight"


@register("weight", "fake")
def _weight_fake(cfg: RunConfig) -> AOBaseConfig:
    return FakeQuantWeightConfig(dtype=cfg.dtype, granularity=cfg.quant, group_size=cfg.group_size)


@register("weight", "real")
def _weight_real(cfg: RunConfig) -> AOBaseConfig:
    return RealQuantWeightConfig(dtype=cfg.dtype, granularity=cfg.quant, group_size=cfg.group_size)


@register("smooth", "fake")
@register("smooth", "real")
def _smooth(cfg: RunConfig) -> AOBaseConfig:
    return SmoothQuantConfig(dtype=cfg.dtype, mode=cfg.mode, alpha=cfg.smoothquant_alpha)


def has_fp8_matmul(device: str | torch.device) -> bool:
    """fp8 x fp8 GEMMs (torch._scaled_mm) need an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper)."""
    d = torch.device(device)
    return d.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(d) >= (8, 9)


def recipe_config(cfg: RunConfig, device: str | torch.device | None = None) -> AOBaseConfig | None:
    """TorchAO config for the run's recipe; None for the bf16 baseline. With `device`, also check it can run it."""
    if cfg.dtype == "bf16":
        return None
    key = (_kind(cfg), cfg.mode)
    if key not in _BUILDERS:
        have = ", ".join(f"{k}/{m}" for k, m in sorted(_BUILDERS))
        raise ConfigError(f"recipe {cfg.recipe} is not available in this build (have: {have})")
    config = _BUILDERS[key](cfg)
    if device is not None and isinstance(config, SmoothQuantConfig) and config.mode == "real" \
            and config.dtype == "fp8" and not has_fp8_matmul(device):
        raise ConfigError(f"recipe {cfg.recipe} (fp8 W8A8) needs fp8 matmul support, i.e. a CUDA GPU of compute "
                          f"capability >= 8.9 (H100, L4, RTX 40xx); device {device} has none. Use --mode fake to "
                          "simulate it in bf16 on any device")
    return config
