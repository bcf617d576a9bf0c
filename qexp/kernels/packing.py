"""K order of a weight for the register-operand wgmma kernel's PACKED config (gluon_w8a16_rs).

wgmma's bf16 A fragment of one k16 step is K {2t, 2t+1, 2t+8, 2t+9} of rows g and g+8 (t = lane % 4): in row-major
storage a thread's bytes of four k16 steps lie in eight 2-byte pieces. Packed, each 64-wide K block of a row holds
K = 16 j + 8 h + 2 t + b (j, t < 4; h, b < 2) at position 16 t + 4 j + 2 h + b, so those bytes are 16 contiguous
ones: one 128-bit shared load. (vLLM's Machete prepacks its weights for CUTLASS's mixed-input mainloop likewise.)
An experiment: no recipe stores this order yet and no tuned table uses PACKED.
"""
from __future__ import annotations

import torch


def _blocks(w: torch.Tensor) -> torch.Tensor:
    n, k = w.shape
    if k % 64:
        raise ValueError(f"packing needs K % 64 == 0 (got K = {k})")
    return w.view(torch.uint8).reshape(n, k // 64, 4, 2, 4, 2)


def pack_k64(w: torch.Tensor) -> torch.Tensor:
    """(N, K) 8-bit weight, row-major -> the same values in packed K order (contiguous, same dtype)."""
    # natural (block, j, h, t, b) -> packed (block, t, j, h, b)
    return _blocks(w).permute(0, 1, 4, 2, 3, 5).reshape(w.shape).view(w.dtype).contiguous()


def unpack_k64(w: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_k64."""
    n, k = w.shape
    packed = w.view(torch.uint8).reshape(n, k // 64, 4, 4, 2, 2)  # (block, t, j, h, b)
    return packed.permute(0, 1, 3, 4, 2, 5).reshape(n, k).view(w.dtype).contiguous()
