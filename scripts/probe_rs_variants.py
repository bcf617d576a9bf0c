"""CPU-only probe: how many SASS instructions gluon_rs's K step would lose with weights re-packed at quantization
time so that each thread's wgmma A-fragment bytes are contiguous, or with the MMA in fp16 instead of bf16 (design
probes, not kernels qexp runs).

    python3 scripts/probe_rs_variants.py [--w fp8] [--cfg "BLOCK_N=64, BLOCK_M=128, BLOCK_K=128, STAGES=5, PRODUCER=True"]

gluon_rs reads its A fragment as 16-bit byte pairs (`_load_a`): in each 16-wide K block a thread (lane t of 4)
owns k 2t, 2t+1 and 2t+8, 2t+9 of two rows, 8 bytes apart, so a 128-wide K step takes 32 LDS.S16 per thread.
Packings compared (stored position <- logical k, n fixed):
  none  as stored today;
  p16   within each 16-wide block: 4t + i <- (2t, 2t+1, 2t+8, 2t+9)[i], so a thread's 4 bytes of a block are one
        32-bit word (the word distribution of ldmatrix: ptxas emits LDSM.x4). Kernels that hold a whole 16-wide
        block of x per thread (skinny, gemv_gl: k_width 16) could read it by renaming their x registers;
  p128  within each 128-wide step: 32t + 4j + i <- 16j + (2t, 2t+1, 2t+8, 2t+9)[i]: 32 contiguous bytes, 2 LDS.128
        per row (BLOCK_K a multiple of 128).
  fp16  as stored, but the A fragment converted to fp16 and x fp16 (an fp16 wgmma): e4m3x2 -> f16x2 is one
        converter instruction per pair (to bf16 it takes four), int8 a sign flip, a byte permute under fp16 1024's
        exponent and one f16x2 subtraction. Every int8 and e4m3 value and every bf16 x within fp16's normal range
        is exact in fp16, so x would have to arrive as fp16 from its producer (range-checked, or scaled by a power
        of two per token);
  p16-fp16  both.
The variants replace `_load_a` only (p16 / p128: the same convert and wgmma); numerics are not checked here (no
GPU). Prints the instructions between consecutive K steps' last wgmma (the steady-state step), as
scripts/kernel_sass.py does.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import triton  # noqa: E402
from triton.experimental import gluon  # noqa: E402
from triton.experimental.gluon import language as gl  # noqa: E402

import kernel_sass  # noqa: E402  (scripts/, beside this file)
from qexp.kernels import gluon_w8a16_rs as rs  # noqa: E402
from qexp.kernels.gluon_skinny import bf16_asm, e4m3_asm  # noqa: E402

_I8X4 = gl.constexpr(bf16_asm(2, fill="$3"))  # bytes 0-1 -> $0, bytes 2-3 -> $1
_E4M3X4 = gl.constexpr(e4m3_asm(2))
_I8X4_F16 = gl.constexpr("{ .reg .b32 t, c; xor.b32 t, $2, 0x80808080; mov.b32 c, 0x64806480; "
                         "prmt.b32 $0, t, $3, 0x4140; prmt.b32 $1, t, $3, 0x4342; "
                         "sub.f16x2 $0, $0, c; sub.f16x2 $1, $1, c; }")  # ($3: 0x64, in a register)
_E4M3X4_F16 = gl.constexpr("{ .reg .b16 p, q; mov.b32 {p, q}, $2; cvt.rn.f16x2.e4m3x2 $0, p; "
                           "cvt.rn.f16x2.e4m3x2 $1, q; }")


@triton.constexpr_function
def _word_layout(block_n, block_k, num_warps, packing):
    """int32 words (block_n, block_k // 4) of a packed tile: lane (g, t) of warp w holds rows 16w + g (+ 8), and
    p16: word t of every 16-byte block; p128: words 8t .. 8t + 7 of every 128-byte step."""
    log2 = lambda v: v.bit_length() - 1  # noqa: E731
    rows = [[8, 0]]
    more_rows = [[(16 * num_warps) << i, 0] for i in range(log2(block_n // (16 * num_warps)))]
    if packing.startswith("p16"):
        reg, lanes = rows + [[0, 4 << i] for i in range(log2(block_k // 16))], [[0, 1], [0, 2]]
    else:
        reg, lanes = [[0, 1], [0, 2], [0, 4]] + rows + [[0, 32 << i] for i in range(log2(block_k // 128))], \
            [[0, 8], [0, 16]]
    return gl.DistributedLinearLayout(reg_bases=reg + more_rows, lane_bases=lanes + [[1, 0], [2, 0], [4, 0]],
                                      warp_bases=[[16 << i, 0] for i in range(log2(num_warps))], block_bases=[],
                                      shape=[block_n, block_k // 4])


# the packed variant this process compiles (main sets them: one variant a process)
PACKING = gl.constexpr("p16")
FP16 = gl.constexpr(False)


@gluon.jit
def _packed_load_a(w_tile, a_l: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, num_warps: gl.constexpr):
    w32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_tile.layout.swizzle_byte_width,
                                             element_bitwidth=32, rank=2)
    words = w_tile._reinterpret(gl.int32, [BLOCK_N, BLOCK_K // 4], w32).load(
        _word_layout(BLOCK_N, BLOCK_K, num_warps, PACKING))
    fill = gl.zeros_like(words) + (rs._fill_byte() + (0x21 if FP16 else 0))  # 0x43 (bf16) or 0x64 (fp16)
    if w_tile.dtype == gl.int8:
        lo, hi = gl.inline_asm_elementwise(_I8X4_F16 if FP16 else _I8X4, "=r,=r,r,r", [words, fill],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=1)
    else:
        lo, hi = gl.inline_asm_elementwise(_E4M3X4_F16 if FP16 else _E4M3X4, "=r,=r,r", [words],
                                           dtype=(gl.int32, gl.int32), is_pure=True, pack=1)
    # lo holds logical pair 8j + t of the step, hi pair 8j + t + 4: order them as the pair layout's index
    if PACKING == "p16":  # word 4j + t
        lo = gl.reshape(lo, [BLOCK_N, BLOCK_K // 16, 4])
        hi = gl.reshape(hi, [BLOCK_N, BLOCK_K // 16, 4])
        v = gl.permute(gl.join(lo, hi), (0, 1, 3, 2))  # (row, j, h, t)
    else:  # word 32s + 8t + j
        lo = gl.reshape(lo, [BLOCK_N, BLOCK_K // 128, 4, 8])
        hi = gl.reshape(hi, [BLOCK_N, BLOCK_K // 128, 4, 8])
        v = gl.permute(gl.join(lo, hi), (0, 1, 3, 4, 2))  # (row, s, j, h, t)
    v = gl.convert_layout(gl.reshape(v, [BLOCK_N, BLOCK_K // 2]), rs._pair_layout(BLOCK_N, BLOCK_K, num_warps),
                          assert_trivial=True)
    ty: gl.constexpr = gl.float16 if FP16 else gl.bfloat16
    lo = v.to(gl.int16).to(ty, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(ty, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), [BLOCK_N, BLOCK_K]), a_l, assert_trivial=True)


# one byte pair -> f16x2: sign flip, bytes under 0x64 (fp16 1024 + u), minus 1024 + 128
_I8X2_TO_F16X2 = gl.constexpr("{ .reg .b32 t, c; xor.b32 t, $1, 0x8080; prmt.b32 t, t, 0x64, 0x4140; "
                              "mov.b32 c, 0x64806480; sub.f16x2 $0, t, c; }")
_E4M3X2_TO_F16X2 = gl.constexpr("{ .reg .b16 p, u; mov.b32 {p, u}, $1; cvt.rn.f16x2.e4m3x2 $0, p; }")


@gluon.jit
def _fp16_load_a(w_tile, a_l: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, num_warps: gl.constexpr):
    """gluon_rs._load_a with an fp16 fragment (the same byte-pair loads)."""
    w16: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=w_tile.layout.swizzle_byte_width,
                                             element_bitwidth=16, rank=2)
    pairs = w_tile._reinterpret(gl.int16, [BLOCK_N, BLOCK_K // 2], w16).load(
        rs._pair_layout(BLOCK_N, BLOCK_K, num_warps))
    asm: gl.constexpr = _I8X2_TO_F16X2 if w_tile.dtype == gl.int8 else _E4M3X2_TO_F16X2
    v = gl.inline_asm_elementwise(asm, "=r,r", [pairs.to(gl.int32)], dtype=gl.int32, is_pure=True, pack=1)
    lo = v.to(gl.int16).to(gl.float16, bitcast=True)
    hi = (v >> 16).to(gl.int16).to(gl.float16, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), [BLOCK_N, BLOCK_K]), a_l, assert_trivial=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--w", choices=["int8", "fp8"], default="int8")
    ap.add_argument("--cfg", default="BLOCK_N=64, BLOCK_M=128, BLOCK_K=128, STAGES=5, PRODUCER=True")
    ap.add_argument("--variant", choices=["none", "p16", "p128", "fp16", "p16-fp16"], default=None,
                    help="one variant in this process (default: each in a fresh process: a JIT function's cache key "
                         "is computed once, so a patched _load_a is seen only before the first compile)")
    args = ap.parse_args()
    if args.variant is None:
        block_k = eval(f"dict({args.cfg})").get("BLOCK_K", kernel_sass.DEFAULTS["BLOCK_K"])  # noqa: S307
        for variant in ("none", "p16", "p128", "fp16", "p16-fp16") if block_k % 128 == 0 else (
                "none", "p16", "fp16", "p16-fp16"):
            subprocess.run([sys.executable, __file__, "--w", args.w, "--cfg", args.cfg, "--variant", variant],
                           check=True)
        return
    cfg = eval(f"dict({args.cfg})")  # noqa: S307 - a developer's command line
    if args.variant in ("p16", "p128", "p16-fp16"):
        global PACKING, FP16
        PACKING, FP16 = gl.constexpr(args.variant.split("-")[0]), gl.constexpr(args.variant.endswith("fp16"))
        rs._load_a = _packed_load_a
    elif args.variant == "fp16":
        rs._load_a = _fp16_load_a
    x = "fp16" if args.variant.endswith("fp16") else "bf16"
    sass = kernel_sass.disassemble(kernel_sass.compile_kernel("rs", args.w, cfg, None, x=x))
    ops = [m.group(0) for line in sass.splitlines() if (m := kernel_sass._OP.match(line))]
    marker = re.compile(kernel_sass.KERNELS["rs"][2])
    ends = [i for i, line in enumerate(ops) if marker.search(line)]
    loads = sorted({m.group(1) for line in ops if (m := re.search(r"\b(LDS\S*|LDSM\S*)", line))})
    print(f"{args.variant:8s} {args.w} {cfg}: per K step {[b - a for a, b in zip(ends, ends[1:])]}, "
          f"shared loads {loads}", flush=True)


if __name__ == "__main__":
    main()
