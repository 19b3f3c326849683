"""PNG plots for ``moecompat plot``: latency vs batch size, share of copy bandwidth, tuning
speed-ups, and expert-activation heatmaps (tracker JSON)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from ._mpl import pyplot
from .errors import InvalidInputError


def _label(meta: dict[str, Any]) -> str:
    v = f" {meta['engine_version']}" if meta.get("engine_version") else ""
    return f"{meta.get('backend', '?')}{v} {meta.get('dtype', '')}".strip()


def plot_files(paths: Sequence[str], out_dir: str) -> list[pathlib.Path]:
    """Read bench/tune/tracker JSON files and write PNGs into ``out_dir``; returns their paths."""
    plt = pyplot()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = []
    for p in paths:
        try:
            docs.append((pathlib.Path(p), json.loads(pathlib.Path(p).read_text())))
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError("results", "JSON written by moecompat bench/tune or a tracker", f"{p}: {exc}") from None
    written: list[pathlib.Path] = []
    bench = [(p, d) for p, d in docs if d.get("meta", {}).get("command") == "bench"]
    tune = [(p, d) for p, d in docs if d.get("meta", {}).get("command") == "tune"]
    tracker = [(p, d) for p, d in docs if d.get("kind") == "moecompat.ExpertActivationTracker"]
    if not (bench or tune or tracker):
        raise InvalidInputError("results", "JSON written by moecompat bench/tune or a tracker", ", ".join(paths))
    if bench or tune:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for _, d in bench:
            rows = sorted(d["results"], key=lambda r: r["batch_size"])
            ax.plot([r["batch_size"] for r in rows], [r["latency_ms"] for r in rows], marker="o", label=_label(d["meta"]))
        for _, d in tune:
            for strategy in sorted({r["strategy"] for r in d["results"]}):
                rows = sorted((r for r in d["results"] if r["strategy"] == strategy), key=lambda r: r["batch_size"])
                if strategy == sorted({r["strategy"] for r in d["results"]})[0]:
                    ax.plot([r["batch_size"] for r in rows], [r["default_ms"] for r in rows], ls="--", marker="x",
                            label=f"{_label(d['meta'])} default config")
                ax.plot([r["batch_size"] for r in rows], [r["best_ms"] for r in rows], marker="o",
                        label=f"{_label(d['meta'])} tuned ({strategy})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (tokens)")
        ax.set_ylabel("fused MoE latency (ms)")
        shape = (bench or tune)[0][1]["meta"].get("shape", {})
        ax.set_title(f"{shape.get('name', '')} E={shape.get('num_experts')} k={shape.get('top_k')} "
                     f"H={shape.get('hidden_size')} I={shape.get('intermediate_size')}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = out / "latency.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    # Older results files (before the read-bandwidth roofline) carry "bandwidth_share" (of copy bandwidth).
    def share(r: dict[str, Any]) -> float | None:
        return r.get("peak_share", r.get("bandwidth_share"))

    shares = [(p, d) for p, d in bench if any(share(r) for r in d["results"])]
    if shares:
        fig, ax = plt.subplots(figsize=(7, 4))
        for _, d in shares:
            rows = sorted(d["results"], key=lambda r: r["batch_size"])
            ax.plot([r["batch_size"] for r in rows], [100 * (share(r) or 0) for r in rows], marker="o", label=_label(d["meta"]))
        ax.axhline(70, color="grey", ls=":", label="70% target")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (tokens)")
        ax.set_ylabel("% of peak memory bandwidth")
        ax.set_ylim(0, 110)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        path = out / "roofline_share.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    for src, d in tracker:
        from .tracker import ExpertActivationTracker

        heat = out / f"{src.stem}_heatmap.png"
        ExpertActivationTracker.from_json(json.dumps(d)).plot_heatmap(heat)
        written.append(heat)
    return written
