"""What every engine module provides: version detection, a guarded import, version facts, and
adapter builders registered with :data:`moecompat.adapters.REGISTRY`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from .._metadata import distribution_version
from ..adapters import Location, Resolution, VersionFact, find_symbol, pick_variant, qualified_name
from ..errors import EngineImportError, MoECompatError, UnsupportedFeatureError
from ..vocab import QuantScheme

__all__ = ["TRITON_SCHEME_FLAGS", "Builder", "Engine", "mask_expert_map"]

def mask_expert_map(topk_weights: Any, topk_ids: Any, expert_map: Any) -> tuple[Any, Any]:
    """Apply an expert map outside the kernel: local ids, and weight zero for the slots of
    experts on other ranks (computed on local expert 0, contributing nothing)."""
    local = expert_map[topk_ids.long()]
    keep = local >= 0
    return topk_weights * keep, local.where(keep, 0).to(topk_ids.dtype)


#: moecompat scheme -> the ``use_*`` flag of the Triton fused-MoE kernels (vLLM and SGLang).
TRITON_SCHEME_FLAGS: dict[QuantScheme, str] = {
    QuantScheme.FP8_W8A8: "use_fp8_w8a8",
    QuantScheme.INT8_W8A8: "use_int8_w8a8",
    QuantScheme.INT8_W8A16: "use_int8_w8a16",
    QuantScheme.INT4_W4A16: "use_int4_w4a16",
}


#: Builds one adapter for an engine; raises UnsupportedFeatureError / LookupError when it can't.
Builder = Callable[["Engine"], Resolution]


class Engine:
    """One inference engine (vLLM, SGLang) as a moecompat backend."""

    def __init__(
        self,
        name: str,
        distributions: Sequence[str],
        root_modules: Sequence[str],
        tested: str,
        facts: Sequence[VersionFact],
    ) -> None:
        self.name = name
        self.distributions = tuple(distributions)
        self.root_modules = tuple(root_modules)
        self.tested = SpecifierSet(tested)
        self.facts = tuple(facts)
        self.builders: dict[str, Builder] = {}
        self._version: Version | bool | None = False  # False: not looked up yet
        self._load_error: BaseException | bool | None = False
        self._lock = threading.Lock()

    # -- discovery -----------------------------------------------------------------------------
    def version(self) -> Version | None:
        if self._version is False:
            found = None
            for dist in self.distributions:
                raw = distribution_version(dist)
                if raw is not None:
                    try:
                        found = Version(raw)
                    except InvalidVersion:
                        continue
                    break
            self._version = found
        return self._version  # type: ignore[return-value]

    def version_str(self) -> str | None:
        v = self.version()
        return str(v) if v is not None else None

    def is_tested(self) -> bool:
        v = self.version()
        return v is not None and self.tested.contains(v, prereleases=True)

    def load(self) -> None:
        """Import the engine's MoE modules once; raise :class:`EngineImportError` if that fails."""
        if self._load_error is False:
            with self._lock:
                if self._load_error is False:
                    err: BaseException | None = None
                    for mod in self.root_modules:
                        try:
                            __import__(mod)
                        except Exception as exc:
                            err = exc
                            break
                    self._load_error = err
        if self._load_error is not None:
            cause = self._load_error
            assert isinstance(cause, BaseException)
            raise EngineImportError(
                self.name, self.version_str(), f"importing {self.root_modules[0]}",
                detail="the engine is installed but does not import", cause=cause,
            )

    # -- facts ---------------------------------------------------------------------------------
    def fact(self, what: str) -> VersionFact:
        for f in self.facts:
            if f.what == what:
                return f
        raise KeyError(what)

    def unsupported(self, feature: str, available_in: str = "", detail: str = "") -> UnsupportedFeatureError:
        return UnsupportedFeatureError(self.name, self.version_str(), feature, available_in, detail)

    # -- adapters ------------------------------------------------------------------------------
    def adapter(self, entry_point: str) -> Callable[[Builder], Builder]:
        """Decorator registering the builder of ``entry_point``'s adapter."""

        def deco(fn: Builder) -> Builder:
            self.builders[entry_point] = fn
            return fn

        return deco

    def resolve(self, entry_point: str) -> Resolution:
        if self.version() is None:
            return Resolution(
                entry_point, self.name, "unsupported", detail=f"{self.name} is not installed",
                error=UnsupportedFeatureError(self.name, None, entry_point, detail="install the engine"),
            )
        try:
            self.load()
        except EngineImportError as exc:
            return Resolution(entry_point, self.name, "error", detail=str(exc), error=exc)
        builder = self.builders.get(entry_point)
        if builder is None:
            err = self.unsupported(entry_point, detail="moecompat has no adapter for it")
            return Resolution(entry_point, self.name, "unsupported", detail=str(err), error=err)
        try:
            return builder(self)
        except UnsupportedFeatureError as exc:
            return Resolution(entry_point, self.name, "unsupported", detail=str(exc), error=exc)
        except LookupError as exc:
            err = self.unsupported(entry_point, detail=str(exc))
            return Resolution(entry_point, self.name, "unsupported", detail=str(err), error=err)
        except MoECompatError:
            raise
        except Exception as exc:
            err = EngineImportError(self.name, self.version_str(), entry_point, detail="probing failed", cause=exc)
            return Resolution(entry_point, self.name, "error", detail=str(err), error=err)

    def ok(self, entry_point: str, impl: Callable[..., Any], target: Any, variant: str | None) -> Resolution:
        resolved = target if isinstance(target, str) else qualified_name(target)
        return Resolution(entry_point, self.name, "ok", impl=impl, resolved=resolved, variant=variant)

    def find(self, locations: Sequence[Location], accept: Callable[[Any], bool] | None = None) -> tuple[Location, Any]:
        return find_symbol(locations, accept)

    def pick(self, target: Any, variants: Sequence[Any], feature: str) -> Any:
        v = pick_variant(target, variants)
        if v is None:
            raise self.unsupported(
                feature, detail=f"{qualified_name(target)} matches no known signature variant ({', '.join(x.name for x in variants)})"
            )
        return v

