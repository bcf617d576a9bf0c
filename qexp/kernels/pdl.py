"""Programmatic dependent launch (PDL, sm_90+): a kernel launched with it may start while the kernel before it in
the stream is still finishing, so its launch and its first loads overlap that kernel's tail. Every kernel
launched this way calls `gdc_wait()` before it reads anything an earlier kernel wrote and before it stores
anything (an earlier kernel may still be reading that memory); loads of constant data (weights) may go first.
QEXP_PDL=0 turns it off (A/B runs)."""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

try:  # Triton 3.4+; without it no kernel is launched with PDL
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def enabled(device: torch.device) -> bool:
    return (gdc_wait is not None and device.type == "cuda" and os.environ.get("QEXP_PDL", "1") != "0"
            and _capable(device.index or 0))


def launch(device: torch.device) -> dict:
    """Launch keywords of a kernel taking a PDL constexpr: both on or both off."""
    on = enabled(device)
    return {"PDL": on, "launch_pdl": on}


@triton.jit
def start(PDL: tl.constexpr):
    """First statement of a small kernel with no constant data to fetch early: let the next kernel launch, then
    wait for the previous one."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def wait(PDL: tl.constexpr):
    if PDL:
        gdc_wait()


@triton.jit
def launch_next(PDL: tl.constexpr):
    """Let the next kernel launch. Tensor-core GEMMs whose grid about fills the GPU call it after their main loop:
    triggered at the start, the next kernel's programs took SM slots while this one's were still being placed, and
    back-to-back M=16 GEMMs ran 10-30 % slower (H100)."""
    if PDL:
        gdc_launch_dependents()
