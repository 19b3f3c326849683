"""Environment report: installed versions, device, backend choices and drift (``moecompat doctor``)."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import torch
from packaging.version import InvalidVersion, Version

from ._adapters import REGISTRY
from ._backends import BACKENDS, ENTRY_POINTS, TENSOR_ENTRY_POINTS, auto_backend
from ._metadata import distribution_version
from ._version import __version__
from .engines import ENGINE_SPECS, ENGINES

__all__ = ["EngineInfo", "doctor_report", "engine_info"]

# Distribution names per component, first installed wins (sgl-kernel was renamed sglang-kernel).
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    **{spec["name"]: tuple(spec["distributions"]) for spec in ENGINE_SPECS},
    **{name: tuple(dists) for spec in ENGINE_SPECS for name, dists in spec["components"].items()},
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
    """What moecompat found. Versions are ``packaging.version.Version`` or ``None``.

    ``drift`` maps ``"engine:entry_point"`` to what the installed release contradicts in
    moecompat's facts (a moved or renamed symbol or parameter, or a release newer than the tested
    range that lacks it), with where it was looked for; empty when every fact holds.
    """

    moecompat: str
    python: str
    torch: Version | None
    triton: Version | None
    #: Each engine of ``moecompat/engines/_specs.py`` and the components it names
    #: (``vllm``, ``sglang``, ``sgl_kernel``, ``flashinfer``), also readable as attributes.
    versions: dict[str, Version | None]
    cuda_device: str | None
    cuda_capability: tuple[int, int] | None
    #: entry point -> (backend that ``"auto"`` picks for CUDA tensors, reason)
    auto_backend: dict[str, tuple[str, str]]
    #: entry point -> backend ``"auto"`` picks for CPU tensors
    auto_backend_cpu: dict[str, str]
    untested_engines: tuple[str, ...]
    drift: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        versions = self.__dict__.get("versions")
        if versions is not None and name in versions:
            return versions[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        versions = d.pop("versions")
        d.update(versions)
        for k, v in list(d.items()):
            if isinstance(v, Version):
                d[k] = str(v)
        d["cuda_capability"] = list(self.cuda_capability) if self.cuda_capability else None
        d["drift"] = {k: list(v) for k, v in self.drift.items()}
        return d


def _drift() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, engine in ENGINES.items():
        if engine.version() is None:
            continue
        for ep in ENTRY_POINTS:
            res = REGISTRY.resolution(ep, name)
            if res.drift:
                out[f"{name}:{ep}"] = res.drift
    return out


def engine_info() -> EngineInfo:
    """Installed versions (torch, triton, vllm, sglang, sgl-kernel/sglang-kernel, flashinfer),
    the CUDA device, which backend ``"auto"`` picks for each entry point and why, and any drift
    between the installed engine releases and moecompat's facts."""
    found = {k: _version(v) for k, v in _COMPONENTS.items()}
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
        drift=_drift(),
        torch=found.pop("torch"),
        triton=found.pop("triton"),
        versions=found,
    )


def doctor_report() -> dict[str, Any]:
    """The ``moecompat doctor --json`` object."""
    info = engine_info()
    entry_points: dict[str, dict[str, Any]] = {}
    backends = [n for n, b in BACKENDS.items() if b.installed()]
    for ep in ENTRY_POINTS:
        entry_points[ep] = {b: REGISTRY.resolution(ep, b).as_dict() for b in backends}
    return {
        "moecompat": info.moecompat,
        "python": info.python,
        "torch": str(info.torch) if info.torch else None,
        "triton": str(info.triton) if info.triton else None,
        "cuda_device": info.cuda_device,
        "cuda_capability": list(info.cuda_capability) if info.cuda_capability else None,
        "engines": {name: (str(v) if v is not None else None) for name, v in info.versions.items()},
        "tested": {name: f"{name}{engine.tested}" for name, engine in ENGINES.items()},
        "untested_engines": list(info.untested_engines),
        "drift": {k: list(v) for k, v in info.drift.items()},
        "auto_backend": {ep: {"cuda": b, "reason": r} for ep, (b, r) in info.auto_backend.items()},
        "entry_points": entry_points,
    }
