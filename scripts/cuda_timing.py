"""Timing shared by the benchmark scripts: capture a callable as one CUDA graph, time its replays with events."""
from __future__ import annotations

import statistics

import torch


def graph_replay_ms(fn, replays: int = 10, warmup: int = 1) -> float:
    """Median milliseconds of one replay of `fn()` captured as a CUDA graph (warmed up on a side stream first,
    as capture requires; Python launch overhead is out of the number)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del graph
    return statistics.median(times)
