"""Matmul error (the reference study's test): C = A @ B^T with B quantized by the run's recipe, vs exact.

A (M,K) and B (N,K) are drawn N(0,1) in bf16 each trial; the reference is their float64 product, so the
bf16 baseline measures bf16 GEMM rounding and a quantized recipe adds its weight (and activation) error.
"""
from __future__ import annotations

import torch

from qexp.quant.apply import quantize_model
from qexp.tasks import register_task


def error_metrics(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Errors of `out` against `ref` (both cast to float64).

    relative_error is the reference study's mean(|d| / (|ref| + 1e-8)), kept for parity: it blows up where
    ref is near 0 and can exceed 1. SQNR (dB) and the normalised Frobenius error are the trustworthy ones.
    """
    out, ref = out.double(), ref.double()
    d = out - ref
    err2 = d.pow(2).sum()
    return {
        "max_abs_error": d.abs().max().item(),
        "mean_abs_error": d.abs().mean().item(),
        "relative_error": (d.abs() / (ref.abs() + 1e-8)).mean().item(),
        "sqnr_db": (10 * torch.log10(ref.pow(2).sum() / err2)).item() if err2 > 0 else float("inf"),
        "frobenius_rel_error": (err2.sqrt() / ref.norm()).item(),
    }


def matmul_error(cfg, device: str, progress=None) -> dict[str, float]:
    m, n, k = cfg.matmul_shape
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    totals: dict[str, float] = {}
    for _ in range(cfg.num_tests):
        a = torch.randn(m, k, generator=gen).to(device=device, dtype=torch.bfloat16)
        b = torch.randn(n, k, generator=gen).to(device=device, dtype=torch.bfloat16)
        linear = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
        with torch.no_grad():
            linear.weight.copy_(b)
        report = quantize_model(linear, cfg, calibration_batches=[a])  # SmoothQuant calibrates on this trial's A
        with torch.no_grad():
            out = linear(a)
        ref = a.double() @ b.double().T
        for key, v in error_metrics(out, ref).items():
            totals[key] = totals.get(key, 0.0) + v
        if progress:
            progress()
    metrics = {f"matmul.{key}": v / cfg.num_tests for key, v in totals.items()}
    metrics["matmul.modules_quantized"] = report.quantized  # 0 only for bf16: proof the recipe was applied
    return metrics


@register_task("matmul")
def run(ctx) -> dict[str, float]:
    return matmul_error(ctx.cfg, ctx.device, progress=ctx.advance)
