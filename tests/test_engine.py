"""Engine (qexp.engine) against transformers' own Qwen3ForCausalLM: forward logits, generate, log-probs."""
import pytest
import torch

from qexp.engine import LLM, EngineError, SamplingParams
from qexp.models.loader import load_model

PROMPT_LENS = (5, 17, 33, 8)


def _sharpened(model, seed: int = 0):
    """Rescale the tiny model's random weights so greedy decoding produces varied tokens (the loader's
    std=0.02 init makes every sequence repeat one token, which would make token-identity checks weak)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 0.05 if "embed" in name else 2.0 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture(scope="session")
def model_fp32(tiny_model_dir):
    return _sharpened(load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.float32))


@pytest.fixture(scope="session")
def model_bf16(tiny_model_dir):
    return _sharpened(load_model(str(tiny_model_dir), "dummy", "cpu", 0, dtype=torch.bfloat16))


@pytest.fixture(scope="session")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 151936, (n,), generator=g).tolist() for n in PROMPT_LENS]


def _hf_greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def _hf_logits(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0].float()


def _engine(model, **kw):
    args = {"block_size": 8, "max_num_seqs": 8, "max_num_batched_tokens": 256, "max_model_len": 256}
    args.update(kw)
    return LLM(model, **args)


@pytest.fixture(scope="session")
def hf_greedy32(model_fp32, prompts):
    return [_hf_greedy(model_fp32, p, 32) for p in prompts]


RUN_AHEAD = pytest.mark.parametrize("run_ahead", [False, True], ids=["sync", "run-ahead"])


def _ran_ahead(llm, run_ahead):
    """The run-ahead variant of a test must have launched steps ahead, the plain one none."""
    return (llm.num_steps_run_ahead > 0) == run_ahead


@RUN_AHEAD
def test_greedy_batched_matches_hf_generate(model_fp32, prompts, hf_greedy32, run_ahead):
    # block size 8 < every prompt but one: prompts span several paged blocks; all four decode together
    llm = _engine(model_fp32, run_ahead=run_ahead)
    out = llm.generate(prompts, SamplingParams(max_tokens=32, ignore_eos=True))
    assert out == hf_greedy32
    assert all(len(set(o)) > 8 for o in out)  # varied tokens, not one repeated id
    assert _ran_ahead(llm, run_ahead)


@RUN_AHEAD
def test_requests_of_different_lengths_finish_on_time(model_fp32, prompts, hf_greedy32, run_ahead):
    # each request ends by max_tokens at its own step: the batch shrinks while it decodes
    llm = _engine(model_fp32, run_ahead=run_ahead)
    lens = [32, 3, 17, 9]
    out = llm.generate(prompts, [SamplingParams(max_tokens=n, ignore_eos=True) for n in lens])
    assert out == [h[:n] for h, n in zip(hf_greedy32, lens)]
    assert _ran_ahead(llm, run_ahead) and llm.block_manager.num_free_blocks == llm.num_kvcache_blocks


def test_run_ahead_only_where_the_next_step_is_known():
    from qexp.engine.block_manager import BlockManager
    from qexp.engine.scheduler import Scheduler
    from qexp.engine.sequence import Sequence
    bm = BlockManager(num_blocks=4, block_size=4)
    sch = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64, max_model_len=16, eos_token_ids={7})
    a, b = Sequence([1, 2, 3], SamplingParams(max_tokens=5), 4), Sequence([4, 5, 6, 8], SamplingParams(max_tokens=2), 4)
    for s in (a, b):
        sch.add(s)
    assert sch.schedule() == ([a, b], True)
    sch.postprocess([a, b], [9, 9])  # a: 4 tokens (1 block), b: 5 tokens (2 blocks once scheduled)
    assert sch.schedule() == ([a, b], False) and bm.num_free_blocks == 1
    assert not sch.can_run_ahead([a, b])  # b's next token is its last (max_tokens=2): it ends by length
    b.params.max_tokens = 9
    assert sch.can_run_ahead([a, b])  # a's 5th token takes the one free block
    other = Sequence([1], SamplingParams(), 4)
    bm.allocate(other, 0)  # someone else takes it
    assert not sch.can_run_ahead([a, b])
    bm.deallocate(other)
    assert sch.can_run_ahead([a, b])
    assert not sch.can_run_ahead([a])  # b runs too but is not in the batch
    assert not sch.next_is_prefill()  # nothing waits
    sch.add(Sequence([1], SamplingParams(), 4))
    assert not sch.can_run_ahead([a, b])  # a waiting request: the next step is its prefill
    assert sch.next_is_prefill()  # ... which needs nothing from a's and b's tokens
    bm.allocate(other, 0)  # the cache is full: the waiting request cannot be placed yet
    assert not sch.next_is_prefill()


@RUN_AHEAD
def test_prefills_of_waiting_requests_run_ahead(model_fp32, prompts, hf_greedy32, run_ahead):
    # 48 tokens per step: the four prompts (63 tokens) take two prefill steps; with run-ahead the second is launched
    # before the first one's tokens are read
    llm = _engine(model_fp32, max_num_batched_tokens=48, max_model_len=48, run_ahead=run_ahead)
    assert llm.generate(prompts, SamplingParams(max_tokens=1)) == [h[:1] for h in hf_greedy32]
    assert _ran_ahead(llm, run_ahead)  # max_tokens=1: prefill steps only
    out = llm.generate(prompts, SamplingParams(max_tokens=8, ignore_eos=True))
    assert out == [h[:8] for h in hf_greedy32]
    assert llm.block_manager.num_free_blocks == llm.num_kvcache_blocks


@RUN_AHEAD
def test_preemption_and_small_batches_keep_outputs(model_fp32, prompts, hf_greedy32, run_ahead):
    # 17 blocks of 4 tokens (68 positions); three running sequences need up to 17 blocks each: decode must preempt
    llm = _engine(model_fp32, block_size=4, num_kvcache_blocks=17, max_num_seqs=3, max_model_len=68,
                  max_num_batched_tokens=68, run_ahead=run_ahead)
    out = llm.generate(prompts, SamplingParams(max_tokens=32, ignore_eos=True))
    assert llm.scheduler.num_preemptions > 0
    assert out == hf_greedy32
    assert llm.block_manager.num_free_blocks == 17  # every block returned
    assert _ran_ahead(llm, run_ahead)


def test_prefill_and_decode_logits_match_hf_forward(model_bf16, prompts):
    llm = _engine(model_bf16, run_ahead=False)  # the recorder reads each step's tokens on the host: the plain loop
    steps = []
    decode = llm.runner.decode

    def recording_decode(seqs):
        logits = decode(seqs)
        steps.append(([list(s.token_ids) for s in seqs], logits.float().clone()))
        return logits

    llm.runner.decode = recording_decode
    out = llm.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
    assert len(steps) == 5
    for seqs, logits in steps:
        for seq, row in zip(seqs, logits):
            ref = _hf_logits(model_bf16, seq)[-1]
            torch.testing.assert_close(row, ref, atol=0.05 * ref.abs().max().item(), rtol=0.02)
    # prefill: every position's next-token logits, HF forward over the whole prompt + generated sequence
    full = [p + o for p, o in zip(prompts, out)]
    got = llm.next_token_logits(full, [1] * len(full))
    for seq, g in zip(full, got):
        ref = _hf_logits(model_bf16, seq)
        assert g.shape == ref.shape and g.dtype == torch.float32
        err = (g - ref).norm() / ref.norm()
        assert err < 0.02, err


def test_score_matches_hf_log_softmax(model_fp32, prompts):
    llm = _engine(model_fp32)
    starts = [1, 4, 20, 7]
    got = llm.score(prompts, starts)
    for seq, st, g in zip(prompts, starts, got):
        ref = _hf_logits(model_fp32, seq).log_softmax(-1)
        want = ref[st - 1:-1].gather(-1, torch.tensor(seq[st:])[:, None]).squeeze(-1)
        assert g.shape == (len(seq) - st,)
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


def test_prefix_caching_reuses_blocks_and_keeps_results(model_fp32, prompts):
    shared = prompts[2][:24]  # three full blocks of 8
    seqs = [shared + prompts[0], shared + prompts[3]]
    plain = _engine(model_fp32).score(seqs, [26, 26])
    llm = _engine(model_fp32, enable_prefix_caching=True)
    first = llm.score(seqs[:1], [26])
    second = llm.score(seqs[1:], [26])
    assert llm.block_manager.num_prefix_hit_tokens == 24  # the second request reused the shared prefix
    torch.testing.assert_close(first[0], plain[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(second[0], plain[1], atol=1e-5, rtol=1e-5)
    greedy = llm.generate(seqs, SamplingParams(max_tokens=8, ignore_eos=True))
    assert greedy == [_hf_greedy(model_fp32, s, 8) for s in seqs]


def test_sampling_seeded_and_top_p(model_fp32, prompts, hf_greedy32):
    llm = _engine(model_fp32)
    hot = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True, seed=7)
    a, b = llm.generate(prompts, hot), llm.generate(prompts, hot)
    assert a == b and a != [h[:12] for h in hf_greedy32]
    ahead = _engine(model_fp32, run_ahead=True)  # the sampler draws in the same order when steps run ahead
    assert ahead.generate(prompts, hot) == a and ahead.num_steps_run_ahead > 0
    # a nucleus this small keeps only the top token: sampling collapses to greedy
    tiny_p = SamplingParams(temperature=1.0, top_p=1e-6, max_tokens=12, ignore_eos=True, seed=3)
    assert llm.generate(prompts, tiny_p) == [h[:12] for h in hf_greedy32]


@RUN_AHEAD
def test_eos_stops_generation(model_fp32, prompts, hf_greedy32, run_ahead):
    llm = _engine(model_fp32, run_ahead=run_ahead)
    assert llm.scheduler.eos_token_ids == {151645}  # the tiny config's eos_token_id
    eos = hf_greedy32[1][4]
    llm.scheduler.eos_token_ids = {eos, -5}  # pretend the 5th greedy token of prompt 1 is an EOS id
    out = llm.generate(prompts[1:2], SamplingParams(max_tokens=32))
    assert out[0] == hf_greedy32[1][:hf_greedy32[1].index(eos) + 1]
    # in a batch: the EOS request stops (a run-ahead step computed one token past it, dropped), the rest go on
    keep_going = SamplingParams(max_tokens=32, ignore_eos=True)
    out = llm.generate(prompts, [keep_going, SamplingParams(max_tokens=32), keep_going, keep_going])
    assert out == [hf_greedy32[0], hf_greedy32[1][:hf_greedy32[1].index(eos) + 1], hf_greedy32[2], hf_greedy32[3]]
    assert _ran_ahead(llm, run_ahead) and llm.block_manager.num_free_blocks == llm.num_kvcache_blocks


def test_bad_requests_are_rejected_with_clear_errors(model_fp32):
    llm = _engine(model_fp32, max_model_len=64, max_num_batched_tokens=64)
    with pytest.raises(EngineError, match="request 1 has 65 tokens > max_model_len"):
        llm.generate([[1, 2], list(range(65))])
    with pytest.raises(EngineError, match="request 0 is empty"):
        llm.score([[]], [1])
    with pytest.raises(EngineError, match="start 0 must be in"):
        llm.score([[1, 2, 3]], [0])
    with pytest.raises(EngineError, match="max_num_batched_tokens"):
        _engine(model_fp32, max_model_len=128, max_num_batched_tokens=64)
    with pytest.raises(EngineError, match="KV cache holds"):
        _engine(model_fp32, num_kvcache_blocks=2, max_model_len=64, max_num_batched_tokens=64)


def test_torchao_quantized_model_matches_its_hf_forward(tiny_model_dir, prompts):
    """Real int8 row-wise weights (qexp.quant, TorchAO subclass): the engine calls the quantized linears."""
    from qexp.config import RunConfig
    from qexp.quant.apply import quantize_model
    m = _sharpened(load_model(str(tiny_model_dir), "dummy", "cpu", 0))
    cfg = RunConfig(model=str(tiny_model_dir), load_format="dummy", dtype="int8", quant="row", mode="real")
    assert quantize_model(m, cfg.validate()).quantized == 14
    got = _engine(m).score(prompts, [1] * len(prompts))
    for seq, g in zip(prompts, got):
        ref = _hf_logits(m, seq).log_softmax(-1)[:-1].gather(-1, torch.tensor(seq[1:])[:, None]).squeeze(-1)
        torch.testing.assert_close(g, ref, atol=0.05, rtol=0.01)


def test_text_prompts_round_trip_through_the_tokenizer(model_fp32, tokenizer):
    texts = ["The capital of France is", "1, 2, 3,"]
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    want = [_hf_greedy(model_fp32, p, 6) for p in ids]
    out = _engine(model_fp32, tokenizer=tokenizer).generate_text(texts, SamplingParams(max_tokens=6, ignore_eos=True))
    assert out == [tokenizer.decode(w) for w in want]
    with pytest.raises(EngineError, match="need a tokenizer"):
        _engine(model_fp32).generate_text(texts)
