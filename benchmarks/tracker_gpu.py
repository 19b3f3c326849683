"""GPU: what ``ExpertActivationTracker`` adds to a decode-size fused-MoE step.

One step = ``select_experts`` (top-k of the router logits) + ``fused_experts``, Mixtral-8x7B bf16
(E=8, k=2, H=4096, I=14336) by default, on the chosen backend. Timed with and without
``select_experts(..., tracker=t, layer=0)``:

* GPU time per step: CUDA-graph replay (the tracker's ``index_add_`` is captured in the graph);
* eager time per step: wall time of N steps with one synchronisation at the end (host + GPU).

Issue target: the tracker costs at most 3% of the step.

    python benchmarks/tracker_gpu.py --engine vllm --tokens 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from _timing import graph_ms

import moecompat as mc


def _eager_ms(fn, iters=200, repeats=7):
    for _ in range(10):
        fn()
    per = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        per.append((time.perf_counter() - t0) / iters * 1e3)
    return statistics.median(per)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=14336)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    e, k, h, i = args.experts, args.top_k, args.hidden, args.intermediate
    w1 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) / 64
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) / 120
    tracker = mc.ExpertActivationTracker(num_layers=1, num_experts=e, device="cuda")
    rows = []
    for m in args.tokens:
        x = torch.randn(m, h, device="cuda", dtype=torch.bfloat16)
        logits = torch.randn(m, e, device="cuda", dtype=torch.float32)

        def plain(x=x, logits=logits):
            tw, ti = mc.select_experts(x, logits, k, backend=args.engine)
            return mc.fused_experts(x, w1, w2, tw, ti, backend=args.engine)

        def tracked(x=x, logits=logits):
            tw, ti = mc.select_experts(x, logits, k, backend=args.engine, tracker=tracker, layer=0)
            return mc.fused_experts(x, w1, w2, tw, ti, backend=args.engine)

        torch.testing.assert_close(tracked(), plain(), rtol=0, atol=0)
        row = {"tokens": m}
        for name, fn in (("plain", plain), ("tracked", tracked)):
            row[f"graph_ms_{name}"] = graph_ms(fn, iters=100)
            row[f"eager_ms_{name}"] = _eager_ms(fn)
        row["graph_overhead_pct"] = 100 * (row["graph_ms_tracked"] / row["graph_ms_plain"] - 1)
        row["eager_overhead_pct"] = 100 * (row["eager_ms_tracked"] / row["eager_ms_plain"] - 1)
        rows.append(row)
        print(f"M={m}: graph {row['graph_ms_plain']:.4f} -> {row['graph_ms_tracked']:.4f} ms ({row['graph_overhead_pct']:+.2f}%), "
              f"eager {row['eager_ms_plain']:.4f} -> {row['eager_ms_tracked']:.4f} ms ({row['eager_overhead_pct']:+.2f}%)")
    # The tracker counted every recorded step (graph replays included): one sanity check.
    assert int(tracker.layer_counts(0).sum()) > 0
    info = mc.engine_info()
    res = {"engine": args.engine, "engine_version": str(getattr(info, args.engine, None)),
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "shape": {"experts": e, "top_k": k, "hidden": h, "intermediate": i, "dtype": "bf16"}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
