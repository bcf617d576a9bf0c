"""The register-operand wgmma kernel (gluon_w8a16_rs) compiled for sm_90a here, without a GPU, by
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


def _sass(cfg, w, tmp_path):
    out = tmp_path / "k.sass"
    args = [str(ROOT / "scripts" / "kernel_sass.py"), "rs", "--w", w, "--sass", str(out),
            "--cfg", ", ".join(f"{k}={v!r}" for k, v in cfg.items())]
    if cfg.get("PRODUCER") and cfg.get("num_warps") == 8:
        args += ["--maxnreg", "168"]  # as w8a16_rs launches it
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
