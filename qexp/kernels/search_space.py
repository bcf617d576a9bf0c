"""The tuner's search space: candidate configs per recipe kind and M bucket (`candidates`), each list pruned to the
configs that won a cell of some GPU's table (qexp/kernels/tuned/) or a stated reason to try them.

`scripts/bench_linear.py --tune` times them and writes the table that `configs` reads at run time; nothing here is
consulted outside tuning.
"""

from __future__ import annotations

from qexp.kernels.configs import (
    gemv_config,
    gemv_gl_config,
    gluon_config,
    gluon_w8a8_config,
    gluon_rs_config,
    gluon_ws_config,
    skinny_config,
    tma_config,
    triton_config,
    m_bucket,
    spans_groups,
)


def candidates(kind_: str, m: int) -> list[dict]:
    """Small per-bucket search space for the tuner (each config compiled once, shared across shapes)."""
    b = m_bucket(m)
    a8 = kind_.startswith("w8a8")
    # pointer-load tiles: the ones that won at least one cell of the 2026-11-25 H100 tune (the others were dropped)
    if b == 1:
        out = [
            triton_config(32, 16, 256),
            gemv_config(16, 1, 256),
            gemv_config(8, 1, 512),
            gemv_config(4, 1, 1024),
            gemv_config(8, 1, 256, split_k=4),
            gemv_config(8, 1, 512, warps=2),
            gemv_config(16, 1, 512, warps=8),
        ]
        # more weight bytes in flight per program (an H200 streams 1.4x an H100's bytes at the same latency)
        out += [
            gemv_config(16, 1, 1024, warps=8),
            gemv_config(32, 1, 512, warps=8),
            gemv_config(8, 1, 1024),
            gemv_config(16, 1, 256, prefetch=2),
            gemv_config(8, 1, 512, prefetch=2),
            gemv_config(4, 1, 1024, prefetch=2),
            gemv_config(8, 1, 512, warps=2, prefetch=2),
            gemv_config(16, 1, 512, warps=8, prefetch=2),
        ]
    elif b == 16:
        out = [
            triton_config(16, 16, 256),
            triton_config(32, 16, 256),
            triton_config(64, 16, 128),
            triton_config(32, 16, 256, split_k=2),
            triton_config(16, 16, 256, split_k=4),
            triton_config(64, 16, 256, split_k=4),
        ]
    elif b == 64:
        out = [
            triton_config(64, 64, 128),
            triton_config(64, 64, 128, split_k=4),
            triton_config(32, 64, 128, split_k=4),
            triton_config(128, 64, 128, split_k=2, stages=3),
        ]
    elif b in (128, 256):
        out = [
            triton_config(64, 64, 64),
            triton_config(64, 64, 128, split_k=2),
            triton_config(128, 64, 64),
            triton_config(64, 128, 64, split_k=2),
            triton_config(128, 128, 64, warps=8),
            triton_config(128, 64, 64, swap=False),
            triton_config(128, 256, 64, warps=8, stages=3),
        ]
    else:
        out = [
            triton_config(128, 128, 64, warps=8),
            triton_config(128, 128, 128, warps=8, stages=3, swap=False),
            triton_config(128, 64, 64, swap=False),
            triton_config(128, 256, 64, warps=8, stages=3),
            triton_config(128, 128, 64, stages=4, swap=False),
        ]
    out += _tma_candidates(b, a8)
    if a8:
        out += _gluon_a8_candidates(b)
    if not a8 and b == 1:
        out += _gemv_gl_candidates()
    if not a8:
        out += _gluon_candidates(b) + _skinny_candidates(b) + _rs_candidates(b) + _ws_candidates(b)
    if kind_.startswith("w8a16-int8") and b >= 16:  # int8 convert: bit trick (default) or Triton's own, per tile
        out += [{**c, "FAST_I8": False} for c in out if c["backend"] == "triton"]
    if kind_ == "w8a8-fp8":
        out += [{"backend": "scaled_mm"}, {"backend": "scaled_mm_fast"}]
    if not a8 and b >= 128:
        out += [{"backend": "dequant_mm"}]
    if "group" in kind_:  # a K tile must fit in one group (the kernel would clamp it): clamp here, drop repeats
        gs = int(kind_.rsplit("group", 1)[1])
        clamp = lambda c: {**c, "BLOCK_K": min(c["BLOCK_K"], gs)} if "BLOCK_K" in c else c
        # gluon_rs takes tiles of whole groups and group-sized ones alike (64-wide groups: 128-wide tiles halve
        # the K steps but cost registers; the tuner picks)
        out = [v for c in out for v in ((c, clamp(c)) if c["backend"] == "gluon_rs" else
                                        (c if spans_groups(c) else clamp(c), ))]
        out = [c for i, c in enumerate(out) if c not in out[:i]]
        # groups of two or more K tiles: also with the scales on the accumulator (a second accumulator: tiles of
        # up to 128 tokens)
        out += [{**c, "ACC_SCALE": True} for c in out
                if c["backend"] == "gluon_rs" and c["BLOCK_M"] <= 128 and gs >= 2 * c["BLOCK_K"]]
    return out


def _tma_candidates(b: int, a8: bool) -> list[dict]:
    """TMA-fed tiles. x @ W.T (swap=False) keeps the converted weight in shared memory, so the wgmma chain runs
    asynchronously; swap=True (weight as the register A operand) only where M is too small to fill 64 rows.
    Small M streams the weight through few programs: deep pipelines and split-K keep enough bytes in flight."""
    bk = 128 if a8 else 64
    if b == 1:
        return []
    if b == 16:
        return [
            tma_config(64, 16, 128, swap=True),
            tma_config(64, 16, 128, split_k=4, swap=True, stages=6),
            tma_config(64, 64, 128, split_k=2, stages=6),
            tma_config(64, 64, 128, split_k=4, stages=6),
            tma_config(128, 64, 128, split_k=4, stages=5),
            tma_config(64, 64, 128, split_k=8, stages=4),
        ]
    if b == 64:
        return [
            tma_config(64, 64, 128, stages=6),
            tma_config(64, 64, 128, split_k=2, stages=6),
            tma_config(64, 64, 128, split_k=4, stages=6),
            tma_config(128, 64, 128, split_k=2, stages=5),
            tma_config(128, 64, 128, split_k=4, stages=5),
            tma_config(128, 64, bk, warps=8, split_k=2),
            # shallower rings: two or three programs per SM overlap each other's convert and MMA
            tma_config(64, 64, 128, split_k=4, stages=3),
            tma_config(64, 64, 64, split_k=4, stages=4),
        ]
    if b == 128:
        return [
            tma_config(64, 128, bk, stages=6),
            tma_config(64, 128, bk, split_k=2, stages=6),
            tma_config(64, 128, bk, split_k=4, stages=6),
            tma_config(128, 128, bk, warps=8),
            tma_config(128, 128, bk, warps=8, split_k=2),
            tma_config(64, 128, 128, split_k=4, stages=4),
            tma_config(128, 128, 128, warps=8, split_k=4, stages=4),
            tma_config(64, 128, 64, split_k=4, stages=3),
            tma_config(64, 128, 64, split_k=2, stages=3),
            tma_config(64, 128, bk, split_k=3, stages=6),
        ]
    if b == 256:
        return [
            tma_config(128, 128, bk, warps=8),
            tma_config(128, 256, bk, warps=8, stages=3),
            tma_config(64, 256, bk, warps=8),
            tma_config(128, 128, bk, warps=8, split_k=2),
            tma_config(64, 128, bk, stages=6),
            tma_config(64, 128, bk, split_k=2, stages=6),
            tma_config(128, 256, bk, warps=8, split_k=2, stages=3),
            tma_config(64, 128, 64, split_k=2, stages=3),
            tma_config(64, 128, 64, stages=3),
            # N = 1024-2048 gives 32-64 tiles of 64 x 128 for 132 SMs: split K (W8A8 int8 at 0.65x, H200)
            tma_config(64, 128, bk, split_k=4, stages=6),
            tma_config(64, 128, bk, split_k=3, stages=6),
        ]
    return [
        tma_config(128, 128, bk, warps=8, stages=3),
        tma_config(128, 128, bk, warps=8, stages=4),
        tma_config(256, 128, bk, warps=8, stages=3),
        tma_config(128, 256, bk, warps=8, stages=3),
        tma_config(256, 128, bk, warps=8, stages=3, group_n=16),
        # M = 1024 at N = 1024-2048: 64-128 tiles of 128 x 128 leave SMs idle; narrower tiles, or split K
        tma_config(64, 128, bk, stages=6),
        tma_config(64, 128, bk, split_k=2, stages=6),
        tma_config(128, 128, bk, warps=8, split_k=2, stages=4),
    ]


def _gemv_gl_candidates() -> list[dict]:
    """Rows per thread (BLOCK_N / warps) share one converted x tile; PREFETCH=2 puts a third tile in flight."""
    return [
        gemv_gl_config(4, 1024, prefetch=2),
        gemv_gl_config(8, 512),
        gemv_gl_config(8, 512, prefetch=2),
        gemv_gl_config(8, 1024),
        gemv_gl_config(8, 1024, prefetch=2),
        gemv_gl_config(16, 512),
        gemv_gl_config(16, 512, warps=8, prefetch=2),
        gemv_gl_config(16, 1024, warps=8),
        gemv_gl_config(32, 512, warps=8),
        gemv_gl_config(16, 256),
        gemv_gl_config(8, 2048),
        gemv_gl_config(16, 1024),
        gemv_gl_config(32, 1024, warps=8),
        gemv_gl_config(8, 1024, warps=2),
    ]


def _skinny_candidates(b: int) -> list[dict]:
    """Few weight rows per program and split-K, so that even N = 1024 spreads over every SM. At M=1 the TMA ring
    keeps weight bytes in flight without holding them in registers (8-token tiles: the MMA's smallest N)."""
    if b == 1:
        return [
            skinny_config(64, 8, 256),
            skinny_config(64, 8, 512, stages=3),
            skinny_config(64, 16, 256),
            skinny_config(64, 8, 256, split_k=2),
            skinny_config(32, 8, 512, warps=2),
            skinny_config(128, 8, 256, warps=8),
            skinny_config(64, 8, 128, split_k=4, stages=6),
            skinny_config(32, 8, 256, warps=2, split_k=2, stages=6),
        ]
    if b == 16:
        return [
            skinny_config(64, 16, 256),
            skinny_config(64, 16, 128),
            skinny_config(64, 16, 256, split_k=2),
            skinny_config(64, 16, 128, split_k=4),
            skinny_config(64, 16, 256, split_k=4),
            skinny_config(128, 16, 128, warps=8),
            skinny_config(128, 16, 256, warps=8, split_k=2),
            skinny_config(64, 16, 128, split_k=8, stages=3),
            skinny_config(32, 16, 256, warps=2, split_k=2),
            skinny_config(32, 16, 256, warps=2, split_k=4),
            skinny_config(32, 16, 512, warps=2, stages=3),
            skinny_config(64, 16, 512, split_k=2, stages=3),
            # deeper rings (more bytes in flight for an H200)
            skinny_config(64, 16, 256, stages=6),
            skinny_config(64, 16, 128, split_k=2, stages=8),
            skinny_config(32, 16, 256, warps=2, split_k=2, stages=6),
            skinny_config(128, 16, 128, warps=8, split_k=2, stages=6),
        ]
    if b == 64:  # (128- and 256-row tiles, 32 rows per warp, were tried at M=64 and M=128: no cell won)
        return [
            skinny_config(64, 64, 64, stages=6),
            skinny_config(64, 64, 64, split_k=2, stages=6),
            skinny_config(64, 32, 128),
            skinny_config(64, 32, 128, split_k=2),
            skinny_config(128, 64, 64, warps=8, split_k=2),
        ]
    return []


def _rs_candidates(b: int) -> list[dict]:
    """M tiles of 16-256 tokens (wgmma's N); split-K where few weight strips would leave SMs idle. Only configs
    that won at least one cell of the H100 or H200 tables are kept (pruned 2026-12-02, after every bucket's
    row-wise and group-wise cells were tuned on the H200; dropped and never winning: 128-256 weight rows per
    64-token program, 256-token tiles with split-K, 64-wide K tiles eight deep, split 8)."""
    if b == 16:  # wgmma's N = 16 with the weight in registers: beats skinny's mma.sync on 6 of 24 H200 cells
        return [
            gluon_rs_config(64, 16, 128, split_k=2, stages=6),
            gluon_rs_config(64, 16, 128, split_k=4, stages=6),
            gluon_rs_config(64, 16, 128, split_k=4, stages=6, producer=True),
        ]
    if b == 64:
        return [
            gluon_rs_config(64, 64, 128, stages=6),
            gluon_rs_config(64, 64, 128, split_k=2, stages=6),
            gluon_rs_config(64, 64, 128, split_k=4, stages=6),
            gluon_rs_config(128, 64, 64, warps=8, stages=6),
            gluon_rs_config(64, 64, 128, stages=6, producer=True),
            gluon_rs_config(64, 64, 128, split_k=2, stages=6, producer=True),
            gluon_rs_config(64, 64, 128, split_k=4, stages=6, producer=True),
            gluon_rs_config(64, 32, 128, split_k=2, stages=6),
            gluon_rs_config(64, 32, 128, split_k=4, stages=6),
        ]
    if b == 128:
        return [
            gluon_rs_config(64, 128, 64, split_k=2, stages=6),
            gluon_rs_config(128, 128, 64, warps=8, stages=5),
            gluon_rs_config(64, 128, 64, split_k=2),
            gluon_rs_config(128, 128, 64, stages=3),
            gluon_rs_config(64, 128, 128),
            gluon_rs_config(64, 128, 128, split_k=2),
            # K = 6144 at ~100 tokens (down_proj): 3-4 splits of 128-wide K tiles, five deep; 128 weight rows
            gluon_rs_config(64, 128, 128, split_k=3, stages=5),
            gluon_rs_config(128, 128, 128, warps=8, stages=4),
            gluon_rs_config(64, 128, 128, producer=True),
            gluon_rs_config(64, 128, 128, stages=5, producer=True),
            gluon_rs_config(64, 128, 128, split_k=4, stages=5, producer=True),
            gluon_rs_config(128, 128, 128, warps=8, stages=4, producer=True),
            gluon_rs_config(128, 128, 64, warps=8, stages=6, producer=True),
            # 64-token tiles: two programs per weight strip (its second read from L2), so N = 1024-2048
            # spreads over the SMs (H200, 2026-12-01: N=1024 0.72x -> 0.97x bf16)
            gluon_rs_config(64, 64, 128, split_k=2, stages=6),
            gluon_rs_config(64, 64, 128, split_k=4, stages=6),
            gluon_rs_config(64, 64, 128, stages=6),
            gluon_rs_config(64, 64, 128, split_k=3, stages=6),
            gluon_rs_config(64, 64, 128, split_k=2, stages=6, producer=True),
            gluon_rs_config(64, 64, 128, split_k=4, stages=6, producer=True),
        ]
    # larger M: two or more programs per SM (fewer stages, one warp group) hide each other's prologue and epilogue
    if b == 256:
        return [
            gluon_rs_config(128, 256, 64, warps=8),
            gluon_rs_config(64, 256, 64),
            gluon_rs_config(64, 128, 64, stages=4),
            gluon_rs_config(64, 128, 128),
            gluon_rs_config(128, 256, 64, warps=8, producer=True),
            gluon_rs_config(64, 256, 64, producer=True),
            gluon_rs_config(64, 128, 128, producer=True),
            # N = 1024-2048 leaves too few strips: split-K, cheap since the sixth H200 session; 64-token tiles
            gluon_rs_config(64, 128, 128, split_k=2, stages=5),
            gluon_rs_config(64, 64, 128, split_k=2, stages=6),
            gluon_rs_config(64, 64, 128, stages=6),
            gluon_rs_config(64, 64, 128, split_k=2, stages=6, producer=True),
            # (H100, K=2048 N=6144: row-wise on 128-wide K tiles, fp8-group64 persistent)
            gluon_rs_config(64, 256, 128, stages=3, producer=True),
            gluon_rs_config(64, 256, 64, producer=True, persistent=True),
        ]
    if b >= 1024:
        return [
            gluon_rs_config(128, 128, 64, warps=8, stages=5),
            gluon_rs_config(128, 256, 64, warps=8),
            gluon_rs_config(128, 256, 64, warps=8, stages=3),
            gluon_rs_config(64, 128, 64, stages=4),
            gluon_rs_config(128, 128, 128, warps=8, stages=3),  # (K tiles of 128: half the per-step barriers and waits)
            # a producer warp: no TMA issue or CTA-wide barrier in the consumers' step, so the two consumer
            # warp groups need not run in lock step
            gluon_rs_config(128, 256, 64, warps=8, producer=True),
            gluon_rs_config(128, 256, 64, warps=8, stages=3, producer=True),
            gluon_rs_config(128, 128, 64, warps=8, stages=5, producer=True),
        ] + [  # the M=4096 winner walking fewer or more token tiles per weight strip (L2 reuse of x and weight:
            # gluon_ws at M=4096 ran 0.54x bf16 ungrouped, 0.59-0.61x at 8, 0.72-0.76x at 2: probe_ws_raster.py)
            gluon_rs_config(128, 256, 64, warps=8, producer=True, group_m=g) for g in (1, 2, 4, 16)
        ] + [gluon_rs_config(128, 256, 64, warps=8, stages=3, group_m=g) for g in (2, 4)] + [
            # persistent: the next tile's loads under this tile's last steps and store (H100, M=4096: ~24.5 us a
            # wave of tiles whatever the wave count, where cuBLAS's persistent kernels take ~22.5 us a wave at six)
            gluon_rs_config(128, 256, 64, warps=8, producer=True, persistent=True, group_m=g) for g in (2, 4, 8)
        ] + [
            gluon_rs_config(128, 128, 64, warps=8, producer=True, persistent=True),
            gluon_rs_config(128, 128, 128, warps=8, producer=True, persistent=True),
        ] + [  # N = 1024 at M=1024: one wave of 64 x 128 tiles, one warp group an SM; 128-wide K steps (half the
            # per-step waits) took it from 0.85x to 1.06x bf16 (H100; two programs an SM, by split-K or 64-token
            # tiles, won nothing)
            gluon_rs_config(64, 128, 128),
            gluon_rs_config(64, 128, 128, producer=True),
            # one warp group on 256-token tiles, a producer warp: won all 30 M=1024 cells at N = 2048 / 6144 and
            # K = 6144, our times 1.03-1.18x faster (H100, 2026-12-06; each weight converted once per 256 tokens,
            # and twice the tiles of 128 x 256 to fill the waves); lost at N = 1024 / 4096 and M = 4096
            gluon_rs_config(64, 256, 64, producer=True),
            gluon_rs_config(64, 256, 64, producer=True, persistent=True),
            gluon_rs_config(64, 256, 128, stages=3, producer=True),  # (row-wise's pick at N = 2048 / 6144)
            gluon_rs_config(64, 256, 128, stages=3, producer=True, persistent=True),
        ]
    return []


def _ws_candidates(b: int) -> list[dict]:
    """The warp-specialized kernel on 256-token tiles of 64 weight rows. Kept: the two configs that won cells in
    its first H100 tunes (2026-12-06: 27 cells at M=1024, one at 256, none at 128 or 4096): eight converter warps
    as two partitions taking even and odd K tiles, and one converter warp group. Tried there and dropped
    (BENCHMARKS.md): two MMA warp groups on 128 weight rows, 3-4 bf16 tiles in flight, 128-wide K tiles, split-K,
    128-token tiles."""
    if b < 256:
        return []
    return [
        gluon_ws_config(64, 256, 64, warps=4, stages=5, cvt_warps=8, cvt_split=True),
        gluon_ws_config(64, 256, 64, warps=4),
    ]


def _gluon_a8_candidates(b: int) -> list[dict]:
    """As the tma ones (64-token tiles at least: wgmma's M), plus splits of K where few tiles would leave SMs idle."""
    if b == 64:
        return [
            gluon_w8a8_config(64, 64, 128, stages=6),
            gluon_w8a8_config(64, 64, 128, split_k=2, stages=6),
            gluon_w8a8_config(64, 64, 128, split_k=4, stages=6),
            gluon_w8a8_config(128, 64, 128, split_k=2, stages=5),
            gluon_w8a8_config(128, 64, 128, split_k=4, stages=5),
        ]
    if b in (128, 256):
        return [
            gluon_w8a8_config(64, 128, 128, stages=6),
            gluon_w8a8_config(64, 128, 128, split_k=2, stages=6),
            gluon_w8a8_config(64, 128, 128, split_k=3, stages=6),
            gluon_w8a8_config(64, 128, 128, split_k=4, stages=6),
            gluon_w8a8_config(128, 128, 128, warps=8),
            gluon_w8a8_config(128, 128, 128, warps=8, split_k=2),
        ] + (
            [gluon_w8a8_config(128, 256, 128, warps=8, stages=3), gluon_w8a8_config(64, 256, 128, warps=8)]
            if b == 256
            else []
        )
    # larger M: grouped token tiles only (ungrouped, at ~16k prefill tokens x streamed from HBM once per pair of
    # weight strips: a M=4096 cell tuned ungrouped slowed prefill, sixth H200 session)
    grouped = [
        gluon_w8a8_config(128, 128, 128, warps=8, group_m=8),
        gluon_w8a8_config(128, 256, 128, warps=8, stages=3, group_m=8),
        gluon_w8a8_config(256, 128, 128, warps=8, stages=3, group_m=8),
    ]
    if b == 1024:
        return [
            gluon_w8a8_config(128, 128, 128, warps=8),
            gluon_w8a8_config(128, 256, 128, warps=8, stages=3),
            gluon_w8a8_config(256, 128, 128, warps=8, stages=3),
            gluon_w8a8_config(64, 128, 128, stages=6),
            gluon_w8a8_config(128, 128, 128, warps=8, split_k=2),
        ] + grouped
    return grouped if b > 1024 else []


def _gluon_candidates(b: int) -> list[dict]:
    if b == 1:
        return []
    if b in (16, 64):  # (8 warps splitting N of a 64-row tile were tried too: no cell won)
        return [
            gluon_config(64, 64, 128, stages=6),
            gluon_config(64, 64, 128, split_k=2, stages=6),
            gluon_config(64, 64, 128, split_k=4, stages=6),
            gluon_config(128, 64, 64, split_k=2, stages=6),
            gluon_config(128, 64, 64, split_k=4, stages=6),
        ]
    if b == 128:
        return [
            gluon_config(64, 128, 64, warps=8, stages=6),
            gluon_config(64, 128, 64, warps=8, split_k=2, stages=6),
            gluon_config(64, 128, 64, warps=8, split_k=4, stages=6),
            gluon_config(128, 128, 64, warps=8),
            gluon_config(128, 128, 64, warps=8, split_k=2),
        ]
    if b == 256:
        return [
            gluon_config(128, 128, 64, warps=8),
            gluon_config(64, 128, 64, warps=8, split_k=2, stages=6),
            gluon_config(128, 256, 64, warps=8, stages=3),
            gluon_config(128, 128, 64, warps=8, split_k=2),
        ]
    return [
        gluon_config(128, 128, 64, warps=8),
        gluon_config(128, 256, 64, warps=8, stages=3),
        gluon_config(256, 128, 64, warps=8, stages=3),
    ]
