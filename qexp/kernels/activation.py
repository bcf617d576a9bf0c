"""A W8A8 linear's input already quantized per token by the kernel that produced it (the engine's RMSNorm or
SiLU * up), so the linear skips its own activation-quant pass (fused.quantized_linear_prequantized)."""
from __future__ import annotations

from typing import NamedTuple

import torch


class QuantizedActivation(NamedTuple):
    q: torch.Tensor  # (T, K) int8 | float8_e4m3fn, as triton_act_quant.quantize_activation makes it
    scale: torch.Tensor  # (T, 1) float32
