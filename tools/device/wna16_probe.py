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
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import moecompat as mc
from moecompat.reference import experts as ref_experts
from tests.gpu.test_kernels import SHAPES, _rel, _routing, _weights


def _case(shape: str, tokens: int, repeats: int) -> dict:
    """The suite's own int4 case (its weights, scales and routing) at ``tokens``."""
    q1, q2, qc, dtype = _weights(shape, "int4_w4a16", "int4_w4a16", {"group_size": 128})
    x, topk = _routing(shape, tokens, dtype)
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
