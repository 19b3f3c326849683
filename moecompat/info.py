"""Environment report: installed versions, device, backend choices (``moecompat doctor``)."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import torch
from packaging.version import InvalidVersion, Version

from ._metadata import distribution_version
from ._version import __version__
from .adapters import REGISTRY
from .backends import ENTRY_POINTS, TENSOR_ENTRY_POINTS, auto_backend
from .engines import ENGINES

__all__ = ["EngineInfo", "doctor_report", "engine_info"]

# Distribution names per component, first installed wins (sgl-kernel was renamed sglang-kernel).
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    "vllm": ("vllm",),
    "sglang": ("sglang",),
    "sgl_kernel": ("sglang-kernel", "sgl-kernel"),
    "flashinfer": ("flashinfer-python", "flashinfer"),
}


def _version(dists: tuple[str, ...]) -> Version | None:
    for d in dists:
        raw = distribution_version(d)
        if raw is not None:
            try:
                return Version(raw)
            except InvalidVersion:
                return None
    return None


@dataclasses.dataclass(frozen=True)
class EngineInfo:
    """What moecompat found. Versions are ``packaging.version.Version`` or ``None``."""

    moecompat: str
    python: str
    torch: Version | None
    triton: Version | None
    vllm: Version | None
    sglang: Version | None
    sgl_kernel: Version | None
    flashinfer: Version | None
    cuda_device: str | None
    cuda_capability: tuple[int, int] | None
    #: entry point -> (backend that ``"auto"`` picks for CUDA tensors, reason)
    auto_backend: dict[str, tuple[str, str]]
    #: entry point -> backend ``"auto"`` picks for CPU tensors
    auto_backend_cpu: dict[str, str]
    untested_engines: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in list(d.items()):
            if isinstance(v, Version):
                d[k] = str(v)
        d["cuda_capability"] = list(self.cuda_capability) if self.cuda_capability else None
        return d


def engine_info() -> EngineInfo:
    """Installed versions (torch, triton, vllm, sglang, sgl-kernel/sglang-kernel, flashinfer),
    the CUDA device, and which backend ``"auto"`` picks for each entry point and why."""
    versions = {k: _version(v) for k, v in _COMPONENTS.items()}
    device = cap = None
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
        cap = tuple(torch.cuda.get_device_capability(0))
    auto = {ep: auto_backend(ep, True) for ep in ENTRY_POINTS}
    auto_cpu = {ep: auto_backend(ep, False)[0] for ep in TENSOR_ENTRY_POINTS}
    untested = tuple(
        f"{name} {e.version_str()}" for name, e in ENGINES.items() if e.version() is not None and not e.is_tested()
    )
    return EngineInfo(
        moecompat=__version__,
        python=platform.python_version(),
        cuda_device=device,
        cuda_capability=cap,  # type: ignore[arg-type]
        auto_backend=auto,
        auto_backend_cpu=auto_cpu,
        untested_engines=untested,
        **versions,
    )


def doctor_report() -> dict[str, Any]:
    """The ``moecompat doctor --json`` object."""
    info = engine_info()
    entry_points: dict[str, dict[str, Any]] = {}
    backends = ["reference"] + [n for n, e in ENGINES.items() if e.version() is not None]
    for ep in ENTRY_POINTS:
        entry_points[ep] = {b: REGISTRY.resolution(ep, b).as_dict() for b in backends}
    return {
        "moecompat": info.moecompat,
        "python": info.python,
        "torch": str(info.torch) if info.torch else None,
        "triton": str(info.triton) if info.triton else None,
        "cuda_device": info.cuda_device,
        "cuda_capability": list(info.cuda_capability) if info.cuda_capability else None,
        "engines": {
            "vllm": str(info.vllm) if info.vllm else None,
            "sglang": str(info.sglang) if info.sglang else None,
            "sgl_kernel": str(info.sgl_kernel) if info.sgl_kernel else None,
            "flashinfer": str(info.flashinfer) if info.flashinfer else None,
        },
        "untested_engines": list(info.untested_engines),
        "auto_backend": {ep: {"cuda": b, "reason": r} for ep, (b, r) in info.auto_backend.items()},
        "entry_points": entry_points,
    }
