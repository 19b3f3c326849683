"""Adapter machinery (private): keyed facts, locations, signature variants, resolutions, backends.

An *adapter* runs one moecompat entry point (``fused_experts``, ``select_experts``, ...) on one
backend (``reference``, ``vllm``, ``sglang``). A backend's *builder* for an entry point resolves
it once per process: it finds the engine's symbols where its version facts say they live, picks a
call form with ``inspect.Signature.bind`` and returns a specialised callable. The registry caches
the outcome (a `Resolution`); calling the adapter afterwards costs a dict lookup. A
``TypeError`` raised while an engine kernel runs is never caught, so a real kernel error surfaces
as itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from .errors import EngineDriftError, InvalidInputError, MoECompatError, UnsupportedFeatureError

__all__ = [
    "REGISTRY",
    "AdapterRegistry",
    "Backend",
    "Fact",
    "Location",
    "Resolution",
    "Variant",
    "find_symbol",
    "pick_variant",
    "qualified_name",
]

#: ``ok``: resolved. ``unsupported``: the installed release lacks it, as its facts say.
#: ``drift``: the release contradicts its facts, or is outside the tested range and lacks it.
#: ``error``: the engine is installed but does not import, or probing it failed.
Status = Literal["ok", "unsupported", "drift", "error"]
FactKind = Literal["symbol", "param", "behaviour"]


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a symbol lives: ``module`` plus a dotted ``qualname`` inside it."""

    module: str
    qualname: str

    @classmethod
    def parse(cls, where: str) -> Location:
        module, _, qualname = where.partition(":")
        return cls(module, qualname)

    def load(self) -> Any:
        obj: Any = importlib.import_module(self.module)
        for part in self.qualname.split("."):
            obj = getattr(obj, part)
        return obj

    def __str__(self) -> str:
        return f"{self.module}:{self.qualname}"


@dataclasses.dataclass(frozen=True)
class Fact:
    """One keyed fact about an engine's API, with the releases it holds for.

    ``key`` names the fact for the adapters (``engine.find("fused_experts")``,
    ``engine.param("fused_experts.expert_map")``, ``engine.holds("...")``). Keys of the form
    ``name@place`` are alternative locations of the symbol ``name`` (it moved between releases).

    * ``kind="symbol"``: ``where`` (``module:qualname``) exists exactly in ``versions``;
    * ``kind="param"``: the callable at ``where`` has parameter ``param`` exactly in ``versions``;
    * ``kind="behaviour"``: documented behaviour (``where``: the module it is about, if any),
      pinned by a dedicated test.

    Symbol and parameter facts are checked against every recorded release's API snapshot
    (``tests/unit/test_surface_facts.py``) and against the installed release by the engine
    matrix (``tests/engines/test_facts.py``).
    """

    key: str
    versions: str
    where: str = ""
    kind: FactKind = "symbol"
    param: str = ""
    what: str = ""
    #: False where the API snapshots (read with ``ast``) cannot see the symbol, e.g. a module
    #: ``__getattr__``; such a fact is pinned by the engine matrix only.
    static: bool = True

    def __post_init__(self) -> None:
        try:
            SpecifierSet(self.versions)
        except InvalidSpecifier:
            raise InvalidInputError(f"Fact({self.key!r}).versions", "a PEP 440 specifier set", repr(self.versions)) from None
        if self.kind in ("symbol", "param") and ":" not in self.where:
            raise InvalidInputError(f"Fact({self.key!r}).where", "'module:qualname'", repr(self.where))
        if (self.kind == "param") != bool(self.param):
            raise InvalidInputError(f"Fact({self.key!r}).param", "a parameter name exactly for kind='param'", repr(self.param))

    @functools.cached_property
    def specifier(self) -> SpecifierSet:
        return SpecifierSet(self.versions)

    @property
    def symbol(self) -> str:
        """The logical symbol a symbol fact locates (``key`` without its ``@place``)."""
        return self.key.split("@", 1)[0]

    @property
    def description(self) -> str:
        return self.what or self.key

    @property
    def location(self) -> Location:
        return Location.parse(self.where)

    def holds_for(self, version: Version) -> bool:
        return self.specifier.contains(version, prereleases=True)

    def constant_from(self, floor: Version) -> bool:
        """Whether the fact has the same truth value for every release from ``floor`` on, i.e.
        the compatibility branch it selects can be removed once ``floor`` is the oldest release
        moecompat supports (scikit-learn ``utils/fixes.py`` style)."""
        bounds = sorted({Version(s.version.replace(".*", "")) for s in self.specifier} | {floor})
        probes = [b for b in bounds if b >= floor] + [Version("9999")]
        values = {self.holds_for(v) for v in probes}
        # Just below each upper or exclusive bound too ("<0.11" changes at 0.11).
        values |= {self.holds_for(Version(f"{b}.dev0")) for b in bounds if b > floor}
        return len(values) == 1


def find_symbol(locations: Sequence[Location], accept: Callable[[Any], bool] | None = None) -> tuple[Location, Any]:
    """The first ``(location, object)`` that imports (and that ``accept`` accepts).

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

    ``positional`` leading arguments and the keyword parameters ``keywords`` (names, already
    read from the engine's parameter facts). The variant applies when
    ``inspect.signature(target).bind(...)`` with that many positional and those keyword
    arguments succeeds.
    """

    name: str
    positional: int = 0
    keywords: tuple[str, ...] = ()

    def binds(self, signature: inspect.Signature) -> bool:
        try:
            signature.bind(*(None,) * self.positional, **dict.fromkeys(self.keywords))
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
    """Outcome of resolving one (entry point, backend) adapter; what ``moecompat doctor`` shows.

    ``drift`` lists, for a ``"drift"`` status (and as warnings for an ``"ok"`` one), what the
    installed release contradicts: the fact, where it was looked for, and the tested range.
    """

    entry_point: str
    backend: str
    status: Status
    impl: Any = None
    resolved: str | None = None
    variant: str | None = None
    detail: str | None = None
    error: MoECompatError | None = None
    drift: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "resolved": self.resolved,
            "variant": self.variant,
            "detail": self.detail,
            "drift": list(self.drift),
        }

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error
        raise UnsupportedFeatureError(self.backend, None, self.entry_point, detail=self.detail or "")


Builder = Callable[[Any], Resolution]


class Backend:
    """A moecompat backend: a name and one builder per entry point it provides.

    The reference backend is a plain ``Backend``; engines are `moecompat.engines.base.Engine`
    (version detection, guarded import, version facts). Builders are registered with
    `adapter` and run once per process by `REGISTRY`.
    """

    #: Entry points the backend lacks on purpose, and why (``unsupported`` with that detail).
    lacks: Mapping[str, str] = {}

    def __init__(self, name: str, lacks: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.builders: dict[str, Builder] = {}
        self.lacks = dict(lacks or {})

    def adapter(self, entry_point: str) -> Callable[[Builder], Builder]:
        """Decorator registering the builder of ``entry_point``'s adapter."""

        def deco(fn: Builder) -> Builder:
            self.builders[entry_point] = fn
            return fn

        return deco

    def installed(self) -> bool:
        return True

    def version_str(self) -> str | None:
        return None

    def ok(self, entry_point: str, impl: Any, target: Any, variant: str | None, drift: Sequence[str] = ()) -> Resolution:
        resolved = target if isinstance(target, str) else qualified_name(target)
        return Resolution(entry_point, self.name, "ok", impl=impl, resolved=resolved, variant=variant, drift=tuple(drift))

    def unsupported(self, feature: str, available_in: str = "", detail: str = "") -> UnsupportedFeatureError:
        return UnsupportedFeatureError(self.name, self.version_str(), feature, available_in, detail)

    def resolve(self, entry_point: str) -> Resolution:
        if entry_point in self.lacks:
            detail = self.lacks[entry_point]
            return Resolution(entry_point, self.name, "unsupported", detail=detail,
                              error=self.unsupported(entry_point, detail=detail))
        builder = self.builders.get(entry_point)
        if builder is None:
            err = self.unsupported(entry_point, detail="moecompat has no adapter for it")
            return Resolution(entry_point, self.name, "unsupported", detail=str(err), error=err)
        try:
            return builder(self)
        except EngineDriftError as exc:
            return Resolution(entry_point, self.name, "drift", detail=str(exc), error=exc, drift=(exc.detail,))
        except UnsupportedFeatureError as exc:
            return Resolution(entry_point, self.name, "unsupported", detail=str(exc), error=exc)
        except Exception as exc:
            res = self._on_failure(entry_point, exc)
            if res is None:
                raise
            return res

    def _on_failure(self, entry_point: str, exc: Exception) -> Resolution | None:
        """The resolution of a builder that raised ``exc`` (not an UnsupportedFeatureError), or
        ``None`` to let it propagate; engines turn probe failures into drift or errors."""
        return None


Resolver = Callable[[], Resolution]


class AdapterRegistry:
    """Per-process cache of resolved adapters; thread-safe, each adapter resolved once."""

    def __init__(self) -> None:
        self._resolvers: dict[str, dict[str, Resolver]] = {}
        self._resolved: dict[tuple[str, str], Resolution] = {}
        #: (entry point, backend) -> adapter, filled on first resolution; the hot paths read it.
        self.fast: dict[tuple[str, str], Any] = {}
        self._lock = threading.RLock()
        self.resolve_counts: dict[tuple[str, str], int] = {}
        #: Called after every clear(): caches built on resolved adapters (call plans) drop them.
        self.on_clear: list[Callable[[], None]] = []

    def register(self, backend: str, entry_point: str, resolver: Resolver) -> None:
        with self._lock:
            self._resolvers.setdefault(backend, {})[entry_point] = resolver
            stale = self._resolved.pop((entry_point, backend), None)
            self.fast.pop((entry_point, backend), None)
        if stale is not None:
            for callback in self.on_clear:
                callback()

    def unregister(self, backend: str) -> None:
        with self._lock:
            self._resolvers.pop(backend, None)
            for key in [k for k in self._resolved if k[1] == backend]:
                self._resolved.pop(key, None)
                self.fast.pop(key, None)
        for callback in self.on_clear:
            callback()

    def backends(self) -> list[str]:
        return list(self._resolvers)

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
                    self.fast[key] = res.impl
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

    def impl(self, entry_point: str, backend: str) -> Any:
        """The resolved adapter, or the resolution's ``MoECompatError``."""
        fn = self.fast.get((entry_point, backend))
        if fn is not None:
            return fn
        res = self.resolution(entry_point, backend)
        if res.status != "ok" or res.impl is None:
            res.raise_error()
        return res.impl

    def clear(self) -> None:
        """Forget every resolution (tests; after installing an engine in-process)."""
        with self._lock:
            self._resolved.clear()
            self.fast.clear()
            self.resolve_counts.clear()
        for callback in self.on_clear:
            callback()


REGISTRY = AdapterRegistry()
