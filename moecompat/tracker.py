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

from ._scalars import check_int, describe
from .errors import InvalidInputError, UnsupportedFeatureError

__all__ = ["ExpertActivationTracker"]


class ExpertActivationTracker:
    """Per-layer, per-expert token counts.

    ``record(layer, topk_ids)`` adds one count per (token, k) slot; ids outside
    ``[0, num_experts)`` (e.g. -1 for experts on other ranks) are ignored. Thread-safe.
    """

    def __init__(self, num_layers: int, num_experts: int, device: str | torch.device | None = None) -> None:
        self.num_layers: int = check_int("num_layers", num_layers, minimum=1)
        self.num_experts: int = check_int("num_experts", num_experts, minimum=1)
        if device is not None:
            device = _device("device", device)
        self._lock = threading.Lock()
        self.counts: torch.Tensor | None = None
        if device is not None:
            try:
                self.counts = torch.zeros(num_layers, num_experts + 1, dtype=torch.int64, device=device)
            except torch.cuda.OutOfMemoryError:
                raise  # a device that exists but is full: torch's own error says so
            except (RuntimeError, AssertionError) as exc:
                # torch says "not compiled with CUDA" (AssertionError) or "no NVIDIA driver"
                # (RuntimeError), depending on the build.
                raise InvalidInputError("device", "a device this machine has (see torch.cuda.is_available())",
                                        f"{device} ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]})") from None
        self._steps = 0
        self._ones_buf: torch.Tensor | None = None

    # -- recording --------------------------------------------------------------------------
    def _check_record_args(self, layer: object) -> int:
        return check_int("layer", layer, minimum=0, maximum=self.num_layers - 1)

    def record(self, layer: int, topk_ids: torch.Tensor) -> None:
        """Count the experts chosen in ``topk_ids [T, k]`` (any int dtype) for ``layer``, the
        layer's index ``0 <= layer < num_layers``."""
        layer = self._check_record_args(layer)
        if not isinstance(topk_ids, torch.Tensor) or topk_ids.is_floating_point() or topk_ids.is_complex() \
                or topk_ids.dtype is torch.bool:
            raise InvalidInputError("topk_ids", "an integer tensor [num_tokens, top_k]",
                                    getattr(topk_ids, "dtype", describe(topk_ids)))
        if topk_ids.is_meta:
            raise InvalidInputError("topk_ids", "a tensor with data (CPU or CUDA), not on the meta device", "a meta tensor")
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

    def record_traced(self, layer: int, topk_ids: torch.Tensor) -> None:
        """[`record`][moecompat.ExpertActivationTracker.record] as ``torch.compile`` traces it: the
        same counting in the graph, without the lock (a compiled graph is one stream of work).
        The counts must exist: give the tracker a ``device`` when you construct it."""
        layer = self._check_record_args(layer)
        if self.counts is None:
            raise UnsupportedFeatureError("moecompat", None, "recording under torch.compile without a device",
                                          detail="construct the tracker with device=... (the counts' device)")
        ids = topk_ids.reshape(-1).long().clamp(-1, self.num_experts).remainder(self.num_experts + 1)
        self.counts[layer].index_add_(0, ids, torch.ones_like(ids))

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
    def _layer(self, layer: object) -> int | None:
        return check_int("layer", layer, minimum=0, maximum=self.num_layers - 1, none=True)

    def layer_counts(self, layer: int | None = None) -> torch.Tensor:
        """Counts ``[num_experts]`` of one layer, or ``[num_layers, num_experts]`` (CPU int64)."""
        layer = self._layer(layer)
        with self._lock:
            c = (self.counts[:, : self.num_experts].cpu() if self.counts is not None
                 else torch.zeros(self.num_layers, self.num_experts, dtype=torch.int64))
        return c if layer is None else c[layer]

    def top_experts(self, layer: int, n: int) -> list[tuple[int, int]]:
        """The ``n`` most chosen experts of ``layer`` as ``(expert, count)``, most chosen first
        (``n`` larger than ``num_experts`` gives every expert)."""
        layer = check_int("layer", layer, minimum=0, maximum=self.num_layers - 1)
        n = check_int("n", n, minimum=1)
        c = self.layer_counts(layer)
        vals, idx = c.topk(min(n, self.num_experts))
        return [(int(i), int(v)) for v, i in zip(vals, idx, strict=True)]

    def imbalance(self, layer: int | None = None) -> dict[str, float]:
        """Load imbalance of one layer (or all layers pooled): ``max_over_mean`` (1 = perfectly
        balanced), coefficient of variation ``cv``, Shannon ``entropy`` (nats) and
        ``normalized_entropy`` (entropy / log(num_experts), 1 = uniform)."""
        layer = self._layer(layer)
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
        """The tracker ``to_json`` wrote; every field is
        checked (an ``InvalidInputError`` names the field, the expected and the actual value)."""
        if not isinstance(text, (str, bytes)):
            raise InvalidInputError("text", "a JSON str written by ExpertActivationTracker.to_json", describe(text))
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidInputError("text", "JSON written by ExpertActivationTracker.to_json", f"invalid JSON: {exc}") from None
        if not isinstance(d, dict):
            raise InvalidInputError("text", "a JSON object", type(d).__name__)
        for key in ("num_layers", "num_experts", "counts"):
            if key not in d:
                raise InvalidInputError("text", f"a JSON object with {key!r}", f"keys {sorted(d)}")
        t = cls(check_int("num_layers", d["num_layers"], minimum=1), check_int("num_experts", d["num_experts"], minimum=1),
                device="cpu")
        counts = d["counts"]
        ok = isinstance(counts, list) and len(counts) == t.num_layers and all(
            isinstance(row, list) and len(row) == t.num_experts and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in row) for row in counts)
        if not ok:
            raise InvalidInputError("counts", f"{t.num_layers} lists of {t.num_experts} non-negative ints",
                                    describe(counts))
        assert t.counts is not None
        t.counts[:, : t.num_experts] = torch.tensor(counts, dtype=torch.int64).reshape(t.num_layers, t.num_experts)
        t._steps = check_int("steps", d.get("steps", 0), minimum=0)
        return t

    def to_sglang_dump(self, path: str | pathlib.Path) -> None:
        """Write SGLang's ``ExpertDistributionRecorder`` stat dump (``torch.save`` of a dict with
        ``logical_count [steps, num_layers, num_experts]``); here one accumulated step."""
        torch.save({"rank": 0, "logical_count": self.layer_counts()[None],
                    "average_utilization_rate_over_window": None}, str(path))

    @classmethod
    def from_sglang_dump(cls, path: str | pathlib.Path) -> ExpertActivationTracker:
        """Read an SGLang expert-distribution stat dump (sums its buffered steps)."""
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, ValueError) as exc:
            raise InvalidInputError("path", "a readable SGLang expert distribution dump (torch.save)", f"{path}: {exc}") from None
        lc = data.get("logical_count") if isinstance(data, dict) else None
        if not isinstance(lc, torch.Tensor) or lc.dim() not in (2, 3) or lc.is_floating_point() or lc.numel() == 0:
            raise InvalidInputError("path", "an SGLang expert distribution dump with an integer logical_count "
                                    "[steps, layers, experts]", str(path))
        lc = lc.sum(0) if lc.dim() == 3 else lc
        t = cls(lc.shape[0], lc.shape[1], device="cpu")
        assert t.counts is not None
        t.counts[:, : t.num_experts] = lc.long()
        return t

    def plot_heatmap(self, path: str | pathlib.Path) -> pathlib.Path:
        """PNG heatmap of the share of tokens per expert (columns) and layer (rows)."""
        from ._mpl import pyplot

        plt = pyplot()
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
        them up (see ``moecompat.tracker.engine_hook_targets``): vLLM's router base class
        (``BaseRouter._select_experts``), ``FusedMoE.select_experts`` and its CPU routing
        ``select_experts``; SGLang's ``topk.select_experts``. Only the outermost hooked call of a
        routing step is counted, so a hooked function calling another is not counted twice.
        Layers are taken in call order, cycling through ``num_layers`` (SGLang passes
        ``layer_id``, used when given). Hooks are process-wide while the block runs.
        """
        from .engines import ENGINES

        names = [engine] if engine != "auto" else [n for n, e in ENGINES.items() if e.version() is not None]
        for name in names:
            if name not in ENGINES:
                raise InvalidInputError("engine", "'auto' or one of " + ", ".join(map(repr, ENGINES)), repr(name))
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


def engine_hook_targets(engine: str) -> list[tuple[Any, str]]:
    """(owner, attribute) pairs that [`record_engine`][moecompat.ExpertActivationTracker.record_engine]
    wraps for ``engine`` in the installed version; an owner is a module or a class. Where they
    are is an engine fact (the ``routing_hooks`` adapter)."""
    from ._backends import get_impl

    return list(get_impl("routing_hooks", engine, True)())


def _device(name: str, value: object) -> torch.device:
    try:
        return torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        raise InvalidInputError(name, "a torch.device or a device string ('cpu', 'cuda:0')", describe(value)) from None
