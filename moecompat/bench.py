"""``moecompat bench``: time fused MoE for a model shape over batch sizes on any backend.

Everything goes through moecompat's stable API, so the same benchmark runs on every supported
engine version. On CUDA, each measurement replays a CUDA graph of several calls and reads CUDA
events (median of repeats, spread reported); on CPU, wall time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import quant as _quant
from .api import fused_experts, select_experts
from .errors import InvalidInputError

__all__ = [
    "DTYPES",
    "PRESETS",
    "BenchResult",
    "MoEShape",
    "bandwidth_ceiling_gbs",
    "copy_bandwidth_gbs",
    "make_problem",
    "read_bandwidth_gbs",
    "run_bench",
    "shape_from_config",
    "spec_bandwidth_gbs",
    "time_fn",
]


@dataclasses.dataclass(frozen=True)
class MoEShape:
    """A MoE layer's shape (before tensor/expert parallel sharding)."""

    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    num_expert_group: int | None = None
    topk_group: int | None = None
    activation: str = "silu"
    name: str = "custom"

    def shard(self, tp_size: int = 1, ep_size: int = 1) -> MoEShape:
        """Per-rank shape: the intermediate size split over TP ranks, experts over EP ranks."""
        if self.intermediate_size % tp_size:
            raise InvalidInputError("tp_size", f"a divisor of intermediate size {self.intermediate_size}", tp_size)
        if self.num_experts % ep_size:
            raise InvalidInputError("ep_size", f"a divisor of the expert count {self.num_experts}", ep_size)
        return dataclasses.replace(self, intermediate_size=self.intermediate_size // tp_size,
                                   num_experts=self.num_experts // ep_size)


PRESETS: dict[str, MoEShape] = {
    "mixtral-8x7b": MoEShape(8, 2, 4096, 14336, name="mixtral-8x7b"),
    "qwen3-30b-a3b": MoEShape(128, 8, 2048, 768, name="qwen3-30b-a3b"),
    "deepseek-v3": MoEShape(256, 8, 7168, 2048, num_expert_group=8, topk_group=4, name="deepseek-v3"),
    "gpt-oss-120b": MoEShape(128, 4, 2880, 2880, activation="swigluoai", name="gpt-oss-120b"),
}

#: --dtype choices -> (quant scheme, options)
DTYPES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "bf16": (None, {}),
    "fp16": (None, {}),
    "fp8_w8a8": ("fp8_w8a8", {}),
    "fp8_w8a8_block": ("fp8_w8a8", {"block_shape": [128, 128]}),
    "int8_w8a16": ("int8_w8a16", {}),
    "int4_w4a16": ("int4_w4a16", {"group_size": 128}),
    "mxfp4_w4a16": ("mxfp4_w4a16", {}),
}

_EXPERTS_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_TOPK_KEYS = ("num_experts_per_tok", "moe_topk", "top_k", "experts_per_token")
_INTER_KEYS = ("moe_intermediate_size", "intermediate_size", "ffn_dim")


def shape_from_config(path: str | pathlib.Path) -> MoEShape:
    """Read a Hugging Face ``config.json`` (a file or a model folder). No hub download."""
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise InvalidInputError("--model", "a config.json file or a folder holding one", str(path)) from None
    except json.JSONDecodeError as exc:
        raise InvalidInputError("--model", "valid JSON", f"{p}: {exc}") from None
    cfg = cfg.get("text_config", cfg)

    def first(keys: Sequence[str]) -> Any:
        return next((cfg[k] for k in keys if cfg.get(k)), None)

    e, k, i, h = first(_EXPERTS_KEYS), first(_TOPK_KEYS), first(_INTER_KEYS), cfg.get("hidden_size")
    missing = [n for n, v in (("number of experts", e), ("experts per token", k), ("hidden_size", h),
                              ("intermediate size", i)) if not v]
    if missing:
        raise InvalidInputError("--model", f"a MoE config.json (with {', '.join(missing)})", str(p))
    act = "swigluoai" if cfg.get("model_type") == "gpt_oss" else "silu"
    return MoEShape(int(e), int(k), int(h), int(i), cfg.get("n_group"), cfg.get("topk_group"), act,
                    name=str(cfg.get("_name_or_path") or cfg.get("model_type") or p.parent.name))


def make_problem(shape: MoEShape, dtype: str, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Random weights of ``shape`` quantized as ``dtype``: ``(w1, w2, quant_config)``."""
    if dtype not in DTYPES:
        raise InvalidInputError("--dtype", f"one of {sorted(DTYPES)}", dtype)
    scheme, opts = DTYPES[dtype]
    g = torch.Generator(device=device).manual_seed(seed)
    e, h, i = shape.num_experts, shape.hidden_size, shape.intermediate_size
    act_dtype = torch.float16 if dtype == "fp16" else (torch.bfloat16 if device != "cpu" else torch.float32)
    w1 = torch.randn(e, 2 * i, h, device=device, generator=g, dtype=act_dtype) / math.sqrt(h)
    w2 = torch.randn(e, h, i, device=device, generator=g, dtype=act_dtype) / math.sqrt(i)
    if scheme is None:
        return w1, w2, None
    w1q, w2q, qc = _quant.quantize_moe_weights(w1.float(), w2.float(), scheme, **opts)
    del w1, w2
    return w1q, w2q, qc


def _act_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "fp16":
        return torch.float16
    return torch.bfloat16 if device != "cpu" else torch.float32


def time_fn(fn: Callable[[], Any], device: str, repeats: int = 10, calls_per_repeat: int = 10,
            use_cuda_graph: bool = True) -> tuple[float, float, float]:
    """(median, min, max) milliseconds per call of ``fn``."""
    if device == "cpu":
        fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls_per_repeat):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / calls_per_repeat)
        return statistics.median(samples), min(samples), max(samples)
    runner: Callable[[], Any] = lambda: [fn() for _ in range(calls_per_repeat)]  # noqa: E731
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    if use_cuda_graph:
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls_per_repeat):
                    fn()
            graph.replay()
            runner = graph.replay
        except Exception:
            torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record()
        runner()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls_per_repeat)
    return statistics.median(samples), min(samples), max(samples)


_BANDWIDTH: dict[tuple[str, str], float] = {}

#: Memory bandwidth of GPUs by their datasheets (GB/s), matched on the CUDA device name; the
#: ceiling a bandwidth share is taken of (a measured figure never exceeds it).
SPEC_BANDWIDTH_GBS: dict[str, float] = {
    "H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100 NVL": 3900.0, "H20": 4000.0,
    "GH200": 4000.0, "B200": 8000.0, "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0,
    "A100 80GB PCIe": 1935.0, "L40S": 864.0, "L4": 300.0, "A10G": 600.0,
}


def spec_bandwidth_gbs(device: str) -> float | None:
    """The datasheet memory bandwidth of ``device``'s GPU (GB/s), or None when unknown."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key in sorted(SPEC_BANDWIDTH_GBS, key=len, reverse=True):
        if key in name:
            return SPEC_BANDWIDTH_GBS[key]
    return None


def read_bandwidth_gbs(device: str) -> float | None:
    """Measured read-only streaming bandwidth in GB/s (a sum over 4 GiB, bytes read only), cached."""
    if device == "cpu":
        return None
    key = (device, "read")
    if key not in _BANDWIDTH:
        n = 1 << 30  # 4 GiB of float32: many times the L2
        src = torch.ones(n, device=device)
        out = torch.empty((), device=device)
        ms, _, _ = time_fn(lambda: torch.sum(src, dim=0, out=out), device, repeats=10, calls_per_repeat=5, use_cuda_graph=False)
        _BANDWIDTH[key] = n * 4 / (ms * 1e-3) / 1e9
        del src
    return _BANDWIDTH[key]


def copy_bandwidth_gbs(device: str) -> float | None:
    """Measured device-to-device copy bandwidth (bytes read + written) in GB/s, cached."""
    if device == "cpu":
        return None
    key = (device, "copy")
    if key not in _BANDWIDTH:
        n = 1 << 28  # 1 GiB of float32
        src = torch.empty(n, device=device)
        dst = torch.empty_like(src)
        ms, _, _ = time_fn(lambda: dst.copy_(src), device, repeats=10, calls_per_repeat=5, use_cuda_graph=False)
        _BANDWIDTH[key] = 2 * n * 4 / (ms * 1e-3) / 1e9
        del src, dst
    return _BANDWIDTH[key]


def bandwidth_ceiling_gbs(device: str) -> float | None:
    """What a share is taken of: the datasheet bandwidth, or the measured read bandwidth where
    that is higher (or the GPU is not in the table), so that no share exceeds 100%."""
    spec, read = spec_bandwidth_gbs(device), read_bandwidth_gbs(device)
    values = [v for v in (spec, read) if v is not None]
    return max(values) if values else None


@dataclasses.dataclass
class BenchResult:
    model: str
    backend: str
    dtype: str
    batch_size: int
    latency_ms: float
    latency_min_ms: float
    latency_max_ms: float
    tflops: float
    #: Bytes of the experts touched plus activations, over the time.
    gbs: float | None
    #: ``gbs`` over [`bandwidth_ceiling_gbs`][moecompat.bench.bandwidth_ceiling_gbs] (never above 1).
    peak_share: float | None
    #: ``gbs`` over the measured read-only bandwidth.
    read_share: float | None
    num_experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    config: dict[str, int] | None = None
    peak_gbs: float | None = None
    read_gbs: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _weight_bytes_per_expert(w1: torch.Tensor, w2: torch.Tensor, qc: Any) -> int:
    total = w1[0].numel() * w1.element_size() + w2[0].numel() * w2.element_size()
    if qc is not None:
        for s in (qc.w1_scale, qc.w2_scale, qc.w1_zp, qc.w2_zp):
            if s is not None and s.dim() >= 1 and s.shape[0] == w1.shape[0]:
                total += s[0].numel() * s.element_size()
    return total


def bench_one(shape: MoEShape, dtype: str, batch_size: int, backend: str, device: str, seed: int = 0,
              problem: tuple[Any, Any, Any] | None = None, config: dict[str, int] | None = None,
              repeats: int = 10) -> BenchResult:
    """Time one batch size. ``config``: a Triton config forced through the engine's override."""
    if batch_size < 1:
        raise InvalidInputError("--batch-size", "positive integers", batch_size)
    w1, w2, qc = problem if problem is not None else make_problem(shape, dtype, device, seed)
    g = torch.Generator(device=device).manual_seed(seed + batch_size)
    x = torch.randn(batch_size, shape.hidden_size, device=device, generator=g, dtype=_act_dtype(dtype, device))
    logits = torch.randn(batch_size, shape.num_experts, device=device, generator=g)
    route: dict[str, Any] = {}
    if shape.num_expert_group and shape.num_experts % shape.num_expert_group == 0 and shape.topk_group:
        route = dict(use_grouped_topk=True, num_expert_group=shape.num_expert_group, topk_group=shape.topk_group,
                     scoring_func="sigmoid")
    topk = select_experts(x, logits, shape.top_k, backend="reference", **route)

    def call() -> Any:
        return fused_experts(x, w1, w2, topk.topk_weights, topk.topk_ids, activation=shape.activation,
                             quant_config=qc, backend=backend)  # type: ignore[arg-type]

    if config is not None:
        from .tuning import override_config

        with override_config(config, backend=backend):
            med, lo, hi = time_fn(call, device, repeats=repeats)
    else:
        med, lo, hi = time_fn(call, device, repeats=repeats)
    flops = 2.0 * batch_size * shape.top_k * (2 * shape.intermediate_size * shape.hidden_size + shape.hidden_size * shape.intermediate_size)
    touched = int(torch.unique(topk.topk_ids).numel())
    act_bytes = 2 * batch_size * shape.hidden_size * x.element_size()
    moved = touched * _weight_bytes_per_expert(w1, w2, qc) + act_bytes
    gbs = moved / (med * 1e-3) / 1e9
    ceiling, read = bandwidth_ceiling_gbs(device), read_bandwidth_gbs(device)
    on_gpu = device != "cpu"
    return BenchResult(shape.name, backend, dtype, batch_size, med, lo, hi, flops / (med * 1e-3) / 1e12,
                       gbs if on_gpu else None, (gbs / ceiling) if ceiling else None, (gbs / read) if read else None,
                       shape.num_experts, shape.top_k, shape.hidden_size, shape.intermediate_size, config,
                       ceiling, read)


def run_bench(shape: MoEShape, dtype: str, batch_sizes: Sequence[int], backend: str, device: str,
              seed: int = 0, progress: bool = False) -> list[BenchResult]:
    """Benchmark every batch size on one device (weights made once)."""
    for b in batch_sizes:
        if not isinstance(b, int) or b < 1:
            raise InvalidInputError("--batch-size", "positive integers", b)
    problem = make_problem(shape, dtype, device, seed)
    out = []
    with _Progress(progress, len(batch_sizes), f"bench {shape.name} {dtype}") as bar:
        for b in batch_sizes:
            out.append(bench_one(shape, dtype, b, backend, device, seed, problem))
            bar.update(f"batch {b}: {out[-1].latency_ms:.4g} ms")
    return out


class _Progress:
    """A tqdm bar on stderr where tqdm is installed, else one line per step; nothing when off."""

    def __init__(self, enabled: bool, total: int, desc: str) -> None:
        self.enabled, self.total, self.desc, self.done, self.bar = enabled, total, desc, 0, None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="batch")

    def __enter__(self) -> _Progress:
        return self

    def update(self, note: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(note)
            self.bar.update(1)
        elif self.enabled:
            print(f"{self.desc}: {self.done}/{self.total} {note}", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def write_results(results: Sequence[BenchResult | dict[str, Any]], out: str | pathlib.Path, meta: dict[str, Any]) -> tuple[pathlib.Path, pathlib.Path]:
    """Write ``out``.json (meta + rows) and ``out``.csv; returns both paths."""
    import csv

    rows = [r.as_dict() if isinstance(r, BenchResult) else r for r in results]
    base = pathlib.Path(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    jpath, cpath = base.with_suffix(".json"), base.with_suffix(".csv")
    jpath.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    fields = sorted({k for r in rows for k in r if k != "config"})
    with cpath.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*fields, "config"])
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r.get(k) for k in fields}, "config": json.dumps(r.get("config")) if r.get("config") else ""})
    return jpath, cpath
