"""Which emulation of the GPU's arithmetic brings the faithful reference closest to the engine.

    python tools/device/numerics_sweep.py --engine vllm [--json out.json]

For the cases where the faithful reference is furthest from the engine (fp8 per-tensor and
per-channel dots, which sm_90 tensor cores accumulate in reduced precision; small int4 batches,
which vLLM runs through its CUDA wna16 kernel), prints the relative error of the engine against
the reference under each variant of those rules, side by side in one run. The chosen defaults
(``moecompat.reference.numerics.SM90_FP8_ACCUMULATION``) are the ones this sweep supports;
docs/gpu.md keeps its figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

import moecompat as mc
from moecompat.api import resolve_numerics
from tests.gpu.test_kernels import SCHEMES, _rel, _routing, _weights

FP8_VARIANTS = [None, (32, 12), (32, 13), (32, 14), (16, 13), (64, 13), (128, 13)]
CASES = [("mixtral-like", "fp8-tensor", 64), ("mixtral-like", "fp8-tensor", 257), ("mixtral-like", "fp8-channel", 257),
         ("deepseek-like", "fp8-tensor", 64), ("deepseek-like", "fp8-channel", 257)]
INT4_CASES = [("mixtral-like", 1), ("mixtral-like", 7), ("deepseek-like", 7), ("deepseek-like", 64), ("mixtral-like", 257)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    base = resolve_numerics(args.engine, "reference")
    schemes = {s[0]: s for s in SCHEMES}
    rows = []
    print(f"{args.engine}: {base.name} on {torch.cuda.get_device_name(0)}")
    for shape, name, tokens in CASES:
        _, scheme, opts = schemes[name]
        w1, w2, qc, dtype = _weights(shape, name, scheme, opts)
        x, topk = _routing(shape, tokens, dtype)
        out = mc.fused_experts(x, w1, w2, *topk, quant_config=qc, backend=args.engine)
        line = []
        for v in FP8_VARIANTS:
            num = dataclasses.replace(base, fp8_tensor_core_accumulation=v)
            ref = mc.fused_experts(x, w1, w2, *topk, quant_config=qc, backend="reference", numerics=num)
            err = _rel(out, ref)
            rows.append(dict(shape=shape, scheme=name, tokens=tokens, fp8_accumulation=v, rel_err=err))
            line.append(f"{v}: {err:.2e}")
        print(f"{shape:>13} {name:>11} {tokens:>5}  " + "  ".join(line))
    _, scheme, opts = schemes["int4_w4a16"]
    variants = {
        "plain": dataclasses.replace(base, round_dequantized_group_weights=False, wna16_cuda_block_k=None),
        "rounded weights": dataclasses.replace(base, wna16_cuda_block_k=None),
        "rounded weights + wna16 CUDA kernel": base,
    }
    for shape, tokens in INT4_CASES:
        w1, w2, qc, dtype = _weights(shape, "int4_w4a16", scheme, opts)
        x, topk = _routing(shape, tokens, dtype)
        out = mc.fused_experts(x, w1, w2, *topk, quant_config=qc, backend=args.engine)
        line = []
        for label, num in variants.items():
            ref = mc.fused_experts(x, w1, w2, *topk, quant_config=qc, backend="reference", numerics=num)
            err = _rel(out, ref)
            rows.append(dict(shape=shape, scheme="int4_w4a16", tokens=tokens, variant=label, rel_err=err))
            line.append(f"{label}: {err:.2e}")
        print(f"{shape:>13} {'int4_w4a16':>11} {tokens:>5}  " + "  ".join(line))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"gpu": torch.cuda.get_device_name(0), "engine": args.engine, "numerics": base.name,
                       "torch": torch.__version__, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
