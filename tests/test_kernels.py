"""qexp.kernels: the plain-torch reference against hand-computed values (CPU), and every fused CUDA kernel against
the reference on fresh random inputs with poisoned outputs (GPU, marked)."""
import json
import math

import pytest
import torch

from qexp import kernels
from qexp.kernels import configs, reference, search_space
from qexp.quant import qdq

F8 = torch.float8_e4m3fn


# ---------------------------------------------------------------- reference (CPU), hand-computed


def test_dequantize_weight_by_hand():
    w_q = torch.tensor([[1, -2, 3, 4], [5, 6, -7, 8]], dtype=torch.int8)
    tensor = reference.dequantize_weight(w_q, torch.tensor([0.5]), out_dtype=torch.float32)
    assert tensor.tolist() == [[0.5, -1.0, 1.5, 2.0], [2.5, 3.0, -3.5, 4.0]]
    row = reference.dequantize_weight(w_q, torch.tensor([0.5, 2.0]), out_dtype=torch.float32)
    assert row.tolist() == [[0.5, -1.0, 1.5, 2.0], [10.0, 12.0, -14.0, 16.0]]
    group = reference.dequantize_weight(w_q, torch.tensor([[1.0, 0.25], [2.0, 0.5]]), group_size=2,
                                        out_dtype=torch.float32)
    assert group.tolist() == [[1.0, -2.0, 0.75, 1.0], [10.0, 12.0, -3.5, 4.0]]


def test_weight_only_linear_is_dequantize_then_matmul():
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5]])
    w_q = torch.tensor([[1, -2, 3, 4], [5, 6, -7, 8]], dtype=torch.int8)
    scale = torch.tensor([[1.0, 0.25], [2.0, 0.5]])
    bias = torch.tensor([0.5, -1.0])
    # rows of the dequantized weight: [1, -2, .75, 1] and [10, 12, -3.5, 4]
    expected = [[1 - 4 - 0.75 + 0.5 + 0.5, 10 + 24 + 3.5 + 2 - 1.0]]
    out = reference.quantized_linear(x, w_q, scale, group_size=2, bias=bias)
    assert out.tolist() == expected


def test_w8a8_per_token_quantization_by_hand():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, s = reference.quantize_activation(x, "int8")
    # amax 2 -> scale 2/127; x/scale = 63.5 (ties to even: 64), -127, 31.75 -> 32; an all-zero row stays 0
    assert q.tolist() == [[64, -127, 32], [0, 0, 0]]
    assert s[0, 0].item() == pytest.approx(2 / 127, rel=1e-7)
    w_q = torch.tensor([[1, 2, 3], [-4, 5, 6]], dtype=torch.int8)
    w_s = torch.tensor([0.1, 0.2])
    out = reference.quantized_linear(x, w_q, w_s, act_dtype="int8")
    dot = [64 * 1 - 127 * 2 + 32 * 3, 64 * -4 - 127 * 5 + 32 * 6]
    assert out[0].tolist() == pytest.approx([dot[0] * (2 / 127) * 0.1, dot[1] * (2 / 127) * 0.2], rel=1e-6)
    assert out[1].tolist() == [0.0, 0.0]


def test_pre_scale_multiplies_x_first_in_both_modes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, generator=gen)
    p = torch.rand(32, generator=gen) + 0.5
    w_q, w_s = qdq.quantize(torch.randn(8, 32, generator=gen), "int8", "row")
    for act in (None, "int8"):
        got = reference.quantized_linear(x, w_q, w_s, act_dtype=act, pre_scale=p)
        assert torch.equal(got, reference.quantized_linear(x * p, w_q, w_s, act_dtype=act))


def test_cpu_dispatch_is_the_reference():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 64, generator=gen).bfloat16()
    w_q, w_s = qdq.quantize(torch.randn(16, 64, generator=gen), "fp8", "group", 32)
    w_s = w_s.reshape(16, 2)
    assert torch.equal(kernels.quantized_linear(x, w_q, w_s, group_size=32),
                       reference.quantized_linear(x, w_q, w_s, group_size=32))


def _tile_offsets(ll, shape):
    from qexp.kernels.gluon_w8a16 import _thread_major
    rows, cols = _thread_major(ll, 0), _thread_major(ll, 1)
    scatter = lambda i, w: sum(((i >> b) & 1) * wb for b, wb in enumerate(w))
    return [[scatter(r, rows) + scatter(c, cols) for c in range(shape[1])] for r in range(shape[0])]


def test_split_k_partials_are_laid_out_thread_major():
    """split_k_sum's partial offsets (gluon_w8a16._thread_major): every element of the tile gets its own offset in
    [0, R * C), and the 32 lanes of a warp holding one register land on 32 consecutive words (one cache line
    a store). Layouts: the wgmma accumulator of 4 warps (64 x 16: 16 rows a warp, lanes over 8 rows x 4 column
    pairs), and one whose last lane bit copies (broadcast) a 16-row tile."""
    from triton.experimental.gluon import language as gl
    acc = gl.DistributedLinearLayout(reg_bases=[[0, 1], [8, 0], [0, 8]],
                                     lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [4, 0]],
                                     warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[64, 16])
    copies = gl.DistributedLinearLayout(reg_bases=[[0, 1]], lane_bases=[[0, 2], [0, 4], [1, 0], [2, 0], [0, 0]],
                                        warp_bases=[[4, 0], [8, 0]], block_bases=[], shape=[16, 8])
    for ll, shape in ((acc, (64, 16)), (copies, (16, 8))):
        offs = _tile_offsets(ll, shape)
        assert sorted(o for row in offs for o in row) == list(range(shape[0] * shape[1]))
        # lane i of warp 0, register 0 (element at the XOR of lane i's set bits): offset i, for the 16 lanes
        # that hold distinct elements in both layouts
        for lane in range(16):
            r = c = 0
            for i, (dr, dc) in enumerate(ll.lane_bases):
                if lane >> i & 1:
                    r, c = r ^ dr, c ^ dc
            assert offs[r][c] == lane


def test_config_lookup_and_candidates():
    assert [configs.m_bucket(m) for m in (1, 2, 16, 17, 100, 129, 300, 5000)] == [1, 16, 16, 64, 128, 256, 1024,
                                                                                    4096]
    assert configs.kind(torch.int8, None, 64) == "w8a16-int8-group64"
    assert configs.kind(F8, "fp8", None) == "w8a8-fp8"
    for m in configs.M_BUCKETS:
        assert all(c.get("BLOCK_K", 0) <= 64 for c in search_space.candidates("w8a16-fp8-group64", m)
                   if not configs.spans_groups(c))
        assert configs.heuristic("w8a16-int8-row", 2048, 2048, m)["backend"] in ("triton", "gemv", "scaled_mm")
    # past twice the largest bucket weight-only dequantizes once and runs cuBLAS (no table, no GPU consulted)
    assert configs.config_for("w8a16-fp8-group128", 2048, 2048, 16384, torch.device("cpu")) == {"backend": "dequant_mm"}


def test_tma_ring_candidates_fit_in_shared_memory():
    """Every candidate of the TMA-ring kernels (gluon_rs, skinny, gluon_w8a8, gluon_ws) fits its ring of x and weight tiles
    in the 227 KB a Hopper block may hold: a larger one only fails at launch (OutOfResources, one such candidate
    in the eleventh H200 session's tune: 6 x (128 x 128 x 2 + 64 x 128) = 245 760 bytes, 245 808 at launch)."""
    limit = 232448
    kinds = [configs.kind(wd, None, gs) for wd in (torch.int8, F8) for gs in (None, 64, 128, 256, 512)]
    for kd in kinds + ["w8a8-int8", "w8a8-fp8"]:
        x_bytes = 1 if kd.startswith("w8a8") else 2
        for m in configs.M_BUCKETS:
            for c in search_space.candidates(kd, m):
                if c["backend"] in ("gluon_rs", "skinny", "gluon_w8a8", "gluon_ws"):
                    ring = c["num_stages"] * c["BLOCK_K"] * (c["BLOCK_M"] * x_bytes + c["BLOCK_N"])
                    converted = c.get("WSTAGES", 0) * c["BLOCK_N"] * c["BLOCK_K"] * 2  # gluon_ws's bf16 tiles
                    assert ring + converted + 16 * (c["num_stages"] + 2 * c.get("WSTAGES", 0)) <= limit, (kd, m, c)


def test_ws_candidates_fit_the_registers_a_thread_gets_at_launch():
    """gluon_ws launches every warp of its partitions at once, and ptxas caps each partition at that count: with
    16 warps in all (128 registers) a 64 x 256 fp32 accumulator a warp group (128 a thread) cannot fit."""
    from qexp.kernels.gluon_w8a16_ws import launch_regs
    for kd in [configs.kind(wd, None, gs) for wd in (torch.int8, F8) for gs in (None, 64, 128)]:
        for m in configs.M_BUCKETS:
            for c in search_space.candidates(kd, m):
                if c["backend"] == "gluon_ws":
                    acc_regs = 64 * c["BLOCK_M"] // 128  # a warp group's 64 rows x BLOCK_M over 128 threads
                    assert acc_regs + 24 <= launch_regs(c["num_warps"], c["CVT_WARPS"]), (kd, m, c)


def test_shipped_tables_hold_only_tuner_candidates():
    """A shipped table's cell is a config the tuner can still produce for that kind and bucket: pruning a
    candidate list (as the twelfth H200 session did) must not orphan a cell no re-tune would reproduce."""
    for path in sorted(configs.TUNED_DIR.glob("*.json")):
        cells = json.loads(path.read_text())["configs"]
        assert cells, path
        for key_, cfg in cells.items():
            kind_, _, _, m = key_.split("|")
            assert cfg in search_space.candidates(kind_, int(m)), (path.name, key_, cfg)


@pytest.fixture
def fresh_tables():
    """The table lookups' caches emptied before the test and after it, pass or fail (tests point TUNED_DIR or
    QEXP_KERNEL_TABLE elsewhere; later tests must read the shipped tables again)."""
    def clear():
        for f in (configs.table_paths, configs.lookup, configs._read):
            f.cache_clear()
    clear()
    yield clear
    clear()


def test_config_overrides_answer_first_and_recording_lists_the_cells_asked_for():
    """The hooks scripts/tune_bs1.py tunes through: an override answers its keys (read at each call), the other
    keys and everything after the block take the usual choice (here the no-GPU rule past the largest bucket)."""
    cpu, m = torch.device("cpu"), 16384
    cell, other = configs.key("w8a16-int8-row", 4096, 2048, m), configs.key("w8a16-int8-row", 2048, 2048, m)
    usual = {"backend": "dequant_mm"}
    mine = configs.gluon_rs_config(64, 128, 128, producer=True)
    with configs.recording() as keys, configs.override({cell: mine}) as cells:
        assert configs.config_for("w8a16-int8-row", 4096, 2048, m, cpu) == mine
        cells[cell] = configs.gluon_rs_config(128, 128, 64, warps=8)
        assert (configs.config_for("w8a16-int8-row", 4096, 2048, m, cpu)
                == configs.gluon_rs_config(128, 128, 64, warps=8))
        assert configs.config_for("w8a16-int8-row", 2048, 2048, m, cpu) == usual
        configs.config_for("w8a16-int8-row", 2048, 2048, m, cpu)
    assert keys == [cell, other]
    assert configs.config_for("w8a16-int8-row", 4096, 2048, m, cpu) == usual


def test_k_tiles_fit_k_and_the_scale_groups():
    fit_block_k = configs.fit_block_k
    assert fit_block_k(2048, 1024, False, None) == 1024
    assert fit_block_k(2048, 1024, True, 64) == 64  # a tensor-core tile stays inside one group
    assert fit_block_k(2048, 1024, True, 64, span_groups=True) == 1024  # the GEMV's tile holds 16 whole groups
    assert fit_block_k(2048, 256, True, 512, span_groups=True) == 256
    assert fit_block_k(2304, 1024, True, 64, span_groups=True) == 256  # tiles K whole
    assert fit_block_k(2304, 1024, True, 96, span_groups=True) == 32  # not a power of two: inside one group
    # gluon_rs tiles may hold whole groups; the tuner offers each such tile and its one-group clamp
    rs = configs.gluon_rs_config(64, 128, 128)
    assert configs.spans_groups(rs)
    group64 = search_space.candidates("w8a16-int8-group64", 128)
    assert rs in group64 and {**rs, "BLOCK_K": 64} in group64
    assert not configs.spans_groups(configs.tma_config(64, 128, 128))
    # accumulator-scaled variants: only where a group holds two or more K tiles, on tiles of <= 128 tokens (the
    # second accumulator), never for row-wise weights
    for kind_, gs in (("w8a16-fp8-group64", 64), ("w8a16-int8-group128", 128), ("w8a16-int8-group512", 512)):
        for m in configs.M_BUCKETS:
            cands = search_space.candidates(kind_, m)
            acc = [c for c in cands if c.get("ACC_SCALE")]
            assert all(c["backend"] == "gluon_rs" and c["BLOCK_M"] <= 128 and gs >= 2 * c["BLOCK_K"] for c in acc)
            # each is offered beside its per-weight twin, so the tuner compares the two
            assert all({k: v for k, v in c.items() if k != "ACC_SCALE"} in cands for c in acc)
    assert any(c.get("ACC_SCALE") for c in search_space.candidates("w8a16-int8-group512", 128))
    assert not any(c.get("ACC_SCALE") for m in configs.M_BUCKETS for c in search_space.candidates("w8a16-int8-row", m))
    gemv = configs.gemv_config(4, 1, 1024)
    assert configs.spans_groups(gemv) and not configs.spans_groups(configs.gemv_config(16, 4, 128))
    assert gemv in search_space.candidates("w8a16-int8-group64", 1)
    gl = configs.gemv_gl_config(8, 1024)
    assert configs.spans_groups(gl) and gl in search_space.candidates("w8a16-fp8-group64", 1)
    # weight-only, one token: never offered to W8A8 or to larger buckets
    assert all(c["backend"] != "gemv_gl" for c in search_space.candidates("w8a8-int8", 1) + search_space.candidates(
        "w8a16-int8-row", 16))


def test_tuned_table_is_complete_and_used():
    """The shipped H100 table covers every kind x Qwen3-1.7B shape x M bucket with configs the kernels accept."""
    name = "NVIDIA H100 80GB HBM3"
    table = json.loads(configs.tuned_path(name).read_text())["configs"]
    kinds = [configs.kind(wd, None, gs) for wd in (torch.int8, F8) for gs in (None, 64, 128, 256, 512)]
    kinds += ["w8a8-int8", "w8a8-fp8"]
    shapes = [(2048, 4096), (2048, 1024), (2048, 2048), (2048, 6144), (6144, 2048)]
    for kd in kinds:
        for k, n in shapes:
            for m in configs.M_BUCKETS:
                cfg = table[configs.key(kd, n, k, m)]
                assert configs.lookup(kd, n, k, m, name) == cfg
                tiled = ("triton", "tma", "gluon", "gluon_rs", "gluon_ws", "skinny", "gemv", "gemv_gl", "gluon_w8a8")
                assert cfg["backend"] in tiled + ("dequant_mm", "scaled_mm", "scaled_mm_fast")
                if cfg["backend"] in tiled:
                    assert {"BLOCK_N", "BLOCK_M", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages"} <= cfg.keys()
                if kd.startswith("w8a8"):
                    assert cfg["backend"] != "dequant_mm"
                if cfg["backend"].startswith("scaled_mm"):
                    assert kd == "w8a8-fp8"


def test_a_gpu_without_its_own_table_takes_one_of_the_same_capability(tmp_path, monkeypatch, fresh_tables):
    """Own table first, cell by cell; then tables of GPUs with the same compute capability (by file name); never
    one of another capability; the heuristic last. QEXP_KERNEL_TABLE alone replaces the whole chain."""
    def write(name, cap, cells):
        (tmp_path / f"{configs._slug(name)}.json").write_text(json.dumps({"device": name, "capability": cap,
                                                                          "configs": cells}))
    a, b, c, d = ({"backend": "gemv", "BLOCK_N": i, "BLOCK_M": 1, "BLOCK_K": 256, "SPLIT_K": 1, "num_warps": 4,
                   "num_stages": 3} for i in (1, 2, 4, 8))
    k1, k2, k3 = "w8a16-int8-row|1024|2048|1", "w8a16-int8-row|2048|2048|1", "w8a16-int8-row|4096|2048|1"
    write("GPU Own", [9, 0], {k1: a})
    write("GPU Aa", [9, 0], {k1: b, k2: b})
    write("GPU Bb", [9, 0], {k2: c, k3: c})
    write("GPU Old", [8, 0], {k3: d})
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    monkeypatch.delenv("QEXP_KERNEL_TABLE", raising=False)
    fresh_tables()
    assert [p.name for p in configs.table_paths("GPU Own", (9, 0))] == ["gpu-own.json", "gpu-aa.json", "gpu-bb.json"]
    assert configs.lookup("w8a16-int8-row", 1024, 2048, 1, "GPU Own", (9, 0)) == a
    assert configs.lookup("w8a16-int8-row", 2048, 2048, 1, "GPU Own", (9, 0)) == b
    assert configs.lookup("w8a16-int8-row", 4096, 2048, 1, "GPU Own", (9, 0)) == c
    assert [p.name for p in configs.table_paths("GPU New", (8, 0))] == ["gpu-old.json"]
    assert configs.lookup("w8a16-int8-row", 1024, 2048, 1, "GPU New", (8, 0)) == configs.heuristic(
        "w8a16-int8-row", 1024, 2048, 1)
    assert configs.table_paths("GPU New", (12, 0)) == ()
    monkeypatch.setenv("QEXP_KERNEL_TABLE", str(tmp_path / "gpu-bb.json"))
    fresh_tables()
    assert [p.name for p in configs.table_paths("GPU Own", (9, 0))] == ["gpu-bb.json"]


def test_h200_cells_come_from_its_own_table_then_the_h100_one(monkeypatch, tmp_path, fresh_tables):
    """An H200 (same SMs as the H100) answers every Qwen3-1.7B cell from its own table; a cell missing there comes
    from the H100's (same compute capability) before the heuristic. The shipped H200 table now holds every cell,
    so the fallback is checked on a copy of it with the M=1024 / 4096 cells taken out."""
    monkeypatch.delenv("QEXP_KERNEL_TABLE", raising=False)
    own_path, h100_path = configs.tuned_path("NVIDIA H200"), configs.tuned_path("NVIDIA H100 80GB HBM3")
    own = json.loads(own_path.read_text())
    h100 = json.loads(h100_path.read_text())["configs"]
    kinds = [configs.kind(wd, None, gs) for wd in (torch.int8, F8) for gs in (None, 64, 128, 256, 512)]
    cells = [(kd, n, k, m) for kd in kinds + ["w8a8-int8", "w8a8-fp8"]
             for k, n in [(2048, 4096), (2048, 1024), (2048, 2048), (2048, 6144), (6144, 2048)] for m in configs.M_BUCKETS]

    def lookups():
        fresh_tables()
        return {c: configs.lookup(*c, "NVIDIA H200", (9, 0)) for c in cells}

    assert lookups() == {c: own["configs"][configs.key(*c)] for c in cells}
    trimmed = {key: cfg for key, cfg in own["configs"].items() if int(key.rsplit("|", 1)[1]) < 1024}
    (tmp_path / own_path.name).write_text(json.dumps({**own, "configs": trimmed}))
    (tmp_path / h100_path.name).write_text(h100_path.read_text())
    monkeypatch.setattr(configs, "TUNED_DIR", tmp_path)
    got = lookups()
    for c in cells:
        key = configs.key(*c)
        assert got[c] == (trimmed[key] if key in trimmed else h100[key]), key
    assert any(configs.key(*c) not in trimmed for c in cells) and any(configs.key(*c) in trimmed for c in cells)


def test_shipped_tables_name_their_capability():
    paths = sorted(configs.TUNED_DIR.glob("*.json"))
    assert paths
    for p in paths:
        t = json.loads(p.read_text())
        assert len(t["capability"]) == 2 and t["device"] and t["configs"], p.name


# ---------------------------------------------------------------- fused kernels (GPU)

RECIPES = [("int8", "tensor", None), ("int8", "row", None), ("int8", "group", 64), ("int8", "group", 128),
           ("int8", "group", 256), ("int8", "group", 512), ("fp8", "tensor", None), ("fp8", "row", None),
           ("fp8", "group", 64), ("fp8", "group", 128), ("fp8", "group", 256), ("fp8", "group", 512)]
TOL = 1e-2  # ||out - ref|| / ||ref||; bf16 rounding of the output and of the reference's dequantized weight


def _quantized(n, k, dtype, gran, gs, gen):
    w = torch.randn(n, k, device="cuda", generator=gen) / math.sqrt(k)
    q, s = qdq.quantize(w, dtype, gran, gs)
    return q.contiguous(), s.contiguous()  # the scale comes in the kernels' shape


def _ragged_case(m, dtype, gran, gs, seed, act=None):
    """N = 528 (no tile multiple), K = 2048, x an offset view into a larger tensor, a bias; and the reference."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    n, k = 528, 2048
    q, s = _quantized(n, k, dtype, gran, gs, gen)
    x = torch.randn(3, m, k, device="cuda", generator=gen, dtype=torch.bfloat16)[1]
    bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
    return q, s, x, bias, reference.quantized_linear(x, q, s, group_size=gs, act_dtype=act, bias=bias)


def _assert_matches(cfg, case, gs, act=None, calls=2):
    """`cfg` on a _ragged_case equals the reference; called `calls` times (the split-K arrival counters must be
    reset by each call), each after freed memory was poisoned to read as NaN."""
    from qexp.kernels import fused
    q, s, x, bias, ref = case
    for _ in range(calls):
        torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
        out = fused.quantized_linear(x, q, s, group_size=gs, act_dtype=act, bias=bias, config=cfg)
        assert _rel(out, ref) < TOL


def _rel(out, ref):
    assert torch.isfinite(out).all(), "unwritten (poisoned) or non-finite outputs"
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,gran,gs", RECIPES)
@pytest.mark.parametrize("m", [1, 7, 16, 33, 300])
def test_weight_only_matches_reference(dtype, gran, gs, m):
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(m * 31 + len(RECIPES))
    n, k = 1040, 1024  # N not a multiple of any tile: edge tiles are masked
    q, s = _quantized(n, k, dtype, gran, gs, gen)
    x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    ref = reference.quantized_linear(x, q, s, group_size=gs)
    torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)  # freed memory now reads as NaN
    out = fused.quantized_linear(x, q, s, group_size=gs)  # the tuned backend for this shape and M
    assert _rel(out, ref) < TOL


@pytest.mark.gpu
def test_cuda_dispatch_takes_the_fused_path(monkeypatch):
    from qexp.kernels import fused
    calls = []
    real = fused.quantized_linear
    monkeypatch.setattr(fused, "quantized_linear", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    gen = torch.Generator(device="cuda").manual_seed(5)
    q, s = _quantized(256, 512, "int8", "group", 128, gen)
    x = torch.randn(2, 3, 512, device="cuda", generator=gen, dtype=torch.bfloat16)
    out = kernels.quantized_linear(x, q, s, group_size=128)
    assert calls and out.shape == (2, 3, 256)
    assert _rel(out, reference.quantized_linear(x, q, s, group_size=128)) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.triton_config(16, 16, 128, split_k=4),
                                 configs.triton_config(32, 16, 256, split_k=2),
                                 configs.triton_config(128, 64, 64), configs.triton_config(128, 128, 64, warps=8),
                                 configs.triton_config(64, 64, 64, split_k=2, swap=False),
                                 configs.triton_config(128, 128, 64, warps=8, swap=False),
                                 configs.gemv_config(16, 1, 256), configs.gemv_config(8, 1, 512, split_k=4),
                                 configs.gemv_config(16, 4, 128, split_k=2)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", [("int8", "group", 128), ("fp8", "row", None)])
def test_tile_configs_and_split_k(cfg, dtype, gran, gs):
    from qexp.kernels.triton_qmm import qmm
    gen = torch.Generator(device="cuda").manual_seed(7)
    n, k, m = 528, 2048, 5
    q, s = _quantized(n, k, dtype, gran, gs, gen)
    x = torch.randn(3, m, k, device="cuda", generator=gen, dtype=torch.bfloat16)[1]  # offset view
    bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
    ref = reference.quantized_linear(x, q, s, group_size=gs, bias=bias)
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)
    qmm(x, q, s, cfg, group_size=gs, bias=bias, out=out)
    assert _rel(out, ref) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.tma_config(64, 16, 128, swap=True),
                                 configs.tma_config(64, 16, 128, split_k=4, swap=True),
                                 configs.tma_config(64, 64, 128, split_k=2), configs.tma_config(128, 128, 64, warps=8),
                                 configs.tma_config(128, 256, 64, warps=8, stages=3), configs.tma_config(64, 128, 128),
                                 {**configs.tma_config(128, 64, 64), "FAST_I8": True}],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs,act", [("int8", "group", 128, None), ("fp8", "row", None, None),
                                               ("int8", "tensor", None, None), ("int8", "row", None, "int8"),
                                               ("fp8", "row", None, "fp8")])
@pytest.mark.parametrize("m", [5, 70, 300])
def test_tma_tiles_match_reference(cfg, dtype, gran, gs, act, m):
    """TMA-fed GEMM: M and N not multiples of the tile (the copy engine zero-fills), offset x view, bias, split-K."""
    from qexp.kernels import triton_qmm_tma
    case = _ragged_case(m, dtype, gran, gs, m + 13, act)
    assert triton_qmm_tma.supported(case[2], case[0])
    _assert_matches(cfg, case, gs, act, calls=1)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gluon_config(64, 64, 128, stages=6),
                                 configs.gluon_config(64, 64, 128, split_k=4, stages=6),
                                 configs.gluon_config(128, 64, 64, split_k=2, stages=6),
                                 configs.gluon_config(64, 128, 64, warps=8, split_k=4, stages=6),
                                 configs.gluon_config(128, 128, 64, warps=8),
                                 configs.gluon_config(128, 256, 64, warps=8, stages=3),
                                 configs.gluon_config(256, 128, 64, warps=8, stages=3),
                                 configs.gluon_config(64, 64, 128, warps=8, split_k=4, stages=6),
                                 configs.gluon_config(64, 64, 64, warps=8, split_k=8, stages=3)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", [("int8", "row", None), ("int8", "tensor", None), ("int8", "group", 64),
                                           ("fp8", "row", None), ("fp8", "group", 128)])
@pytest.mark.parametrize("m", [5, 70, 300])
def test_gluon_w8a16_matches_reference(cfg, dtype, gran, gs, m):
    """Hand-pipelined Gluon GEMM: ragged M and N, offset x view, bias, split-K; called twice so the split-K
    arrival counters are seen reset."""
    _assert_matches(cfg, _ragged_case(m, dtype, gran, gs, m + 29), gs)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.skinny_config(64, 16, 256), configs.skinny_config(64, 16, 128, split_k=4),
                                 configs.skinny_config(32, 16, 512, warps=2, stages=3),
                                 configs.skinny_config(128, 16, 256, warps=8, split_k=2),
                                 configs.skinny_config(64, 64, 64, split_k=2, stages=6),
                                 configs.skinny_config(128, 64, 64),
                                 configs.skinny_config(64, 8, 256, split_k=2),
                                 configs.skinny_config(32, 8, 512, warps=2)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", RECIPES)
@pytest.mark.parametrize("m", [1, 5, 70])
def test_skinny_w8a16_matches_reference(cfg, dtype, gran, gs, m):
    """mma.sync kernel with in-register conversion: every weight format (the int8 / e4m3 -> bf16 bit tricks cover
    all 256 byte values of a random weight), K tiles spanning groups, ragged M and N, offset x view, bias, split-K;
    called twice so the split-K arrival counters are seen reset."""
    from qexp.kernels import gluon_skinny
    assert gluon_skinny.supported(2048, gs)  # _ragged_case's K
    _assert_matches(cfg, _ragged_case(m, dtype, gran, gs, m + 31), gs)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.skinny_config(64, 16, 64), configs.gluon_rs_config(64, 64, 64)],
                         ids=lambda c: c["backend"])
@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_register_conversion_is_exact_for_every_byte(cfg, dtype):
    """The bit-trick conversions (skinny: 4 bytes per step, gluon_rs: 2) are exact for all 256 codes (e4m3
    subnormals included, NaN codes excluded): with an identity-like x the output rows are the dequantized weight."""
    from qexp.kernels import fused
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    if dtype == "fp8":
        codes = codes[~codes.view(torch.float8_e4m3fn).float().isnan()]
    k = 256  # row n holds codes n*16 .. n*16+15 (cyclically) in the 16 columns x selects: 64 rows see them all
    idx = (torch.arange(k)[None, :] + 16 * torch.arange(64)[:, None]) % len(codes)
    w = codes[idx].view(torch.int8 if dtype == "int8" else torch.float8_e4m3fn).cuda()
    s = torch.ones(64, device="cuda")
    x = torch.eye(k, device="cuda", dtype=torch.bfloat16)[:16]  # out[m, n] = w[n, m]
    out = fused.quantized_linear(x, w, s, config=cfg)
    assert torch.equal(out, w.float()[:, :16].T.to(torch.bfloat16))


# persistent gluon_rs, fewer programs than tiles (each walks several; at M=300, N=528: 5-45 tiles): 8 and 4
# consumer warps, rings of 2-4, 256-token tiles, group scales on the accumulator
PERSISTENT_RS = [configs.gluon_rs_config(128, 128, 64, warps=8, producer=True, persistent=True, programs=3),
                 configs.gluon_rs_config(64, 64, 128, stages=2, producer=True, persistent=True, programs=2),
                 configs.gluon_rs_config(128, 256, 64, warps=8, producer=True, persistent=True, programs=2),
                 configs.gluon_rs_config(64, 128, 64, producer=True, acc_scale=True, persistent=True, programs=3),
                 configs.gluon_rs_config(64, 256, 64, producer=True, persistent=True, programs=3)]


def test_persistent_rs_runs_where_its_ring_restarts_each_tile():
    """The persistent kernel needs a producer warp, no split-K and K steps a multiple of 2 x STAGES; the GPU tests'
    configs (K = 2048) take it."""
    from qexp.kernels.gluon_w8a16_rs import persistent_programs
    for cfg in PERSISTENT_RS:
        assert persistent_programs(cfg, 15, 1, 2048 // cfg["BLOCK_K"], 132) == min(15, cfg["PROGRAMS"])
    cfg = configs.gluon_rs_config(128, 256, 64, warps=8, producer=True, persistent=True)
    assert persistent_programs(cfg, 768, 1, 32, 132) == 132 and persistent_programs(cfg, 64, 1, 32, 132) == 64
    assert persistent_programs(cfg, 768, 2, 16, 132) is None  # split-K
    assert persistent_programs({**cfg, "num_stages": 3}, 768, 1, 32, 132) is None  # 32 steps: phases off by one
    assert persistent_programs({**cfg, "PRODUCER": False}, 768, 1, 32, 132) is None
    assert persistent_programs(configs.gluon_rs_config(128, 256, 64, warps=8, producer=True), 768, 1, 32, 132) is None


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gluon_rs_config(64, 64, 128, stages=6),
                                 configs.gluon_rs_config(64, 64, 64, split_k=4, stages=8),
                                 configs.gluon_rs_config(128, 64, 64, warps=8, split_k=2, stages=6),
                                 configs.gluon_rs_config(128, 128, 64, warps=8, stages=5),
                                 configs.gluon_rs_config(128, 256, 64, warps=8),
                                 configs.gluon_rs_config(256, 128, 64, warps=8),
                                 # 256 tokens, split-K (its sum spills)
                                 configs.gluon_rs_config(64, 256, 64, split_k=4),
                                 # 32 weight rows a warp, 4 warps
                                 configs.gluon_rs_config(128, 64, 128, split_k=2, stages=5),
                                 # 32- and 16-token tiles (wgmma N = 32 / 16; up to 19 M tiles per weight strip)
                                 configs.gluon_rs_config(64, 32, 128, split_k=2, stages=6),
                                 configs.gluon_rs_config(64, 16, 128, split_k=4, stages=6),
                                 configs.gluon_rs_config(64, 16, 128, split_k=2, stages=6, producer=True),
                                 # a producer warp: ring deeper than a split, one tile per split, 8 consumer warps
                                 configs.gluon_rs_config(64, 128, 128, stages=5, producer=True),
                                 configs.gluon_rs_config(64, 64, 128, split_k=16, stages=2, producer=True),
                                 configs.gluon_rs_config(128, 128, 64, warps=8, split_k=2, stages=6, producer=True),
                                 configs.gluon_rs_config(128, 256, 64, warps=8, producer=True),
                                 # 128 weight rows for 64 tokens, two splits (the last sums from its registers)
                                 configs.gluon_rs_config(128, 64, 128, warps=8, split_k=2, stages=6),
                                 # K tiles of several whole groups (group64: 2 and 4, group128: 2), split-K and not
                                 configs.gluon_rs_config(64, 64, 256, split_k=2),
                                 configs.gluon_rs_config(128, 128, 128, warps=8, stages=4, producer=True),
                                 # group scales on the accumulator (groups of 256 / 512; other formats run as
                                 # without): 2-8 tiles a group, split-K, a producer warp, 8 warps
                                 configs.gluon_rs_config(64, 64, 128, split_k=2, stages=6, acc_scale=True),
                                 configs.gluon_rs_config(64, 128, 64, split_k=4, stages=5, producer=True,
                                                         acc_scale=True),
                                 configs.gluon_rs_config(128, 128, 64, warps=8, stages=5, acc_scale=True),
                                 # one and two token tiles a program group (M=300: two 256-token tiles)
                                 configs.gluon_rs_config(128, 256, 64, warps=8, producer=True, group_m=1),
                                 configs.gluon_rs_config(64, 128, 64, stages=4, group_m=2),
                                 # one warp group on 256-token tiles, a producer warp, 128-wide K tiles
                                 configs.gluon_rs_config(64, 256, 128, stages=3, producer=True),
                                 *PERSISTENT_RS],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", RECIPES)
@pytest.mark.parametrize("m", [5, 70, 300])
def test_rs_w8a16_matches_reference(cfg, dtype, gran, gs, m):
    """Register-operand wgmma kernel: every weight format (a random weight covers all byte values), ragged M and N,
    offset x view, bias, split-K, several M tiles, K tiles spanning scale groups (128-wide tiles on 64-wide
    groups); called twice so the split-K arrival counters are seen reset."""
    _assert_matches(cfg, _ragged_case(m, dtype, gran, gs, m + 57), gs)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gluon_ws_config(128, 256, 64),
                                 configs.gluon_ws_config(128, 256, 64, stages=3, wstages=3),
                                 configs.gluon_ws_config(128, 128, 128, stages=3),
                                 # one MMA warp group; split-K
                                 configs.gluon_ws_config(64, 256, 64, warps=4, split_k=2),
                                 configs.gluon_ws_config(64, 128, 64, warps=4, split_k=2, stages=6),
                                 # fewer K tiles a split than ring slots (the prologue's and refills' predicates)
                                 configs.gluon_ws_config(128, 128, 64, split_k=16, stages=6),
                                 # ungrouped token tiles
                                 configs.gluon_ws_config(128, 128, 64, stages=6, group_m=0),
                                 # two converter warp groups
                                 configs.gluon_ws_config(64, 256, 64, warps=4, cvt_warps=8),
                                 configs.gluon_ws_config(128, 128, 64, split_k=2, stages=6, cvt_warps=8),
                                 # two converter partitions (even and odd K tiles); 4 bf16 tiles; split-K
                                 configs.gluon_ws_config(64, 256, 64, warps=4, stages=5, wstages=4, cvt_warps=8,
                                                         cvt_split=True),
                                 configs.gluon_ws_config(128, 128, 64, split_k=4, stages=6, wstages=4, cvt_warps=8,
                                                         cvt_split=True),
                                 configs.gluon_ws_config(64, 256, 128, warps=4, stages=2, cvt_warps=8),
                                 # 128 weight rows on one MMA warp group
                                 configs.gluon_ws_config(128, 128, 64, warps=4, stages=6, cvt_warps=8,
                                                         cvt_split=True)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", RECIPES)
@pytest.mark.parametrize("m", [5, 70, 300])
def test_ws_w8a16_matches_reference(cfg, dtype, gran, gs, m):
    """Warp-specialized kernel (converter warp group, wgmma-only warps): every weight format, ragged M and N,
    offset x view, bias, split-K, several M tiles; called twice so the split-K arrival counters are seen reset."""
    _assert_matches(cfg, _ragged_case(m, dtype, gran, gs, m + 91), gs)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gluon_rs_config(64, 128, 128, split_k=2, acc_scale=True),
                                 configs.gluon_rs_config(128, 128, 64, warps=8, stages=6, producer=True,
                                                         acc_scale=True)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("gs", [256, 512])
def test_rs_group_scales_on_the_accumulator_are_used_and_no_less_accurate(cfg, dtype, gs):
    """ACC_SCALE sums each group's unscaled products and scales the sum (no bf16(w * s) per element): its output
    differs from the per-weight scaling's (so the path ran), and against the exact product (float64 of the
    stored weight times its scale) its error is no larger than the per-weight path's, up to the output's bf16
    rounding."""
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(gs + len(dtype))
    q, s = _quantized(1040, 2048, dtype, "group", gs, gen)
    x = torch.randn(100, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    exact = x.double() @ (q.double() * s.double().repeat_interleave(gs, dim=1)).T
    per_weight = {k: v for k, v in cfg.items() if k != "ACC_SCALE"}
    out_acc = fused.quantized_linear(x, q, s, group_size=gs, config=cfg)
    out_el = fused.quantized_linear(x, q, s, group_size=gs, config=per_weight)
    assert not torch.equal(out_acc, out_el)
    err = lambda o: ((o.double() - exact).norm() / exact.norm()).item()
    assert err(out_acc) <= err(out_el) * 1.05 and err(out_acc) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gemv_config(4, 1, 1024), configs.gemv_config(8, 1, 512, split_k=2),
                                 configs.gemv_config(16, 1, 512, warps=8), configs.gemv_config(8, 1, 256, prefetch=2),
                                 configs.gemv_config(4, 1, 1024, split_k=2, prefetch=2),  # one tile per split
                                 configs.gemv_config(8, 1, 512, split_k=2, prefetch=2)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", [r for r in RECIPES if r[1] == "group"] + [("int8", "row", None)])
def test_gemv_tiles_span_scale_groups(cfg, dtype, gran, gs):
    """The one-row GEMV's K tile holds several scale groups (one scale per row and group)."""
    assert _one_token_rel(cfg, 1040, 2048, dtype, gran, gs, seed=gs or 1) < TOL


def _one_token_rel(cfg, n, k, dtype, gran, gs, seed):
    """cfg's output for one random token, with a bias, after freed memory was poisoned: error vs the reference."""
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, s = _quantized(n, k, dtype, gran, gs, gen)
    x = torch.randn(1, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
    ref = reference.quantized_linear(x, q, s, group_size=gs, bias=bias)
    torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
    return _rel(fused.quantized_linear(x, q, s, group_size=gs, bias=bias, config=cfg), ref)


GEMV_GL = [configs.gemv_gl_config(8, 512), configs.gemv_gl_config(8, 1024, prefetch=2),
           configs.gemv_gl_config(16, 512, warps=8),
           configs.gemv_gl_config(4, 1024, prefetch=2), configs.gemv_gl_config(16, 256),
           configs.gemv_gl_config(8, 2048),
           configs.gemv_gl_config(16, 512, warps=8, prefetch=2), configs.gemv_gl_config(32, 512, warps=8)]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", GEMV_GL, ids=lambda c: "-".join(map(str, c.values())))
# K = 1040: K tiles shrink to 16 bytes, several rows per warp (no group size divides it: row/tensor-wise only)
@pytest.mark.parametrize("k,dtype,gran,gs", [(k, *r) for k in (2048, 6144, 1040) for r in RECIPES
                                             if r[2] is None or k % r[2] == 0])
def test_gluon_gemv_matches_reference(cfg, k, dtype, gran, gs):
    """The one-token Gluon GEMV: N = 1040 (edge rows masked), a bias, K tiles spanning several scale groups."""
    assert _one_token_rel(cfg, 1040, k, dtype, gran, gs, seed=k + (gs or 3)) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", GEMV_GL[:4], ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("dtype,gran,gs", RECIPES)
def test_gate_up_swiglu_equals_the_gemv_then_silu_mul(cfg, dtype, gran, gs):
    """SiLU * up in the one-token GEMV's epilogue, for a merged gate/up weight (2I, K): bit for bit the GEMV's
    (1, 2I) output through elementwise.silu_mul, and near the float32 reference; I = 1040 (edge rows masked),
    freed memory poisoned first."""
    from qexp.engine.kernels import silu_mul
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(7 + (gs or 0))
    i, k = 1040, 2048
    q, s = _quantized(2 * i, k, dtype, gran, gs, gen)
    x = torch.randn(1, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    assert fused.fuses_swiglu(x, q, s, gs, None, config=cfg)
    torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
    out = fused.gate_up_swiglu(x, q, s, group_size=gs, config=cfg)
    gate_up = fused.quantized_linear(x, q, s, group_size=gs, config=cfg)
    assert out.shape == (1, i)
    assert torch.equal(out, silu_mul(gate_up[:, :i], gate_up[:, i:]))
    ref = reference.quantized_linear(x, q, s, group_size=gs).float()
    assert _rel(out, torch.nn.functional.silu(ref[:, :i]) * ref[:, i:]) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", GEMV_GL[:4], ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("k,dtype,gran,gs", [(k, *r) for k in (2048, 1040) for r in RECIPES
                                             if r[2] is None or k % r[2] == 0])
def test_norm_linear_matches_the_float32_norm_then_linear(cfg, k, dtype, gran, gs):
    """The RMSNorm folded into the one-token GEMV: against the norm and the dequantized linear in float32 (the
    fused kernel keeps the normalised x in float32), with a bias; close to the separate bf16 norm kernel then the
    GEMV. The gate/up SiLU * up GEMV with the norm folded in equals norm_linear's halves through silu_mul."""
    from qexp.engine.kernels import silu_mul
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(k + (gs or 5))
    n, eps = 1040, 1e-6
    q, s = _quantized(n, k, dtype, gran, gs, gen)
    x = 3 * torch.randn(1, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    nw = (1 + torch.rand(k, device="cuda", generator=gen)).to(torch.bfloat16)
    bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
    assert fused.on_one_token_gemv(x, q, s, gs, None, config=cfg)
    torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
    out = fused.norm_linear(x, nw, eps, q, s, group_size=gs, bias=bias, config=cfg)
    xf = x.float()
    xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * nw.float()
    ref = xn @ reference.dequantize_weight(q, s, gs, torch.float32).T + bias.float()
    assert out.shape == (1, n) and _rel(out, ref) < 5e-3
    xb = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(torch.bfloat16) * nw  # as HF's Qwen3RMSNorm
    assert _rel(out, fused.quantized_linear(xb, q, s, group_size=gs, bias=bias, config=cfg)) < TOL
    act = fused.gate_up_swiglu(x, q, s, group_size=gs, norm_weight=nw, eps=eps, config=cfg)
    both = fused.norm_linear(x, nw, eps, q, s, group_size=gs, config=cfg)
    assert torch.equal(act, silu_mul(both[:, :n // 2], both[:, n // 2:]))


@pytest.mark.gpu
def test_gate_up_swiglu_is_offered_only_for_one_weight_only_token_on_the_gluon_gemv():
    from qexp.kernels import fused
    gen = torch.Generator(device="cuda").manual_seed(3)
    q, s = _quantized(2 * 512, 2048, "int8", "row", None, gen)
    x = torch.randn(2, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    gl_cfg, gemv_cfg = configs.gemv_gl_config(8, 512), configs.gemv_config(8, 1, 512)
    assert fused.fuses_swiglu(x[:1], q, s, None, None, config=gl_cfg)
    assert not fused.fuses_swiglu(x, q, s, None, None, config=gl_cfg)  # two tokens
    assert not fused.fuses_swiglu(x[:1], q, s, None, None, config=gemv_cfg)  # another backend
    assert not fused.fuses_swiglu(x[:1], q, s, None, "int8", config=gl_cfg)  # W8A8
    assert not fused.fuses_swiglu(x[:1], q, s, None, None, bias=torch.zeros(1024, device="cuda"), config=gl_cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_gluon_gemv_conversion_is_exact_for_every_byte(dtype):
    """The GEMV's int8 byte-permute convert and its e4m3 convert are exact for all 256 codes (NaN codes excluded):
    x one-hot at column j makes out the dequantized column j of the weight."""
    from qexp.kernels import fused
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    if dtype == "fp8":
        codes = codes[~codes.view(torch.float8_e4m3fn).float().isnan()]
    n, k = 256, 512  # row r holds codes r, r+1, ... (cyclically): column 0 sees every code
    idx = (torch.arange(k)[None, :] + torch.arange(n)[:, None]) % len(codes)
    w = codes[idx].view(torch.int8 if dtype == "int8" else torch.float8_e4m3fn).cuda()
    s = torch.ones(n, device="cuda")
    for j in (0, 1, 2, 3, 17, 511):  # every byte position of a 4-byte word
        x = torch.zeros(1, k, device="cuda", dtype=torch.bfloat16)
        x[0, j] = 1
        out = fused.quantized_linear(x, w, s, config=configs.gemv_gl_config(8, 512))
        assert torch.equal(out[0], w.float()[:, j].to(torch.bfloat16)), j


@pytest.mark.gpu
def test_gluon_gemv_config_beyond_one_token_runs_the_triton_gemv():
    """On an offset x view (ragged N) it matches too; at M > 1 a gemv_gl config takes the same tile in
    triton_qgemv."""
    _assert_matches(configs.gemv_gl_config(8, 512), _ragged_case(1, "int8", "row", None, 5), None)
    gen = torch.Generator(device="cuda").manual_seed(2)
    q, s = _quantized(512, 1024, "fp8", "row", None, gen)
    x = torch.randn(2, 1024, device="cuda", generator=gen, dtype=torch.bfloat16)
    from qexp.kernels import fused
    out = fused.quantized_linear(x, q, s, config=configs.gemv_gl_config(8, 512))
    assert _rel(out, reference.quantized_linear(x, q, s)) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
def test_back_to_back_pdl_kernels_wait_for_their_input(graph):
    """A chain of quantized linears, each reading the one before's output with no other kernel between: launched
    with programmatic dependent launch (sm_90+), each must wait for its input. Each layer is checked against the
    reference applied to its own input, so a read of stale x (the graph replays with new inputs) shows."""
    from qexp.kernels import fused, pdl
    gen = torch.Generator(device="cuda").manual_seed(17)
    kinds = [(configs.gemv_config(4, 1, 1024), "int8", "group", 64, None),
             (configs.gemv_config(8, 1, 512, split_k=2), "fp8", "group", 128, None),
             (configs.gemv_config(8, 1, 512), "int8", "row", None, "int8"),
             (configs.triton_config(32, 16, 256), "int8", "row", None, None),
             (configs.tma_config(64, 16, 128, split_k=4, swap=True, stages=6), "fp8", "row", None, None),
             (configs.gluon_config(64, 64, 128, split_k=2, stages=6), "int8", "row", None, None),
             (configs.gluon_config(64, 64, 128, stages=4), "int8", "group", 128, None),
             (configs.skinny_config(64, 16, 128, split_k=4), "fp8", "group", 64, None),
             (configs.skinny_config(64, 16, 256), "int8", "row", None, None),
             (configs.gluon_rs_config(64, 64, 128, split_k=2, stages=6), "int8", "group", 128, None),
             (configs.gluon_rs_config(128, 64, 64, warps=8), "fp8", "row", None, None),
             (configs.gluon_rs_config(64, 128, 64, stages=4, producer=True), "int8", "group", 64, None),
             (configs.gemv_gl_config(8, 512, prefetch=2), "int8", "row", None, None),
             (configs.gemv_gl_config(16, 512, warps=8), "fp8", "group", 128, None)]
    layers = [(cfg, gs, act) + _quantized(2048, 2048, dt, gran, gs, gen)
              for cfg, dt, gran, gs, act in kinds * 3]

    def forward(x):
        outs = [x]
        for cfg, gs, act, q, s in layers:
            outs.append(fused.quantized_linear(outs[-1], q, s, group_size=gs, act_dtype=act, config=cfg))
        return outs

    def check(outs):
        for (cfg, gs, act, q, s), x, out in zip(layers, outs, outs[1:]):
            assert _rel(out, reference.quantized_linear(x, q, s, group_size=gs, act_dtype=act)) < TOL, cfg

    assert pdl.enabled(torch.device("cuda")) == (torch.cuda.get_device_capability() >= (9, 0))
    static_x = torch.randn(1, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    check(forward(static_x))
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            outs = forward(static_x)
        for _ in range(3):
            static_x.copy_(torch.randn(1, 2048, device="cuda", generator=gen, dtype=torch.bfloat16))
            g.replay()
            check(outs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_activation_quant_is_bit_exact(act, dtype):
    from qexp.kernels.triton_act_quant import quantize_activation
    gen = torch.Generator(device="cuda").manual_seed(3)
    x = (torch.randn(37, 6144, device="cuda", generator=gen) * 3).to(dtype)
    x[5] = 0  # an all-zero token
    x[6, :100] = -0.0  # e4m3 keeps the sign of zero
    p = torch.rand(6144, device="cuda", generator=gen) + 0.5
    q, s = quantize_activation(x, act, p)
    rq, rs = reference.quantize_activation((x.float() * p).to(x.dtype), act)
    assert torch.equal(s, rs)
    assert torch.equal(q.view(torch.int8), rq.view(torch.int8))


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_activation_division_is_exact_for_every_16_bit_input(act, fmt):
    """The quant kernels divide by the token's scale as x * rcp + one FMA correction (divide_by_scale): for every
    bf16 / fp16 amax and every x of that format with |x| <= amax (~1e9 pairs, both signs) the 8-bit value is the
    IEEE division's."""
    import act_division_check as chk

    from qexp.kernels.triton_act_quant import quant_args
    qa = quant_args(act, torch.bfloat16 if fmt == "bf16" else torch.float16)
    assert qa["DIV_STEPS"] == 1
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    n_amax = 0x7F7F if fmt == "bf16" else 0x7BFF  # positive finite values, subnormals included
    chk.every_16bit_pair_kernel[(n_amax,)](bad, FP16=fmt == "fp16", **qa, BLOCK=1024)
    assert bad.item() == 0


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_activation_division_of_float32_is_exact_at_rounding_boundaries(act):
    """float32 x take two corrections: exact at (and 1-2 ulps around) every point where the 8-bit rounding
    changes (int8: k + 1/2; fp8: midway between e4m3 neighbours), for log-uniform random scales, and on
    random x in [-amax, amax]."""
    import act_division_check as chk

    from qexp.kernels.triton_act_quant import quant_args
    qa = quant_args(act, torch.float32)
    assert qa["DIV_STEPS"] == 2
    gen = torch.Generator(device="cuda").manual_seed(5)
    if act == "int8":
        t = torch.arange(-128, 128, device="cuda", dtype=torch.float64) + 0.5
    else:
        e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(F8).double()
        e4m3 = e4m3[torch.isfinite(e4m3)].unique().sort().values
        t = ((e4m3[1:] + e4m3[:-1]) / 2).cuda()
    amax = torch.exp2(torch.rand(4096, device="cuda", generator=gen, dtype=torch.float64) * 60 - 30).float()
    scale = torch.clamp(amax, min=1e-12) * qa["QMAX_INV"]  # float32, as row_scale rounds it
    x = (t[None, :] * scale.double()[:, None]).float()  # the boundary, rounded to float32
    xi = x.view(torch.int32)
    near = torch.stack([xi + d for d in (-2, -1, 0, 1, 2)]).view(torch.float32).flatten()
    rand = (torch.rand(4096, 1024, device="cuda", generator=gen) * 2 - 1) * amax[:, None]
    xs = torch.cat([near, rand.flatten()])
    ss = torch.cat([scale[None, :, None].expand(5, -1, t.numel()).flatten(), scale[:, None].expand(-1, 1024).flatten()])
    bad = torch.zeros(1, dtype=torch.int32, device="cuda")
    chk.given_pairs_kernel[((xs.numel() + 1023) // 1024,)](xs, ss.contiguous(), bad, xs.numel(), IS_FP8=qa["IS_FP8"],
                                                          QMAX=qa["QMAX"], DIV_STEPS=2, BLOCK=1024)
    assert bad.item() == 0


def _w8a8_case(n, k, m, act, seed):
    """Row-wise 8-bit weight, bf16 x, SmoothQuant pre-scale and bias, the reference output; the allocator then
    holds a freed block of NaNs for the kernel's output to land in (an unwritten element shows)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, s = _quantized(n, k, act, "row", None, gen)
    x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    p = torch.rand(k, device="cuda", generator=gen) + 0.5
    bias = torch.randn(n, device="cuda", generator=gen, dtype=torch.bfloat16)
    ref = reference.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias)
    torch.empty(64 << 20, dtype=torch.uint8, device="cuda").fill_(0xFF)
    return q, s, x, p, bias, ref


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["int8", "fp8"])
@pytest.mark.parametrize("m", [1, 16, 33, 300, 1024])
def test_w8a8_matches_reference(act, m):
    q, s, x, p, bias, ref = _w8a8_case(1024, 2048, m, act, m + (act == "fp8"))
    out = kernels.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias)
    assert _rel(out, ref) < TOL
    for cfg in search_space.candidates(f"w8a8-{act}", m)[:2]:
        from qexp.kernels import fused
        alt = fused.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias, config=cfg)
        assert _rel(alt, ref) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gluon_w8a8_config(64, 64, 128, stages=6),
                                 configs.gluon_w8a8_config(64, 128, 128, split_k=3),
                                 configs.gluon_w8a8_config(128, 64, 128, split_k=4, stages=5),
                                 configs.gluon_w8a8_config(128, 128, 128, warps=8, split_k=2),
                                 configs.gluon_w8a8_config(128, 256, 128, warps=8, stages=3),
                                 configs.gluon_w8a8_config(256, 128, 128, warps=8, stages=3),
                                 # grouped token tiles: 5 at M=300 in groups of 2 (the last one short), or one group
                                 configs.gluon_w8a8_config(128, 64, 128, split_k=2, stages=5, group_m=2),
                                 configs.gluon_w8a8_config(128, 128, 128, warps=8, group_m=8)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("act", ["int8", "fp8"])
@pytest.mark.parametrize("m", [5, 70, 300])
@pytest.mark.parametrize("tensor_scale", [False, True])
def test_gluon_w8a8_matches_reference(cfg, act, m, tensor_scale):
    """Gluon W8A8 (async wgmma, int32 or fp32 accumulators): ragged M and N (1040 rows: a partial weight tile),
    bias, pre-scale, split-K (called twice: the arrival counters re-arm), row- and tensor-wise weight scales;
    and the same output as the Triton tma kernel's on the same quantized input up to fp32 summation order."""
    from qexp.kernels import fused
    q, s, x, p, bias, ref = _w8a8_case(1040, 2048, m, act, m + 3 * tensor_scale)
    if tensor_scale:
        s = s.max().reshape(1)
        ref = reference.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias)
    for _ in range(2):
        out = fused.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias, config=cfg)
        assert _rel(out, ref) < TOL
    tma = {**configs.tma_config(cfg["BLOCK_N"], cfg["BLOCK_M"], 128, warps=cfg["num_warps"]), "num_stages": 3}
    want = fused.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias, config=tma)
    # int8: exact int32 sums, only the fp32 split-K order differs; fp8 wgmma accumulates below fp32 precision, so
    # another K chunking (split-K) moves the result by ~1e-3
    assert _rel(out, want) < (1e-3 if act == "int8" else 4e-3)
    if m == 70 and not tensor_scale:  # captured in a CUDA graph, replayed on a new input
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fused.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias, config=cfg)
        fresh = torch.randn_like(x)
        x.copy_(fresh)
        graph.replay()
        assert _rel(static_out, fused.quantized_linear(fresh, q, s, act_dtype=act, pre_scale=p, bias=bias,
                                                       config=cfg)) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["int8", "fp8"])
@pytest.mark.parametrize("m", [1, 16, 300, 1024])
def test_prequantized_input_gives_quantized_linears_result(act, m):
    """Activations quantized by their producer then quantized_linear_prequantized == quantized_linear on bf16 x,
    bit for bit, for the tuned choice and the candidates; where the choice is the GEMV (which quantizes inside)
    the engine is told not to pre-quantize and the call refuses."""
    from qexp.kernels import fused
    from qexp.kernels.triton_act_quant import quantize_activation
    q, s, x, _, bias, _ = _w8a8_case(1024, 2048, m, act, 7 * m)
    x_q, x_s = quantize_activation(x, act)
    cfgs = [None] + [c for c in search_space.candidates(f"w8a8-{act}", m) if c["backend"] != "gemv"][:3]
    for cfg in cfgs:
        want = fused.quantized_linear(x, q, s, act_dtype=act, bias=bias, config=cfg)
        if cfg is None and not fused.takes_quantized_input(q, s, act, m):
            assert configs.config_for(f"w8a8-{act}", 1024, 2048, m, x.device)["backend"] == "gemv"
            with pytest.raises(ValueError, match="GEMV"):
                fused.quantized_linear_prequantized(x_q, x_s, q, s, bias=bias)
            continue
        got = fused.quantized_linear_prequantized(x_q, x_s, q, s, bias=bias, config=cfg)
        assert torch.equal(got, want), cfg
    assert not fused.takes_quantized_input(q, s, None, m)  # weight-only never takes quantized input


@pytest.mark.gpu
def test_cuda_graph_capture_replays_with_new_inputs():
    gen = torch.Generator(device="cuda").manual_seed(11)
    layers = [_quantized(2048, 2048, "int8", "group", 128, gen) + (128, None),
              _quantized(2048, 2048, "fp8", "row", None, gen) + (None, "fp8"),
              _quantized(2048, 2048, "int8", "row", None, gen) + (None, "int8")]
    static_x = torch.randn(4, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)

    def forward(x):
        for q, s, gs, act in layers:
            x = kernels.quantized_linear(x, q, s, group_size=gs, act_dtype=act)
            x = x / x.float().norm(dim=-1, keepdim=True).to(x.dtype) * 45
        return x

    forward(static_x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_x)
    fresh = torch.randn(4, 2048, device="cuda", generator=gen, dtype=torch.bfloat16)
    static_x.copy_(fresh)
    graph.replay()
    assert _rel(static_out, forward(fresh)) < 1e-3  # split-K atomics may add in another order


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [configs.gemv_config(16, 1, 256), configs.gemv_config(8, 1, 512, split_k=2),
                                 configs.gemv_config(16, 4, 128), configs.gemv_config(8, 1, 256, prefetch=2)],
                         ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("act", ["int8", "fp8"])
@pytest.mark.parametrize("m", [1, 3, 16])
def test_gemv_with_fused_activation_quant(cfg, act, m):
    from qexp.kernels import fused
    q, s, x, p, bias, ref = _w8a8_case(1040, 2048, m, act, m * 5 + (act == "fp8"))
    out = fused.quantized_linear(x, q, s, act_dtype=act, pre_scale=p, bias=bias, config=cfg)
    assert _rel(out, ref) < TOL


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,gran,gs,k", [("int8", "tensor", None, 1024), ("fp8", "row", None, 1024),
                                            ("int8", "row", None, 1088), ("int8", "group", 64, 1024),
                                            ("fp8", "group", 64, 1088), ("int8", "group", 128, 1152),
                                            ("fp8", "group", 512, 1536), ("int8", "group", 384, 1152)])
def test_dequant_backend_is_the_reference_dequantization(dtype, gran, gs, k):
    """Bit for bit, with K tails shorter than the kernel's 512-wide tile, groups that tile it whole (64, 128, 512)
    and one that does not (384: a scale gathered per element)."""
    from qexp.kernels import fused
    from qexp.kernels.triton_dequant import dequantize
    gen = torch.Generator(device="cuda").manual_seed(9)
    q, s = _quantized(1000, k, dtype, gran, gs, gen)
    assert torch.equal(dequantize(q, s, gs), reference.dequantize_weight(q, s, gs))
    x = torch.randn(70, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    out = fused.quantized_linear(x, q, s, group_size=gs, config={"backend": "dequant_mm"})
    assert _rel(out, reference.quantized_linear(x, q, s, group_size=gs)) < 1e-3
