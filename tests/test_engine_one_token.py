"""The batch-1 layer with its norms inside the GEMVs (model_runner.FUSE_NORM, _one_token_layer) on CPU: the data flow
(which norm feeds which linear, the residual stream added as o_proj's and down_proj's bias) checked with plain-torch
stand-ins for the GPU kernels, against the CPU path that runs HF's own modules. The kernels themselves are tested
on the GPU (tests/test_kernels.py, tests/test_engine_kernels.py)."""
import types

import pytest
import torch
import torch.nn.functional as F

from qexp.engine import LLM, SamplingParams, model_runner
from qexp.engine.attention import paged_attention_reference, store_kv_reference
from qexp.kernels import reference


def _hf_norm(x, weight, eps):  # Qwen3RMSNorm: float32 statistics, the normalised x rounded, then the weight
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _norm_linear(x, norm_weight, eps, w_q, w_scale, *, group_size=None, bias=None, config=None):
    return reference.quantized_linear(_hf_norm(x, norm_weight, eps), w_q, w_scale, group_size=group_size, bias=bias)


def _gate_up_swiglu(x, w_q, w_scale, *, group_size=None, norm_weight=None, eps=0.0, config=None):
    x = x if norm_weight is None else _hf_norm(x, norm_weight, eps)
    gate, up = reference.quantized_linear(x, w_q, w_scale, group_size=group_size).chunk(2, dim=-1)
    return F.silu(gate) * up


def _rms_norm(h, norm, residual=None, quant=None):
    h = h if residual is None else h + residual
    return norm(h), h


def _qk_norm_rope(q, k, q_norm, k_norm, cos, sin, v, k_cache, v_cache, slots):
    q, k = model_runner._rope(q_norm(q), k_norm(k), cos, sin)
    store_kv_reference(k, v, k_cache, v_cache, slots)
    return q, k


KERNELS = types.SimpleNamespace(rms_norm=_rms_norm, qk_norm_rope=_qk_norm_rope,
                                paged_attention=paged_attention_reference,
                                silu_mul=lambda gate, up, quant=None: F.silu(gate) * up)


def _fused(calls: list, swiglu: bool):
    def record(name, fn):
        return lambda *a, **k: calls.append(name) or fn(*a, **k)
    return types.SimpleNamespace(
        on_one_token_gemv=lambda x, w_q, w_scale, group_size, act_dtype, config=None: (
            act_dtype is None and x.numel() == x.shape[-1]),
        fuses_swiglu=lambda x, *a, **k: swiglu and x.numel() == x.shape[-1],
        takes_quantized_input=lambda *a, **k: False,
        norm_linear=record("norm_linear", _norm_linear), gate_up_swiglu=record("gate_up_swiglu", _gate_up_swiglu))


def _decode_logits(model, fused_layers: bool, swiglu: bool, calls: list):
    llm = LLM(model, block_size=8, max_num_seqs=4, max_num_batched_tokens=256, max_model_len=256,
              merge_projections=True, run_ahead=False)
    if fused_layers:  # the CUDA path's structure with CPU stand-ins for its kernels
        llm.runner.use_triton, llm.runner.kernels, llm.runner.fused = True, KERNELS, _fused(calls, swiglu)
    steps, decode = [], llm.runner.decode

    def recording(seqs, input_ids=None):
        logits = decode(seqs, input_ids)
        steps.append(logits.clone())
        return logits
    llm.runner.decode = recording
    prompt = torch.randint(0, 151936, (11,), generator=torch.Generator().manual_seed(4)).tolist()
    return llm.generate([prompt], SamplingParams(max_tokens=6, ignore_eos=True)), steps


@pytest.mark.parametrize("swiglu", [False, True])
def test_one_token_layers_give_the_hf_modules_logits(tiny_model_dir, monkeypatch, swiglu):
    """int8 row-wise, bf16: stand-ins that round as HF's modules do make the fused layer's logits equal the HF path's
    bit for bit, so any misplaced norm, residual or projection shows; the fused layers ran at every decode step."""
    from qexp.config import RunConfig
    from qexp.models.loader import load_model
    from qexp.quant.apply import quantize_model
    model = load_model(str(tiny_model_dir), "dummy", "cpu", 0)
    quantize_model(model, RunConfig(dtype="int8", quant="row", mode="real", device="cpu").validate())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # dummy norms are all ones: make each distinct, so a swapped norm shows
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(0.5 + torch.rand(norm.weight.shape, generator=g))
    monkeypatch.setattr(model_runner, "FUSE_NORM", True)
    monkeypatch.setattr(model_runner, "FUSE_SWIGLU", swiglu)
    calls = []
    out_hf, steps_hf = _decode_logits(model, False, swiglu, calls)
    assert not calls
    out_fused, steps_fused = _decode_logits(model, True, swiglu, calls)
    layers = model.config.num_hidden_layers
    assert calls.count("norm_linear") == 5 * layers * (1 if swiglu else 2)  # 5 decode steps
    assert calls.count("gate_up_swiglu") == (5 * layers if swiglu else 0)
    assert out_fused == out_hf and len(steps_fused) == len(steps_hf) == 5
    assert all(torch.equal(a, b) for a, b in zip(steps_fused, steps_hf))
