"""GPU: ``moecompat.fused_experts`` vs calling the engine's own function directly.

Mixtral-8x7B bf16 (E=8, k=2, H=4096, I=14336) at M=1 (decode, where host overhead matters):
* kernel time — CUDA-graph replay of each call path (host overhead excluded): must be identical;
* host overhead — wall time per call (``time.perf_counter`` around N asynchronous calls, no
  synchronisation inside) of each path minus the direct call's. At the Mixtral shape the GPU is
  the bottleneck (the launch queue fills), so the host figure is also taken on a tiny shape
  (E=8, k=2, H=256, I=512) whose kernels finish faster than Python can launch them.

    python benchmarks/dispatch_gpu.py --engine vllm [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from _timing import graph_ms
from moecompat.adapters import REGISTRY

import moecompat as mc


def _host_us(fn, calls=2000, repeats=7):
    per = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        per.append((t1 - t0) / calls * 1e6)
    return statistics.median(per)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    e, k, h, i = 8, 2, 4096, 14336
    x = torch.randn(args.tokens, h, device="cuda", dtype=torch.bfloat16)
    w1 = torch.randn(e, 2 * i, h, device="cuda", dtype=torch.bfloat16) / 64
    w2 = torch.randn(e, h, i, device="cuda", dtype=torch.bfloat16) / 120
    tw, ti = mc.select_experts(x, torch.randn(args.tokens, e, device="cuda"), k, backend="reference")
    impl = REGISTRY.impl("fused_experts", args.engine)
    args_, kw, _ = impl.build_call(x, w1, w2, tw, ti, mc.Activation.SILU, mc.make_quant_config(None), None, e, False, False)
    engine_fn = impl.target

    def direct():
        return engine_fn(*args_, **kw)

    def public():
        return mc.fused_experts(x, w1, w2, tw, ti, backend=args.engine)

    def public_auto():
        return mc.fused_experts(x, w1, w2, tw, ti)

    for fn in (direct, public, public_auto):
        for _ in range(20):
            fn()
    torch.cuda.synchronize()
    torch.testing.assert_close(public(), direct(), rtol=0, atol=0)
    # Host timings with the GPU busy make the host side the measured quantity only if launches
    # don't block; fused MoE launches are asynchronous, so measure in small batches.
    res = {
        "engine": args.engine,
        "engine_version": mc.engine_info().__dict__[args.engine] and str(mc.engine_info().__dict__[args.engine]),
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "tokens": args.tokens,
        "kernel_ms_direct": graph_ms(direct),
        "kernel_ms_moecompat": graph_ms(public),
    }
    h_direct = _host_us(direct, calls=500)
    h_public = _host_us(public, calls=500)
    h_auto = _host_us(public_auto, calls=500)
    res.update(host_us_direct=h_direct, host_us_moecompat=h_public, host_us_moecompat_auto=h_auto,
               overhead_us=h_public - h_direct, overhead_us_auto=h_auto - h_direct)
    # Host-bound shape: kernels shorter than the launch path, so wall time per call is host time.
    ts, ws1, ws2 = (torch.randn(args.tokens, 256, device="cuda", dtype=torch.bfloat16),
                    torch.randn(e, 1024, 256, device="cuda", dtype=torch.bfloat16) / 16,
                    torch.randn(e, 256, 512, device="cuda", dtype=torch.bfloat16) / 22)
    targs, tkw, _ = impl.build_call(ts, ws1, ws2, tw, ti, mc.Activation.SILU, mc.make_quant_config(None), None, e, False, False)
    tiny = [lambda: engine_fn(*targs, **tkw), lambda: mc.fused_experts(ts, ws1, ws2, tw, ti, backend=args.engine)]
    for fn in tiny:
        for _ in range(50):
            fn()
    # Interleave the two paths so drift (clocks, other load) hits both alike.
    hd, hp = [], []
    for _ in range(5):
        hd.append(_host_us(tiny[0], calls=2000, repeats=3))
        hp.append(_host_us(tiny[1], calls=2000, repeats=3))
    res.update(tiny_host_us_direct=statistics.median(hd), tiny_host_us_moecompat=statistics.median(hp),
               tiny_overhead_us=statistics.median(hp) - statistics.median(hd))
    print(f"{args.engine} {res['engine_version']} on {res['gpu']}, Mixtral bf16 M={args.tokens}")
    print(f"kernel (CUDA graph replay): direct {res['kernel_ms_direct']:.4f} ms, moecompat {res['kernel_ms_moecompat']:.4f} ms")
    print(f"host per call: direct {h_direct:.2f} us, moecompat {h_public:.2f} us (auto {h_auto:.2f} us), "
          f"overhead {res['overhead_us']:.2f} us (auto {res['overhead_us_auto']:.2f} us)")
    print(f"host-bound tiny shape: direct {res['tiny_host_us_direct']:.2f} us, moecompat {res['tiny_host_us_moecompat']:.2f} us, "
          f"overhead {res['tiny_overhead_us']:.2f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
