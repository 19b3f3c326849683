"""``moecompat tune``: search fused-MoE Triton configs and write the engine's own config file.

Search space and pruning follow vLLM's ``benchmark_moe.py`` (BLOCK_SIZE_M/N/K, GROUP_SIZE_M,
num_warps, num_stages; for block-quantized weights BLOCK_SIZE_N/K must divide the quant block),
plus a shared-memory bound that drops configs the GPU cannot launch. Two strategies:

* ``exhaustive``: every config of the space, for every batch size;
* ``smart``: prunes BLOCK_SIZE_M by the expected tokens per expert, then hill-climbs one parameter
  at a time from the engine's default config and from the best config of the neighbouring batch
  size. Each config is compiled once by Triton and reused across batch sizes, so the number of
  distinct configs tried is what the wall time follows.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pathlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .errors import InvalidInputError

__all__ = [
    "PARAM_GRID",
    "TuneResult",
    "exhaustive_search",
    "prune_for_batch",
    "search_space",
    "smart_search",
    "write_engine_config",
]

Config = dict[str, int]

#: vLLM benchmark_moe.get_configs_compute_bound (CUDA).
PARAM_GRID: dict[str, list[int]] = {
    "BLOCK_SIZE_M": [16, 32, 64, 128, 256],
    "BLOCK_SIZE_N": [32, 64, 128, 256],
    "BLOCK_SIZE_K": [64, 128, 256],
    "GROUP_SIZE_M": [1, 16, 32, 64],
    "num_warps": [4, 8],
    "num_stages": [2, 3, 4, 5],
}
#: A smaller grid (432 configs before pruning) for quick tuning and for timing the exhaustive
#: search against the smart one within a short GPU lease.
SMALL_GRID: dict[str, list[int]] = {
    "BLOCK_SIZE_M": [16, 32, 64, 128],
    "BLOCK_SIZE_N": [32, 64, 128],
    "BLOCK_SIZE_K": [64, 128, 256],
    "GROUP_SIZE_M": [1, 16, 64],
    "num_warps": [4, 8],
    "num_stages": [3, 4, 5],
}
GRIDS = {"full": PARAM_GRID, "small": SMALL_GRID}
#: Hopper's largest dynamic shared memory per block (bytes).
H100_SMEM = 232448


def shared_memory_bytes(cfg: Config, a_bytes: int, b_bytes: int) -> int:
    """Shared memory a Triton GEMM pipeline of ``num_stages`` stages needs (A and B tiles)."""
    m, n, k = cfg["BLOCK_SIZE_M"], cfg["BLOCK_SIZE_N"], cfg["BLOCK_SIZE_K"]
    return cfg["num_stages"] * (m * k * a_bytes + k * n * b_bytes)


def search_space(dtype: str, block_shape: Sequence[int] | None = None, smem_limit: int = H100_SMEM,
                 grid: dict[str, list[int]] | None = None) -> list[Config]:
    """Every config of the grid the engines search, pruned as they prune, that fits in shared memory."""
    g = grid or PARAM_GRID
    a_bytes = 1 if dtype.startswith(("fp8", "int8_w8a8")) else 2
    b_bytes = {"fp8_w8a8": 1, "fp8_w8a8_block": 1, "int8_w8a16": 1, "int4_w4a16": 1}.get(dtype, 2)
    out = []
    for values in itertools.product(*g.values()):
        cfg = dict(zip(g.keys(), values, strict=True))
        if block_shape is not None:
            bn, bk = block_shape
            if bn % cfg["BLOCK_SIZE_N"] or bk % cfg["BLOCK_SIZE_K"]:
                continue
        if shared_memory_bytes(cfg, a_bytes, b_bytes) > smem_limit:
            continue
        out.append(cfg)
    return out


def prune_for_batch(space: Sequence[Config], batch_size: int, top_k: int, num_experts: int) -> list[Config]:
    """Drop BLOCK_SIZE_M far above the tokens an expert sees (padding work only), and large
    GROUP_SIZE_M when there are few row blocks to group."""
    per_expert = max(1, math.ceil(batch_size * top_k / num_experts))
    max_m = max(16, 1 << (per_expert - 1).bit_length()) * 2
    row_blocks = max(1, math.ceil(batch_size * top_k / 16))
    return [c for c in space if c["BLOCK_SIZE_M"] <= max_m and (c["GROUP_SIZE_M"] == 1 or c["GROUP_SIZE_M"] <= row_blocks * 4)]


Evaluate = Callable[[Config, int], float]


@dataclasses.dataclass
class TuneResult:
    batch_size: int
    best: Config
    best_ms: float
    default_ms: float | None
    evaluated: int


class _Memo:
    """Times each (config, batch) once; counts distinct configs (each one is a Triton compile)."""

    def __init__(self, evaluate: Evaluate) -> None:
        self.evaluate = evaluate
        self.times: dict[tuple[tuple[tuple[str, int], ...], int], float] = {}
        self.configs: set[tuple[tuple[str, int], ...]] = set()

    def __call__(self, cfg: Config, batch: int) -> float:
        key = (tuple(sorted(cfg.items())), batch)
        if key not in self.times:
            self.configs.add(key[0])
            try:
                self.times[key] = self.evaluate(cfg, batch)
            except Exception:
                self.times[key] = math.inf
        return self.times[key]


def exhaustive_search(evaluate: Evaluate, space: Sequence[Config], batch_sizes: Iterable[int],
                      progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
                      deadline: float | None = None) -> tuple[dict[int, TuneResult], int]:
    """Time every config at every batch size. Returns (results, distinct configs timed).

    ``deadline`` (``time.monotonic()`` value): stop early; a batch size cut short reports the best
    of the configs it reached and ``evaluated < len(space)``.
    """
    memo = _Memo(evaluate)
    results = {}
    for b in batch_sizes:
        it = progress(space) if progress else space
        best: Config | None = None
        done = 0
        for c in it:
            if deadline is not None and time.monotonic() > deadline:
                break
            done += 1
            if best is None or memo(c, b) < memo(best, b):
                best = c
        if best is None:
            break
        results[b] = TuneResult(b, best, memo(best, b), None, done)
    return results, len(memo.configs)


def _neighbours(cfg: Config, grid: dict[str, list[int]]) -> Iterable[Config]:
    for key, values in grid.items():
        i = values.index(cfg[key]) if cfg[key] in values else None
        if i is None:
            continue
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                yield {**cfg, key: values[j]}


def _repair(cfg: Config, allowed: set[tuple[tuple[str, int], ...]]) -> Config | None:
    """``cfg`` if allowed, else the same tile with the deepest pipeline that fits in shared memory
    (a larger tile often only fits with fewer stages; one-parameter moves would never reach it)."""
    if tuple(sorted(cfg.items())) in allowed:
        return cfg
    for stages in sorted(PARAM_GRID["num_stages"], reverse=True):
        c = {**cfg, "num_stages": stages}
        if tuple(sorted(c.items())) in allowed:
            return c
    return None


def smart_search(evaluate: Evaluate, space: Sequence[Config], batch_sizes: Sequence[int], *, top_k: int,
                 num_experts: int, starts: Callable[[int], Sequence[Config]] | None = None,
                 max_rounds: int = 8) -> tuple[dict[int, TuneResult], int]:
    """Hill-climb inside the (batch-pruned) space from the engine default and the best config of
    the previous batch size. Returns (results, distinct configs timed)."""
    memo = _Memo(evaluate)
    allowed_all = {tuple(sorted(c.items())) for c in space}
    results: dict[int, TuneResult] = {}
    previous_best: Config | None = None
    for b in sorted(batch_sizes):
        pruned = prune_for_batch(space, b, top_k, num_experts)
        allowed = {tuple(sorted(c.items())) for c in pruned} & allowed_all
        seeds = [dict(c) for c in (starts(b) if starts else [])]
        if previous_best is not None:
            seeds.append(previous_best)
        # Seeds (the engine default, the previous best) are tried even outside the pruned space.
        seeds = seeds or [pruned[len(pruned) // 2]]
        best = min(seeds, key=lambda c: memo(c, b))
        for _ in range(max_rounds):
            cands = [r for n in _neighbours(best, PARAM_GRID) if (r := _repair(n, allowed)) is not None]
            if not cands:
                break
            cand = min(cands, key=lambda c: memo(c, b))
            if memo(cand, b) >= memo(best, b):
                break
            best = cand
        results[b] = TuneResult(b, best, memo(best, b), None, len(memo.times))
        previous_best = best
    return results, len(memo.configs)


def write_engine_config(results: dict[int, TuneResult] | dict[int, Config], num_experts: int, n: int, dtype: str,
                        block_shape: Sequence[int] | None, backend: str, folder: str | None = None) -> tuple[pathlib.Path, dict[str, str]]:
    """Write the tuned configs under the selected engine's own file name and format.

    Returns (path, environment variables the engine needs to find it: empty when written into
    the engine's package folder).
    """
    from .tuning import config_dtype_str, get_config_file_name, tuned_config_location

    dtype_str = config_dtype_str(dtype, backend)
    name = get_config_file_name(num_experts, n, dtype_str, list(block_shape) if block_shape else None, backend=backend)
    target, env = tuned_config_location(folder, backend)
    path = pathlib.Path(target) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if backend == "vllm":
        try:
            import triton

            data["triton_version"] = triton.__version__
        except ImportError:
            pass
    for b, r in sorted(results.items()):
        cfg: Config = r.best if isinstance(r, TuneResult) else r  # type: ignore[assignment]
        data[str(b)] = {k: int(v) for k, v in cfg.items()}
    path.write_text(json.dumps(data, indent=4) + "\n")
    return path, env


def default_config(backend: str, batch_size: int, num_experts: int, n: int, k: int, top_k: int, dtype: str,
                   block_shape: Sequence[int] | None) -> Config | None:
    """The engine's own default Triton config for this problem (vLLM ``get_default_config``), or
    ``None`` where the backend has none."""
    from .tuning import config_dtype_str, get_default_config

    cfg = get_default_config(batch_size, num_experts, n, k, top_k, config_dtype_str(dtype, backend),
                             list(block_shape) if block_shape else None, backend=backend)
    return {key: cfg[key] for key in PARAM_GRID if key in cfg} if cfg else None


def check_tunable(backend: str) -> None:
    if backend == "reference":
        raise InvalidInputError("--engine", "vllm or sglang (the reference backend runs no Triton kernel to tune)", backend)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
