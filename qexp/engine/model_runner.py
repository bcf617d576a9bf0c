"""Runs transformers' Qwen3ForCausalLM over packed varlen batches with a paged KV cache.

Why drive the decoder layers here rather than plug into AttentionInterface: HF's Qwen3Model.forward is shaped
(batch, seq) and builds masks and a Cache object per call, while the engine feeds one packed token stream
(prefill: many prompts without padding; decode: one token per sequence) whose attention reads a paged cache through
block tables. An attention-interface hook would still pay for the (B, T) reshapes, mask construction and cache
plumbing on every step, and those Python-side allocations are hostile to CUDA-graph capture. So this module walks
`model.model.layers` itself and calls every HF submodule that carries weights (embed_tokens, q/k/v/o_proj,
q_norm/k_norm, input/post_attention_layernorm, the MLP's gate/up/down_proj, norm, lm_head) as module(x), or
F.linear on its (merged) weight, which keeps TorchAO-quantized linears working unchanged; only attention and the
rotary embedding (a table built from the model's own rotary inv_freq exactly as HF computes it) are ours. On CPU
the norms and MLP are the HF modules themselves (bit-for-bit HF numerics); on CUDA they are fused Triton kernels fed
the same norm weights (which also quantize a W8A8 linear's input, see _quant_in), and decode steps are replayed
from CUDA graphs captured per batch-size bucket.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from qexp.engine.attention import (
    AttentionMetadata,
    paged_attention_reference,
    store_kv_reference,
)
from qexp.engine.merge import merge_linears
from qexp.engine.sequence import Sequence
from qexp.kernels.activation import QuantizedActivation
from qexp.quant.real import QuantizedWeight

CPU_KV_CACHE_BYTES = 2 << 30  # default KV cache on CPU when no block count is given
# Batch-1 SiLU * up in the epilogue of the merged weight-only gate/up GEMV (fused.gate_up_swiglu): one launch a
# layer fewer. H100, int8-row batch 1 with FUSE_NORM: 1246 -> 1182 us a token (BENCHMARKS.md, 2026-12-06;
# bench_engine --swiglu apart for the A/B)
FUSE_SWIGLU = True
# Batch 1, weight-only q/k/v and gate/up on the one-token GEMV: each RMSNorm runs inside the GEMV after it
# (fused.norm_linear) and each residual add in the epilogue of o_proj / down_proj (the residual as their bias),
# so no norm launch runs between the layers' GEMMs. H100, int8-row batch 1: 1315 -> 1246 us a token
# (BENCHMARKS.md, 2026-12-06; bench_engine --norm apart for the A/B)
FUSE_NORM = True
FREE_MARGIN_BYTES = 1 << 30  # left free on the card for the CUDA context, cuBLAS workspaces and graphs


def graph_buckets(max_num_seqs: int) -> list[int]:
    """Decode batch sizes that get their own CUDA graph; a batch runs in the smallest bucket that holds it."""
    sizes = [1, 2, 4] + list(range(8, max_num_seqs + 1, 8))
    return sorted({s for s in sizes if s < max_num_seqs} | {max_num_seqs})


def graph_bucket(max_num_seqs: int, bs: int) -> int:
    """The graph bucket a decode batch of bs sequences runs in (the M of its linears)."""
    return next(b for b in graph_buckets(max_num_seqs) if b >= bs)


class ModelRunner:
    def __init__(self, model, *, block_size: int, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, gpu_memory_utilization: float, enforce_eager: bool,
                 num_kvcache_blocks: int | None, use_triton: bool | None = None,
                 merge_projections: bool | None = None) -> None:
        self.model = model
        cfg = model.config
        self.layers = model.model.layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scale = self.head_dim ** -0.5
        self.qkv_sizes = [self.num_heads * self.head_dim] + [self.num_kv_heads * self.head_dim] * 2
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.max_blocks_per_seq = math.ceil(max_model_len / block_size)
        embed = model.model.embed_tokens.weight
        self.device, self.dtype = embed.device, embed.dtype
        self.on_cuda = self.device.type == "cuda"
        self.use_triton = self.on_cuda if use_triton is None else use_triton
        if self.use_triton:
            from qexp.engine import kernels
            from qexp.kernels import fused
            self.kernels, self.fused = kernels, fused
        # q/k/v and gate/up as one GEMM each where the weights allow it (entry None: separate linears);
        # by default on the fused (Triton) path only, so the CPU path stays the HF modules themselves
        merge = self.use_triton if merge_projections is None else merge_projections
        self.qkv = [merge_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]) if merge else None
                    for l in self.layers]
        self.gate_up = [merge_linears([l.mlp.gate_proj, l.mlp.up_proj]) if merge else None for l in self.layers]
        self._build_rope_table(model.model.rotary_emb, max_model_len)

        if num_kvcache_blocks is None:
            num_kvcache_blocks = (self._blocks_from_free_memory(max_num_batched_tokens, gpu_memory_utilization)
                                  if self.on_cuda else self._cpu_default_blocks(max_num_seqs))
        self.num_kvcache_blocks = num_kvcache_blocks
        self.k_cache, self.v_cache = self._alloc_cache(num_kvcache_blocks)

        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.use_graphs = self.on_cuda and not enforce_eager
        self.graph_pool = None
        # a packed int32 host buffer and its device twin feed each decode step with a single copy; two host buffers
        # used in turn, so a step prepared while the previous one's copy may still be queued (run-ahead decode)
        # never overwrites it
        nb = self.max_blocks_per_seq
        self._hosts = [torch.zeros(max_num_seqs * (4 + nb), dtype=torch.int32, pin_memory=self.on_cuda)
                       for _ in range(2)]
        self._hosts_np = [h.numpy() for h in self._hosts]
        self._steps = 0
        self._dev = torch.zeros_like(self._hosts[0], device=self.device)

    # -- setup -----------------------------------------------------------
    def _build_rope_table(self, rotary, n: int) -> None:
        # exactly HF Qwen3RotaryEmbedding.forward: float32 angles, cos/sin times attention_scaling, cast to dtype
        inv_freq = rotary.inv_freq.to(device=self.device, dtype=torch.float32)
        freqs = torch.arange(n, device=self.device, dtype=torch.float32)[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        scaling = getattr(rotary, "attention_scaling", 1.0)
        self.cos = (emb.cos() * scaling).to(self.dtype)
        self.sin = (emb.sin() * scaling).to(self.dtype)

    def _block_bytes(self) -> int:
        return (2 * len(self.layers) * self.block_size * self.num_kv_heads * self.head_dim
                * torch.empty((), dtype=self.dtype).element_size())

    def _alloc_cache(self, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (len(self.layers), num_blocks, self.block_size, self.num_kv_heads, self.head_dim)
        return (torch.zeros(shape, dtype=self.dtype, device=self.device),
                torch.zeros(shape, dtype=self.dtype, device=self.device))

    def _cpu_default_blocks(self, max_num_seqs: int) -> int:
        return max(1, min(CPU_KV_CACHE_BYTES // self._block_bytes(), max_num_seqs * self.max_blocks_per_seq))

    @torch.inference_mode()
    def _blocks_from_free_memory(self, max_num_batched_tokens: int, utilization: float) -> int:
        """Blocks that fit in utilization * total GPU memory after this process's own memory (weights) and the
        activation peak of one full prefill batch (measured by running it), and within what is free on the card
        (other processes, e.g. sweep points sharing the GPU, keep their part)."""
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        lens = []
        left = max_num_batched_tokens
        while left > 0 and len(lens) < self.max_num_seqs:
            lens.append(min(left, self.max_model_len))
            left -= lens[-1]
        tmp_blocks = sum(math.ceil(n / self.block_size) for n in lens)
        self.k_cache, self.v_cache = self._alloc_cache(tmp_blocks)
        seqs, nxt = [], 0
        for n in lens:
            s = Sequence([0] * n, None, self.block_size)  # type: ignore[arg-type]
            s.block_table = list(range(nxt, nxt + s.num_blocks))
            nxt += s.num_blocks
            seqs.append(s)
        self.prefill(seqs, [[n - 1] for n in lens])
        torch.cuda.synchronize()
        stats = torch.cuda.memory_stats()
        activation_peak = stats["allocated_bytes.all.peak"] - stats["allocated_bytes.all.current"]
        del self.k_cache, self.v_cache
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        own = torch.cuda.memory_reserved()
        budget = min(total * utilization - own, free - FREE_MARGIN_BYTES) - activation_peak
        num_blocks = int(budget // self._block_bytes())
        if num_blocks < 1:
            raise RuntimeError(f"no GPU memory left for the KV cache at gpu_memory_utilization={utilization}")
        return num_blocks

    # -- the model -------------------------------------------------------
    def _forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states after the final norm, (T, hidden), for a packed batch of new tokens."""
        T = input_ids.shape[0]
        h = self.model.model.embed_tokens(input_ids)
        cos, sin = self.cos[positions], self.sin[positions]
        residual = None
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            if self._norm_in_gemv(i, h, residual):
                h = self._one_token_layer(i, h, cos, sin, meta)
                continue
            if self.use_triton:
                x, residual = self.kernels.rms_norm(h, layer.input_layernorm, residual,
                                                    self._quant_in(self.qkv[i], T))
            else:
                residual = h
                x = layer.input_layernorm(h)
            if self.qkv[i] is not None:  # one GEMM; q, k, v are strided views of its output rows
                q, k, v = self._linear(x, *self.qkv[i]).split(self.qkv_sizes, dim=-1)
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            h = attn.o_proj(self._attention(i, q, k, v, cos, sin, meta))
            mlp = layer.mlp
            if self.use_triton:
                x, residual = self.kernels.rms_norm(h, layer.post_attention_layernorm, residual,
                                                    self._quant_in(self.gate_up[i], T))
                down = (mlp.down_proj.weight, mlp.down_proj.bias)
                if self._swiglu_in_gemv(self.gate_up[i], x):
                    act = self._gate_up_swiglu(i, x)
                else:
                    gate, up = self._gate_up(i, x)
                    act = self.kernels.silu_mul(gate, up, self._quant_in(down, T))
                h = self._linear(act, *down)
            else:
                h = residual + h
                residual = h
                if self.gate_up[i] is None:
                    h = residual + mlp(layer.post_attention_layernorm(h))
                else:
                    gate, up = self._gate_up(i, layer.post_attention_layernorm(h))
                    h = residual + mlp.down_proj(mlp.act_fn(gate) * up)
                residual = None
        if self.use_triton:
            return self.kernels.rms_norm(h, self.model.model.norm, residual)[0]
        return self.model.model.norm(h)

    def _one_token_layer(self, i: int, h: torch.Tensor, cos, sin, meta: AttentionMetadata) -> torch.Tensor:
        """Decoder layer i for one token with the norms inside the GEMVs after them (FUSE_NORM, _norm_in_gemv): h is
        the whole residual stream in and out; o_proj and down_proj add it in their epilogue (as a bias)."""
        layer = self.layers[i]
        q, k, v = self._norm_linear(h, layer.input_layernorm, self.qkv[i]).split(self.qkv_sizes, dim=-1)
        o = self._attention(i, q, k, v, cos, sin, meta)
        h = self._linear(o, layer.self_attn.o_proj.weight, h.view(-1))
        ln, down = layer.post_attention_layernorm, layer.mlp.down_proj.weight
        if self._swiglu_in_gemv(self.gate_up[i], h):
            act = self._gate_up_swiglu(i, h, ln)
        else:
            gate, up = self._norm_linear(h, ln, self.gate_up[i]).chunk(2, dim=-1)
            act = self.kernels.silu_mul(gate, up, self._quant_in((down, None), 1))
        return self._linear(act, down, h.view(-1))

    def _attention(self, i: int, q, k, v, cos, sin, meta: AttentionMetadata) -> torch.Tensor:
        """Layer i's attention output (T, H * D) from its q, k, v projections (T, heads * D each): q/k norms and
        rotary, the new k, v stored in the paged cache, attention over each sequence's context."""
        T, H, KV, D = q.shape[0], self.num_heads, self.num_kv_heads, self.head_dim
        attn = self.layers[i].self_attn
        q, k, v = q.view(T, H, D), k.view(T, KV, D), v.view(T, KV, D)
        if self.use_triton:
            q, _ = self.kernels.qk_norm_rope(q, k, attn.q_norm, attn.k_norm, cos, sin, v, self.k_cache[i],
                                             self.v_cache[i], meta.slot_mapping)  # k, v into the cache
            o = self.kernels.paged_attention(q, self.k_cache[i], self.v_cache[i], meta, self.scale)
        else:
            q, k = _rope(attn.q_norm(q), attn.k_norm(k), cos, sin)
            store_kv_reference(k, v, self.k_cache[i], self.v_cache[i], meta.slot_mapping)
            o = paged_attention_reference(q, self.k_cache[i], self.v_cache[i], meta, self.scale)
        return o.view(T, H * D)

    def _gate_up_swiglu(self, i: int, x: torch.Tensor, norm=None) -> torch.Tensor:
        """silu(gate) * up from layer i's merged gate/up GEMV (where _swiglu_in_gemv), x normalised by `norm`
        inside it if given."""
        w = self.gate_up[i][0]
        return self.fused.gate_up_swiglu(x, w.qdata, w.scale, group_size=w.group_size,
                                         norm_weight=None if norm is None else norm.weight,
                                         eps=0.0 if norm is None else norm.variance_epsilon)

    def _norm_in_gemv(self, i: int, h: torch.Tensor, residual: torch.Tensor | None) -> bool:
        """Whether layer i runs as _one_token_layer: FUSE_NORM, one token whose residual stream is whole (the
        previous layer added its residual), merged weight-only q/k/v and gate/up on the one-token GEMV, and no
        bias on o_proj / down_proj (the residual takes the bias's place)."""
        if not (FUSE_NORM and self.use_triton and residual is None and h.shape[0] == 1
                and self.qkv[i] is not None and self.gate_up[i] is not None):
            return False
        layer = self.layers[i]
        if layer.self_attn.o_proj.bias is not None or layer.mlp.down_proj.bias is not None:
            return False
        for w, bias in (self.qkv[i], self.gate_up[i]):
            if not (type(w) is QuantizedWeight and w.pre_scale is None and bias is None
                    and self.fused.on_one_token_gemv(h, w.qdata, w.scale, w.group_size, w.act_dtype)):
                return False
        return True

    def _norm_linear(self, h: torch.Tensor, norm, linear: tuple[torch.Tensor, None]) -> torch.Tensor:
        w = linear[0]
        return self.fused.norm_linear(h, norm.weight, norm.variance_epsilon, w.qdata, w.scale,
                                      group_size=w.group_size)

    def _gate_up(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mlp = self.layers[i].mlp
        if self.gate_up[i] is None:
            return mlp.gate_proj(x), mlp.up_proj(x)
        return self._linear(x, *self.gate_up[i]).chunk(2, dim=-1)

    def _swiglu_in_gemv(self, gate_up: tuple[torch.Tensor, torch.Tensor | None] | None, x) -> bool:
        """Whether this step's merged weight-only gate/up runs with SiLU * up in its GEMV (FUSE_SWIGLU, one token)."""
        if not FUSE_SWIGLU or gate_up is None or isinstance(x, QuantizedActivation):
            return False
        w, bias = gate_up
        return (type(w) is QuantizedWeight and w.pre_scale is None
                and self.fused.fuses_swiglu(x, w.qdata, w.scale, w.group_size, w.act_dtype, bias))

    def _quant_in(self, linear: tuple[torch.Tensor, torch.Tensor | None] | None, m: int) -> str | None:
        """"int8" | "fp8" when the kernel producing this linear's input should quantize it (a W8A8 weight without
        a pre-scale whose backend at m rows takes quantized input): one pass over the activations instead of two."""
        w = linear[0] if linear is not None else None
        if (type(w) is not QuantizedWeight or w.act_dtype is None or w.pre_scale is not None
                or self.dtype != torch.bfloat16):
            return None
        return w.act_dtype if self.fused.takes_quantized_input(w.qdata, w.scale, w.act_dtype, m) else None

    def _linear(self, x, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            return self.fused.quantized_linear_prequantized(x.q, x.scale, weight.qdata, weight.scale, bias=bias,
                                                            out_dtype=self.dtype)
        return F.linear(x, weight, bias)

    # -- steps -----------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, seqs: list[Sequence], out_positions: list[list[int]]) -> torch.Tensor:
        """Packed prefill of each sequence's uncached tokens; hidden states at `out_positions` (absolute
        positions per sequence, all >= its num_cached_tokens), concatenated in order."""
        ids, pos, slots, cu, rows = [], [], [], [0], []
        for s, outs in zip(seqs, out_positions):
            start = s.num_cached_tokens
            ids.extend(s.token_ids[start:])
            p = np.arange(start, len(s))
            pos.append(p)
            slots.append(np.asarray(s.block_table)[p // self.block_size] * self.block_size + p % self.block_size)
            rows.extend(cu[-1] + q - start for q in outs)
            cu.append(cu[-1] + len(s) - start)
        pos, slots = np.concatenate(pos), np.concatenate(slots)
        meta = AttentionMetadata(
            is_prefill=True,
            slot_mapping=self._to_dev(slots),
            block_tables=self._to_dev(self._block_table_rows(seqs)),
            context_lens=self._to_dev([len(s) for s in seqs]),
            cu_seqlens_q=self._to_dev(cu),
            max_seqlen_q=max(len(s) - s.num_cached_tokens for s in seqs),
            max_context_len=max(len(s) for s in seqs))
        hidden = self._forward(self._to_dev(ids), self._to_dev(pos), meta)
        return hidden[self._to_dev(rows, torch.int64)]

    @torch.inference_mode()
    def decode(self, seqs: list[Sequence], input_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step (last token of each sequence); logits (B, vocab). input_ids (B,) on the device, if
        given, are the step's tokens instead (a run-ahead step: the host holds stand-ins)."""
        bs = len(seqs)
        bucket = graph_bucket(self.max_num_seqs, bs) if self.use_graphs else bs
        host, host_np = self._hosts[self._steps % 2], self._hosts_np[self._steps % 2]
        self._steps += 1
        ids, pos, slots, ctx, tables = self._decode_views(host_np, bucket)
        lens = [len(s) for s in seqs]
        ids[:], pos[:], ctx[:], slots[:] = 0, 0, 0, -1
        ids[:bs] = [s.token_ids[-1] for s in seqs]
        ctx[:bs] = lens
        pos[:bs] = last = np.asarray(lens) - 1
        nb = max(len(s.block_table) for s in seqs)
        table = np.asarray([s.block_table + [0] * (nb - len(s.block_table)) for s in seqs])
        tables[:bs, :nb] = table
        slots[:bs] = table[np.arange(bs), last // self.block_size] * self.block_size + last % self.block_size
        self._dev.copy_(host, non_blocking=True)
        if input_ids is not None:
            self._dev[:bs].copy_(input_ids)  # queued after the packed copy: the sampled tokens win
        if self.use_graphs and bucket not in self.graphs:
            try:
                self.graphs[bucket] = self._capture(bucket)
            except RuntimeError as e:  # e.g. a quantized linear that syncs with the host: stay correct, go eager
                warnings.warn(f"CUDA-graph capture failed, decoding eagerly: {str(e).splitlines()[0]}")
                self.use_graphs = False
        if self.use_graphs:
            graph, logits = self.graphs[bucket]
            graph.replay()
            return logits[:bs]
        return self._decode_step(bucket)[:bs]

    def _decode_step(self, bs: int) -> torch.Tensor:
        ids, pos, slots, ctx, tables = self._decode_views(self._dev, bs)
        meta = AttentionMetadata(is_prefill=False, slot_mapping=slots, block_tables=tables, context_lens=ctx,
                                 cu_seqlens_q=torch.arange(bs + 1, dtype=torch.int32, device=self.device),
                                 max_seqlen_q=1, max_context_len=self.max_model_len)
        return self.model.lm_head(self._forward(ids, pos, meta))

    def _capture(self, bs: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._decode_step(bs)  # warm-up outside the graph (Triton compilation, cuBLAS handles)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        if self.graph_pool is None:
            self.graph_pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.graph_pool):
            logits = self._decode_step(bs)
        torch.cuda.synchronize()
        return graph, logits

    def _decode_views(self, buf: torch.Tensor, bs: int):
        m, nb = self.max_num_seqs, self.max_blocks_per_seq
        tables = buf[4 * m:].reshape(m, nb)[:bs]
        return buf[:bs], buf[m:m + bs], buf[2 * m:2 * m + bs], buf[3 * m:3 * m + bs], tables

    def _block_table_rows(self, seqs: list[Sequence]) -> list[list[int]]:
        width = max(len(s.block_table) for s in seqs)
        return [s.block_table + [-1] * (width - len(s.block_table)) for s in seqs]

    def _to_dev(self, values, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(values), dtype=dtype)
        if self.on_cuda:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """HF apply_rotary_pos_emb on (T, heads, D) with cos/sin (T, D)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
