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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecompat", description="Stable MoE API over vLLM and SGLang versions.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="show versions and how every entry point resolves (paste into bug reports)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
