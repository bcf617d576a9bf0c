"""Quantized linear entry point used by the real-mode weight tensors (qexp.quant). CPU: the plain-torch
reference; CUDA: fused Triton kernels where they exist (qexp.kernels.triton_*), else the reference."""
from qexp.kernels.reference import quantized_linear

__all__ = ["quantized_linear"]
