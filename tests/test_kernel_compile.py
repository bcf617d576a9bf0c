"""The register-operand wgmma kernel (gluon_w8a16_rs) and the warp-specialized one (gluon_w8a16_ws) compiled for
sm_90a here, without a GPU, by
scripts/kernel_sass.py (Triton's bundled ptxas and nvdisasm): the layouts a CPU cannot run must still lower, with
no register spills. K tiles holding several scale groups broadcast each (row, group) scale onto the weight pairs
(a layout conversion asserted trivial); ACC_SCALE scales the accumulator instead of every weight pair. Each
compile runs in a subprocess: a layout the compiler rejects can abort the process, not just raise."""
import re

import pytest
from triton_interpreter import ROOT, run_python  # (tests/, beside this file)

pytest.importorskip("triton.experimental.gluon")

SPANNING = [dict(GROUPED=True, GROUP_SIZE=64, BLOCK_K=128),  # two groups a tile
            dict(GROUPED=True, GROUP_SIZE=64, BLOCK_K=256, STAGES=3)]  # four
ACC = [dict(GROUPED=True, GROUP_SIZE=512, BLOCK_K=128, ACC_SCALE=True),  # four tiles a group
       dict(GROUPED=True, GROUP_SIZE=256, BLOCK_K=64, BLOCK_N=128, num_warps=8, PRODUCER=True, STAGES=6,
            ACC_SCALE=True)]


def _sass(cfg, w, tmp_path, kernel="rs", maxnreg=None):
    out = tmp_path / "k.sass"
    args = [str(ROOT / "scripts" / "kernel_sass.py"), kernel, "--w", w, "--sass", str(out),
            "--cfg", ", ".join(f"{k}={v!r}" for k, v in cfg.items())]
    if cfg.get("PRODUCER") and cfg.get("num_warps") == 8:
        maxnreg = 168  # as w8a16_rs launches it
    if maxnreg:
        args += ["--maxnreg", str(maxnreg)]
    run_python(args, interpret=False)
    return out.read_text()


@pytest.mark.parametrize("w", ["int8", "fp8"])
@pytest.mark.parametrize("cfg", SPANNING + ACC, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_rs_kernel_lowers_for_sm90a_without_spills(cfg, w, tmp_path):
    sass = _sass(cfg, w, tmp_path)
    assert "HGMMA" in sass
    assert not re.search(r"\b(STL|LDL)\b", sass), "register spills"
    scaled_pairs = len(re.findall(r"HFMA2\.BF16", sass))  # the per-weight-pair group scaling
    if cfg.get("ACC_SCALE"):  # scales go on the accumulator: fp32 FMAs, no bf16x2 FMA on any weight pair
        assert scaled_pairs == 0 and "FFMA" in sass
    else:
        assert scaled_pairs > 0


WS = [dict(BLOCK_N=128, BLOCK_M=256, BLOCK_K=64, STAGES=4, num_warps=8),  # two MMA warp groups, 64 x 256 each
      dict(BLOCK_N=64, BLOCK_M=128, BLOCK_K=64, STAGES=6, num_warps=4, SPLIT_K=2),  # (256 tokens: the sum spills)
      dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=64, STAGES=6, num_warps=8, GROUPED=True, GROUP_SIZE=64, WSTAGES=3),
      dict(BLOCK_N=128, BLOCK_M=128, BLOCK_K=64, STAGES=6, num_warps=8, CVT_WARPS=8),  # 16 warps: 128 registers
      dict(BLOCK_N=64, BLOCK_M=256, BLOCK_K=64, STAGES=5, WSTAGES=4, num_warps=4, CVT_WARPS=8, CVT_SPLIT=True)]


@pytest.mark.parametrize("w", ["int8", "fp8"])
@pytest.mark.parametrize("cfg", WS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_ws_kernel_lowers_for_sm90a_with_registers_moved_to_the_mma_warps(cfg, w, tmp_path):
    """At the register count w8a16_ws launches with (ptxas caps every partition at it), without spills; the
    partitions resize their registers (setmaxnreg), and the wgmmas read both operands from shared memory."""
    from qexp.kernels.gluon_w8a16_ws import launch_regs
    sass = _sass(cfg, w, tmp_path, "ws", launch_regs(cfg["num_warps"], cfg.get("CVT_WARPS", 4)))
    assert re.search(r"HGMMA\.64x\d+x16\.F32\.BF16 R\d+, gdesc\[", sass)  # A from shared memory, not registers
    assert "USETMAXREG" in sass
    assert not re.search(r"\b(STL|LDL)\b", sass), "register spills"


PERSISTENT = [dict(BLOCK_N=128, BLOCK_M=256, BLOCK_K=64, STAGES=4, num_warps=8),  # the M >= 1024 tile
              dict(BLOCK_N=128, BLOCK_M=256, BLOCK_K=64, STAGES=4, num_warps=8, GROUPED=True, GROUP_SIZE=128)]


@pytest.mark.parametrize("w", ["int8", "fp8"])
@pytest.mark.parametrize("cfg", PERSISTENT, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_persistent_rs_kernel_lowers_for_sm90a_without_spills(cfg, w, tmp_path):
    """The persistent kernel (a producer warp, eight consumer warps: launched at 168 registers) loops over tiles
    around the same main loop as _rs_kernel."""
    sass = _sass(cfg, w, tmp_path, "rs_persistent", maxnreg=168)
    assert "HGMMA" in sass
    assert not re.search(r"\b(STL|LDL)\b", sass), "register spills"
