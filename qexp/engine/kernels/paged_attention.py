"""Triton attention kernels over the paged KV cache (new K/V are stored by elementwise.qk_norm_rope): varlen
causal prefill attention and split-KV decode attention, both reading K/V through block tables (GQA: a kv head
serves H/KV query heads).

Cache layout (num_blocks, block_size, KV, D): position p of a sequence lives at slot
block_table[p // block_size] * block_size + p % block_size, so any block_size works; a tile of keys looks its
slots up per key.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qexp.kernels import pdl
from qexp.kernels.triton_common import sm_count


@triton.jit
def _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, k_mask, kvh, offs_d, KV: tl.constexpr,
             D: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr):
    """K and V rows at positions k_pos, looked up through sequence b's block table. MASKED: lanes off k_mask
    read zeros; else every position is known valid and the loads go unpredicated."""
    if MASKED:
        page = tl.load(bt_ptr + b * bt_stride + k_pos // BLOCK_SIZE, mask=k_mask, other=0).to(tl.int64)
    else:
        page = tl.load(bt_ptr + b * bt_stride + k_pos // BLOCK_SIZE).to(tl.int64)
    kv_off = ((page * BLOCK_SIZE + k_pos % BLOCK_SIZE)[:, None] * KV + kvh) * D + offs_d[None, :]
    if MASKED:
        return (tl.load(k_cache + kv_off, mask=k_mask[:, None], other=0.0),
                tl.load(v_cache + kv_off, mask=k_mask[:, None], other=0.0))
    return tl.load(k_cache + kv_off), tl.load(v_cache + kv_off)


@triton.jit
def _softmax_step(s, v, m_i, l_i, acc):
    """One online-softmax update with scores s (rows x keys, log2 units) and values v; rows whose scores are all
    -inf so far stay at zero weight instead of producing NaN."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    return m_new, l_i * alpha + tl.sum(p, axis=1), acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)


@triton.autotune(
    configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
             # rows = GROUP_PAD * BLOCK_M; (128, 64, 8, 2), 256 rows at Qwen3's GQA 2, spilled registers (sm_90a)
             for m, n, w, s in ((64, 64, 8, 3), (64, 128, 8, 2), (64, 128, 8, 3), (32, 64, 4, 3),
                                (32, 64, 4, 2))],
    key=["H", "KV", "D", "BLOCK_SIZE"])
@triton.jit
def _prefill_kernel(q_ptr, k_cache, v_cache, out_ptr, cu_q_ptr, ctx_ptr, bt_ptr, bt_stride, scale,
                    H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    GROUP_PAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # one program: BLOCK_M query positions x the H // KV query heads of one kv head, as GROUP_PAD * BLOCK_M
    # rows (head-major), so each K/V tile is gathered from the cache once for the whole GQA group
    mblk = tl.program_id(0)
    b = tl.program_id(1)
    kvh = tl.program_id(2)
    GROUP: tl.constexpr = H // KV
    q_start = tl.load(cu_q_ptr + b)
    n_q = tl.load(cu_q_ptr + b + 1) - q_start
    if mblk * BLOCK_M >= n_q:
        return
    ctx = tl.load(ctx_ptr + b)
    offs_r = tl.arange(0, GROUP_PAD * BLOCK_M)
    g = offs_r // BLOCK_M
    offs_m = mblk * BLOCK_M + offs_r % BLOCK_M
    offs_d = tl.arange(0, D)
    q_pos = ctx - n_q + offs_m  # absolute positions of these query rows
    r_mask = (offs_m < n_q) & (g < GROUP)
    rows = ((q_start + offs_m).to(tl.int64) * H + kvh * GROUP + g) * D  # (token, head) of each row
    q = tl.load(q_ptr + rows[:, None] + offs_d[None, :], mask=r_mask[:, None], other=0.0)
    m_i = tl.full([GROUP_PAD * BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD * BLOCK_M], tl.float32)
    acc = tl.zeros([GROUP_PAD * BLOCK_M, D], tl.float32)
    qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x * log2 e)
    end = tl.minimum(ctx, ctx - n_q + (mblk + 1) * BLOCK_M)
    # keys below every row's position need no mask: whole tiles up to the first row's position
    full_end = (ctx - n_q + mblk * BLOCK_M) // BLOCK_N * BLOCK_N
    for n0 in range(0, full_end, BLOCK_N):
        k_pos = n0 + tl.arange(0, BLOCK_N)
        k, v = _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, k_pos, kvh, offs_d, KV, D, BLOCK_SIZE,
                        False)
        m_i, l_i, acc = _softmax_step(tl.dot(q, tl.trans(k)) * qk_scale, v, m_i, l_i, acc)
    for n0 in range(full_end, end, BLOCK_N):
        k_pos = n0 + tl.arange(0, BLOCK_N)
        k_mask = k_pos < end
        k, v = _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, k_mask, kvh, offs_d, KV, D, BLOCK_SIZE, True)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        s = tl.where((k_pos[None, :] <= q_pos[:, None]) & k_mask[None, :], s, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + rows[:, None] + offs_d[None, :], acc.to(out_ptr.dtype.element_ty), mask=r_mask[:, None])


@triton.jit
def _decode_kernel(q_ptr, k_cache, v_cache, out_ptr, part_acc, part_ml, arrivals, ctx_ptr, bt_ptr, bt_stride,
                   scale, H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   GROUP_PAD: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, MERGE: tl.constexpr,
                   PDL: tl.constexpr):
    pdl.launch_next(PDL)
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    GROUP: tl.constexpr = H // KV
    offs_g = tl.arange(0, GROUP_PAD)
    offs_d = tl.arange(0, D)
    g_mask = offs_g < GROUP
    heads = kvh * GROUP + offs_g
    ctx = tl.load(ctx_ptr + b)  # context lengths and block tables are the step's inputs, not a kernel's output
    chunk = tl.cdiv(tl.cdiv(ctx, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(ctx, lo + chunk)
    last = ctx - 1  # the new token: its k/v are stored by the kernel before this one (qk_norm_rope)
    # the first tile's older keys are constant during this step: fetched before waiting for that kernel
    k_pos = lo + tl.arange(0, BLOCK_N)
    k_mask = k_pos < hi
    k, v = _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, k_mask & (k_pos != last), kvh, offs_d, KV, D,
                    BLOCK_SIZE, True)
    pdl.wait(PDL)
    q = tl.load(q_ptr + (b.to(tl.int64) * H + heads[:, None]) * D + offs_d[None, :], mask=g_mask[:, None],
                other=0.0)
    if (last >= lo) & (last < lo + BLOCK_N) & (last < hi):
        is_new = k_pos == last
        k_new, v_new = _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, is_new, kvh, offs_d, KV, D,
                                BLOCK_SIZE, True)
        k = tl.where(is_new[:, None], k_new, k)
        v = tl.where(is_new[:, None], v_new, v)
    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    s = tl.where(k_mask[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
    m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
    for n0 in range(lo + BLOCK_N, hi, BLOCK_N):
        k_pos = n0 + tl.arange(0, BLOCK_N)
        k_mask = k_pos < hi
        k, v = _kv_tile(k_cache, v_cache, bt_ptr, b, bt_stride, k_pos, k_mask, kvh, offs_d, KV, D, BLOCK_SIZE, True)
        s = tl.where(k_mask[None, :], tl.dot(q, tl.trans(k)) * qk_scale, float("-inf"))
        m_i, l_i, acc = _softmax_step(s, v, m_i, l_i, acc)
    if SPLITS == 1:
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + (b.to(tl.int64) * H + heads[:, None]) * D + offs_d[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=g_mask[:, None])
    else:
        bh = b.to(tl.int64) * H + heads
        row = bh * SPLITS + split  # partials (B, H, SPLITS, ...)
        tl.store(part_acc + row[:, None] * D + offs_d[None, :], acc, mask=g_mask[:, None])
        tl.store(part_ml + row * 2, m_i, mask=g_mask)
        tl.store(part_ml + row * 2 + 1, l_i, mask=g_mask)
        if MERGE:
            # the last of the SPLITS programs of this (sequence, kv head) to arrive merges the partials, which
            # saves the merge launch (at batch 1, 28 a step). The barrier puts every thread's stores before the
            # counter's release; the acquire puts the other programs' stores before the merge's loads.
            tl.debug_barrier()
            arrived = tl.atomic_add(arrivals + b * KV + kvh, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLITS - 1:
                tl.store(arrivals + b * KV + kvh, 0)  # zero again for the next call (no other program left)
                _merge_splits(part_acc, part_ml, out_ptr, bh, g_mask, offs_d, D, SPLITS)


@triton.jit
def _merge_splits(part_acc, part_ml, out_ptr, bh, mask, offs_d, D: tl.constexpr, SPLITS: tl.constexpr):
    """Output rows bh (sequence * H + head) from their SPLITS partials; an empty split has m = -inf and weighs
    0. Loads bypass L1 (.cg): the partials were written by other SMs."""
    offs_s = tl.arange(0, SPLITS)
    m = tl.load(part_ml + (bh[:, None] * SPLITS + offs_s[None, :]) * 2, mask=mask[:, None], other=float("-inf"),
                cache_modifier=".cg")
    m_max = tl.max(m, axis=1)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    total = tl.zeros_like(m_max)
    o = tl.zeros([bh.shape[0], D], tl.float32)
    for s in tl.static_range(SPLITS):
        row = bh * SPLITS + s
        w = tl.exp2(tl.load(part_ml + row * 2, mask=mask, other=float("-inf"), cache_modifier=".cg") - m_max)
        total += w * tl.load(part_ml + row * 2 + 1, mask=mask, other=0.0, cache_modifier=".cg")
        o += w[:, None] * tl.load(part_acc + row[:, None] * D + offs_d[None, :], mask=mask[:, None], other=0.0,
                                  cache_modifier=".cg")
    o = o / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(out_ptr + bh[:, None] * D + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _decode_combine_kernel(part_acc, part_ml, out_ptr, H: tl.constexpr, KV: tl.constexpr, D: tl.constexpr,
                           GROUP_PAD: tl.constexpr, SPLITS: tl.constexpr, PDL: tl.constexpr):
    """The merge as a launch of its own, one (sequence, kv head) a program: where no arrival counters are
    reserved (a CUDA graph captured before they were), the same code and bits as the in-kernel merge."""
    pdl.start(PDL)
    GROUP: tl.constexpr = H // KV
    offs_g = tl.arange(0, GROUP_PAD)
    bh = tl.program_id(0).to(tl.int64) * H + tl.program_id(1) * GROUP + offs_g
    _merge_splits(part_acc, part_ml, out_ptr, bh, offs_g < GROUP, tl.arange(0, D), D, SPLITS)


def prefill_attention(q, k_cache, v_cache, cu_seqlens_q, context_lens, block_tables, max_seqlen_q: int,
                      scale: float) -> torch.Tensor:
    """q (T, H, D) packed new tokens -> (T, H, D); causal over each sequence's cached + new keys."""
    _, H, D = q.shape
    B = context_lens.shape[0]
    KV, block_size = k_cache.shape[2], k_cache.shape[1]
    out = torch.empty_like(q)

    def grid(meta):
        return triton.cdiv(max_seqlen_q, meta["BLOCK_M"]), B, KV
    # autotuned once per head layout (on the engine's warm-up prefill); the kernel only writes `out`
    _prefill_kernel[grid](q, k_cache, v_cache, out, cu_seqlens_q, context_lens, block_tables,
                          block_tables.stride(0), scale, H=H, KV=KV, D=D, BLOCK_SIZE=block_size,
                          GROUP_PAD=triton.next_power_of_2(H // KV))
    return out


def decode_splits(batch: int, num_kv_heads: int, num_sms: int) -> int:
    """Split each sequence's context across programs until the grid covers the GPU about twice."""
    splits = 1
    while batch * num_kv_heads * splits < 2 * num_sms and splits < 16:
        splits *= 2
    return splits


# the decode kernel's launch: 64-key tiles, 4 warps (chosen on the H100, 2026-11-25). At sm_90a this config spills
# (~260 local stores and loads in its SASS, twice the instructions of 8 warps or of 32-key tiles, which spill
# none); `scripts/bench_attention.py --decode` times the alternatives (the choice changes the tile order, so bits)
DECODE_CONFIG = {"BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
MERGE_IN_KERNEL = True  # split partials merged by the last split program, not a second launch (A/B: bench_engine)


def decode_attention(q, k_cache, v_cache, context_lens, block_tables, scale: float,
                     splits: int | None = None, config: dict | None = None,
                     merge_in_kernel: bool | None = None) -> torch.Tensor:
    """q (B, H, D), one new token per sequence -> (B, H, D) over its whole context (flash-decoding); config:
    BLOCK_N / num_warps / num_stages, DECODE_CONFIG by default. With several splits the last program of each
    (sequence, kv head) merges their partials (merge_in_kernel, MERGE_IN_KERNEL by default), else a second
    launch does."""
    cfg = config or DECODE_CONFIG
    merge_in_kernel = MERGE_IN_KERNEL if merge_in_kernel is None else merge_in_kernel
    B, H, D = q.shape
    KV, block_size = k_cache.shape[2], k_cache.shape[1]
    if splits is None:
        splits = decode_splits(B, KV, sm_count(q.device))
    out = torch.empty_like(q)
    part_acc = torch.empty((B, H, splits, D), dtype=torch.float32, device=q.device) if splits > 1 else out
    part_ml = torch.empty((B, H, splits, 2), dtype=torch.float32, device=q.device) if splits > 1 else out
    arrivals = _arrival_counters(B * KV, q.device) if splits > 1 and merge_in_kernel else None
    group_pad = max(16, triton.next_power_of_2(H // KV))
    _decode_kernel[(B, KV, splits)](q, k_cache, v_cache, out, part_acc, part_ml,
                                    out if arrivals is None else arrivals, context_lens, block_tables,
                                    block_tables.stride(0), scale, H=H, KV=KV, D=D, BLOCK_SIZE=block_size,
                                    GROUP_PAD=group_pad, BLOCK_N=cfg["BLOCK_N"], SPLITS=splits,
                                    MERGE=arrivals is not None, num_warps=cfg["num_warps"],
                                    num_stages=cfg["num_stages"], **pdl.launch(q.device))
    if splits > 1 and arrivals is None:
        _decode_combine_kernel[(B, KV)](part_acc, part_ml, out, H=H, KV=KV, D=D, GROUP_PAD=group_pad,
                                        SPLITS=splits, num_warps=4, **pdl.launch(q.device))
    return out


_ARRIVALS: dict[torch.device, list[torch.Tensor]] = {}  # every buffer ever handed out: graphs may hold any of them


def _arrival_counters(n: int, device: torch.device) -> torch.Tensor | None:
    """n zeroed int32 arrival counters for the in-kernel merge, kept zeroed between calls by the kernel itself
    (so one buffer serves every layer and call in stream order). None while a CUDA graph is being captured and no
    buffer is large enough: a zeroing allocation made inside the capture would belong to the graph's pool."""
    bufs = _ARRIVALS.setdefault(device, [])
    if bufs and bufs[-1].numel() >= n:
        return bufs[-1]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return None
    bufs.append(torch.zeros(max(n, 4096), dtype=torch.int32, device=device))
    return bufs[-1]
