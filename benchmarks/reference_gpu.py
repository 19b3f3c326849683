"""GPU speed of the reference backend vs an engine's fused_experts (and a plain per-expert loop).

Mixtral-8x7B bf16 (E=8, k=2, H=4096, I=14336), M in 1..4096, timed with
``triton.testing.do_bench`` (median) where available, else CUDA events.

    python benchmarks/reference_gpu.py [--engine vllm] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

import moecompat as mc


def bench_ms(fn):
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except ImportError:
        for _ in range(5):
            fn()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        ts = []
        for _ in range(20):
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)


def torch_loop(x, w1, w2, tw, ti):
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    inter = w2.shape[2]
    for e in range(w1.shape[0]):
        rows, slot = (ti == e).nonzero(as_tuple=True)
        if rows.numel() == 0:
            continue
        h = x[rows] @ w1[e].t()
        a = torch.nn.functional.silu(h[:, :inter]) * h[:, inter:]
        out.index_add_(0, rows, (a @ w2[e].t()).float() * tw[rows, slot, None])
    return out.to(x.dtype)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=None, help="vllm or sglang (default: the one 'auto' picks)")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 64, 256, 1024, 4096])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    engine = args.engine or mc.engine_info().auto_backend["fused_experts"][0]
    torch.manual_seed(0)
    e, k, h, i = 8, 2, 4096, 14336
    w1 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) / 64
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) / 120
    rows = []
    for m in args.tokens:
        x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
        tw, ti = mc.select_experts(x, torch.randn(m, e, device="cuda"), k, backend="reference")
        ref_ms = bench_ms(lambda: mc.fused_experts(x, w1, w2, tw, ti, backend="reference"))
        eng_ms = bench_ms(lambda: mc.fused_experts(x, w1, w2, tw, ti, backend=engine)) if engine != "reference" else None
        loop_ms = bench_ms(lambda: torch_loop(x, w1, w2, tw, ti)) if m in (64, 1024) else None
        if eng_ms is not None:
            a = mc.fused_experts(x, w1, w2, tw, ti, backend="reference").float()
            b = mc.fused_experts(x, w1, w2, tw, ti, backend=engine).float()
            err = ((a - b).norm() / b.norm()).item()
        else:
            err = None
        row = dict(tokens=m, reference_ms=ref_ms, engine_ms=eng_ms, loop_ms=loop_ms,
                   reference_share_of_engine=(eng_ms / ref_ms) if eng_ms else None, rel_err=err)
        rows.append(row)
        print(f"M={m:5d} reference {ref_ms:8.3f} ms  {engine} {eng_ms if eng_ms is None else f'{eng_ms:8.3f}'} ms  "
              f"ref/engine throughput {row['reference_share_of_engine'] or float('nan'):.2f}  "
              f"loop {loop_ms if loop_ms is None else f'{loop_ms:.3f}'} ms  rel_err {err}")
    meta = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, engine=engine,
                engine_version=str(getattr(mc.engine_info(), engine, None)) if engine != "reference" else None,
                grouped_mm=hasattr(torch, "_grouped_mm"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
