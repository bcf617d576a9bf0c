"""Sampling parameters and the sampler: greedy at temperature 0, else temperature + top-p (nucleus) sampling."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0
    max_tokens: int = 16
    ignore_eos: bool = False
    seed: int | None = None  # seeds the sampler of one generate() call (temperature > 0)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 (got {self.max_tokens})")


def sample(logits: torch.Tensor, temperatures: list[float], top_ps: list[float],
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token per row of `logits` (B, V); rows with temperature 0 take the argmax."""
    greedy = logits.argmax(dim=-1)
    if not any(t > 0 for t in temperatures):  # decided on the host: no device sync on the greedy path
        return greedy
    temps = torch.tensor(temperatures, device=logits.device)
    probs = torch.softmax(logits.float() / temps.clamp_min(1e-5)[:, None], dim=-1)
    if any(p < 1.0 for p in top_ps):
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always survives)
        drop = sorted_p.cumsum(dim=-1) - sorted_p >= torch.tensor(top_ps, device=logits.device)[:, None]
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    sampled = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(temps > 0, sampled, greedy)
