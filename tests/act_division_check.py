"""GPU helper of test_kernels: counts where quantize_with's 8-bit values differ from an IEEE division's (imported
only by the GPU tests; Triton is not installed on the CPU machine)."""
import triton
import triton.language as tl

from qexp.kernels.triton_act_quant import quantize_with, row_scale, to_8bit


@triton.jit
def _same(x, scale, rcp, IS_FP8: tl.constexpr, QMAX: tl.constexpr, DIV_STEPS: tl.constexpr):
    """The kernels' 8-bit values equal those of the IEEE quotient (compared as bytes)."""
    return quantize_with(x, scale, rcp, IS_FP8, QMAX, DIV_STEPS).to(tl.int8, bitcast=True) == to_8bit(
        tl.div_rn(x, scale), IS_FP8, QMAX).to(tl.int8, bitcast=True)


@triton.jit
def _decode(bits, FP16: tl.constexpr):
    if FP16:
        x = bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    else:
        x = (bits << 16).to(tl.float32, bitcast=True)
    return x


@triton.jit
def every_16bit_pair_kernel(bad_ptr, FP16: tl.constexpr, IS_FP8: tl.constexpr, QMAX: tl.constexpr,
                            QMAX_INV: tl.constexpr, DIV_STEPS: tl.constexpr, BLOCK: tl.constexpr):
    """Program i: amax = the i+1-th positive 16-bit float; every x of that format with |x| <= amax, both signs."""
    abits = tl.program_id(0) + 1
    scale = row_scale(_decode(abits, FP16), QMAX_INV)
    rcp = tl.div_rn(1.0, scale)
    bad = tl.zeros([BLOCK], tl.int32)
    for x0 in range(0, abits + 1, BLOCK):
        xb = x0 + tl.arange(0, BLOCK)
        for sign in tl.static_range(2):
            x = _decode(xb | (sign << 15), FP16)
            same = _same(x, scale, rcp, IS_FP8, QMAX, DIV_STEPS)
            bad += ((xb <= abits) & ~same).to(tl.int32)
    tl.atomic_add(bad_ptr, tl.sum(bad, 0))


@triton.jit
def given_pairs_kernel(x_ptr, s_ptr, bad_ptr, n, IS_FP8: tl.constexpr, QMAX: tl.constexpr,
                       DIV_STEPS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0)
    scale = tl.load(s_ptr + offs, mask=m, other=1.0)
    same = _same(x, scale, tl.div_rn(1.0, scale), IS_FP8, QMAX, DIV_STEPS)
    tl.atomic_add(bad_ptr, tl.sum((m & ~same).to(tl.int32), 0))
