"""Command line: ``moecompat doctor`` (and the tools added on top of it)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from .errors import MoECompatWarning

__all__ = ["main"]


def _doctor(args: argparse.Namespace) -> int:
    from .info import doctor_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MoECompatWarning)
        report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
        return 0
    out = []
    out.append(f"moecompat {report['moecompat']}  python {report['python']}  torch {report['torch']}  triton {report['triton'] or '-'}")
    dev = report["cuda_device"]
    out.append(f"CUDA device: {dev} (sm {'.'.join(map(str, report['cuda_capability']))})" if dev else "CUDA device: none")
    eng = report["engines"]
    out.append("engines: " + ", ".join(f"{k} {v or '-'}" for k, v in eng.items()))
    for name in report["untested_engines"]:
        out.append(f"warning: {name} is newer or older than the versions moecompat was tested with; known signatures are used where they match")
    for w in caught:
        out.append(f"warning: {w.message}")
    out.append("")
    out.append(f"{'entry point':<22} {'backend':<10} {'status':<12} resolved / detail")
    for ep, per_backend in report["entry_points"].items():
        auto = report["auto_backend"][ep]["cuda"]
        for backend, r in per_backend.items():
            mark = "*" if backend == auto else " "
            if r["status"] == "ok":
                what = f"{r['resolved']} [{r['variant']}]"
            else:
                what = r["detail"] or ""
            out.append(f"{ep:<22} {backend + mark:<10} {r['status']:<12} {what}")
    out.append("")
    out.append("* = what backend='auto' uses on CUDA tensors (CPU tensors use the reference backend)")
    print("\n".join(out))
    return 0


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    from .bench import DTYPES, PRESETS

    src = p.add_argument_group("model shape (one of)")
    src.add_argument("--model", help="a Hugging Face config.json, or a folder holding one (read locally)")
    src.add_argument("--preset", help=f"built-in shape: {', '.join(PRESETS)}")
    src.add_argument("--num-experts", type=int)
    src.add_argument("--top-k", type=int)
    src.add_argument("--hidden-size", type=int)
    src.add_argument("--intermediate-size", type=int)
    p.add_argument("--engine", default="auto", choices=["auto", "vllm", "sglang", "reference"])
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--ep-size", type=int, default=1)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per visible GPU)")
    p.add_argument("--ray", action="store_true", help="spread the work over a Ray cluster (RAY_ADDRESS or a local one)")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecompat", description="Stable MoE API over vLLM and SGLang versions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="show versions and how every entry point resolves (paste into bug reports)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_doctor)
    b = sub.add_parser("bench", help="time fused MoE for a model shape over batch sizes")
    _add_shape_args(b)
    b.add_argument("--out", default="moecompat-bench", help="results path without suffix (.json and .csv are written)")
    b.set_defaults(func=_bench)
    t = sub.add_parser("tune", help="search Triton configs and write the engine's own tuned-config file")
    _add_shape_args(t)
    t.add_argument("--strategy", default="smart", choices=["smart", "exhaustive", "both"])
    t.add_argument("--time-budget", type=float, default=None, help="stop the exhaustive search after this many seconds")
    t.add_argument("--grid", default="full", choices=["full", "small"], help="config grid to search (small: 432 configs)")
    t.add_argument("--config-dir", default=None,
                   help="folder for the config file (default: the engine's own package folder)")
    t.add_argument("--out", default="moecompat-tune", help="tuning report path without suffix")
    t.set_defaults(func=_tune)
    pl = sub.add_parser("plot", help="PNG plots of bench/tune results (or a tracker JSON heatmap)")
    pl.add_argument("results", nargs="+", help="results .json files written by bench/tune (or tracker JSON)")
    pl.add_argument("--out-dir", default=".")
    pl.set_defaults(func=_plot)
    return parser


def _shape(args: argparse.Namespace):
    from .bench import PRESETS, MoEShape, shape_from_config
    from .errors import InvalidInputError

    explicit = (args.num_experts, args.top_k, args.hidden_size, args.intermediate_size)
    chosen = sum(x is not None for x in (args.model, args.preset)) + (any(v is not None for v in explicit))
    if chosen != 1:
        raise InvalidInputError("model shape", "exactly one of --model, --preset or the four explicit sizes", f"{chosen} given")
    if args.model:
        shape = shape_from_config(args.model)
    elif args.preset:
        if args.preset not in PRESETS:
            raise InvalidInputError("--preset", f"one of {', '.join(PRESETS)}", repr(args.preset))
        shape = PRESETS[args.preset]
    else:
        if any(v is None or v < 1 for v in explicit):
            raise InvalidInputError("--num-experts/--top-k/--hidden-size/--intermediate-size", "four positive integers", explicit)
        shape = MoEShape(*explicit)
    if any(b < 1 for b in args.batch_size):
        raise InvalidInputError("--batch-size", "positive integers", args.batch_size)
    return shape.shard(args.tp_size, args.ep_size)


def _device(args: argparse.Namespace) -> str:
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _engine(args: argparse.Namespace, device: str) -> str:
    from .backends import auto_backend
    from .engines import ENGINES
    from .errors import UnsupportedFeatureError

    if args.engine == "auto":
        return auto_backend("fused_experts", device.startswith("cuda"))[0]
    if args.engine != "reference":
        eng = ENGINES[args.engine]
        if eng.version() is None:
            raise UnsupportedFeatureError(args.engine, None, "bench/tune", detail="the engine is not installed")
    return str(args.engine)


def _bench_task(payload: dict) -> list[dict]:
    from .bench import MoEShape, run_bench

    shape = MoEShape(**payload["shape"])
    return [r.as_dict() for r in run_bench(shape, payload["dtype"], payload["batch_sizes"], payload["backend"],
                                           payload["device"], payload["seed"], payload.get("progress", False))]


def _meta(args: argparse.Namespace, backend: str, device: str, shape) -> dict:
    import dataclasses

    from .info import engine_info

    info = engine_info()
    return {"command": args.command, "backend": backend, "device": device, "gpu": info.cuda_device, "shape": dataclasses.asdict(shape),
            "dtype": args.dtype, "tp_size": args.tp_size, "ep_size": args.ep_size, "torch": str(info.torch),
            "triton": str(info.triton) if info.triton else None,
            "engine_version": str(getattr(info, backend)) if backend in ("vllm", "sglang") else None, "moecompat": info.moecompat}


def _workers(args: argparse.Namespace, device: str) -> int:
    import torch

    if args.workers is not None:
        return max(1, args.workers)
    return max(1, torch.cuda.device_count()) if device.startswith("cuda") else 1


def _bench(args: argparse.Namespace) -> int:
    import dataclasses

    from . import _workers as workers
    from .bench import write_results

    shape = _shape(args)
    device = _device(args)
    backend = _engine(args, device)
    payload = {"shape": dataclasses.asdict(shape), "dtype": args.dtype, "backend": backend, "device": device,
               "seed": args.seed, "progress": args.progress}
    rows = workers.run(_bench_task, payload, args.batch_size, _workers(args, device), args.ray)
    rows.sort(key=lambda r: r["batch_size"])
    jpath, cpath = write_results(rows, args.out, _meta(args, backend, device, shape))
    print(f"{'batch':>6} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>8} {'BW share':>8}")
    for r in rows:
        share = f"{r['bandwidth_share']:.0%}" if r["bandwidth_share"] is not None else "-"
        gbs = f"{r['gbs']:.0f}" if r["gbs"] is not None else "-"
        print(f"{r['batch_size']:>6} {r['latency_ms']:>9.4f} {r['tflops']:>8.1f} {gbs:>8} {share:>8}")
    print(f"wrote {jpath} and {cpath}")
    return 0


def _tune_task(payload: dict) -> list[dict]:
    import functools
    import json
    import time

    from .bench import MoEShape, bench_one, make_problem
    from .tune import GRIDS, default_config, exhaustive_search, search_space, smart_search, timed

    shape = MoEShape(**payload["shape"])
    backend, device, dtype = payload["backend"], payload["device"], payload["dtype"]
    block = [128, 128] if dtype == "fp8_w8a8_block" else None
    problem = make_problem(shape, dtype, device, payload["seed"])
    space = search_space(dtype, block, grid=GRIDS[payload.get("grid", "full")])
    n, k = shape.intermediate_size, shape.hidden_size

    def evaluate(cfg: dict, batch: int) -> float:
        return bench_one(shape, dtype, batch, backend, device, payload["seed"], problem, config=cfg, repeats=5).latency_ms

    def starts(batch: int) -> list[dict]:
        d = default_config(backend, batch, shape.num_experts, 2 * n, k, shape.top_k, dtype, block)
        return [d] if d else []

    out = []
    batches = payload["batch_sizes"]
    default_ms = {b: bench_one(shape, dtype, b, backend, device, payload["seed"], problem).latency_ms for b in batches}
    for strategy in (["smart", "exhaustive"] if payload["strategy"] == "both" else [payload["strategy"]]):
        if strategy == "smart":
            (res, n_cfg), wall = timed(lambda: smart_search(evaluate, space, batches, top_k=shape.top_k,
                                                            num_experts=shape.num_experts, starts=starts))
        else:
            budget = payload.get("time_budget")
            deadline = time.monotonic() + budget if budget else None
            (res, n_cfg), wall = timed(functools.partial(exhaustive_search, evaluate, space, batches, deadline=deadline))
        for b, r in res.items():
            out.append({"strategy": strategy, "batch_size": b, "best": r.best, "best_ms": r.best_ms,
                        "default_ms": default_ms[b], "configs_timed": n_cfg, "wall_s": wall, "space": len(space),
                        "evaluated": r.evaluated, "complete": strategy == "smart" or r.evaluated == len(space)})
        if payload.get("partial"):
            with open(payload["partial"], "w") as fh:
                json.dump(out, fh, indent=1)
    return out


def _tune(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from . import _workers as workers
    from .tune import check_tunable, write_engine_config

    shape = _shape(args)
    device = _device(args)
    backend = _engine(args, device)
    check_tunable(backend)
    payload = {"shape": dataclasses.asdict(shape), "dtype": args.dtype, "backend": backend, "device": device,
               "seed": args.seed, "strategy": args.strategy, "grid": args.grid, "time_budget": args.time_budget,
               "partial": f"{args.out}.partial.json"}
    rows = workers.run(_tune_task, payload, args.batch_size, _workers(args, device), args.ray)
    final = "smart" if args.strategy in ("smart", "both") else "exhaustive"
    best = {r["batch_size"]: (r["best"] if r["best_ms"] <= r["default_ms"] else None, r) for r in rows if r["strategy"] == final}
    # Never slower than the default: where no config beat it, keep the engine's default config.
    from .tune import default_config

    block = [128, 128] if args.dtype == "fp8_w8a8_block" else None
    chosen = {}
    for b, (cfg, r) in sorted(best.items()):
        chosen[b] = cfg or default_config(backend, b, shape.num_experts, 2 * shape.intermediate_size,
                                          shape.hidden_size, shape.top_k, args.dtype, block) or r["best"]
    path, env = write_engine_config(chosen, shape.num_experts, shape.intermediate_size, args.dtype, block, backend, args.config_dir)
    report = {"meta": _meta(args, backend, device, shape), "config_file": str(path), "env": env, "results": rows}
    with open(f"{args.out}.json", "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"{'strategy':>10} {'batch':>6} {'default ms':>11} {'tuned ms':>9} {'speed-up':>8} {'configs':>8} {'wall s':>7} complete")
    for r in sorted(rows, key=lambda r: (r["strategy"], r["batch_size"])):
        up = r["default_ms"] / r["best_ms"] - 1 if r["best_ms"] else 0.0
        print(f"{r['strategy']:>10} {r['batch_size']:>6} {r['default_ms']:>11.4f} {r['best_ms']:>9.4f} {up:>8.1%} "
              f"{r['configs_timed']:>8} {r['wall_s']:>7.1f} {r.get('complete', True)}")
    extra = " ".join(f"{k}={v}" for k, v in env.items())
    print(f"wrote {path}" + (f" (the engine finds it with {extra})" if extra else "") + f" and {args.out}.json")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plot import plot_files

    for path in plot_files(args.results, args.out_dir):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import MoECompatError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MoECompatError as exc:
        print(f"moecompat {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
