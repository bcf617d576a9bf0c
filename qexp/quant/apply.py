"""Apply a recipe with TorchAO's quantize_ and prove it took effect: count, bytes and scales per module."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torchao.quantization import quantize_

from qexp.config import ConfigError, RunConfig
from qexp.quant import qdq
from qexp.quant.recipes import recipe_config
from qexp.quant.smoothquant import SmoothQuantConfig, collect_act_absmax, smooth_model

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
    num_scales: int = 0  # weight scale entries (per granularity: 1, N or N*K/group_size per linear)
    num_pre_scales: int = 0  # SmoothQuant x * (1/s) entries kept in weights (not folded into a norm / linear)
    calibration: dict = field(default_factory=dict)  # SmoothQuant: batches, tokens, seconds
    modules: dict[str, str] = field(default_factory=dict)  # fqn -> what its weight became

    @property
    def weight_bytes_ratio(self) -> float:
        return self.weight_bytes_after / self.weight_bytes_before if self.weight_bytes_before else 1.0

    def metrics(self) -> dict[str, float]:
        return {"quant.modules_expected": self.expected, "quant.modules_quantized": self.quantized,
                "quant.weight_bytes_before": self.weight_bytes_before,
                "quant.weight_bytes_after": self.weight_bytes_after,
                "quant.weight_bytes_ratio": self.weight_bytes_ratio, "quant.num_scales": self.num_scales}

    def to_dict(self) -> dict:
        return asdict(self) | {"weight_bytes_ratio": self.weight_bytes_ratio}


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


def _granularity(config) -> tuple[str, int | None]:
    return getattr(config, "granularity", "row"), getattr(config, "group_size", None)


def quantize_model(model: torch.nn.Module, cfg: RunConfig,
                   calibration_batches: Callable[[], Iterable] | Iterable | None = None) -> QuantReport:
    """Quantize the target linears of `model` in place with the run's recipe; raise if any was left untouched.

    calibration_batches (SmoothQuant only; called first if callable, so data loads only when needed): model
    inputs, token-id tensors (batch, tokens) for a causal LM or activations for a bare linear.
    """
    report = QuantReport(recipe=cfg.recipe)
    device = next(model.parameters()).device
    config = recipe_config(cfg, device)
    if config is None:
        return report
    targets = {fqn: m for fqn, m in model.named_modules() if is_target(m, fqn, cfg.include_lm_head)}
    if not targets:
        raise QuantizationError(f"recipe {cfg.recipe}: the model has no target linear ({', '.join(TARGET_LINEARS)})")
    gran, group_size = _granularity(config)
    if gran == "group":
        for fqn, m in targets.items():
            if m.in_features % group_size:
                raise ConfigError(f"group_size {group_size} does not divide in_features {m.in_features} of layer "
                                  f"{fqn or type(m).__name__}; choose a group size dividing every target's K")
    report.expected = len(targets)
    before = {fqn: m.weight for fqn, m in targets.items()}
    report.weight_bytes_before = sum(tensor_bytes(w) for w in before.values())
    if isinstance(config, SmoothQuantConfig):
        _smooth(model, targets, config, calibration_batches, report)
    quantize_(model, config, filter_fn=lambda m, fqn: fqn in targets)
    for fqn, m in targets.items():
        if m.weight is not before[fqn] or getattr(m, "qexp_recipe", None):
            report.quantized += 1
            report.modules[fqn] = getattr(m, "qexp_recipe", None) or describe(m.weight)
        report.weight_bytes_after += tensor_bytes(m.weight)
        report.num_scales += qdq.num_scales(tuple(m.weight.shape), gran, group_size)
        pre = getattr(m.weight, "pre_scale", None)
        report.num_pre_scales += pre.numel() if pre is not None else 0
    if report.quantized < report.expected:
        missed = sorted(set(targets) - set(report.modules))
        raise QuantizationError(f"recipe {cfg.recipe} quantized {report.quantized} of {report.expected} target "
                                f"linears (untouched: {', '.join(missed[:3])}{', ...' if len(missed) > 3 else ''})")
    return report


def _smooth(model, targets, config: SmoothQuantConfig, calibration_batches, report: QuantReport) -> None:
    """Calibrate, fold the smoothing factors, and leave unfolded 1/s on the modules for the handler."""
    batches = calibration_batches() if callable(calibration_batches) else calibration_batches
    if batches is None:
        raise QuantizationError("SmoothQuant needs calibration data: pass calibration_batches to quantize_model")
    batches = list(batches)
    t0 = time.perf_counter()
    act_absmax = collect_act_absmax(model, targets, batches)
    missing = sorted(set(targets) - set(act_absmax))
    if missing:
        raise QuantizationError(f"SmoothQuant calibration never reached {len(missing)} target linear(s) "
                                f"(e.g. {missing[0]}); no activation statistics to smooth with")
    for fqn, pre_scale in smooth_model(model, targets, act_absmax, config.alpha).items():
        targets[fqn].qexp_pre_scale = pre_scale
    report.calibration = {
        "batches": len(batches), "alpha": config.alpha, "seconds": round(time.perf_counter() - t0, 3),
        "tokens": sum(b.numel() for b in batches if isinstance(b, torch.Tensor) and not b.is_floating_point()),
    }
