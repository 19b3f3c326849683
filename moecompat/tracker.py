"""Expert activation statistics: which experts the router picks, per layer.

Counts live on the device of the recorded ids and are updated with ``index_add_`` (no host
synchronisation per step; safe inside CUDA-graph capture once the tracker exists). Queries
(``top_experts``, ``imbalance``, ``to_json``) read them back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

from .errors import InvalidInputError, UnsupportedFeatureError

__all__ = ["ExpertActivationTracker"]


class ExpertActivationTracker:
    """Per-layer, per-expert token counts.

    ``record(layer, topk_ids)`` adds one count per (token, k) slot; ids outside
    ``[0, num_experts)`` (e.g. -1 for experts on other ranks) are ignored. Thread-safe.
    """

    def __init__(self, num_layers: int, num_experts: int, device: str | torch.device | None = None) -> None:
        if num_layers < 1 or num_experts < 1:
            raise InvalidInputError("num_layers/num_experts", "positive integers", (num_layers, num_experts))
        self.num_layers = num_layers
        self.num_experts = num_experts
        self._lock = threading.Lock()
        self.counts: torch.Tensor | None = (
            torch.zeros(num_layers, num_experts + 1, dtype=torch.int64, device=device) if device is not None else None
        )
        self._steps = 0
        self._ones_buf: torch.Tensor | None = None

    # -- recording --------------------------------------------------------------------------
    def record(self, layer: int, topk_ids: torch.Tensor) -> None:
        """Count the experts chosen in ``topk_ids [T, k]`` (any int dtype) for ``layer``."""
        if not 0 <= layer < self.num_layers:
            raise InvalidInputError("layer", f"an index in [0, {self.num_layers})", layer)
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.is_floating_point():
            raise InvalidInputError("topk_ids", "an integer tensor [num_tokens, top_k]",
                                    getattr(topk_ids, "dtype", type(topk_ids).__name__))
        ids = topk_ids.reshape(-1)
        if ids.dtype not in (torch.int32, torch.int64):
            ids = ids.long()
        # Out-of-range ids land in the extra last bucket E, which queries ignore, without a host
        # check: clamp to [-1, E], then -1 -> E. Three small kernels per step in all (this runs
        # on every decode step, where each launch is a visible share of the step).
        ids = ids.clamp(-1, self.num_experts).remainder_(self.num_experts + 1)
        with self._lock:
            if self.counts is None:
                self.counts = torch.zeros(self.num_layers, self.num_experts + 1, dtype=torch.int64, device=ids.device)
            elif self.counts.device != ids.device:
                ids = ids.to(self.counts.device)
            self.counts[layer].index_add_(0, ids, self._ones(ids.numel()))
            self._steps += 1

    def _ones(self, n: int) -> torch.Tensor:
        """``n`` int64 ones on the counts' device: a view of a buffer kept between steps."""
        assert self.counts is not None
        buf = self._ones_buf
        if buf is None or buf.numel() < n or buf.device != self.counts.device:
            buf = self._ones_buf = torch.ones(max(n, 1024), dtype=torch.int64, device=self.counts.device)
        return buf[:n]

    def reset(self) -> None:
        with self._lock:
            if self.counts is not None:
                self.counts.zero_()
            self._steps = 0

    # -- queries ------------------------------------------------------------------------------
    def layer_counts(self, layer: int | None = None) -> torch.Tensor:
        """Counts ``[num_experts]`` of one layer, or ``[num_layers, num_experts]`` (CPU int64)."""
        with self._lock:
            c = (self.counts[:, : self.num_experts].cpu() if self.counts is not None
                 else torch.zeros(self.num_layers, self.num_experts, dtype=torch.int64))
        return c if layer is None else c[layer]

    def top_experts(self, layer: int, n: int) -> list[tuple[int, int]]:
        """The ``n`` most chosen experts of ``layer`` as ``(expert, count)``, most chosen first."""
        c = self.layer_counts(layer)
        vals, idx = c.topk(min(n, self.num_experts))
        return [(int(i), int(v)) for v, i in zip(vals, idx, strict=True)]

    def imbalance(self, layer: int | None = None) -> dict[str, float]:
        """Load imbalance of one layer (or all layers pooled): ``max_over_mean`` (1 = perfectly
        balanced), coefficient of variation ``cv``, Shannon ``entropy`` (nats) and
        ``normalized_entropy`` (entropy / log(num_experts), 1 = uniform)."""
        c = self.layer_counts(layer).double()
        if layer is None:
            c = c.sum(0)
        total = c.sum().item()
        if total == 0:
            return {"max_over_mean": float("nan"), "cv": float("nan"), "entropy": float("nan"),
                    "normalized_entropy": float("nan"), "tokens": 0.0}
        mean = c.mean().item()
        p = c / total
        nz = p[p > 0]
        entropy = float(-(nz * nz.log()).sum().item())
        return {
            "max_over_mean": c.max().item() / mean,
            "cv": c.std(unbiased=False).item() / mean,
            "entropy": entropy,
            "normalized_entropy": entropy / math.log(self.num_experts) if self.num_experts > 1 else 1.0,
            "tokens": total,
        }

    # -- serialisation ------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "kind": "moecompat.ExpertActivationTracker",
            "num_layers": self.num_layers,
            "num_experts": self.num_experts,
            "steps": self._steps,
            "counts": self.layer_counts().tolist(),
        })

    @classmethod
    def from_json(cls, text: str) -> ExpertActivationTracker:
        try:
            d = json.loads(text)
            t = cls(int(d["num_layers"]), int(d["num_experts"]), device="cpu")
            counts = torch.tensor(d["counts"], dtype=torch.int64)
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise InvalidInputError("text", "JSON written by ExpertActivationTracker.to_json", str(exc)) from None
        if counts.shape != (t.num_layers, t.num_experts):
            raise InvalidInputError("counts", f"shape [{t.num_layers}, {t.num_experts}]", list(counts.shape))
        assert t.counts is not None
        t.counts[:, : t.num_experts] = counts
        t._steps = int(d.get("steps", 0))
        return t

    def to_sglang_dump(self, path: str | pathlib.Path) -> None:
        """Write SGLang's ``ExpertDistributionRecorder`` stat dump (``torch.save`` of a dict with
        ``logical_count [steps, num_layers, num_experts]``); here one accumulated step."""
        torch.save({"rank": 0, "logical_count": self.layer_counts()[None],
                    "average_utilization_rate_over_window": None}, str(path))

    @classmethod
    def from_sglang_dump(cls, path: str | pathlib.Path) -> ExpertActivationTracker:
        """Read an SGLang expert-distribution stat dump (sums its buffered steps)."""
        data = torch.load(str(path), map_location="cpu", weights_only=False)
        lc = data.get("logical_count") if isinstance(data, dict) else None
        if lc is None or lc.dim() not in (2, 3):
            raise InvalidInputError("path", "an SGLang expert distribution dump with logical_count", str(path))
        lc = lc.sum(0) if lc.dim() == 3 else lc
        t = cls(lc.shape[0], lc.shape[1], device="cpu")
        assert t.counts is not None
        t.counts[:, : t.num_experts] = lc.long()
        return t

    def plot_heatmap(self, path: str | pathlib.Path) -> pathlib.Path:
        """PNG heatmap of the share of tokens per expert (columns) and layer (rows)."""
        from .plot import _plt

        plt = _plt()
        c = self.layer_counts().double()
        share = c / c.sum(1, keepdim=True).clamp(min=1)
        fig, ax = plt.subplots(figsize=(min(16, 2 + self.num_experts * 0.12), min(12, 1.5 + self.num_layers * 0.3)))
        im = ax.imshow(share.numpy(), aspect="auto", cmap="viridis")
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        ax.set_title("share of routed tokens")
        fig.colorbar(im, ax=ax)
        out = pathlib.Path(path)
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    # -- engine hook --------------------------------------------------------------------------
    @contextlib.contextmanager
    def record_engine(self, engine: str = "auto") -> Iterator[None]:
        """Record the installed engine's own top-k selection inside the block (a real model run).

        Wraps the functions through which the engine's MoE layers route, where the layers look
        them up (see :func:`engine_hook_targets`): vLLM's router base class
        (``BaseRouter._select_experts``), ``FusedMoE.select_experts`` and its CPU routing
        ``select_experts``; SGLang's ``topk.select_experts``. Only the outermost hooked call of a
        routing step is counted, so a hooked function calling another is not counted twice.
        Layers are taken in call order, cycling through ``num_layers`` (SGLang passes
        ``layer_id``, used when given). Hooks are process-wide while the block runs.
        """
        from .engines import ENGINES

        names = [engine] if engine != "auto" else [n for n, e in ENGINES.items() if e.version() is not None]
        targets: list[tuple[Any, str]] = []
        for name in names:
            targets += engine_hook_targets(name)
        if not targets:
            raise UnsupportedFeatureError(engine, None, "recording an engine's routing", detail="no installed engine to hook")
        state = {"next": 0}
        depth = threading.local()
        originals = []

        def wrap(fn: Any) -> Any:
            @functools.wraps(fn)
            def hooked(*args: Any, **kwargs: Any) -> Any:
                outer = not getattr(depth, "n", 0)
                depth.n = getattr(depth, "n", 0) + 1
                try:
                    out = fn(*args, **kwargs)
                finally:
                    depth.n -= 1
                if outer:
                    ids = getattr(out, "topk_ids", None)
                    if ids is None and isinstance(out, tuple) and len(out) >= 2:
                        ids = out[1]
                    if isinstance(ids, torch.Tensor):
                        layer = kwargs.get("layer_id")
                        if layer is None:
                            layer = state["next"] % self.num_layers
                            state["next"] += 1
                        self.record(int(layer) % self.num_layers, ids)
                return out

            return hooked

        for owner, attr in targets:
            raw = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
            # Keep the descriptor kind: a staticmethod must stay static, a method a method.
            if isinstance(raw, staticmethod):
                new: Any = staticmethod(wrap(raw.__func__))
            elif isinstance(raw, classmethod):
                new = classmethod(wrap(raw.__func__))
            else:
                new = wrap(raw)
            originals.append((owner, attr, raw))
            setattr(owner, attr, new)
        try:
            yield
        finally:
            for owner, attr, raw in reversed(originals):
                setattr(owner, attr, raw)


#: Where each engine's MoE layers look up their routing (module, attribute path), newest first.
#: Absent ones are skipped, so one list serves every version.
_HOOKS: dict[str, list[tuple[str, str]]] = {
    "sglang": [("sglang.srt.layers.moe.topk", "select_experts")],
    "vllm": [
        # >= 0.20: every router class routes through this template method.
        ("vllm.model_executor.layers.fused_moe.router.base_router", "BaseRouter._select_experts"),
        # < 0.20: the layer's own (static, later instance) method.
        ("vllm.model_executor.layers.fused_moe.layer", "FusedMoE.select_experts"),
        # CPU MoE layers call a module-level select_experts (moved twice).
        ("vllm.model_executor.layers.fused_moe.router.cpu_router", "select_experts"),
        ("vllm.model_executor.layers.fused_moe.experts.cpu_moe", "select_experts"),
        ("vllm.model_executor.layers.fused_moe.cpu_fused_moe", "select_experts"),
    ],
}


def engine_hook_targets(engine: str) -> list[tuple[Any, str]]:
    """(owner, attribute) pairs that :meth:`ExpertActivationTracker.record_engine` wraps for
    ``engine`` in the installed version; an owner is a module or a class."""
    import importlib

    out: list[tuple[Any, str]] = []
    for mod, path in _HOOKS.get(engine, []):
        try:
            owner: Any = importlib.import_module(mod)
        except ImportError:
            continue
        *parents, attr = path.split(".")
        for p in parents:
            owner = getattr(owner, p, None)
        if owner is not None and (attr in owner.__dict__ if isinstance(owner, type) else hasattr(owner, attr)):
            out.append((owner, attr))
    return out
