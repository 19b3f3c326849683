"""Host overhead of moecompat's entry points over calling the resolved backend runner directly.

Side by side in one run, on the same tensors, medians of 7 batches:

* ``direct``: the runner the backend bound for this layer, called as ``runner(x, w1, w2, tw, ti, False)``;
* ``functional``: ``moecompat.fused_experts(x, w1, w2, tw, ti, backend=...)`` (its call plan);
* ``bound``: ``moecompat.MoEExperts(w1, w2, backend=...)(x, tw, ti)``;
* ``compiled``: ``torch.compile`` of a function calling ``moecompat.fused_experts`` against
  ``torch.compile`` of the same function calling a minimal op that runs the runner, registered
  with ``torch.library.Library`` as moecompat's ops are (the cost any op has): the difference is
  what moecompat adds per call under compile. The same minimal op made with
  ``torch.library.custom_op`` is timed beside them (that decorator wraps every call).

* ``metadata_floor``: a function that only reads what the hot path must check of the token tensors
  (two shapes and the third compared, three dtypes, devices and contiguity flags), with no moecompat
  code: the cost of those tensor attribute reads on this host, which no Python-level check can go
  below. ``functional - metadata_floor`` is moecompat's own dispatch cost.

The *null* backend's runner returns its input, which isolates the dispatch cost from kernel-time
noise; the reference backend is measured too (a tiny problem). The overhead is the difference of
the medians.

    python benchmarks/overhead.py [--calls 100000] [--device cpu|cuda] [--no-value-checks] [--json out.json]

On CPU tensors every call also runs the value checks (expert-id ranges: a host read of
``topk_ids``); on CUDA tensors only in debug mode. ``--no-value-checks`` replaces them with
no-ops for the measurement, so CPU figures measure the same metadata-only path as CUDA figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import moecompat as mc
from moecompat import _backends, _checks
from moecompat._adapters import REGISTRY, Backend


def _median_ns(fn, calls: int, repeats: int = 7) -> float:
    """Median over ``repeats`` batches of the per-call time (ns) of ``fn()``."""
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(calls // repeats):
            fn()
        per_call.append((time.perf_counter_ns() - t0) / (calls // repeats))
    return statistics.median(per_call)


def _null_backend(name: str = "null", allocate: bool = False) -> Backend:
    """A backend whose runner does no work: returns its input, or (``allocate``, for custom ops,
    whose outputs may not alias inputs) a new empty tensor of its shape."""
    null = Backend(name)

    def bind(call):
        def run(hidden_states, w1, w2, topk_weights, topk_ids, inplace):
            return torch.empty_like(hidden_states) if allocate else hidden_states
        return run

    null.adapter("fused_experts")(lambda b: b.ok("fused_experts", bind, f"benchmarks.overhead:{name}", name))
    return null


def _metadata_floor(x, tw, ti, hidden: int, gne: int, act_dtype, w_dtype, on_cuda: bool) -> bool:
    """The token-tensor reads of the hot path's condition, nothing else (see the module doc)."""
    t, h = x.shape
    s = ti.shape
    r, k = s
    if on_cuda:
        same = x.get_device() == 0 and ti.get_device() == 0 and tw.get_device() == 0
    else:
        same = x.is_cpu and ti.is_cpu and tw.is_cpu
    return (h == hidden and r == t and 0 < k <= gne and same and x.dtype is act_dtype and tw.dtype is w_dtype
            and ti.dtype in (torch.int32, torch.int64) and tw.shape == s and x.is_contiguous()
            and ti.is_contiguous() and tw.is_contiguous())


def _warm(fn, device: str, n: int = 200) -> None:
    for _ in range(n):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()


def measure(calls: int, device: str, value_checks: bool = True, compiled: bool = True) -> dict:
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    t, e, k, h, i = 1, 8, 2, 128, 64
    x = torch.randn(t, h, device=device, dtype=dtype)
    w1 = torch.randn(e, 2 * i, h, device=device, dtype=dtype)
    w2 = torch.randn(e, h, i, device=device, dtype=dtype)
    tw, ti = mc.select_experts(x, torch.randn(t, e, device=device), k, backend="reference")
    _backends.register_backend(_null_backend())
    results: dict = {}
    saved = _checks.check_ids_range, _checks.check_expert_map_values
    if not value_checks:
        _checks.check_ids_range = lambda *a, **k: None  # type: ignore[assignment]
        _checks.check_expert_map_values = lambda *a, **k: None  # type: ignore[assignment]
    try:
        for backend in ("null", "reference"):
            from moecompat._calls import ExpertsCall

            runner = REGISTRY.impl("fused_experts", backend)(ExpertsCall(w1, w2, mc.make_quant_config(None), None, e,
                                                                         mc.Activation.SILU))
            experts = mc.MoEExperts(w1, w2, backend=backend)  # type: ignore[arg-type]
            sides = {
                "direct": lambda runner=runner: runner(x, w1, w2, tw, ti, False),
                "functional": lambda backend=backend: mc.fused_experts(x, w1, w2, tw, ti, backend=backend),
                "bound": lambda experts=experts: experts(x, tw, ti),
            }
            if backend == "null":
                sides["metadata_floor"] = lambda: _metadata_floor(x, tw, ti, h, e, dtype, tw.dtype, device == "cuda")
            n = calls if backend == "null" else max(calls // 20, 700)
            for fn in sides.values():
                _warm(fn, device)
            r = {name: _median_ns(fn, n) for name, fn in sides.items()}
            r["functional_overhead_ns"] = r["functional"] - r["direct"]
            r["bound_overhead_ns"] = r["bound"] - r["direct"]
            if "metadata_floor" in r:
                r["metadata_floor_ns"] = r["metadata_floor"] - r["direct"]
            r["calls"] = n
            results[backend] = r
        if compiled and mc.ops.AVAILABLE:
            results["compiled"] = _measure_compiled(calls, device, x, w1, w2, tw, ti, e)
    finally:
        _checks.check_ids_range, _checks.check_expert_map_values = saved
        _backends.unregister_backend("null")
    return results


def _measure_compiled(calls: int, device: str, x, w1, w2, tw, ti, e) -> dict:
    """Per-call time of a compiled layer through moecompat vs through a bare op around the
    same runner (both compiled the same way, aot_eager). The runner allocates its output and does
    no work, so the difference is what moecompat adds inside a compiled graph per call."""
    from moecompat._calls import ExpertsCall

    _backends.register_backend(_null_backend("null_alloc", allocate=True))
    runner = REGISTRY.impl("fused_experts", "null_alloc")(ExpertsCall(w1, w2, mc.make_quant_config(None), None, e,
                                                                      mc.Activation.SILU))

    @torch.library.custom_op("moecompat_bench::direct", mutates_args=())
    def direct_op(hidden_states: torch.Tensor, a: torch.Tensor, b: torch.Tensor, tw: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return runner(hidden_states, a, b, tw, ti, False)

    @direct_op.register_fake
    def _(hidden_states, a, b, tw, ti):
        return torch.empty_like(hidden_states)

    lib = torch.library.Library("moecompat_bench", "FRAGMENT")
    lib.define("direct_lib(Tensor hidden_states, Tensor a, Tensor b, Tensor tw, Tensor ti) -> Tensor")
    lib.impl("direct_lib", lambda hidden_states, a, b, tw, ti: runner(hidden_states, a, b, tw, ti, False),
             "CompositeExplicitAutograd")
    torch.library.register_fake("moecompat_bench::direct_lib", lambda hidden_states, a, b, tw, ti: torch.empty_like(hidden_states),
                                lib=lib)

    def through_bare_library_op(x, tw, ti):
        return torch.ops.moecompat_bench.direct_lib(x, w1, w2, tw, ti)

    def through_moecompat(x, tw, ti):
        return mc.fused_experts(x, w1, w2, tw, ti, backend="null_alloc")  # type: ignore[arg-type]

    def through_bare_op(x, tw, ti):
        return torch.ops.moecompat_bench.direct(x, w1, w2, tw, ti)

    out = {}
    n = max(calls // 10, 2000)
    try:
        for name, fn in (("moecompat", through_moecompat), ("bare_custom_op", through_bare_op),
                         ("bare_library_op", through_bare_library_op)):
            c = torch.compile(fn, fullgraph=True, backend="aot_eager")
            _warm(lambda c=c: c(x, tw, ti), device)
            out[name] = _median_ns(lambda c=c: c(x, tw, ti), n)
    finally:
        _backends.unregister_backend("null_alloc")
    # What moecompat adds over the cheapest op a user could register (torch.library.Library, as
    # moecompat's own ops are); torch.library.custom_op costs more by itself, shown beside it.
    out["overhead_ns"] = out["moecompat"] - out["bare_library_op"]
    out["calls"] = n
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-value-checks", action="store_true",
                    help="skip the expert-id range checks (CPU tensors run them on every call; CUDA tensors only "
                    "in debug mode), to measure the metadata-only path on CPU")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    value_checks = not args.no_value_checks
    res = measure(args.calls, args.device, value_checks, compiled=not args.no_compile)
    import platform

    meta = {"python": sys.version.split()[0], "torch": torch.__version__, "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "cpu": platform.processor(),
            "moecompat": mc.__version__, "value_checks": value_checks}
    print(f"moecompat {mc.__version__}, torch {torch.__version__}, device {args.device}"
          f"{' (' + meta['gpu'] + ')' if meta['gpu'] else ''}, value checks {'on' if value_checks else 'off'}")
    for b in ("null", "reference"):
        r = res[b]
        print(f"{b:>10}: direct {r['direct'] / 1000:7.2f} us  functional {r['functional'] / 1000:7.2f} us "
              f"(+{r['functional_overhead_ns'] / 1000:.2f})  bound {r['bound'] / 1000:7.2f} us "
              f"(+{r['bound_overhead_ns'] / 1000:.2f})"
              + (f"  metadata floor +{r['metadata_floor_ns'] / 1000:.2f}" if "metadata_floor_ns" in r else "")
              + f"  [{r['calls']} calls, median of 7 batches]")
    if "compiled" in res:
        c = res["compiled"]
        print(f"  compiled: moecompat {c['moecompat'] / 1000:7.2f} us  bare Library op {c['bare_library_op'] / 1000:7.2f} us "
              f"(+{c['overhead_ns'] / 1000:.2f})  bare custom_op {c['bare_custom_op'] / 1000:7.2f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": res}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
