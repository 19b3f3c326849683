"""Adapter machinery: find a symbol, pick a parameter set with ``Signature.bind``, cache once.

An *adapter* is the callable that runs one moecompat entry point (``fused_experts``,
``select_experts``, ...) on one backend (``reference``, ``vllm``, ``sglang``). Resolving it
imports the engine, finds the symbol among candidate :class:`Location` s, inspects its signature
**once**, picks the first :class:`Variant` whose parameter set binds, and builds a closure
specialised to that variant. The closure is cached per process; calling it costs a dict lookup
and the engine call, never another ``inspect.signature``. A ``TypeError`` raised while the
engine runs is never caught, so a real kernel error surfaces as itself.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .errors import MoECompatError, UnsupportedFeatureError

__all__ = [
    "REGISTRY",
    "AdapterRegistry",
    "Location",
    "Resolution",
    "Variant",
    "VersionFact",
    "find_symbol",
    "pick_variant",
]

Status = Literal["ok", "unsupported", "error"]


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a symbol may live: ``module`` plus a dotted ``qualname`` inside it.

    ``versions`` documents the engine versions that have it there (a PEP 440 specifier set);
    resolution does not trust it, it probes.
    """

    module: str
    qualname: str
    versions: str = ""

    def load(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclasses.dataclass(frozen=True)
class VersionFact:
    """One fact about an engine's API, with the versions it holds for.

    ``kind="symbol"``: ``where`` (``module:qualname``) exists exactly in ``versions``.
    ``kind="param"``: the callable at ``where`` has parameter ``param`` exactly in ``versions``.
    ``kind="behaviour"``: documented behaviour, checked by a dedicated test.
    The engine test-suite checks every symbol/param fact against the installed release.
    """

    what: str
    versions: str
    where: str = ""
    kind: Literal["symbol", "param", "behaviour"] = "symbol"
    param: str = ""

    @property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet(self.versions)

    def holds_for(self, version: Version) -> bool:
        return self.specifier.contains(version, prereleases=True)


def find_symbol(
    locations: Sequence[Location], accept: Callable[[Any], bool] | None = None
) -> tuple[Location, Any]:
    """Return the first ``(location, object)`` that imports (and that ``accept`` accepts).

    Raises ``LookupError`` listing every location tried and why it failed.
    """
    failures = []
    for loc in locations:
        try:
            obj = loc.load()
        except ImportError as exc:
            failures.append(f"{loc}: {type(exc).__name__}: {exc}")
            continue
        except AttributeError:
            failures.append(f"{loc}: not defined")
            continue
        if accept is not None and not accept(obj):
            failures.append(f"{loc}: present but not usable (placeholder)")
            continue
        return loc, obj
    raise LookupError("; ".join(failures) or "no candidate locations")


@dataclasses.dataclass(frozen=True)
class Variant:
    """A parameter set an adapter may pass, identified by ``name``.

    ``args``/``kwargs`` are sample arguments (values do not matter, names and count do). The
    variant applies when ``inspect.signature(target).bind(*args, **kwargs)`` succeeds.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, name: str, positional: int, *keywords: str) -> Variant:
        return cls(name, (None,) * positional, dict.fromkeys(keywords))

    def binds(self, signature: inspect.Signature) -> bool:
        try:
            signature.bind(*self.args, **self.kwargs)
        except TypeError:
            return False
        return True


def pick_variant(target: Callable[..., Any], variants: Iterable[Variant]) -> Variant | None:
    """The first variant whose parameter set binds to ``target``'s signature, or ``None``."""
    sig = inspect.signature(target)
    for v in variants:
        if v.binds(sig):
            return v
    return None


def qualified_name(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or "?"
    qual = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    return f"{mod}:{qual}"


@dataclasses.dataclass
class Resolution:
    """Outcome of resolving one (entry point, backend) adapter; what ``moecompat doctor`` shows."""

    entry_point: str
    backend: str
    status: Status
    impl: Callable[..., Any] | None = None
    resolved: str | None = None
    variant: str | None = None
    detail: str | None = None
    error: MoECompatError | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "resolved": self.resolved,
            "variant": self.variant,
            "detail": self.detail,
        }

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
        raise UnsupportedFeatureError(self.backend, None, self.entry_point, detail=self.detail or "")


Resolver = Callable[[], Resolution]


class AdapterRegistry:
    """Per-process cache of resolved adapters; thread-safe, each adapter resolved once."""

    def __init__(self) -> None:
        self._resolvers: dict[str, dict[str, Resolver]] = {}
        self._resolved: dict[tuple[str, str], Resolution] = {}
        self._fast: dict[tuple[str, str], Callable[..., Any]] = {}
        self._lock = threading.RLock()
        self.resolve_counts: dict[tuple[str, str], int] = {}

    def register(self, backend: str, entry_point: str, resolver: Resolver) -> None:
        with self._lock:
            self._resolvers.setdefault(backend, {})[entry_point] = resolver

    def backends(self) -> list[str]:
        return list(self._resolvers)

    def entry_points(self, backend: str) -> list[str]:
        return list(self._resolvers.get(backend, {}))

    def resolution(self, entry_point: str, backend: str) -> Resolution:
        key = (entry_point, backend)
        res = self._resolved.get(key)
        if res is not None:
            return res
        with self._lock:
            res = self._resolved.get(key)
            if res is None:
                res = self._resolve_locked(entry_point, backend)
                self._resolved[key] = res
                if res.status == "ok" and res.impl is not None:
                    self._fast[key] = res.impl
        return res

    def _resolve_locked(self, entry_point: str, backend: str) -> Resolution:
        self.resolve_counts[(entry_point, backend)] = self.resolve_counts.get((entry_point, backend), 0) + 1
        resolver = self._resolvers.get(backend, {}).get(entry_point)
        if resolver is None:
            return Resolution(
                entry_point, backend, "unsupported",
                detail=f"backend {backend!r} has no adapter for {entry_point}",
                error=UnsupportedFeatureError(backend, None, entry_point, detail="no adapter"),
            )
        return resolver()

    def impl(self, entry_point: str, backend: str) -> Callable[..., Any]:
        """The resolved callable, or the resolution's ``MoECompatError``."""
        fn = self._fast.get((entry_point, backend))
        if fn is not None:
            return fn
        res = self.resolution(entry_point, backend)
        if res.status != "ok" or res.impl is None:
            res.raise_error()
        assert res.impl is not None
        return res.impl

    def clear(self) -> None:
        """Forget every resolution (tests; after installing an engine in-process)."""
        with self._lock:
            self._resolved.clear()
            self._fast.clear()
            self.resolve_counts.clear()


REGISTRY = AdapterRegistry()
