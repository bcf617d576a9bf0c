"""The engine's Triton kernels against plain-torch references (GPU only)."""

import pytest
import torch

from paged_cases import paged_case  # (tests/, beside this file)
from qexp.engine.attention import paged_attention_reference, store_kv_reference

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# GQA groups of 2, 3 (padded to 4) and 1; the last: the tests' tiny Qwen3 (head_dim 16)
@pytest.mark.parametrize("heads", [(16, 8, 128), (12, 4, 128), (8, 8, 128), (4, 2, 16)])
@pytest.mark.parametrize("block_size", [16, 256])
def test_prefill_attention_matches_reference(block_size, heads):
    from qexp.engine.kernels import prefill_attention
    # fresh prompts and prompts behind a cached prefix (ctx > new), lengths off the tile sizes
    ctx, new = [1, 77, 300, 513, 129], [1, 77, 45, 200, 129]
    q, kc, vc, meta = paged_case(ctx, new, block_size, *heads)
    out = prefill_attention(q, kc, vc, meta.cu_seqlens_q, meta.context_lens, meta.block_tables, meta.max_seqlen_q,
                            128 ** -0.5)
    ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, 128 ** -0.5)
    assert _rel(out, ref) < 1e-2


@pytest.mark.parametrize("heads", [(16, 8), (10, 2)])
@pytest.mark.parametrize("splits", [1, 4, 16, None])
def test_decode_attention_matches_reference(splits, heads):
    """Split-KV decode vs the reference, per sequence, 16 splits included (the batch-1 default), called three times
    on the same buffers: the partials merged by the last split program (its arrival counters must be zeroed again
    for the next call) equal the separate merge launch bit for bit."""
    from qexp.engine.kernels import decode_attention
    from qexp.engine.kernels.paged_attention import _ARRIVALS
    ctx = [1, 5, 64, 300, 1000, 17]
    q, kc, vc, meta = paged_case(ctx, [1] * len(ctx), 16, *heads, seed=1)
    ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, 128 ** -0.5)
    for _ in range(3):
        out = decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, 128 ** -0.5, splits=splits)
        apart = decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, 128 ** -0.5, splits=splits,
                                 merge_in_kernel=False)
        assert all(_rel(out[i], ref[i]) < 1e-2 for i in range(len(ctx)))
        assert torch.equal(out, apart)
    assert all(int(b.abs().sum()) == 0 for b in _ARRIVALS.get(q.device, []))


def test_decode_attention_merges_in_a_graph_captured_before_its_counters():
    """A CUDA graph captured while no arrival counters exist falls back to the merge launch, and its replays stay
    right after counters are reserved for eager calls."""
    import importlib

    from qexp.engine.kernels import decode_attention
    pa = importlib.import_module("qexp.engine.kernels.paged_attention")  # the module: the package exports a function
    ctx = [300, 1000]
    q, kc, vc, meta = paged_case(ctx, [1, 1], 16, seed=2)
    ref = paged_attention_reference(q.float(), kc.float(), vc.float(), meta, 128 ** -0.5)
    saved = pa._ARRIVALS.pop(q.device, None)
    try:
        decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, 128 ** -0.5, splits=16,
                         merge_in_kernel=False)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, 128 ** -0.5, splits=16)
        assert q.device not in pa._ARRIVALS or not pa._ARRIVALS[q.device]
        eager = decode_attention(q, kc, vc, meta.context_lens, meta.block_tables, 128 ** -0.5, splits=16)
        graph.replay()
        torch.cuda.synchronize()
        assert all(_rel(out[i], ref[i]) < 1e-2 for i in range(len(ctx)))
        assert torch.equal(out, eager)
    finally:
        if saved is not None:
            pa._ARRIVALS[q.device] = saved + pa._ARRIVALS.get(q.device, [])


@pytest.mark.parametrize("T", [7, 1500])
def test_qk_norm_rope_stores_kv_at_slots_and_skips_padding(T):
    """qk_norm_rope with the caches writes the very k it returns without them, and v, at each token's slot;
    padded rows (slot -1) write nothing. v as a row-strided view, as the merged qkv gives it. T=1500 takes the
    prefill launch (more heads a program): the decode launch's values on chunks of the rows, up to the order of
    the float32 sum of squares (a bf16 ulp)."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    from qexp.engine.kernels import qk_norm_rope
    qn, kn = Qwen3RMSNorm(128).to(DEV, torch.bfloat16), Qwen3RMSNorm(128).to(DEV, torch.bfloat16)
    torch.nn.init.normal_(qn.weight, 1.0, 0.1), torch.nn.init.normal_(kn.weight, 1.0, 0.1)
    qkv = torch.randn(T, 4096, device=DEV).bfloat16()
    q, k, v = (t.view(T, -1, 128) for t in qkv.split([2048, 1024, 1024], -1))
    ang = torch.arange(T, device=DEV)[:, None].float() * torch.rand(64, device=DEV)
    cos, sin = torch.cat([ang, ang], -1).cos().bfloat16(), torch.cat([ang, ang], -1).sin().bfloat16()
    n_blocks = T // 16 + 4
    kc = torch.randn(n_blocks, 16, 8, 128, device=DEV).bfloat16()
    vc = torch.randn(n_blocks, 16, 8, 128, device=DEV).bfloat16()
    ref_k, ref_v = kc.clone(), vc.clone()
    if T == 7:
        slots = torch.tensor([3, 17, 63, 0, -1, 40, 41], dtype=torch.int32, device=DEV)
    else:
        slots = torch.randperm(n_blocks * 16, device=DEV)[:T].int()
        slots[::97] = -1
    q_ref, k_ref = qk_norm_rope(q, k, qn, kn, cos, sin)
    q_out, none = qk_norm_rope(q, k, qn, kn, cos, sin, v, kc, vc, slots)
    store_kv_reference(k_ref[slots >= 0], v[slots >= 0], ref_k, ref_v, slots[slots >= 0])
    assert none is None and torch.equal(q_out, q_ref)
    assert torch.equal(kc, ref_k) and torch.equal(vc, ref_v)
    if T >= 1024:
        parts = [qk_norm_rope(q[i:i + 500], k[i:i + 500], qn, kn, cos[i:i + 500], sin[i:i + 500])
                 for i in range(0, T, 500)]
        for got, want in ((q_ref, torch.cat([p[0] for p in parts])), (k_ref, torch.cat([p[1] for p in parts]))):
            torch.testing.assert_close(got, want, rtol=2 ** -6, atol=2 ** -6)
            assert (got == want).float().mean() > 0.99


def test_fused_norms_match_hf_modules(tiny_model_dir):
    from transformers.models.qwen3.modeling_qwen3 import (
        Qwen3RMSNorm,
        apply_rotary_pos_emb,
    )

    from qexp.engine.kernels import qk_norm_rope, rms_norm, silu_mul
    norm = Qwen3RMSNorm(2048, eps=1e-6).to(DEV, torch.bfloat16)
    torch.nn.init.normal_(norm.weight, 1.0, 0.1)
    x, r = torch.randn(2, 33, 2048, device=DEV).bfloat16()
    out, res = rms_norm(x, norm, r)
    assert torch.equal(res, x + r)
    assert _rel(out, norm(x + r)) < 2e-3
    qn, kn = Qwen3RMSNorm(128).to(DEV, torch.bfloat16), Qwen3RMSNorm(128).to(DEV, torch.bfloat16)
    torch.nn.init.normal_(qn.weight, 1.0, 0.1), torch.nn.init.normal_(kn.weight, 1.0, 0.1)
    q, k = torch.randn(33, 16, 128, device=DEV).bfloat16(), torch.randn(33, 8, 128, device=DEV).bfloat16()
    ang = torch.arange(33, device=DEV)[:, None].float() * torch.rand(64, device=DEV)
    cos, sin = torch.cat([ang, ang], -1).cos().bfloat16(), torch.cat([ang, ang], -1).sin().bfloat16()
    qo, ko = qk_norm_rope(q, k, qn, kn, cos, sin)
    rq, rk = apply_rotary_pos_emb(qn(q).transpose(0, 1), kn(k).transpose(0, 1), cos, sin, unsqueeze_dim=0)
    assert _rel(qo, rq.transpose(0, 1)) < 5e-3 and _rel(ko, rk.transpose(0, 1)) < 5e-3
    a, b = torch.randn(2, 17, 6144, device=DEV).bfloat16()
    assert _rel(silu_mul(a, b), torch.nn.functional.silu(a) * b) < 2e-3
    # strided rows (views of a merged qkv / gate-up GEMM output) give exactly the contiguous results
    qkv = torch.cat([q.flatten(1), k.flatten(1), torch.randn(33, 1024, device=DEV).bfloat16()], -1)
    qs, ks, _ = qkv.split([2048, 1024, 1024], -1)
    qo2, ko2 = qk_norm_rope(qs.view(33, 16, 128), ks.view(33, 8, 128), qn, kn, cos, sin)
    assert torch.equal(qo2, qo) and torch.equal(ko2, ko)
    gate, up = torch.cat([a.flatten(0, 1), b.flatten(0, 1)], -1).chunk(2, -1)
    assert torch.equal(silu_mul(gate, up), silu_mul(a.flatten(0, 1), b.flatten(0, 1)))


def test_engine_triton_path_matches_reference_path(tiny_model_dir):
    """The whole engine on the GPU: Triton kernels + CUDA graphs vs the plain-torch path, same bf16 model."""
    from qexp.engine import LLM, SamplingParams
    from qexp.models.loader import load_model
    m = load_model(str(tiny_model_dir), "dummy", DEV, 0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in (3, 40, 130, 257, 9)]
    # the recorders below read each step's tokens on the host: the plain loop (run-ahead: its own test)
    fast = LLM(m, block_size=16, max_num_seqs=8, max_model_len=512, max_num_batched_tokens=1024,
               gpu_memory_utilization=0.3, run_ahead=False)
    slow = LLM(m, block_size=16, max_num_seqs=8, max_model_len=512, max_num_batched_tokens=1024,
               num_kvcache_blocks=200, enforce_eager=True, merge_projections=False, run_ahead=False)
    slow.runner.use_triton = False
    lp_fast = fast.score(prompts, [1] * 5)
    lp_slow = slow.score(prompts, [1] * 5)
    for a, b in zip(lp_fast, lp_slow):
        assert (a - b).abs().max() < 0.05
    steps = {}
    for name, llm in (("fast", fast), ("slow", slow)):
        dec = llm.runner.decode
        steps[name] = []

        def recording(seqs, dec=dec, rec=steps[name]):
            logits = dec(seqs)
            rec.append(([tuple(s.token_ids) for s in seqs], logits.float().clone()))
            return logits
        llm.runner.decode = recording
        llm.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert fast.runner.graphs  # decode ran from captured graphs
    assert all(x is not None for x in fast.runner.qkv) and all(x is None for x in slow.runner.qkv)
    compared = 0
    for (ids_f, lf), (ids_s, ls) in zip(steps["fast"], steps["slow"]):
        for i, (a, b) in enumerate(zip(ids_f, ids_s)):
            if a == b:  # same sequence so far (greedy bf16 may pick a different near-tie later)
                assert _rel(lf[i], ls[i]) < 2e-2
                compared += 1
    assert compared >= 10


def test_run_ahead_decode_on_the_gpu_gives_the_synchronous_tokens(tiny_model_dir):
    """Run-ahead on CUDA graphs (the next step fed the device-side tokens, two staging buffers in turn; prefills of
    waiting prompts launched before the previous prefill's tokens are read: 160 tokens a step make three prefill
    steps) emits the same tokens as the synchronous loop, greedy and seeded, sequences finishing at different
    steps."""
    from qexp.engine import LLM, SamplingParams
    from qexp.models.loader import load_model
    m = load_model(str(tiny_model_dir), "dummy", DEV, 0)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in (3, 40, 130, 9, 77)]
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in (20, 7, 25, 1, 12)]
    seeded = SamplingParams(max_tokens=16, ignore_eos=True, temperature=0.8, top_p=0.9, seed=5)
    out = {}
    for ahead in (False, True):
        llm = LLM(m, block_size=16, max_num_seqs=8, max_model_len=160, max_num_batched_tokens=160,
                  num_kvcache_blocks=200, run_ahead=ahead)
        out[ahead] = (llm.generate(prompts, params), llm.generate(prompts, seeded))
        assert llm.runner.graphs and (llm.num_steps_run_ahead > 0) == ahead
        del llm
    assert out[True] == out[False]
    assert [len(c) for c in out[True][0]] == [20, 7, 25, 1, 12]


@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_norm_and_silu_mul_quantize_their_output_bit_for_bit(act):
    """rms_norm / silu_mul with quant= give exactly quantize_activation of their unquantized outputs (and the
    same residual), rows strided as in a merged gate/up output, an all-zero token included."""
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    from qexp.engine.kernels import rms_norm, silu_mul
    from qexp.kernels.triton_act_quant import quantize_activation
    g = torch.Generator(device=DEV).manual_seed(11)
    norm = Qwen3RMSNorm(2048).to(DEV, torch.bfloat16)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    x, r = (torch.randn(2, 37, 2048, device=DEV, generator=g) * 4).bfloat16()
    x[5], r[5] = 0, 0
    for res in (None, r):
        y, res_out = rms_norm(x, norm, res)
        (yq, ys), res_q = rms_norm(x, norm, res, quant=act)
        wq, ws = quantize_activation(y, act)
        assert torch.equal(res_q, res_out) and torch.equal(ys, ws)
        assert torch.equal(yq.view(torch.int8), wq.view(torch.int8))
    gate, up = (torch.randn(37, 2 * 6144, device=DEV, generator=g) * 3).bfloat16().chunk(2, -1)
    gate[5] = 0
    (sq, ss) = silu_mul(gate, up, quant=act)
    wq, ws = quantize_activation(silu_mul(gate, up), act)
    assert sq.shape == (37, 6144) and torch.equal(ss, ws) and torch.equal(sq.view(torch.int8), wq.view(torch.int8))


@pytest.mark.parametrize("act", ["int8", "fp8"])
def test_w8a8_engine_quantizes_activations_in_the_norms(tiny_model_dir, act, monkeypatch):
    """SmoothQuant W8A8 in the engine: the norms and SiLU * up quantize the qkv / gate-up / down inputs (prefill
    and graph-replayed decode at batch 8, where the backend takes quantized input) and the logits are exactly
    those of the engine quantizing inside each linear."""
    from qexp.config import RunConfig
    from qexp.engine import LLM, SamplingParams
    from qexp.engine.model_runner import ModelRunner
    from qexp.models.loader import load_model
    from qexp.quant.apply import quantize_model
    m = load_model(str(tiny_model_dir), "dummy", DEV, 0)
    g = torch.Generator().manual_seed(4)
    calib = [torch.randint(0, 151936, (1, 64), generator=g).to(DEV) for _ in range(2)]
    quantize_model(m, RunConfig(dtype=act, quant="smooth", mode="real").validate(), calibration_batches=calib)
    prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in (3, 40, 130, 9, 77, 20, 5, 64)]
    calls, quant_in = [], ModelRunner._quant_in

    def recorded(self, linear, t):
        calls.append(quant_in(self, linear, t))
        return calls[-1]
    monkeypatch.setattr(ModelRunner, "_quant_in", recorded)
    runs = {}
    for fuse in (True, False):
        if not fuse:
            monkeypatch.setattr(ModelRunner, "_quant_in", lambda self, lin, t: None)
        llm = LLM(m, block_size=16, max_num_seqs=8, max_model_len=512, max_num_batched_tokens=1024,
                  num_kvcache_blocks=200)
        steps = _record_decode_logits(llm)
        lp = llm.score(prompts, [1] * len(prompts))
        out = llm.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
        runs[fuse] = (lp, out, steps)
        del llm
    # every W8A8 input (q/k/v, gate/up, down of every layer, each step) came quantized from its norm or SiLU * up
    assert len(calls) >= 3 * m.config.num_hidden_layers and all(c == act for c in calls)
    (lp_f, out_f, st_f), (lp_u, out_u, st_u) = runs[True], runs[False]
    assert out_f == out_u
    assert all(torch.equal(a, b) for a, b in zip(lp_f, lp_u))
    assert len(st_f) == len(st_u) > 0 and all(torch.equal(a, b) for a, b in zip(st_f, st_u))


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_engine_fuses_silu_mul_into_the_one_token_gate_up_gemv(tiny_model_dir, dtype, monkeypatch):
    """model_runner.FUSE_SWIGLU: at batch 1 the merged weight-only gate/up runs fused.gate_up_swiglu (its table cell
    set to the Gluon GEMV here) and the graph-replayed decode logits equal those of the GEMV then silu_mul."""
    from qexp.config import RunConfig
    from qexp.engine import LLM, SamplingParams, model_runner
    from qexp.kernels import configs, fused
    from qexp.models.loader import load_model
    from qexp.quant.apply import quantize_model
    m = load_model(str(tiny_model_dir), "dummy", DEV, 0)
    quantize_model(m, RunConfig(dtype=dtype, quant="row", mode="real").validate())
    c = m.config
    kind = configs.kind(torch.int8 if dtype == "int8" else torch.float8_e4m3fn, None, None)
    cell = {configs.key(kind, 2 * c.intermediate_size, c.hidden_size, 1): configs.gemv_gl_config(8, 512)}
    prompt = torch.randint(0, 151936, (37,), generator=torch.Generator().manual_seed(5)).tolist()
    fused_calls, swiglu = [], fused.gate_up_swiglu
    monkeypatch.setattr(fused, "gate_up_swiglu", lambda *a, **k: fused_calls.append(1) or swiglu(*a, **k))
    runs = {}
    with configs.override(cell):
        for fuse in (True, False):
            monkeypatch.setattr(model_runner, "FUSE_SWIGLU", fuse)
            llm = LLM(m, block_size=16, max_num_seqs=4, max_model_len=256, max_num_batched_tokens=256,
                      num_kvcache_blocks=40)
            steps = _record_decode_logits(llm)
            out = llm.generate([prompt], SamplingParams(max_tokens=8, ignore_eos=True))
            runs[fuse] = (out, steps, len(fused_calls))
            del llm
    (out_f, st_f, n_f), (out_u, st_u, n_u) = runs[True], runs[False]
    assert n_f >= c.num_hidden_layers and n_u == n_f  # used with the switch on (warm-up and capture), not off
    assert out_f == out_u
    assert len(st_f) == len(st_u) > 0 and all(torch.equal(a, b) for a, b in zip(st_f, st_u))


@pytest.mark.parametrize("dtype,swiglu", [("int8", False), ("fp8", False), ("int8", True)])
def test_engine_folds_the_norms_and_residual_adds_into_the_one_token_gemvs(tiny_model_dir, dtype, swiglu,
                                                                           monkeypatch):
    """model_runner.FUSE_NORM: at batch 1 every layer's norms run inside the q/k/v and gate/up GEMVs (their table
    cells set to the Gluon GEMV here) and the residual adds in o_proj's and down_proj's epilogues; the decode
    logits stay close to those of the separate norm kernels (the fused path skips two bf16 roundings), token for
    token, also with SiLU * up in the gate/up GEMV."""
    from qexp.config import RunConfig
    from qexp.engine import LLM, SamplingParams, model_runner
    from qexp.kernels import configs, fused
    from qexp.models.loader import load_model
    from qexp.quant.apply import quantize_model
    m = load_model(str(tiny_model_dir), "dummy", DEV, 0)
    quantize_model(m, RunConfig(dtype=dtype, quant="row", mode="real").validate())
    c = m.config
    kind = configs.kind(torch.int8 if dtype == "int8" else torch.float8_e4m3fn, None, None)
    qkv_n = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    cells = {configs.key(kind, n, c.hidden_size, 1): configs.gemv_gl_config(8, 512)
             for n in (qkv_n, 2 * c.intermediate_size)}
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 151936, (n,), generator=g).tolist() for n in (37, 5)]
    calls, norm_linear = [], fused.norm_linear
    monkeypatch.setattr(fused, "norm_linear", lambda *a, **k: calls.append(1) or norm_linear(*a, **k))
    monkeypatch.setattr(model_runner, "FUSE_SWIGLU", swiglu)
    runs = {}
    with configs.override(cells):
        for fuse in (True, False):
            monkeypatch.setattr(model_runner, "FUSE_NORM", fuse)
            llm = LLM(m, block_size=16, max_num_seqs=4, max_model_len=256, max_num_batched_tokens=256,
                      num_kvcache_blocks=40, run_ahead=False)
            steps = _record_decode_logits(llm)
            outs = [llm.generate([p], SamplingParams(max_tokens=8, ignore_eos=True))[0] for p in prompts]
            runs[fuse] = (outs, steps, len(calls))
            del llm
    (out_f, st_f, n_f), (out_u, st_u, n_u) = runs[True], runs[False]
    per_forward = c.num_hidden_layers * (1 if swiglu else 2)
    assert n_f >= 2 * per_forward and n_u == n_f  # warm-up and capture with the switch on; none with it off
    assert len(st_f) == len(st_u) == 2 * 7
    compared = 0
    for seq_f, seq_u, first in zip(out_f, out_u, (0, 7)):
        for j in range(7):  # step j fed token j of both runs: compare while the tokens agree
            if seq_f[:j + 1] != seq_u[:j + 1]:
                break
            assert _rel(st_f[first + j], st_u[first + j]) < 2e-2
            compared += 1
    assert compared >= 4


def _record_decode_logits(llm) -> list[torch.Tensor]:
    """The list that every decode step's logits (run-ahead steps too) are appended to from now on."""
    steps, dec = [], llm.runner.decode

    def recording(seqs, input_ids=None):
        logits = dec(seqs, input_ids)
        steps.append(logits.float().clone())
        return logits
    llm.runner.decode = recording
    return steps
