"""CUDA timing helpers shared by the GPU benchmarks (scripts run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import statistics

import torch


def graph_ms(fn, iters: int = 50, repeats: int = 10) -> float:
    """Median ms per call of ``fn`` replayed from a CUDA graph (host overhead excluded)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    for _ in range(5):
        g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        for _ in range(iters):
            g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)
