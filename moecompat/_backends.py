"""Backend registry and the ``"auto"`` choice (private).

Every backend — the reference and each engine of ``moecompat/engines/_specs.py`` — registers a
resolver per entry point with `moecompat._adapters.REGISTRY`.

``backend="auto"``:

* tensor entry points (``fused_experts``, ``select_experts``, ``moe_align_block_size``) on CUDA
  tensors use the first engine (spec order) that is installed, imports and has the entry point,
  else the reference backend; on CPU tensors they use the reference backend (the engines'
  kernels are CUDA/Triton kernels);
* other entry points (config helpers, expert maps) use the first such engine, else the reference.

An engine that is installed but fails to import, or whose release contradicts moecompat's facts
(*drift*: a moved or renamed symbol, or a release newer than the tested range that lacks it), is
skipped with one `MoECompatWarning` naming why; with the environment variable
``MOECOMPAT_STRICT=1`` it is an error instead (the
[`EngineDriftError`][moecompat.EngineDriftError] or
[`EngineImportError`][moecompat.EngineImportError]), so a deployment never silently runs the
slower reference path.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

from ._adapters import REGISTRY, Backend
from .engines import ENGINES
from .engines._specs import ENGINE_NAMES
from .errors import MoECompatWarning
from .reference.backend import REFERENCE
from .vocab import parse_name

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "ENTRY_POINTS",
    "TENSOR_ENTRY_POINTS",
    "auto_backend",
    "get_impl",
    "known_backends",
    "register_backend",
    "reset",
    "strict",
    "unregister_backend",
]

#: Engines ``"auto"`` tries, in order.
AUTO_ORDER: tuple[str, ...] = ENGINE_NAMES
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
    "default_config",
    "tuned_config_location",
    "override_config",
    "moe_layer_config",
    "select_mxfp4_backend",
    "mxfp4_round_up",
    "mxfp4_convert",
    "ep_moe_layer_class",
    "routing_hooks",
    "numerics",
)
#: Every backend by name: the reference first, then the engines in spec order.
BACKENDS: dict[str, Backend] = {"reference": REFERENCE, **ENGINES}
_extra: dict[str, Backend] = {}


def _resolver(backend: Backend, entry_point: str) -> Callable[[], Any]:
    return lambda: backend.resolve(entry_point)


def register_backend(backend: Backend) -> None:
    """Register an extra backend (tests, benchmarks, out-of-tree kernels) under ``backend.name``."""
    _extra[backend.name] = backend
    for ep in ENTRY_POINTS:
        REGISTRY.register(backend.name, ep, _resolver(backend, ep))
    _names_cache.clear()


def unregister_backend(name: str) -> None:
    _extra.pop(name, None)
    REGISTRY.unregister(name)
    _names_cache.clear()


for _name, _backend in BACKENDS.items():
    for _ep in ENTRY_POINTS:
        REGISTRY.register(_name, _ep, _resolver(_backend, _ep))

_names_cache: dict[str, tuple[str, ...]] = {}


def known_backends() -> tuple[str, ...]:
    """Names a caller may pass as ``backend``: ``"auto"``, the built-in backends, extra ones."""
    names = _names_cache.get("all")
    if names is None:
        names = _names_cache["all"] = ("auto", *BACKENDS, *_extra)
    return names


def strict() -> bool:
    """``MOECOMPAT_STRICT=1``: drift or a broken engine is an error, never a fallback."""
    return os.environ.get("MOECOMPAT_STRICT", "") not in ("", "0")


_auto_cache: dict[tuple[str, bool], tuple[str, str]] = {}
_warned: set[tuple[str, str]] = set()
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
        if res.status in ("error", "drift"):
            if strict() and res.error is not None:
                raise res.error
            # One warning per engine for an import failure (it breaks every entry point), one per
            # entry point for drift (each symbol moves on its own).
            key = (name, "error") if res.status == "error" else (name, entry_point)
            if key not in _warned:
                _warned.add(key)
                what = "is installed but unusable" if res.status == "error" else f"drifted from moecompat's facts for {entry_point}"
                warnings.warn(
                    f"moecompat: {name} {engine.version_str()} {what}, falling back to the reference backend "
                    f"(set MOECOMPAT_STRICT=1 to make this an error): {res.detail}",
                    MoECompatWarning,
                    stacklevel=5,
                )
        skipped.append(f"{name}: {res.status}")
    return "reference", "no engine provides it (" + "; ".join(skipped) + ")"


def get_impl(entry_point: str, backend: object, on_cuda: bool = True) -> Any:
    """The adapter for ``entry_point`` on ``backend`` (``"auto"`` resolved here)."""
    if backend == "auto":
        return REGISTRY.impl(entry_point, auto_backend(entry_point, on_cuda)[0])
    return REGISTRY.impl(entry_point, parse_name(backend, "backend", known_backends()))


def reset() -> None:
    """Forget every resolution, ``auto`` choice and call plan (tests; after installing an engine
    in-process)."""
    with _auto_lock:
        _auto_cache.clear()
        _warned.clear()
    REGISTRY.clear()
