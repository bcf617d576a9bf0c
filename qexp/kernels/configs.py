"""Kernel choice per (recipe kind, N, K, M bucket): tuned table for this GPU if there is one, else a heuristic.

The table (qexp/kernels/tuned/<gpu>.json) is written offline by `scripts/bench_linear.py --tune`, which times the
candidates of qexp.kernels.search_space, and is read once, so start-up compiles only the kernels a model actually
uses, with no autotuning at load time. A cell this GPU's table lacks (or a GPU with no table) takes the table of
another GPU of the same compute capability, then the heuristic (`table_paths`).
A config is a dict: backend (see qexp.kernels.fused) and, for the Triton ones, tile sizes.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from pathlib import Path

import torch

TUNED_DIR = Path(__file__).with_name("tuned")
M_BUCKETS = (1, 16, 64, 128, 256, 1024, 4096)  # 128: the engine's decode batches of ~100
_overrides: list[dict] = []  # cells that answer before the tables (`override`)
_recorders: list[list] = []  # keys config_for was asked for (`recording`)


def kind(w_dtype: torch.dtype, act_dtype: str | None, group_size: int | None) -> str:
    """Recipe kind the kernels distinguish, e.g. w8a16-int8-row, w8a16-fp8-group128, w8a8-fp8.
    Tensor-wise weights run the row-wise kernel (the scale is broadcast), so they share its configs."""
    wd = "int8" if w_dtype == torch.int8 else "fp8"
    if act_dtype is not None:
        return f"w8a8-{wd}"
    return f"w8a16-{wd}-" + (f"group{group_size}" if group_size else "row")


def m_bucket(m: int) -> int:
    return next((b for b in M_BUCKETS if m <= b), M_BUCKETS[-1])


def key(kind_: str, n: int, k: int, m: int) -> str:
    return f"{kind_}|{n}|{k}|{m_bucket(m)}"


def triton_config(bn, bm, bk, split_k=1, warps=4, stages=4, group_n=8, swap=True) -> dict:
    """Tensor-core tile config; swap=True computes W @ x.T (weight as A, decode-friendly), False x @ W.T."""
    return {"backend": "triton", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
            "num_warps": warps, "num_stages": stages, "GROUP_N": group_n, "SWAP_AB": swap}


def tma_config(bn, bm, bk, split_k=1, warps=4, stages=4, group_n=8, swap=False) -> dict:
    """Tensor-core tile config whose tiles arrive by TMA (triton_qmm_tma, sm_90+)."""
    # Triton's own int8 -> bf16 convert (byte permutes + one bf16x2 add per pair) beats the fp32 bit trick here
    return {**triton_config(bn, bm, bk, split_k, warps, stages, group_n, swap), "backend": "tma", "FAST_I8": False}


def gluon_config(bn, bm, bk, split_k=1, warps=4, stages=4) -> dict:
    """W8A16 tile config for the hand-pipelined Gluon kernel (gluon_w8a16, sm_90+): BLOCK_M = 16 x warps or more."""
    return {"backend": "gluon", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
            "num_warps": warps, "num_stages": stages}


def skinny_config(bn, bm, bk, split_k=1, warps=4, stages=4) -> dict:
    """W8A16 small-M config for the mma.sync kernel (gluon_skinny, sm_90+): BLOCK_N = 16 x warps weight rows."""
    return {"backend": "skinny", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
            "num_warps": warps, "num_stages": stages}


def gluon_rs_config(bn, bm, bk, split_k=1, warps=4, stages=4, producer=False, acc_scale=False, group_m=8,
                    persistent=False, programs=None) -> dict:
    """W8A16 config for the register-operand wgmma kernel (gluon_w8a16_rs, sm_90+): BLOCK_N a multiple of
    16 x warps weight rows (64 per warp group), BLOCK_M <= 256 tokens; producer: a warp of its own issues the
    TMA loads; acc_scale: group scales applied to the accumulator once per group (groups of >= 2 K tiles);
    group_m: token tiles a program group walks across every weight strip (the kernel's default 8 is left out);
    persistent (with producer): one program per SM walking tiles (programs: fewer, for tests)."""
    cfg = {"backend": "gluon_rs", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
           "num_warps": warps, "num_stages": stages}
    return {**cfg, **({"PRODUCER": True} if producer else {}), **({"ACC_SCALE": True} if acc_scale else {}),
            **({"GROUP_M": group_m} if group_m != 8 else {}), **({"PERSISTENT": True} if persistent else {}),
            **({"PROGRAMS": programs} if programs else {})}


def gluon_ws_config(bn, bm, bk, split_k=1, warps=8, stages=4, wstages=2, group_m=8, cvt_warps=4,
                    cvt_split=False) -> dict:
    """W8A16 config for the warp-specialized kernel (gluon_w8a16_ws, sm_90+): cvt_warps converter warps write
    bf16 weight tiles (wstages deep) for warps that only issue wgmma; BLOCK_N = 64 weight rows per MMA warp group,
    BLOCK_M <= 256 tokens (128 with 16 warps in all: 128 registers a thread); group_m: token tiles walked per
    weight strip (x's reads from HBM, as gluon_w8a8); cvt_split: the converter warps as two partitions taking
    even and odd K tiles (wstages even)."""
    cfg = {"backend": "gluon_ws", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
           "num_warps": warps, "num_stages": stages, "WSTAGES": wstages, "GROUP_M": group_m, "CVT_WARPS": cvt_warps}
    return {**cfg, "CVT_SPLIT": True} if cvt_split else cfg


def gluon_w8a8_config(bn, bm, bk, split_k=1, warps=4, stages=4, group_m=0) -> dict:
    """W8A8 tile config for the Gluon kernel that keeps a wgmma in flight (gluon_w8a8, sm_90+); group_m: programs
    walk that many token tiles across every weight tile (x read from HBM about once at prefill sizes)."""
    cfg = {"backend": "gluon_w8a8", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
           "num_warps": warps, "num_stages": stages}
    return {**cfg, "GROUP_M": group_m} if group_m else cfg


def gemv_config(bn, bm, bk, split_k=1, warps=4, stages=3, prefetch=1) -> dict:
    """CUDA-core GEMV config (weight-only, small M); prefetch: weight tiles loaded ahead of the one in use."""
    cfg = {"backend": "gemv", "BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_K": bk, "SPLIT_K": split_k,
           "num_warps": warps, "num_stages": stages}
    return {**cfg, "PREFETCH": prefetch} if prefetch > 1 else cfg


def gemv_gl_config(bn, bk, warps=4, prefetch=1) -> dict:
    """One-token Gluon GEMV config (gluon_gemv): BLOCK_N rows over num_warps warps, 16 bytes of K per thread.
    Its keys are also a valid Triton GEMV config, the fallback where Gluon is missing."""
    return {"backend": "gemv_gl", "BLOCK_N": bn, "BLOCK_M": 1, "BLOCK_K": bk, "SPLIT_K": 1, "num_warps": warps,
            "num_stages": 3, "PREFETCH": prefetch}


def fit_block_k(k: int, block_k: int, grouped: bool, group_size: int | None, span_groups: bool = False) -> int:
    """Largest BLOCK_K <= the config's that tiles K whole, with no tile straddling two scale groups; with
    span_groups (and a power-of-two group size) a tile may instead hold several whole groups."""
    def fits(bk):
        if k % bk:
            return False
        if not grouped or group_size % bk == 0:
            return True
        return span_groups and bk % group_size == 0 and group_size & (group_size - 1) == 0
    while not fits(block_k):
        block_k //= 2
    return block_k


def spans_groups(cfg: dict) -> bool:
    """The one-row GEMV, the skinny kernel and gluon_rs take K tiles of several whole scale groups; every other
    kernel's tile lies in one group."""
    return ((cfg.get("backend") == "gemv" and cfg.get("BLOCK_M") == 1)
            or cfg.get("backend") in ("skinny", "gemv_gl", "gluon_rs"))


def heuristic(kind_: str, n: int, k: int, m: int) -> dict:
    """A reasonable config without tuning (any GPU Triton runs on)."""
    a8 = kind_.startswith("w8a8")
    if m <= 1:
        return gemv_config(8, 1, 512)
    if m <= 16:
        return triton_config(32, 16, 256, split_k=2 if n * k <= 2048 * 2048 else 1)
    if m <= 64:
        return triton_config(64, 64, 128, split_k=2)
    if kind_ == "w8a8-fp8" and torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9):
        return {"backend": "scaled_mm"}
    if m <= 256:
        return triton_config(128, 64, 128 if a8 else 64)
    return triton_config(128, 128, 128 if a8 else 64, warps=8, stages=3 if a8 else 4, swap=False)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def tuned_path(device_name: str) -> Path:
    """This GPU's table; QEXP_KERNEL_TABLE names another file (A/B runs of two tables on one machine)."""
    override = os.environ.get("QEXP_KERNEL_TABLE")
    return Path(override) if override else TUNED_DIR / f"{_slug(device_name)}.json"


@functools.cache
def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@functools.cache
def table_paths(device_name: str, capability: tuple[int, int] | None = None) -> tuple[Path, ...]:
    """The tables consulted for this GPU, in order: its own (or QEXP_KERNEL_TABLE alone), then, with its compute
    capability known, those tuned on other GPUs of the same capability (same SMs and shared memory: an H100's
    table is far closer to an H200's best choices than the heuristic), by file name."""
    own = tuned_path(device_name)
    paths = [own] if own.is_file() else []
    if capability is None or os.environ.get("QEXP_KERNEL_TABLE"):
        return tuple(paths)
    paths += [p for p in sorted(TUNED_DIR.glob("*.json"))
              if p != own and tuple(_read(p).get("capability", ())) == tuple(capability)]
    return tuple(paths)


@functools.cache
def lookup(kind_: str, n: int, k: int, m_b: int, device_name: str,
           capability: tuple[int, int] | None = None) -> dict:
    key_ = f"{kind_}|{n}|{k}|{m_b}"
    for p in table_paths(device_name, capability):
        if key_ in (cfgs := _read(p)["configs"]):
            return cfgs[key_]
    return heuristic(kind_, n, k, m_b)


@functools.cache
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


@functools.cache
def device_capability(index: int) -> tuple[int, int]:
    return tuple(torch.cuda.get_device_capability(index))


def tables_in_use(index: int = 0) -> str:
    """File names of the tables this GPU's kernels are chosen from, for run metadata ('none': heuristic only)."""
    paths = table_paths(device_name(index), device_capability(index))
    return ",".join(p.name for p in paths) or "none"


@contextlib.contextmanager
def override(cells: dict):
    """Inside the block config_for answers these table keys with these configs, read at each call (so a tuner
    timing whole engine steps, scripts/tune_bs1.py, can change them between captures)."""
    _overrides.append(cells)
    try:
        yield cells
    finally:
        _overrides.remove(cells)


@contextlib.contextmanager
def recording():
    """Yields the list of table keys config_for is asked for inside the block, in first-asked order."""
    keys: list[str] = []
    _recorders.append(keys)
    try:
        yield keys
    finally:
        _recorders.remove(keys)


def config_for(kind_: str, n: int, k: int, m: int, device: torch.device) -> dict:
    if _overrides or _recorders:
        key_ = key(kind_, n, k, m)
        for keys in _recorders:
            if key_ not in keys:
                keys.append(key_)
        for cells in reversed(_overrides):
            if key_ in cells:
                return cells[key_]
    if m > 2 * M_BUCKETS[-1] and kind_.startswith("w8a16"):
        # past the largest tuned bucket (a prefill step of ~16k tokens) the one-pass dequantize costs ever less
        # against the GEMM, and cuBLAS on bf16 beats every fused W8A16 kernel: engine prefill 0.97x bf16 with
        # dequant_mm vs 0.90x with gluon_rs, the M=4096 winner (BENCHMARKS.md, 2026-11-25)
        return {"backend": "dequant_mm"}
    i = device.index or 0
    return lookup(kind_, n, k, m_bucket(m), device_name(i), device_capability(i))
