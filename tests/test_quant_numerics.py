"""Weight quantization numerics (qexp.quant.qdq / real / fake) against hand bounds and TorchAO's own primitives."""
import copy

import pytest
import torch
from torchao.quantization import (
    Float8WeightOnlyConfig,
    Int8WeightOnlyConfig,
    PerGroup,
    PerRow,
    PerTensor,
    quantize_,
)
from torchao.quantization.quant_primitives import (
    _dequantize_affine_float8,
    _quantize_affine_float8,
)
from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

from qexp.quant import qdq
from qexp.quant.fake import FakeQuantWeightConfig
from qexp.quant.real import QuantizedWeight, RealQuantWeightConfig

GRANULARITIES = [("tensor", None), ("row", None), ("group", 64), ("group", 128), ("group", 256), ("group", 512)]
TORCHAO_GRAN = {"tensor": lambda gs: PerTensor(), "row": lambda gs: PerRow(), "group": lambda gs: PerGroup(gs)}


def _weight(seed=0, n=96, k=512):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.02).to(torch.bfloat16)


def _linear(w):
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_per_row_beats_per_tensor_on_outlier_rows(dtype):
    w = _weight().float()
    w[::16] *= 30  # a few rows 30x larger: one tensor scale wastes range on every other row
    sq = {g: qdq.sqnr_db(w, qdq.fake_quantize(w, dtype, g)) for g in ("tensor", "row")}
    assert sq["row"] > sq["tensor"] + (10 if dtype == "int8" else 0.0)


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("group_size", [64, 128, 256])
def test_per_group_beats_per_row_on_outlier_columns(dtype, group_size):
    w = _weight().float()
    w[:, 5] *= 50  # one input channel: per-row scales all blow up, per-group only for the group holding it
    sq_row = qdq.sqnr_db(w, qdq.fake_quantize(w, dtype, "row"))
    sq_group = qdq.sqnr_db(w, qdq.fake_quantize(w, dtype, "group", group_size))
    assert sq_group > sq_row + (3 if dtype == "int8" else 0.0)


@pytest.mark.parametrize("gran,gs", GRANULARITIES)
def test_int8_error_within_half_step(gran, gs):
    w = _weight(1)
    q, s = qdq.quantize(w, "int8", gran, gs)
    assert q.dtype == torch.int8 and q.abs().max().item() == 127  # amax maps onto 127 exactly
    step = qdq.dequantize(torch.ones_like(q), s, gs)  # each element's own scale, broadcast
    err = (qdq.dequantize(q, s, gs) - w.float()).abs()
    assert (err <= step / 2 + w.float().abs() * 2**-22).all()  # + float32 rounding of q * scale


@pytest.mark.parametrize("gran,gs", GRANULARITIES)
def test_fp8_round_trip_is_torch_float8_cast(gran, gs):
    w = _weight(2)
    q, s = qdq.quantize(w, "fp8", gran, gs)
    # independent: scale from the float64 absmax, then torch's own round-to-nearest float8 cast
    span = w.double().reshape(1, -1) if gran == "tensor" else w.double().reshape(-1, gs or w.shape[1])
    ref_scale = (span.abs().amax(dim=1) / 448.0).float()
    torch.testing.assert_close(s.reshape(-1), ref_scale, rtol=2e-7, atol=0)
    expanded = qdq.dequantize(torch.ones(w.shape, dtype=torch.int8), s, gs)
    assert torch.equal(q.view(torch.uint8), (w.float() / expanded).to(torch.float8_e4m3fn).view(torch.uint8))
    # and TorchAO's float8 primitives, given the same scale, round-trip to the same bits
    ao_scale = s.reshape(1, 1) if gran == "tensor" else s.reshape(w.shape[0], -1)
    ao_q = _quantize_affine_float8(w, ao_scale)
    assert torch.equal(ao_q.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(_dequantize_affine_float8(ao_q, ao_scale, torch.bfloat16), qdq.fake_quantize(w, "fp8", gran, gs))


@pytest.mark.parametrize("gran,gs", GRANULARITIES)
def test_int8_matches_torchao_int8tensor_given_our_scale(gran, gs):
    """Same scale -> same codes as TorchAO (it multiplies by 1/scale, we divide: only exact ties may differ)."""
    w = _weight(3)
    q, s = qdq.quantize(w, "int8", gran, gs)
    ao_scale = s.reshape(1, 1) if gran == "tensor" else s.reshape(w.shape[0], -1)
    ao = Int8Tensor.from_hp(w, TORCHAO_GRAN[gran](gs), scale=ao_scale)
    diff = (ao.qdata.int() - q.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    same = diff == 0
    assert torch.equal(ao.dequantize(torch.float32)[same], qdq.dequantize(q, s, gs)[same])


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("gran,gs", [("tensor", None), ("row", None), ("group", 128)])
def test_close_to_torchao_own_configs(dtype, gran, gs):
    """TorchAO's Int8/Float8WeightOnlyConfig pick scales differently (int8: amax/127.5 with range [-128, 127];
    both: scale computed in bf16), so weights differ by at most about one step and accuracy is the same."""
    w = _weight(4)
    ao_lin = _linear(w)
    ao_cfg = (Int8WeightOnlyConfig if dtype == "int8" else Float8WeightOnlyConfig)(granularity=TORCHAO_GRAN[gran](gs))
    quantize_(ao_lin, ao_cfg)
    theirs = ao_lin.weight.dequantize(torch.float32)
    q, s = qdq.quantize(w, dtype, gran, gs)
    ours = qdq.dequantize(q, s, gs)  # float32, before the bf16 rounding both libraries' bf16 weights add
    step = qdq.dequantize(torch.ones_like(q, dtype=torch.int8), s, gs)
    if dtype == "int8":
        assert ((ours - theirs).abs() <= 1.01 * step).all()
    sq_ours, sq_theirs = qdq.sqnr_db(w, ours), qdq.sqnr_db(w, theirs)
    assert abs(sq_ours - sq_theirs) < 0.5, (sq_ours, sq_theirs)


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("gran,gs", GRANULARITIES)
def test_fake_equals_real_dequantized_bit_for_bit(dtype, gran, gs):
    w = _weight(5)
    fake, real = _linear(w), _linear(w)
    quantize_(fake, FakeQuantWeightConfig(dtype, gran, gs))
    quantize_(real, RealQuantWeightConfig(dtype, gran, gs))
    assert type(fake.weight) is torch.nn.Parameter and fake.weight.dtype == torch.bfloat16
    assert isinstance(real.weight, QuantizedWeight) and real.weight.qdata.dtype == qdq.STORAGE[dtype]
    assert torch.equal(real.weight.dequantize(), fake.weight.data)
    assert real.weight.scale.numel() == qdq.num_scales(tuple(w.shape), gran, gs)
    x = torch.randn(3, 7, w.shape[1], generator=torch.Generator().manual_seed(6)).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(real(x), fake(x), rtol=1.6e-2, atol=1e-3)


def test_real_weight_survives_to_copy_and_state_dict(tmp_path):
    w = _weight(7)
    lin = _linear(w)
    quantize_(lin, RealQuantWeightConfig("int8", "group", 128))
    x = torch.randn(4, w.shape[1], generator=torch.Generator().manual_seed(8)).to(torch.bfloat16)
    with torch.no_grad():
        out = lin(x)
    sd = lin.state_dict()
    assert isinstance(sd["weight"], QuantizedWeight)
    torch.save(sd, tmp_path / "w.pt")
    loaded = torch.load(tmp_path / "w.pt", weights_only=True)
    other = _linear(_weight(9))
    quantize_(other, RealQuantWeightConfig("int8", "group", 128))
    other.load_state_dict(loaded)
    moved = copy.deepcopy(other).to("cpu")
    with torch.no_grad():
        assert torch.equal(moved(x), out)
    assert moved.weight.qdata.dtype == torch.int8 and moved.weight.group_size == 128


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,act", [("int8", None), ("fp8", None), ("int8", "int8"), ("fp8", "fp8")])
def test_real_weight_moves_to_cuda_and_captures_in_cuda_graph(dtype, act):
    w = _weight(10, n=256, k=512)
    lin = _linear(w)
    pre = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(11)) + 0.5 if act else None
    lin.weight = torch.nn.Parameter(QuantizedWeight.from_float(w, dtype, "row", act_dtype=act, pre_scale=pre),
                                    requires_grad=False)
    x = torch.randn(16, w.shape[1], generator=torch.Generator().manual_seed(12)).to(torch.bfloat16)
    with torch.no_grad():
        ref = lin(x)
        lin = lin.to("cuda")
        assert lin.weight.qdata.is_cuda and lin.weight.scale.is_cuda
        xc = x.cuda()
        # fused CUDA kernels round differently from the CPU reference: compare norms (bf16 level, < 1e-2)
        assert (lin(xc).cpu().float() - ref.float()).norm() / ref.float().norm() < 1e-2
        lin(xc)  # warm-up (kernel autotune / compile) outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = lin(xc)
        xc.copy_(-x.cuda())
        graph.replay()
        torch.cuda.synchronize()
        eager = lin(xc)
        assert (out.float() - eager.float()).norm() / eager.float().norm() < 1e-3
