"""Merge linears that read the same input (q/k/v, gate/up) into one weight, as vLLM's QKV / merged-column layers.

One GEMM instead of three (or two) per layer: fewer launches in every decode step, wider N for the quantized
kernels, and for W8A8 one activation quantization instead of three. The merged weight owns the storage; each
original module's weight becomes a view of its rows, so memory is not doubled and the HF modules keep working.

Mergeable: plain tensors of one dtype, or `QuantizedWeight`s of one storage dtype, group size, activation dtype
and pre-scale. Tensor-wise scales become per-row scales of the merged weight (the same value on each row, so the
same products). Anything else (fake W8A8 weights, mixed kinds, partial biases) returns None: the caller keeps
separate linears.
"""
from __future__ import annotations

import torch

from qexp.quant.real import QuantizedWeight


def merge_linears(modules: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight, bias) of one linear computing cat([m(x) for m in modules], -1), or None if not mergeable."""
    weights = [m.weight for m in modules]
    biases = [m.bias for m in modules]
    if any(b is None for b in biases) and any(b is not None for b in biases):
        return None
    if len({(w.shape[1], w.dtype, w.device) for w in weights}) != 1:
        return None
    if all(type(w) is torch.nn.Parameter or type(w) is torch.Tensor for w in weights):
        merged = torch.cat([w.detach() for w in weights])
        _rebind(modules, [merged[a:b] for a, b in _row_ranges(weights)])
    elif all(type(w) is QuantizedWeight for w in weights):
        merged = _merge_quantized(weights)
        if merged is None:
            return None
        _rebind(modules, [_rows(merged, w, a, b) for w, (a, b) in zip(weights, _row_ranges(weights))])
    else:
        return None
    bias = torch.cat([b.detach() for b in biases]) if biases[0] is not None else None
    return merged, bias


def _merge_quantized(weights: list[QuantizedWeight]) -> QuantizedWeight | None:
    first = weights[0]
    if any(w.qdata.dtype != first.qdata.dtype or w.group_size != first.group_size or w.act_dtype != first.act_dtype
           for w in weights):
        return None
    pre = [w.pre_scale for w in weights]
    if any(p is None for p in pre) != all(p is None for p in pre):
        return None
    if pre[0] is not None and not all(torch.equal(p, pre[0]) for p in pre):
        return None
    if first.group_size is None:  # tensor (1,) or row (N,): rows of the merged weight each get their scale
        scale = torch.cat([w.scale.expand(w.shape[0]) for w in weights])
    else:
        scale = torch.cat([w.scale for w in weights])
    return QuantizedWeight(torch.cat([w.qdata for w in weights]), scale.contiguous(), first.dtype,
                           pre_scale=pre[0], group_size=first.group_size, act_dtype=first.act_dtype)


def _rows(merged: QuantizedWeight, old: QuantizedWeight, a: int, b: int) -> QuantizedWeight:
    """`old` re-expressed as rows a:b of `merged` (a tensor-wise scale stays the module's own one-element scale)."""
    scale = old.scale if old.scale.numel() == 1 else merged.scale[a:b]
    return QuantizedWeight(merged.qdata[a:b], scale, old.dtype, pre_scale=old.pre_scale, group_size=old.group_size,
                           act_dtype=old.act_dtype)


def _row_ranges(weights) -> list[tuple[int, int]]:
    ends = torch.tensor([w.shape[0] for w in weights]).cumsum(0).tolist()
    return list(zip([0] + ends[:-1], ends))


def _rebind(modules: list[torch.nn.Linear], views: list[torch.Tensor]) -> None:
    for m, v in zip(modules, views):
        m.weight = torch.nn.Parameter(v, requires_grad=False)
