#!/usr/bin/env python3
"""Which arithmetic does an fp8 ``tl.dot`` chain (``acc = tl.dot(a, b, acc=acc)``) do on this GPU?

vLLM's and SGLang's Triton MoE kernels accumulate fp8 per-tensor and per-channel GEMMs this way,
the whole K loop inside the tensor cores. This runs that loop on random e4m3 data (as the MoE
kernel lays it out: ``b`` is ``[N, K]``) for several tile shapes, and compares the float32 results
with software models of the accumulation, exactly (fraction of bit-equal outputs) and as the GPU
suite measures (relative Frobenius error)::

    python3 tools/device/fp8_acc_probe.py --json OUT.json

Models (products of e4m3 codes are exact; sums of ``group`` consecutive products at a time):

* ``fp32``: float32 sums, K order (the reference's own arithmetic);
* ``truncsum(g, b)``: ``acc = RZ_b(acc + sum of g products)`` (the model rejected in docs/gpu.md);
* ``aligned(g, f, r)``: the accumulator and the ``g`` products aligned to the largest exponent
  among them, each truncated toward zero to ``f`` bits below it, added exactly, the sum rounded to
  float32 (``r``: ``rz`` or ``rn``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import triton
import triton.language as tl


@triton.jit
def _dot_chain(a_ptr, b_ptr, c_ptr, K, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * K + offs_k[None, :]
    b_ptrs = b_ptr + offs_n[None, :] * K + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        acc = tl.dot(tl.load(a_ptrs), tl.load(b_ptrs), acc=acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    tl.store(c_ptr + offs_m[:, None] * N + offs_n[None, :], acc)


def kernel(a8: torch.Tensor, b8: torch.Tensor, bm: int, bn: int, bk: int) -> torch.Tensor:
    m, k = a8.shape
    n = b8.shape[0]
    c = torch.empty(m, n, device=a8.device, dtype=torch.float32)
    _dot_chain[(n // bn, m // bm)](a8, b8, c, k, n, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    return c


def _round32(s: torch.Tensor, mode: str) -> torch.Tensor:
    r = s.float()
    if mode == "rz":
        over = r.double().abs() > s.abs()
        r = torch.where(over, torch.nextafter(r, torch.zeros_like(r)), r)
    return r


def _rz_bits(v: torch.Tensor, bits: int) -> torch.Tensor:
    return (v.view(torch.int32) & ~((1 << (23 - bits)) - 1)).view(torch.float32)


def model_fp32(p: torch.Tensor) -> torch.Tensor:
    acc = torch.zeros(p.shape[:2], device=p.device, dtype=torch.float32)
    for j in range(p.shape[2]):
        acc = acc + p[:, :, j].float()
    return acc


def model_truncsum(p: torch.Tensor, g: int, bits: int) -> torch.Tensor:
    acc = torch.zeros(p.shape[:2], device=p.device, dtype=torch.float32)
    for j in range(0, p.shape[2], g):
        acc = _rz_bits(_round32(acc.double() + p[:, :, j:j + g].sum(-1), "rn"), bits)
    return acc


def model_aligned(p: torch.Tensor, g: int, f: int, mode: str) -> torch.Tensor:
    acc = torch.zeros(p.shape[:2], device=p.device, dtype=torch.float32)
    for j in range(0, p.shape[2], g):
        terms = torch.cat([acc.double()[..., None], p[:, :, j:j + g]], -1)
        _, e = torch.frexp(terms)
        e = torch.where(terms == 0, torch.full_like(e, -10000), e)
        ulp = torch.ldexp(torch.ones_like(terms[..., :1]), e.max(-1, keepdim=True).values - 1 - f)
        acc = _round32((torch.trunc(terms / ulp) * ulp).sum(-1), mode)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--k", type=int, nargs="+", default=[2048, 3584])
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    out: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                 "cases": []}
    m, n = 64, 64
    for k in args.k:
        a = torch.randn(m, k, device=dev)
        b = torch.randn(n, k, device=dev) * 0.05
        a8 = (a * (448 / a.abs().max())).to(torch.float8_e4m3fn)
        b8 = (b * (448 / b.abs().max())).to(torch.float8_e4m3fn)
        p = a8.double()[:, None, :] * b8.double()[None, :, :]  # [M, N, K], exact
        exact = p.sum(-1)
        kernels = {}
        for bm, bk in [(64, 128), (16, 128), (64, 64), (16, 64), (32, 256)]:
            if k % bk == 0:
                kernels[f"bm{bm}_bk{bk}"] = kernel(a8, b8, bm, 64, bk)
        ref_name = "bm64_bk128"
        hw = kernels[ref_name]
        case = {"k": k, "kernels_equal": {kk: bool(torch.equal(v, hw)) for kk, v in kernels.items()},
                "kernel_vs_exact_rel": float((hw.double() - exact).norm() / exact.norm()), "models": []}
        models = [("fp32", lambda p=p: model_fp32(p))]
        models += [(f"truncsum({g},{bits})", lambda g=g, bits=bits, p=p: model_truncsum(p, g, bits))
                   for g, bits in itertools.product([8, 16, 32, 64], [12, 13, 14, 23])]
        models += [(f"aligned({g},{f},{r})", lambda g=g, f=f, r=r, p=p: model_aligned(p, g, f, r))
                   for g, f, r in itertools.product([4, 8, 16, 32], range(10, 27), ["rz", "rn"])]
        t0 = time.time()
        for name, fn in models:
            y = fn()
            case["models"].append({
                "model": name,
                "equal": float((y == hw).float().mean()),
                "rel_vs_kernel": float((y.double() - hw.double()).norm() / hw.double().norm()),
                "per_kernel_equal": {kk: float((y == v).float().mean()) for kk, v in kernels.items()},
            })
        case["models"].sort(key=lambda r: (-r["equal"], r["rel_vs_kernel"]))
        case["sweep_s"] = round(time.time() - t0, 1)
        out["cases"].append(case)
        print(f"K={k}: kernels equal {case['kernels_equal']}; kernel vs exact {case['kernel_vs_exact_rel']:.2e}")
        for r in case["models"][:8]:
            print(f"  {r['model']:22} equal {r['equal']:.4f}  rel {r['rel_vs_kernel']:.2e}  {r['per_kernel_equal']}")
        fp = next(r for r in case["models"] if r["model"] == "fp32")
        print(f"  {'fp32':22} equal {fp['equal']:.4f}  rel {fp['rel_vs_kernel']:.2e}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
