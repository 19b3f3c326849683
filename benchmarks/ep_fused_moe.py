"""Expert-parallel fused MoE across processes: each rank owns its experts (make_expert_map),
runs moecompat.fused_experts with the expert map, and the ranks combine with all-reduce.

The combined output must equal the single-rank result (checked on rank 0). One process per
rank (torch.multiprocessing); gloo on CPU, NCCL on GPUs (NVLink multicast stays off:
NCCL_NVLS_ENABLE=0 is set here).

    python benchmarks/ep_fused_moe.py --world-size 2 --device cpu --shape tiny --dtype bf16
    python benchmarks/ep_fused_moe.py --world-size 2 --device cuda --shape mixtral --tokens 1 64 1024 4096 --json ep.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SHAPES = {  # E, top_k, H, I, grouped routing
    "tiny": (8, 2, 64, 32, False),
    "mixtral": (8, 2, 4096, 14336, False),
    "deepseek-like": (256, 8, 2048, 512, True),
    "deepseek-tiny": (32, 4, 128, 64, True),
}
# Relative error of the all-reduced result vs one rank. Unquantized: only the order of the final
# sum and the bf16 rounding of each rank's partial output differ (2e-2 bf16, 1e-5 fp32).
# fp8_w8a8 with dynamic per-tensor activation scales: each rank computes the scale of the second
# GEMM's input over its own tokens only, as an EP deployment does, so the fp8 rounding differs
# from the single-rank run (3 mantissa bits: ~2-3% rms) -> 6e-2.
TOL = {"bf16": 2e-2, "fp32": 1e-5, "fp8_w8a8": 6e-2}


def _problem(shape: str, dtype_name: str, device: str, seed: int = 0):
    import moecompat as mc

    e, k, h, i, grouped = SHAPES[shape]
    act = torch.float32 if device == "cpu" and dtype_name == "fp32" else torch.bfloat16
    g = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(e, 2 * i, h, device=device, generator=g) / h**0.5
    w2 = torch.randn(e, h, i, device=device, generator=g) / i**0.5
    if dtype_name in ("bf16", "fp32"):
        return w1.to(act), w2.to(act), None, act
    w1q, w2q, qc = mc.quant.quantize_moe_weights(w1, w2, dtype_name)
    return w1q, w2q, qc, act


def _worker(rank: int, args: argparse.Namespace, init: str, out_path: str) -> None:
    import moecompat as mc
    from moecompat.ep import shard_experts

    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo", init_method=init, rank=rank, world_size=args.world_size)
    e, k, h, _, grouped = SHAPES[args.shape]
    w1, w2, qc, act = _problem(args.shape, args.dtype, device)
    n_local, emap = mc.make_expert_map(args.world_size, rank, e, args.placement, backend="reference")
    emap = emap.to(device)
    lw1, lw2, lqc = shard_experts(w1, w2, qc, emap)
    rows = []
    for tokens in args.tokens:
        g = torch.Generator(device=device).manual_seed(1000 + tokens)
        x = torch.randn(tokens, h, device=device, generator=g).to(act)
        logits = torch.randn(tokens, e, device=device, generator=g)
        route = dict(use_grouped_topk=True, num_expert_group=8 if e >= 64 else 4, topk_group=2, scoring_func="sigmoid") if grouped else {}
        topk = mc.select_experts(x, logits, k, backend="reference", **route)

        def step(x=x, topk=topk):
            y = mc.fused_experts(x, lw1, lw2, *topk, quant_config=lqc, expert_map=emap, backend=args.backend)
            y32 = y.float()
            dist.all_reduce(y32)
            return y32

        combined = step()
        single = mc.fused_experts(x, w1, w2, *topk, quant_config=qc, backend=args.backend).float() if rank == 0 else None
        ms = None
        if args.time:
            for _ in range(3):
                step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                step()
            if args.device == "cuda":
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) * 1e3 / args.repeats
        if rank == 0:
            err = ((combined - single).norm() / single.norm().clamp(min=1e-12)).item()
            rows.append({"tokens": tokens, "rel_err": err, "tol": TOL[args.dtype], "ok": err <= TOL[args.dtype], "ms_per_step": ms})
    if rank == 0:
        with open(out_path, "w") as fh:
            json.dump({"world_size": args.world_size, "device": args.device, "shape": args.shape, "dtype": args.dtype,
                       "placement": args.placement, "backend": args.backend, "rows": rows,
                       "torch": torch.__version__, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None}, fh)
    dist.destroy_process_group()


def run(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp8_w8a8"])
    ap.add_argument("--placement", default="linear", choices=["linear", "round_robin"])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 7, 64])
    ap.add_argument("--time", action="store_true", help="also time each all-reduced step")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{tmp}/rendezvous"
        out = os.path.join(tmp, "result.json")
        mp.spawn(_worker, args=(args, init, out), nprocs=args.world_size, join=True)
        with open(out) as fh:
            result = json.load(fh)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    for r in result["rows"]:
        t = f"{r['ms_per_step']:.3f} ms" if r["ms_per_step"] is not None else "-"
        print(f"world {args.world_size} {args.shape} {args.dtype} {args.placement} T={r['tokens']:5d} "
              f"rel_err {r['rel_err']:.2e} (tol {r['tol']:.0e}) {'ok' if r['ok'] else 'FAIL'} {t}")
    return result


if __name__ == "__main__":
    res = run()
    sys.exit(0 if all(r["ok"] for r in res["rows"]) else 1)
