"""Backend registry and the ``"auto"`` choice.

Every public entry point calls its adapter with one engine-neutral calling convention (see
:mod:`moecompat.api`); backends translate from it at the edge.

``backend="auto"``:

* tensor entry points (``fused_experts``, ``select_experts``, ``moe_align_block_size``) on CUDA
  tensors use the first engine of :data:`AUTO_ORDER` that is installed, imports and has the entry
  point, else the reference backend; on CPU tensors they use the reference backend (the engines'
  kernels are CUDA/Triton kernels);
* other entry points (config helpers, expert maps) use the first such engine, else the reference.

An engine that is installed but fails to import is skipped with one :class:`MoECompatWarning`
naming the import error.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

from . import mxfp4 as _mx
from . import reference
from .adapters import REGISTRY, Resolution
from .engines import ENGINES
from .errors import InvalidInputError, MoECompatWarning
from .reference import config as _ref_config

__all__ = [
    "AUTO_ORDER",
    "ENTRY_POINTS",
    "TENSOR_ENTRY_POINTS",
    "auto_backend",
    "get_impl",
]

#: Engines ``"auto"`` tries, in order (vLLM first: the broadest set of Triton MoE kernels).
AUTO_ORDER: tuple[str, ...] = ("vllm", "sglang")
TENSOR_ENTRY_POINTS = ("fused_experts", "select_experts", "moe_align_block_size")
ENTRY_POINTS = (
    "fused_experts",
    "select_experts",
    "moe_align_block_size",
    "get_config_dtype_str",
    "make_quant_config",
    "make_expert_map",
    "get_config_file_name",
    "get_moe_configs",
    "tuned_config_location",
    "override_config",
    "moe_layer_config",
    "select_mxfp4_backend",
    "mxfp4_round_up",
    "mxfp4_convert",
    "ep_moe_layer_class",
)
_KNOWN_BACKENDS = ("auto", "reference", *ENGINES)


def _reference_quant_config(qc: Any) -> Any:
    return qc


_REFERENCE_IMPLS: dict[str, Callable[..., Any]] = {
    "fused_experts": reference.fused_experts,
    "select_experts": reference.select_experts,
    "moe_align_block_size": reference.moe_align_block_size,
    "get_config_dtype_str": reference.get_config_dtype_str,
    "make_quant_config": _reference_quant_config,
    "make_expert_map": reference.make_expert_map,
    "get_config_file_name": _ref_config.get_config_file_name,
    "get_moe_configs": _ref_config.get_moe_configs,
    "tuned_config_location": _ref_config.tuned_config_location,
    "override_config": _ref_config.override_config,
    "select_mxfp4_backend": _mx._reference_select,
    "mxfp4_round_up": lambda b, h, i: _mx.reference_round_up(b, h, i),
}


#: Entry points with no reference implementation (engine objects), and why.
_REFERENCE_LACKS = {
    "mxfp4_convert": "kernel weight formats are an engine's; the reference backend takes plain MXFP4",
    "moe_layer_config": "it builds an engine's own config object; the reference backend needs none",
    "ep_moe_layer_class": "the reference backend is functional; use fused_experts(expert_map=...)",
}


def _reference_resolver(entry_point: str) -> Callable[[], Resolution]:
    if entry_point in _REFERENCE_LACKS:
        from .errors import UnsupportedFeatureError

        detail = _REFERENCE_LACKS[entry_point]
        return lambda: Resolution(entry_point, "reference", "unsupported", detail=detail,
                                  error=UnsupportedFeatureError("reference", None, entry_point, detail=detail))
    fn = _REFERENCE_IMPLS[entry_point]
    name = "moecompat.mxfp4:reference_round_up" if fn.__name__ == "<lambda>" else f"{fn.__module__}:{fn.__qualname__}"

    def resolve() -> Resolution:
        return Resolution(entry_point, "reference", "ok", impl=fn, resolved=name, variant="reference")

    return resolve


def _engine_resolver(engine: Any, entry_point: str) -> Callable[[], Resolution]:
    return lambda: engine.resolve(entry_point)


for _ep in ENTRY_POINTS:
    REGISTRY.register("reference", _ep, _reference_resolver(_ep))
    for _name, _engine in ENGINES.items():
        REGISTRY.register(_name, _ep, _engine_resolver(_engine, _ep))

_auto_cache: dict[tuple[str, bool], tuple[str, str]] = {}
_warned: set[str] = set()
_auto_lock = threading.Lock()


def auto_backend(entry_point: str, on_cuda: bool = True) -> tuple[str, str]:
    """``(backend, reason)`` that ``backend="auto"`` uses for ``entry_point`` (cached)."""
    key = (entry_point, on_cuda)
    hit = _auto_cache.get(key)
    if hit is not None:
        return hit
    with _auto_lock:
        hit = _auto_cache.get(key)
        if hit is None:
            hit = _choose(entry_point, on_cuda)
            _auto_cache[key] = hit
    return hit


def _choose(entry_point: str, on_cuda: bool) -> tuple[str, str]:
    if entry_point in TENSOR_ENTRY_POINTS and not on_cuda:
        return "reference", "CPU tensors: the engines' MoE kernels need CUDA"
    skipped = []
    for name in AUTO_ORDER:
        engine = ENGINES[name]
        if engine.version() is None:
            skipped.append(f"{name} not installed")
            continue
        res = REGISTRY.resolution(entry_point, name)
        if res.status == "ok":
            return name, f"{name} {engine.version_str()} is installed and provides {entry_point}"
        if res.status == "error" and name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"moecompat: {name} {engine.version_str()} is installed but unusable, falling back: {res.detail}",
                MoECompatWarning,
                stacklevel=4,
            )
        skipped.append(f"{name}: {res.status}")
    return "reference", "no engine provides it (" + "; ".join(skipped) + ")"


def get_impl(entry_point: str, backend: str, on_cuda: bool = True) -> Callable[..., Any]:
    """The adapter callable for ``entry_point`` on ``backend`` (``"auto"`` resolved here)."""
    if backend == "auto":
        backend = auto_backend(entry_point, on_cuda)[0]
    elif backend not in _KNOWN_BACKENDS:
        raise InvalidInputError("backend", f"one of {list(_KNOWN_BACKENDS)}", repr(backend))
    return REGISTRY.impl(entry_point, backend)


def reset() -> None:
    """Forget every resolution and ``auto`` choice (for tests)."""
    with _auto_lock:
        _auto_cache.clear()
        _warned.clear()
    REGISTRY.clear()
