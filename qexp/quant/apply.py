"""Apply a recipe with TorchAO's quantize_ and prove it took effect: count, bytes and scales per module."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torchao.quantization import quantize_

from qexp.config import RunConfig
from qexp.quant.recipes import recipe_config

TARGET_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class QuantizationError(RuntimeError):
    """quantize_ touched fewer modules than the recipe targets (the reference study's silent no-op)."""


@dataclass
class QuantReport:
    recipe: str
    expected: int = 0
    quantized: int = 0
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0
    modules: dict[str, str] = field(default_factory=dict)  # fqn -> what its weight became

    @property
    def weight_bytes_ratio(self) -> float:
        return self.weight_bytes_after / self.weight_bytes_before if self.weight_bytes_before else 1.0

    def metrics(self) -> dict[str, float]:
        return {"quant.modules_expected": self.expected, "quant.modules_quantized": self.quantized,
                "quant.weight_bytes_before": self.weight_bytes_before,
                "quant.weight_bytes_after": self.weight_bytes_after,
                "quant.weight_bytes_ratio": self.weight_bytes_ratio}

    def to_dict(self) -> dict:
        return asdict(self)


def is_target(module: torch.nn.Module, fqn: str, include_lm_head: bool = False) -> bool:
    if not isinstance(module, torch.nn.Linear):
        return False
    leaf = fqn.rsplit(".", 1)[-1]
    return leaf in TARGET_LINEARS or fqn == "" or (include_lm_head and leaf == "lm_head")


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes of a plain or TorchAO subclass tensor (sum over its inner tensors)."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def describe(weight: torch.Tensor) -> str:
    return type(weight).__name__ if type(weight) is not torch.nn.Parameter else str(weight.dtype)


def quantize_model(model: torch.nn.Module, cfg: RunConfig) -> QuantReport:
    """Quantize the target linears of `model` in place with the run's recipe; raise if any was left untouched."""
    report = QuantReport(recipe=cfg.recipe)
    config = recipe_config(cfg)
    if config is None:
        return report
    targets = {fqn: m for fqn, m in model.named_modules() if is_target(m, fqn, cfg.include_lm_head)}
    if not targets:
        raise QuantizationError(f"recipe {cfg.recipe}: the model has no target linear ({', '.join(TARGET_LINEARS)})")
    report.expected = len(targets)
    before = {fqn: m.weight for fqn, m in targets.items()}
    report.weight_bytes_before = sum(tensor_bytes(w) for w in before.values())
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in targets)
    for fqn, m in targets.items():
        if m.weight is not before[fqn] or getattr(m, "qexp_recipe", None):
            report.quantized += 1
            report.modules[fqn] = getattr(m, "qexp_recipe", None) or describe(m.weight)
        report.weight_bytes_after += tensor_bytes(m.weight)
    if report.quantized < report.expected:
        missed = sorted(set(targets) - set(report.modules))
        raise QuantizationError(f"recipe {cfg.recipe} quantized {report.quantized} of {report.expected} target "
                                f"linears (untouched: {', '.join(missed[:3])}{', ...' if len(missed) > 3 else ''})")
    return report
