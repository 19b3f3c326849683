"""Command line: ``moecompat doctor``, ``bench``, ``tune``, ``plot`` and ``wheelhouse``.

Every user error and every missing optional dependency ends in one line on stderr that says
what to do, and exit status 2 (never a traceback); ``moecompat doctor --json`` writes exactly one
JSON document to stdout, whatever the engines print while they import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from ._version import __version__
from .engines._specs import ENGINE_NAMES
from .errors import MoECompatWarning

__all__ = ["build_parser", "main"]

EXTRAS = ("Optional extras: pip install 'moecompat[bench]' (matplotlib, tqdm: plots and progress bars), "
          "'moecompat[ray]' (--ray), 'moecompat[loader]' (safetensors checkpoints).")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout inside the block to stderr: Python writes (an engine's
    logging handler bound to ``sys.stdout`` at import) and C-level writes to file descriptor 1."""
    sys.stdout.flush()
    saved_fd = None
    try:
        saved_fd = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real descriptors (embedded interpreters): Python-level only
        saved_fd = None
    saved, sys.stdout = sys.stdout, sys.stderr
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stdout = saved
        if saved_fd is not None:
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _doctor(args: argparse.Namespace) -> int:
    from .info import doctor_report

    with warnings.catch_warnings(record=True) as caught, _stdout_to_stderr():
        warnings.simplefilter("always", MoECompatWarning)
        report = doctor_report()
    if args.json:
        report["warnings"] = [str(w.message) for w in caught]
        sys.stdout.write(json.dumps(report, indent=2, sort_keys=False) + "\n")
        return 0
    out = []
    out.append(f"moecompat {report['moecompat']}  python {report['python']}  torch {report['torch']}  triton {report['triton'] or '-'}")
    dev = report["cuda_device"]
    out.append(f"CUDA device: {dev} (sm {'.'.join(map(str, report['cuda_capability']))})" if dev else "CUDA device: none")
    eng = report["engines"]
    out.append("engines: " + ", ".join(f"{k} {v or '-'}" for k, v in eng.items()))
    for name in report["untested_engines"]:
        engine = name.split()[0]
        out.append(f"warning: {name} is outside the tested releases ({report['tested'].get(engine, '?')}); known "
                   "call forms are used where they match, and what does not match is reported as drift below")
    for key, notes in report["drift"].items():
        for note in notes:
            out.append(f"drift: {key}: {note}")
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
    out.append("* = what backend='auto' uses on CUDA tensors (CPU tensors use the reference backend); "
               "drift = the installed release contradicts moecompat's facts (MOECOMPAT_STRICT=1 makes it an error)")
    print("\n".join(out))
    return 0


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show every option's default, keep the epilogs' line breaks. An option whose help already
    says its default in words (a default computed at run time), and an option without a default,
    keep their own wording only."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and ("(default:" in action.help or action.default is None):
            return action.help
        return super()._get_help_string(action)


def _add_shape_args(p: argparse.ArgumentParser) -> None:
    from .bench import DTYPES, PRESETS

    src = p.add_argument_group("model shape (exactly one of: --model, --preset, or the four sizes)")
    src.add_argument("--model", help="a Hugging Face config.json, or a folder holding one (read locally, no download)")
    src.add_argument("--preset", help=f"built-in shape: {', '.join(PRESETS)}")
    src.add_argument("--num-experts", type=int, help="experts of the layer (E)")
    src.add_argument("--top-k", type=int, help="experts per token (k)")
    src.add_argument("--hidden-size", type=int, help="hidden size (H)")
    src.add_argument("--intermediate-size", type=int, help="expert intermediate size (I)")
    p.add_argument("--engine", default="auto", choices=["auto", "reference", *ENGINE_NAMES],
                   help="backend to run: an engine, moecompat's reference, or auto (the first installed engine on "
                   "CUDA, the reference on CPU)")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES),
                   help="weight precision: bf16/fp16, fp8_w8a8 (per-tensor), fp8_w8a8_block ([128, 128] blocks), "
                   "int8_w8a16, int4_w4a16 (group 128) or mxfp4_w4a16")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks: the intermediate size is split over them")
    p.add_argument("--ep-size", type=int, default=1, help="expert-parallel ranks: the experts are split over them")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
                   help="token counts to time")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: one per visible GPU)")
    p.add_argument("--ray", action="store_true", help="spread the work over a Ray cluster (RAY_ADDRESS or a local one; "
                   "needs moecompat[ray])")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress while it runs (default: on when stderr is a terminal; bars need moecompat[bench])")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecompat", description="Stable MoE API over vLLM and SGLang versions.",
                                     epilog=EXTRAS, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"moecompat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{doctor,bench,tune,plot,wheelhouse}")
    p = sub.add_parser("doctor", help="show versions and how every entry point resolves (paste into bug reports)",
                       description="Installed versions, the device, how every entry point resolves on every installed "
                       "backend, and any drift between an installed engine release and moecompat's facts.",
                       formatter_class=_Formatter)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.set_defaults(func=_doctor)
    b = sub.add_parser("bench", help="time fused MoE for a model shape over batch sizes",
                       description="Time the fused-MoE experts of a model shape on an engine (or the reference) over "
                       "batch sizes; CUDA-graph timing on GPUs, wall time on CPU.", epilog=EXTRAS, formatter_class=_Formatter)
    _add_shape_args(b)
    b.add_argument("--out", default="moecompat-bench", help="results path without suffix (.json and .csv are written)")
    b.set_defaults(func=_bench)
    t = sub.add_parser("tune", help="search Triton configs and write the engine's own tuned-config file",
                       description="Search the engine's fused-MoE Triton configs for each batch size and write them "
                       "in the engine's own file name and format, where its loader finds them.", epilog=EXTRAS,
                       formatter_class=_Formatter)
    _add_shape_args(t)
    t.add_argument("--strategy", default="smart", choices=["smart", "exhaustive", "both"],
                   help="smart: hill-climb from the engine's default config; exhaustive: every config; both: compare")
    t.add_argument("--time-budget", type=float, default=None, help="stop the exhaustive search after this many seconds")
    t.add_argument("--grid", default="full", choices=["full", "small"],
                   help="config grid: full (vLLM benchmark_moe.py's) or small (432 configs)")
    t.add_argument("--config-dir", default=None,
                   help="folder for the config file (default: the engine's own package folder)")
    t.add_argument("--out", default="moecompat-tune", help="tuning report path without suffix")
    t.set_defaults(func=_tune)
    pl = sub.add_parser("plot", help="PNG plots of bench/tune results (or a tracker JSON heatmap)",
                        description="Latency and bandwidth-share plots of bench/tune results, tuning speed-ups, and "
                        "expert-activation heatmaps of tracker JSON files (needs moecompat[bench]).",
                        formatter_class=_Formatter)
    pl.add_argument("results", nargs="+", help="results .json files written by bench/tune (or tracker JSON)")
    pl.add_argument("--out-dir", default=".", help="folder the PNG files are written to")
    pl.set_defaults(func=_plot)
    w = sub.add_parser("wheelhouse", help="download the wheels an offline (air-gapped) GPU machine needs for an engine",
                       description="Download an engine release, moecompat and their dependencies as wheels for a "
                       "target Python and platform, for pip install --no-index on a machine without network "
                       "(docs/offline.md).", formatter_class=_Formatter)
    w.add_argument("engine", choices=list(ENGINE_NAMES), help="the engine")
    w.add_argument("version", help="the engine release, e.g. 0.26.0")
    w.add_argument("--dest", default="wheelhouse", help="folder the wheels are written to")
    w.add_argument("--python-version", default="3.12", help="the target machine's Python (major.minor)")
    w.add_argument("--platform", action="append", default=None,
                   help="pip platform tag of the target (repeatable; default: the manylinux x86_64 tags)")
    w.add_argument("--extra", action="append", default=[], metavar="REQ",
                   help="one more requirement resolved with the engine, repeatable (e.g. 'sglang[srt]==VERSION' or a torch pin)")
    w.add_argument("--no-moecompat", action="store_true", help="leave moecompat and its dependencies out")
    w.add_argument("--dry-run", action="store_true", help="print the pip command instead of running it")
    w.set_defaults(func=_wheelhouse)
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

    from .errors import InvalidInputError

    if args.device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except (RuntimeError, TypeError):
        raise InvalidInputError("--device", "cpu, cuda or cuda:N", repr(args.device)) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidInputError("--device", "cpu (this machine has no usable CUDA device)", repr(args.device))
        if device.index is not None and device.index >= count:
            raise InvalidInputError("--device", f"cuda:0 .. cuda:{count - 1}", repr(args.device))
    elif device.type != "cpu":
        raise InvalidInputError("--device", "cpu, cuda or cuda:N", repr(args.device))
    return str(args.device)


def _engine(args: argparse.Namespace, device: str) -> str:
    from ._backends import auto_backend
    from .engines import ENGINES
    from .errors import EngineNotInstalledError

    if args.engine == "auto":
        return auto_backend("fused_experts", device.startswith("cuda"))[0]
    if args.engine != "reference":
        eng = ENGINES[args.engine]
        if eng.version() is None:
            raise EngineNotInstalledError(args.engine, args.command, eng.spec.get("install", args.engine))
    return str(args.engine)


def _importable(name: str) -> bool:
    import importlib

    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def _check_optional(args: argparse.Namespace) -> None:
    """Missing optional packages the options need: one clear error before any work starts."""
    from .errors import MissingDependencyError

    if args.ray and not _importable("ray"):
        raise MissingDependencyError("ray", "--ray", "ray")
    if args.progress and not _importable("tqdm"):
        raise MissingDependencyError("tqdm", "--progress", "bench")


def _progress(args: argparse.Namespace) -> bool:
    """--progress / --no-progress, else on when stderr is a terminal."""
    return args.progress if args.progress is not None else sys.stderr.isatty()


def _header(args: argparse.Namespace, backend: str, device: str, shape: Any) -> str:
    from .info import engine_info

    info = engine_info()
    version = getattr(info, backend, None) if backend != "reference" else None
    where = info.cuda_device if device.startswith("cuda") and info.cuda_device else device
    return (f"{shape.name}: E={shape.num_experts} top_k={shape.top_k} H={shape.hidden_size} I={shape.intermediate_size} "
            f"(tp {args.tp_size}, ep {args.ep_size})  dtype {args.dtype}  device {where}  "
            f"engine {backend}{' ' + str(version) if version else ''}  moecompat {__version__}")


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

    _check_optional(args)
    shape = _shape(args)
    device = _device(args)
    backend = _engine(args, device)
    print(_header(args, backend, device, shape))
    payload = {"shape": dataclasses.asdict(shape), "dtype": args.dtype, "backend": backend, "device": device,
               "seed": args.seed, "progress": _progress(args)}
    rows = workers.run(_bench_task, payload, args.batch_size, _workers(args, device), args.ray)
    rows.sort(key=lambda r: r["batch_size"])
    jpath, cpath = write_results(rows, args.out, _meta(args, backend, device, shape))
    print(f"{'batch':>6} {'ms':>10} {'TFLOP/s':>9} {'GB/s':>8} {'% peak':>7} {'% read':>7}")
    for r in rows:
        peak = f"{r['peak_share']:.0%}" if r.get("peak_share") is not None else "-"
        read = f"{r['read_share']:.0%}" if r.get("read_share") is not None else "-"
        gbs = f"{r['gbs']:.0f}" if r["gbs"] is not None else "-"
        print(f"{r['batch_size']:>6} {r['latency_ms']:>10.4f} {r['tflops']:>9.3g} {gbs:>8} {peak:>7} {read:>7}")
    if rows and rows[0].get("peak_gbs"):
        print(f"% peak: of the GPU's spec memory bandwidth ({rows[0]['peak_gbs']:.0f} GB/s); % read: of the read "
              f"bandwidth measured here ({rows[0]['read_gbs']:.0f} GB/s)")
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

    _check_optional(args)
    shape = _shape(args)
    device = _device(args)
    backend = _engine(args, device)
    check_tunable(backend)
    print(_header(args, backend, device, shape))
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


def _wheelhouse(args: argparse.Namespace) -> int:
    import shlex
    import subprocess

    from .errors import MoECompatError
    from .wheelhouse import DEFAULT_PLATFORMS, build_wheelhouse

    platforms = tuple(args.platform) if args.platform else DEFAULT_PLATFORMS
    try:
        commands = build_wheelhouse(args.engine, args.version, args.dest, python_version=args.python_version,
                                    platforms=platforms, extra=args.extra, with_moecompat=not args.no_moecompat,
                                    dry_run=args.dry_run)
    except subprocess.CalledProcessError as exc:
        raise MoECompatError(f"wheelhouse: pip could not download every wheel (exit status {exc.returncode}; its output "
                                     "above names the requirement, often one with no wheel for the platform)") from None
    for cmd in commands:
        print(shlex.join(cmd))
    if not args.dry_run:
        print(f"wrote {args.dest} (README.md there says how to install offline)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``moecompat`` command; returns the exit status (2 for a user error, with one line on
    stderr naming the fix)."""
    from .errors import MoECompatError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MoECompatError as exc:
        print(f"moecompat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moecompat {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`moecompat doctor | head`): stop quietly, as Unix tools do, and
        # keep Python from reporting the failed flush of stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
