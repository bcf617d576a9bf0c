"""The one registry: (dtype, quant, group_size, mode) -> TorchAO config. Nothing else branches on recipe names."""
from __future__ import annotations

from typing import Callable

from torchao.core.config import AOBaseConfig

from qexp.config import ConfigError, RunConfig
from qexp.quant.fake import FakeQuantWeightConfig

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


def recipe_config(cfg: RunConfig) -> AOBaseConfig | None:
    """TorchAO config for the run's recipe; None for the bf16 baseline."""
    if cfg.dtype == "bf16":
        return None
    key = (_kind(cfg), cfg.mode)
    if key not in _BUILDERS:
        have = ", ".join(f"{k}/{m}" for k, m in sorted(_BUILDERS))
        raise ConfigError(f"recipe {cfg.recipe} is not available in this build (have: {have})")
    return _BUILDERS[key](cfg)
