"""Host overhead of ``moecompat.fused_experts`` over calling the resolved backend directly.

Both sides run the same adapter on the same tensors; the difference of the medians is what the
public entry point adds (argument parsing, validation, dispatch). The adapter is measured two
ways: on the reference backend with a tiny problem, and on a "null" adapter that returns its
input, which isolates the dispatch cost from kernel-time noise.

    python benchmarks/overhead.py [--calls 100000] [--device cpu|cuda] [--no-value-checks] [--json out.json]

On CPU tensors every call also runs the expert-id range check (a host read of ``topk_ids``); on
CUDA tensors it runs only in debug mode (``moecompat.set_debug(True)``). ``--no-value-checks``
replaces that check with a no-op for the measurement, so CPU figures measure the same
metadata-only path as CUDA figures (the default debug setting).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import moecompat as mc
from moecompat import _checks
from moecompat.adapters import REGISTRY, Resolution


def _median_ns(fn, calls: int, repeats: int = 7) -> float:
    """Median over ``repeats`` batches of the per-call time (ns) of ``fn()``."""
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls // repeats):
            fn()
        per_call.append((time.perf_counter_ns() - t0) / (calls // repeats))
    return statistics.median(per_call)


def _null_fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, activation, quant_config,
                        expert_map, global_num_experts, apply_router_weight_on_input, inplace):
    return hidden_states


def measure(calls: int, device: str, value_checks: bool = True) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t, e, k, h, i = 1, 8, 2, 128, 64
    x = torch.randn(t, h, device=device, dtype=dtype)
    w1 = torch.randn(e, 2 * i, h, device=device, dtype=dtype)
    w2 = torch.randn(e, h, i, device=device, dtype=dtype)
    topk = mc.select_experts(x, torch.randn(t, e, device=device), k, backend="reference")
    tw, ti = topk
    qc = mc.make_quant_config(None)
    act = mc.Activation.SILU

    REGISTRY.register("null", "fused_experts", lambda: Resolution(
        "fused_experts", "null", "ok", impl=_null_fused_experts, resolved="benchmarks.overhead:_null_fused_experts", variant="null"))
    import moecompat.backends as backends
    backends._KNOWN_BACKENDS = (*backends._KNOWN_BACKENDS, "null")

    results = {}
    range_check = _checks.check_ids_range
    if not value_checks:
        # The metadata-only path: what a CUDA call runs outside debug mode. The stub stands in
        # for the one value check (expert-id range) that CPU tensors always get.
        _checks.check_ids_range = lambda name, ids, low, high: None
    try:
        _measure_into(results, calls, device, x, w1, w2, tw, ti, qc, act, e)
    finally:
        _checks.check_ids_range = range_check
    return results


def _measure_into(results, calls, device, x, w1, w2, tw, ti, qc, act, e) -> None:
    for backend in ("null", "reference"):
        impl = REGISTRY.impl("fused_experts", backend)
        direct = lambda impl=impl: impl(x, w1, w2, tw, ti, act, qc, None, e, False, False)  # noqa: E731
        public = lambda backend=backend: mc.fused_experts(x, w1, w2, tw, ti, backend=backend)  # noqa: E731
        n = calls if backend == "null" else max(calls // 20, 700)
        for fn in (direct, public):  # warm-up: resolution, caches, allocator
            for _ in range(200):
                fn()
        if device == "cuda":
            torch.cuda.synchronize()
        d = _median_ns(direct, n)
        p = _median_ns(public, n)
        results[backend] = {"direct_ns": d, "public_ns": p, "overhead_ns": p - d, "calls": n}
    auto = lambda: mc.fused_experts(x, w1, w2, tw, ti)  # noqa: E731
    for _ in range(200):
        auto()
    results["auto_public_ns"] = _median_ns(auto, max(calls // 20, 700))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-value-checks", action="store_true",
                    help="skip the expert-id range check (CPU tensors run it on every call; CUDA "
                    "tensors only in debug mode), to measure the metadata-only path on CPU")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    value_checks = not args.no_value_checks
    res = measure(args.calls, args.device, value_checks)
    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "device": args.device,
            "moecompat": mc.__version__, "value_checks": value_checks}
    print(f"moecompat {mc.__version__}, torch {torch.__version__}, device {args.device}, "
          f"value checks {'on' if value_checks else 'off'}")
    for b in ("null", "reference"):
        r = res[b]
        print(f"{b:>10}: direct {r['direct_ns'] / 1000:8.2f} us  public {r['public_ns'] / 1000:8.2f} us  "
              f"overhead {r['overhead_ns'] / 1000:6.2f} us  ({r['calls']} calls, median of 7 batches)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
