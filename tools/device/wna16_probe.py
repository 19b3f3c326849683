#!/usr/bin/env python3
"""On the GPU machine, with vLLM installed: how close can a reference get to vLLM's CUDA wna16 kernel?

vLLM's ``moe_wna16_gemm`` adds each ``block_k`` slice of K into the bf16 output with
``atomicAdd``, in an order the GPU picks. For the int4 w4a16 cases of tests/gpu/test_kernels.py
that take that kernel, this prints (and writes to ``--out`` as JSON) the relative Frobenius errors:

* between repeated engine calls on the same inputs (the spread the atomics cause);
* of the engine against the faithful reference with the slices summed exactly and rounded once
  (``slice_sum="exact"``, the reference's choice) and added in K order (``"k_order"``).

    python3 tools/device/wna16_probe.py --out wna16.json
"""

from __future__ import annotations

import argparse
import functools
import json

import torch

import moecompat as mc
from moecompat import quant
from moecompat.reference import experts as ref_experts

SHAPES = {"mixtral-like": (8, 2, 2048, 3584, False), "deepseek-like": (256, 8, 2048, 512, True)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _case(shape: str, tokens: int, repeats: int) -> dict:
    e, k, h, i, grouped = SHAPES[shape]
    g = torch.Generator(device="cuda").manual_seed(0)
    w1 = torch.randn(e, 2 * i, h, device="cuda", generator=g) / h**0.5
    w2 = torch.randn(e, h, i, device="cuda", generator=g) / i**0.5
    q1, q2, qc = quant.quantize_moe_weights(w1, w2, "int4_w4a16", group_size=128)
    qc = mc.make_quant_config("int4_w4a16", w1_scale=qc.w1_scale.to(torch.bfloat16),
                              w2_scale=qc.w2_scale.to(torch.bfloat16), group_size=128)
    g = torch.Generator(device="cuda").manual_seed(tokens)
    x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16, generator=g)
    logits = torch.randn(tokens, e, device="cuda", generator=g)
    if grouped:
        bias = torch.randn(e, device="cuda", generator=g) * 0.1
        topk = mc.select_experts(x, logits, k, scoring_func="sigmoid", use_grouped_topk=True, num_expert_group=8,
                                 topk_group=4, e_score_correction_bias=bias, routed_scaling_factor=2.5,
                                 backend="reference")
    else:
        topk = mc.select_experts(x, logits, k, backend="reference")
    outs = [mc.fused_experts(x, q1, q2, *topk, backend="vllm", quant_config=qc) for _ in range(repeats)]
    refs = {}
    original = ref_experts._wna16_cuda_gemm
    try:
        for mode in ("exact", "k_order"):
            ref_experts._wna16_cuda_gemm = functools.partial(original, slice_sum=mode)
            refs[mode] = mc.fused_experts(x, q1, q2, *topk, backend="reference", numerics="vllm", quant_config=qc)
    finally:
        ref_experts._wna16_cuda_gemm = original
    torch.cuda.synchronize()
    spread = [_rel(o, outs[0]) for o in outs[1:]]
    distinct = len({o.view(torch.int16).cpu().numpy().tobytes() for o in outs})
    return dict(shape=shape, tokens=tokens, repeats=repeats, distinct_engine_outputs=distinct,
                engine_spread_max=max(spread, default=0.0),
                err_exact=[_rel(o, refs["exact"]) for o in outs],
                err_k_order=[_rel(o, refs["k_order"]) for o in outs],
                exact_vs_k_order=_rel(refs["exact"], refs["k_order"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="wna16-probe.json")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for shape in SHAPES:
        for tokens in (1, 7, 64):
            r = _case(shape, tokens, args.repeats)
            rows.append(r)
            print(f"{shape:14} {tokens:4} distinct={r['distinct_engine_outputs']} spread={r['engine_spread_max']:.2e} "
                  f"exact={max(r['err_exact']):.2e} k_order={max(r['err_k_order']):.2e} "
                  f"exact_vs_k_order={r['exact_vs_k_order']:.2e}", flush=True)
    meta = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    try:
        import vllm

        meta["vllm"] = vllm.__version__
    except ImportError:
        pass
    with open(args.out, "w") as fh:
        json.dump(dict(meta=meta, cases=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
