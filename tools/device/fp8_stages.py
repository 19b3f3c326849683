#!/usr/bin/env python3
"""Where does an engine's fp8 per-tensor ``fused_experts`` part from the faithful reference?

The GPU suite's fp8 per-tensor cases sit at about 1e-2 from the engine-faithful reference at
every token count, ten times the block-fp8 cases. This runs the suite's Mixtral-like fp8
per-tensor case (same weights and routing as tests/gpu/test_kernels.py) in variants that take one
source of disagreement away at a time, and prints engine-vs-faithful for each::

    python3 tools/device/fp8_stages.py --engine vllm [--json OUT.json]

| variant | what it removes |
|---|---|
| ``dynamic`` | nothing (the suite's case) |
| ``x-on-grid`` | the first quantization's rounding (the input already lies on its fp8 grid) |
| ``static-both`` | both scales fixed (moecompat takes static scales for both or neither) |
| ``x-on-grid+static`` | both: the input on its grid, the second scale fixed |

A variant that brings the error down to the block-fp8 level names the stage to model.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import moecompat as mc
from moecompat import quant
from moecompat.api import resolve_numerics
from tests.gpu.test_kernels import _rel, _routing, _weights


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 64, 257, 1024])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    w1, w2, qc, dtype = _weights("mixtral-like", "fp8-tensor", "fp8_w8a8", {})
    rules = resolve_numerics(args.engine, "reference").activation_quant
    rows = []
    for tokens in args.tokens:
        x, topk = _routing("mixtral-like", tokens, dtype)
        q, s = quant.quantize_activation(x, "fp8_w8a8", rules=rules)
        x_grid = (q.float() * s.float()).to(dtype)
        a1 = (x.float().abs().amax() / 448).reshape(1)
        # A fixed second scale: the gated activation of these N(0, 1) GEMM outputs stays far below 64.
        a2 = torch.full((1,), 64 / 448, device=x.device)
        variants = {
            "dynamic": (x, qc),
            "x-on-grid": (x_grid, qc),
            "static-both": (x, mc.make_quant_config("fp8_w8a8", w1_scale=qc.w1_scale, w2_scale=qc.w2_scale,
                                                     a1_scale=a1, a2_scale=a2)),
            "x-on-grid+static": (x_grid, mc.make_quant_config("fp8_w8a8", w1_scale=qc.w1_scale, w2_scale=qc.w2_scale,
                                                              a1_scale=s.float().reshape(1), a2_scale=a2)),
        }
        for name, (xv, qv) in variants.items():
            out = mc.fused_experts(xv, w1, w2, *topk, quant_config=qv, backend=args.engine)
            faithful = mc.fused_experts(xv, w1, w2, *topk, quant_config=qv, backend="reference", numerics=args.engine)
            ideal = mc.fused_experts(xv, w1, w2, *topk, quant_config=qv, backend="reference")
            row = dict(tokens=tokens, variant=name, engine_vs_faithful=_rel(out, faithful), engine_vs_ideal=_rel(out, ideal),
                       faithful_vs_ideal=_rel(faithful, ideal))
            rows.append(row)
            print(f"{tokens:5} {name:12} engine-faithful {row['engine_vs_faithful']:.2e}  engine-ideal "
                  f"{row['engine_vs_ideal']:.2e}  faithful-ideal {row['faithful_vs_ideal']:.2e}", flush=True)
    if args.engine == "vllm":
        try:
            from vllm import _custom_ops as ops

            x, _ = _routing("mixtral-like", 257, dtype)
            qe, se = ops.scaled_fp8_quant(x, None)
            qm, sm = quant.quantize_activation(x, "fp8_w8a8", rules=rules)
            codes = (qe.view(torch.uint8) != qm.view(torch.uint8)).float().mean().item()
            rows.append(dict(stage="scaled_fp8_quant vs moecompat", scale_engine=se.item(), scale_moecompat=sm.item(),
                             code_mismatch=codes))
            print(f"scaled_fp8_quant: scale {se.item():.9g} vs {sm.item():.9g}; codes differ in {codes:.2e}")
        except Exception as exc:  # a diagnostic: say why, go on
            print("scaled_fp8_quant check skipped:", repr(exc))
    if args.json:
        info = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__, engine=args.engine, rows=rows)
        pathlib.Path(args.json).write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
