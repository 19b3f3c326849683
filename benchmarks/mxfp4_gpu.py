"""GPU: vLLM 0.24 MXFP4 MoE kernels on Hopper (sm90) vs moecompat's reference: error and speed.

gpt-oss-120b experts (E=128, top_k=4, hidden=intermediate=2880), batches 1..1024, no biases (the
reference has none). Random bf16 weights are quantized once with moecompat's OCP MX helpers
(uint8 ``[E, N, K//2]``, even element in the low nibble; e8m0 ``[E, N, K//32]``). The oracle
``moecompat.fused_experts(..., mxfp4_w4a16 config, backend="reference")`` and each vLLM kernel get
the same bits and routing; vLLM's ``convert_gpt_oss_weight_to_mxfp4_moe_kernel_format`` converts
them after zero-padding to ``mxfp4_round_up_hidden_size_and_intermediate_size``. Cases:

* reference silu/swigluoai: the oracle, timed too (every call dequantizes all E experts);
* marlin silu/swigluoai: ``fused_marlin_moe`` (moe_wna16_marlin_gemm, bf16 activations);
* triton swigluoai: ``make_routing_data`` + ``triton_kernel_fused_experts`` (OAI triton_kernels
  ``matmul_ogs``, Hopper-swizzled weights/scales from ``_swizzle_mxfp4``).

silu: w13 = [gate rows; up rows]; swigluoai: gpt-oss interleaved rows (gate 2i, up 2i+1), the
same quantized rows permuted. Reported per case: rel L2 |out-ref|/|ref| and max abs (fp32),
pass/fail, median ms per call (CUDA events, L2 flushed; CUDA-graph replay where capture works),
and for batch <= 64 the GB/s of MXFP4 weight+scale bytes of the experts hit.

    PYTHONPATH=<dir holding vllm> python benchmarks/mxfp4_gpu.py --json mxfp4_gpu.json
    python benchmarks/mxfp4_gpu.py --quick --device cpu     # dry run: reference + padding self-test
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch

FULL = {"E": 128, "top_k": 4, "H": 2880, "I": 2880}
QUICK = {"E": 8, "top_k": 2, "H": 512, "I": 512}
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
QUICK_BATCHES = [1, 4, 16, 64]
CASES = [("marlin", "silu"), ("marlin", "swigluoai"), ("triton", "swigluoai")]
WEIGHT_STD = 0.02  # |x @ w1| ~ 1: SwiGLU-OAI's clamp (7.0) is rarely hit, as in a trained model
# Tolerance. Both sides multiply the SAME weights (MXFP4 -> bf16 is exact), so differences come
# only from bf16 rounding of intermediates (GEMM1 output, activation output), accumulation order
# / split reductions, fp32 activation math, and (triton) router weights carried in bf16 (made
# exact here), each ~ the bf16 unit roundoff 2^-8 = 3.9e-3 per element (an fp32 recomputation vs
# the reference measured 3.5e-3 rel L2 on CPU). A layout bug (gate/up swap, nibble order, scale
# rows) gives rel L2 ~ 1. 2e-2 = 5x the bf16 roundoff.
TOL_REL_L2 = 2e-2
WARMUP, REPS, REF_WARMUP, REF_REPS = 5, 20, 2, 5
RESULTS: list[dict] = []
META: dict = {}


def dump(path):
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"meta": META, "results": RESULTS}, f, indent=1, default=str)
        os.replace(tmp, path)


def record(rec, path):
    RESULTS.append(rec)
    dump(path)
    head = f"{rec.get('backend')!s:9s} {rec.get('activation')!s:9s} T={rec.get('batch')!s:5s}"
    if "error" in rec:
        line = f"ERROR {rec['error'][:200]}"
    elif "skipped" in rec:
        line = f"skipped: {rec['skipped']}"
    else:
        line = (f"relL2={rec['rel_l2']:.2e} maxabs={rec['max_abs']:.2e} {'PASS' if rec['pass'] else 'FAIL'} "
                if "rel_l2" in rec else f"oracle |out|max={rec.get('out_absmax', float('nan')):.3g} ")
        line += f"{rec['ms']:8.3f} ms ({rec['timing']})" if "ms" in rec else ""
        line += f" {rec['gbps']:7.1f} GB/s ({rec['experts_hit']} experts)" if "gbps" in rec else ""
        line += f" [graph failed: {rec['graph_error'][:80]}]" if "graph_error" in rec else ""
    print(head, line, flush=True)


def err_rec(backend, act, batch, e):
    tb = traceback.format_exc().splitlines()[-15:]
    return {"backend": backend, "activation": act, "batch": batch, "error": repr(e)[:2000], "traceback": tb}


def cuda_poisoned(cuda):
    """A reason string when the CUDA context is unusable after an error (sticky fault), else None."""
    if not cuda:
        return None
    try:
        torch.cuda.synchronize()
        return None
    except Exception as e:
        return f"CUDA context unusable after an earlier error: {e!r}"[:300]


def make_problem(shp, device, seed=0):
    """MXFP4 w13 (silu layout [gate; up]) and w2, quantized expert-chunk by expert-chunk."""
    from moecompat.quant import quantize_weights

    E, H, I = shp["E"], shp["H"], shp["I"]
    g = torch.Generator(device=device).manual_seed(seed)
    u8 = {"dtype": torch.uint8, "device": device}
    w13, s13 = torch.empty(E, 2 * I, H // 2, **u8), torch.empty(E, 2 * I, H // 32, **u8)
    w2, s2 = torch.empty(E, H, I // 2, **u8), torch.empty(E, H, I // 32, **u8)
    for e0 in range(0, E, 4):  # 4 experts at a time: quantize_mxfp4 needs ~30 B/element scratch
        e1 = min(E, e0 + 4)
        for wq, sq, n, k in ((w13, s13, 2 * I, H), (w2, s2, H, I)):
            w = (torch.randn(e1 - e0, n, k, generator=g, device=device) * WEIGHT_STD).to(torch.bfloat16)
            q = quantize_weights(w, "mxfp4_w4a16")
            wq[e0:e1], sq[e0:e1] = q.weight, q.scale
    # gpt-oss layout: rows gate0, up0, gate1, up1, ... (same quantized rows, permuted)
    def inter(t):
        return t.view(E, 2, I, t.shape[-1]).transpose(1, 2).reshape(E, 2 * I, t.shape[-1]).contiguous()

    return {"silu": (w13, s13), "swigluoai": (inter(w13), inter(s13)), "w2": w2, "s2": s2}


def make_inputs(T, shp, device, seed=1):
    g = torch.Generator(device=device).manual_seed(seed * 100003 + T)
    x = torch.randn(T, shp["H"], generator=g, device=device).to(torch.bfloat16)
    ids = torch.rand(T, shp["E"], generator=g, device=device).topk(shp["top_k"], dim=-1).indices
    tw = torch.softmax(torch.randn(T, shp["top_k"], generator=g, device=device), dim=-1)
    # triton_kernels carries router weights in bf16: make them bf16-exact so all sides agree.
    return x, tw.to(torch.bfloat16).float(), ids.to(torch.int32)


def reference(x, tw, ti, prob, act):
    import moecompat as mc

    w13, s13 = prob[act]
    cfg = mc.make_quant_config("mxfp4_w4a16", w1_scale=s13, w2_scale=prob["s2"])
    return mc.fused_experts(x, w13, prob["w2"], tw, ti, activation=act, quant_config=cfg, backend="reference")


def pad_problem(prob, act, shp, Hp, Ip):
    """(w13, s13, w2, s2) zero-padded to hidden Hp / intermediate Ip (packed 0 = +0.0): silu pads
    each half of w13 (up rows move to [Ip, Ip+I)); swigluoai (interleaved) pads the tail."""
    def pad(t, rows, cols, segments):  # segments: (src_row, dst_row, n)
        out = t.new_zeros(t.shape[0], rows, cols)
        for src, dst, n in segments:
            out[:, dst : dst + n, : t.shape[2]] = t[:, src : src + n]
        return out

    H, I = shp["H"], shp["I"]
    w13, s13 = prob[act]
    seg = [(0, 0, I), (I, Ip, I)] if act == "silu" else [(0, 0, 2 * I)]
    return (pad(w13, 2 * Ip, Hp // 2, seg), pad(s13, 2 * Ip, Hp // 32, seg),
            pad(prob["w2"], Hp, Ip // 2, [(0, 0, H)]), pad(prob["s2"], Hp, Ip // 32, [(0, 0, H)]))


def build_selftest(act, prob, shp):
    """CPU stand-in for a kernel: the reference on padded weights (tests padding and plumbing)."""
    import moecompat as mc

    Hp, Ip = shp["H"] + 256, shp["I"] + 128
    w13p, s13p, w2p, s2p = pad_problem(prob, act, shp, Hp, Ip)
    cfg = mc.make_quant_config("mxfp4_w4a16", w1_scale=s13p, w2_scale=s2p)

    def fn(x, tw, ti):
        return mc.fused_experts(x, w13p, w2p, tw, ti, activation=act, quant_config=cfg, backend="reference")

    return fn, {"padded_H": Hp, "padded_I": Ip, "call": "moecompat reference on padded weights"}


def build_vllm(backend, act, prob, shp):
    """Convert the shared MXFP4 bits with vLLM's helpers; return (fn(x_padded, tw, ti), info)."""
    from vllm.model_executor.layers.fused_moe.activation import MoEActivation
    from vllm.model_executor.layers.fused_moe.oracle.mxfp4 import (
        Mxfp4MoeBackend,
        convert_gpt_oss_weight_to_mxfp4_moe_kernel_format,
        make_mxfp4_moe_quant_config,
        mxfp4_round_up_hidden_size_and_intermediate_size,
    )
    from vllm.platforms import current_platform

    E = shp["E"]
    be = Mxfp4MoeBackend.MARLIN if backend == "marlin" else Mxfp4MoeBackend.TRITON
    Hp, Ip = mxfp4_round_up_hidden_size_and_intermediate_size(be, shp["H"], shp["I"])
    w13p, s13p, w2p, s2p = pad_problem(prob, act, shp, Hp, Ip)
    layer = torch.nn.Module()  # what the converters read/delete: params_dtype, w13_weight, w2_weight
    layer.params_dtype = torch.bfloat16
    layer.w13_weight, layer.w2_weight = w13p, w2p
    w1k, w2k, s1k, s2k, _, _ = convert_gpt_oss_weight_to_mxfp4_moe_kernel_format(
        be, layer, w13p, w2p, s13p, s2p, None, None)
    qc = make_mxfp4_moe_quant_config(be, w1_scale=s1k, w2_scale=s2k)
    mact = MoEActivation.SILU if act == "silu" else MoEActivation.SWIGLUOAI
    info = {"mxfp4_backend": be.name, "padded_H": Hp, "padded_I": Ip, "moe_activation": mact.name,
            "convert": "convert_gpt_oss_weight_to_mxfp4_moe_kernel_format",
            "vllm_platform": type(current_platform).__name__}
    if backend == "marlin":
        from vllm.model_executor.layers.fused_moe.experts.marlin_moe import fused_marlin_moe
        from vllm.scalar_type import scalar_types

        qid = scalar_types.float4_e2m1f.id
        info["call"] = "fused_marlin_moe(quant_type_id=float4_e2m1f)"

        def fn(x, tw, ti):
            return fused_marlin_moe(x, w1k, w2k, None, None, qc.w1_scale, qc.w2_scale, tw, ti,
                                    quant_type_id=qid, global_num_experts=E, activation=mact)
    else:
        from vllm.model_executor.layers.fused_moe.experts import gpt_oss_triton_kernels_moe as oai

        info["call"] = "make_routing_data + triton_kernel_fused_experts"
        info["legacy_triton_kernels"] = getattr(oai, "use_legacy_triton_kernels", None)

        def fn(x, tw, ti):
            rd, gi, si = oai.make_routing_data(ti, tw, E)
            return oai.triton_kernel_fused_experts(torch.empty_like(x), x, w1k, w2k, rd, gi, si,
                                                   topk=ti.shape[1], activation=mact, quant_config=qc,
                                                   global_num_experts=E)
    return fn, info


class Timer:
    """Median ms per call: CUDA events with L2 flushed before each call, then CUDA-graph replay
    (reported as ``ms`` when capture works; a backend whose capture fails is not retried)."""

    def __init__(self, device, graphs):
        self.cuda, self.graphs = device.type == "cuda", graphs and device.type == "cuda"
        self.flush = torch.empty(64 << 20, dtype=torch.int32, device=device) if self.cuda else None

    def _median(self, fn, reps):
        ts = []
        for _ in range(reps):
            if not self.cuda:
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1e3)
                continue
            self.flush.zero_()  # 256 MiB > L2 (50 MiB): weights come from HBM every call
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            e.synchronize()
            ts.append(s.elapsed_time(e))
        return statistics.median(ts)

    def __call__(self, fn, warmup, reps, key=None, no_graph=None):
        for _ in range(warmup):
            fn()
        res = {"ms_eager": self._median(fn, reps), "timing": "events" if self.cuda else "wall"}
        res["ms"] = res["ms_eager"]
        if self.graphs and no_graph is not None and key not in no_graph:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    fn()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
                g.replay()
                res["ms_graph"] = self._median(g.replay, reps)
                res["ms"], res["timing"] = res["ms_graph"], "cuda_graph"
                del g
            except Exception as e:  # capture unsupported: keep the eager number
                no_graph.add(key)
                res["graph_error"] = repr(e)[:500]
                if poisoned := cuda_poisoned(True):
                    res["graph_sync_error"] = poisoned
        return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-size", type=int, nargs="+", default=None)
    ap.add_argument("--json", default=None, help="write results here (after every case)")
    ap.add_argument("--quick", action="store_true", help="tiny shape E=8 k=2 H=I=512")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-graph", action="store_true", help="CUDA events only (no CUDA graphs)")
    ap.add_argument("--ref-max-batch", type=int, default=1024, help="time the reference up to this batch")
    ap.add_argument("--vllm-site", default=None, help="directory to prepend to sys.path for vllm")
    args = ap.parse_args(argv)
    if args.vllm_site:
        sys.path.insert(0, args.vllm_site)
    try:
        import moecompat  # noqa: F401
    except ImportError:  # run from a checkout without installing it
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.pop("VLLM_MARLIN_INPUT_DTYPE", None)  # keep Marlin weight-only (bf16 activations)
    device = torch.device(args.device)
    shp = QUICK if args.quick else FULL
    batches = args.batch_size or (QUICK_BATCHES if args.quick else BATCHES)
    META.update(shape=shp, batches=batches, cases=CASES, device=str(device), args=vars(args),
                tol_rel_l2=TOL_REL_L2, weight_std=WEIGHT_STD, warmup=WARMUP, reps=REPS,
                ref_warmup=REF_WARMUP, ref_reps=REF_REPS, python=platform.python_version(),
                torch=torch.__version__, torch_cuda=torch.version.cuda,
                notes=["triton (OAI) supports only swigluoai: no triton/silu case",
                       "reference ms includes dequantizing all E experts every call",
                       "gbps: logical (unpadded) MXFP4 weight+scale bytes of experts hit / ms",
                       "x is zero-padded to the backend's hidden size outside the timed call"])
    for mod in ("triton", "vllm", "moecompat"):
        try:
            META[mod] = __import__(mod).__version__
        except Exception as e:
            META[mod] = f"unavailable: {e!r}"[:300]
    META["moecompat_file"] = getattr(sys.modules.get("moecompat"), "__file__", None)
    if device.type == "cuda":
        META["gpu"] = torch.cuda.get_device_name(device)
        META["capability"] = list(torch.cuda.get_device_capability(device))
    print(json.dumps({k: META[k] for k in ("shape", "torch", "triton", "vllm", "moecompat", "device")}
                     | {"gpu": META.get("gpu")}), flush=True)
    t0 = time.time()
    try:
        prob = make_problem(shp, device)
    except Exception as e:
        record(err_rec("problem", "-", None, e), args.json)
        return 1
    META["problem_seconds"] = round(time.time() - t0, 1)
    H, I = shp["H"], shp["I"]
    bytes_per_expert = (2 * I * H + H * I) * (1 / 2 + 1 / 32)
    timer, cuda = Timer(device, not args.no_graph), device.type == "cuda"
    inputs = {T: make_inputs(T, shp, device) for T in batches}
    refs = {}
    for T, (x, tw, ti) in inputs.items():  # oracles first (kept: [T, H] each), reference timed
        for act in ("silu", "swigluoai"):
            rec = {"backend": "reference", "activation": act, "batch": T}
            try:
                refs[T, act] = reference(x, tw, ti, prob, act)  # peak ~30 GiB scratch at E=128
                rec["out_absmax"] = refs[T, act].float().abs().max().item()
                if act == "silu" and args.ref_max_batch >= T:
                    rec.update(timer(lambda: reference(x, tw, ti, prob, act), REF_WARMUP, REF_REPS))
                record(rec, args.json)
            except Exception as e:
                record(err_rec("reference", act, T, e), args.json)
            if cuda:
                torch.cuda.empty_cache()
    for b, a in CASES if not cuda else []:
        record({"backend": b, "activation": a, "batch": None, "skipped": "no CUDA device"}, args.json)
    no_graph, poisoned = set(), None
    # One case at a time (its converted weights freed after), so a kernel that poisons the CUDA
    # context (illegal address) costs only the cases after it; they are recorded as skipped.
    for case in CASES if cuda else [("selftest", "silu"), ("selftest", "swigluoai")]:
        backend, act = case
        if poisoned:
            record({"backend": backend, "activation": act, "batch": None, "skipped": poisoned}, args.json)
            continue
        try:
            t1 = time.time()
            fn, info = build_selftest(act, prob, shp) if backend == "selftest" else build_vllm(*case, prob, shp)
            info["build_seconds"] = round(time.time() - t1, 1)
            META.setdefault("built", {})[f"{backend}/{act}"] = info
        except Exception as e:
            record(err_rec(backend, act, None, e), args.json)
            poisoned = cuda_poisoned(cuda)
            continue
        for T, (x, tw, ti) in inputs.items():
            if poisoned:
                break
            rec = {"backend": backend, "activation": act, "batch": T}
            try:
                xp = torch.nn.functional.pad(x, (0, info["padded_H"] - H)).contiguous()
                out = fn(xp, tw, ti)[:, :H]
                if (T, act) in refs:
                    o, r = out.float(), refs[T, act].float()
                    d = o - r
                    rec.update(rel_l2=(d.norm() / r.norm().clamp_min(1e-30)).item(),
                               max_abs=d.abs().max().item(), finite=bool(torch.isfinite(o).all()))
                    rec["pass"] = rec["finite"] and rec["rel_l2"] <= TOL_REL_L2
                else:
                    rec["note"] = "no reference output for this batch: error not checked"
                rec.update(timer(lambda: fn(xp, tw, ti), WARMUP, REPS, key=case, no_graph=no_graph))
                if T <= 64:
                    hit = int(ti.unique().numel())
                    rec.update(experts_hit=hit, bytes=int(hit * bytes_per_expert),
                               gbps=hit * bytes_per_expert / (rec["ms"] * 1e-3) / 1e9)
                record(rec, args.json)
            except Exception as e:
                record(err_rec(backend, act, T, e), args.json)
                poisoned = cuda_poisoned(cuda)
        META["triton_kernels"] = getattr(sys.modules.get("triton_kernels"), "__file__", None)
        fn = None  # free the converted weights
        if cuda and not poisoned:
            torch.cuda.empty_cache()
    if cuda and not poisoned:
        META["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    META["total_seconds"] = round(time.time() - t0, 1)
    dump(args.json)
    checked = [r for r in RESULTS if "pass" in r]
    print(f"done in {META['total_seconds']}s: {sum(r['pass'] for r in checked)}/{len(checked)} checked cases pass, "
          f"{sum('error' in r for r in RESULTS)} errors", flush=True)
    return 0 if checked and all(r["pass"] for r in checked) and not any("error" in r for r in RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
