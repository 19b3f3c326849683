"""What every engine backend provides: version detection, a guarded import, keyed version facts,
and the probes its adapter builders use.

Builders never name an import path, a parameter or a version range themselves: they ask the
engine by fact key.

* ``engine.find("fused_experts")`` imports the symbol from the locations its facts give
  (the ones that hold for the installed release first) and reports a failure as *drift* when a
  fact said it should be there or the release is newer than the tested range;
* ``engine.params(fact, fn)`` maps each parameter fact of the symbol found at ``fact`` (alias: the
  part of the key after the dot) to the engine's parameter name where the installed callable has
  it;
* ``engine.requires(key, feature)`` is the declarative gate: the parameter or symbol, or an
  [`UnsupportedFeatureError`][moecompat.UnsupportedFeatureError] naming the versions that have it;
* ``engine.holds(key)`` reads a behaviour fact for the installed release.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from .._adapters import Backend, Fact, Resolution, Variant, pick_variant, qualified_name
from .._metadata import distribution_version
from ..errors import (
    EngineDriftError,
    EngineImportError,
    EngineNotInstalledError,
    MoECompatError,
)

__all__ = ["Engine", "Params", "ProbeFailure", "mask_expert_map"]


def mask_expert_map(topk_weights: Any, topk_ids: Any, expert_map: Any) -> tuple[Any, Any]:
    """Apply an expert map outside the kernel: local ids, and weight zero for the slots of
    experts on other ranks (computed on local expert 0, contributing nothing)."""
    local = expert_map[topk_ids.long()]
    keep = local >= 0
    return topk_weights * keep, local.where(keep, 0).to(topk_ids.dtype)


class ProbeFailure(LookupError):
    """A symbol was found at none of the locations its facts give."""

    def __init__(self, symbol: str, tried: Sequence[str], expected: bool) -> None:
        self.symbol = symbol
        self.tried = tuple(tried)
        #: Some fact says the symbol exists in the installed release.
        self.expected = expected
        super().__init__(f"{symbol}: " + "; ".join(tried))


class Params(dict[str, str]):
    """``{alias: engine parameter name}`` of one callable (from [`params`][moecompat.engines.base.Engine.params]).

    ``params["alias"]`` asserts the parameter is there (a missing one is drift, a clear
    [`EngineDriftError`][moecompat.errors.EngineDriftError]); ``params.get("alias")`` asks.
    """

    def __init__(self, engine: Engine, symbol: str, target: Any, found: dict[str, str]) -> None:
        super().__init__(found)
        self._engine, self._symbol, self._target = engine, symbol, target

    def __missing__(self, alias: str) -> str:
        raise self._engine.drift(f"{self._symbol}({alias}=...)", f"{qualified_name(self._target)} has no parameter "
                                 f"that fact {self._symbol}.{alias} names")


class Engine(Backend):
    """One inference engine (vLLM, SGLang) as a moecompat backend, from its declaration in
    `moecompat.engines._specs` and its fact table."""

    def __init__(self, spec: Mapping[str, Any], facts: Sequence[Fact], lacks: Mapping[str, str] | None = None) -> None:
        super().__init__(spec["name"], lacks)
        self.spec = dict(spec)
        self.label: str = spec["label"]
        self.distributions: tuple[str, ...] = tuple(spec["distributions"])
        self.root_module: str = spec["root_module"]
        self.tested = SpecifierSet(spec["tested"])
        self.facts: tuple[Fact, ...] = tuple(facts)
        self._by_key: dict[str, Fact] = {}
        for f in self.facts:
            if f.key in self._by_key:
                raise ValueError(f"{self.name}: duplicate fact key {f.key!r}")
            self._by_key[f.key] = f
        self._version: Version | bool | None = False  # False: not looked up yet
        self._load_error: BaseException | bool | None = False
        self._lock = threading.Lock()
        self._notes = threading.local()
        self._signatures: dict[int, inspect.Signature | None] = {}

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

    def installed(self) -> bool:
        return self.version() is not None

    def is_tested(self) -> bool:
        v = self.version()
        return v is not None and self.tested.contains(v, prereleases=True)

    def newer_than_tested(self) -> bool:
        v = self.version()
        return v is not None and not self.is_tested() and all(
            v > Version(s.version) for s in self.tested if s.operator in (">=", ">", "=="))

    def load(self) -> None:
        """Import the engine's MoE modules once; raise [`EngineImportError`][moecompat.EngineImportError] if that fails."""
        if self._load_error is False:
            with self._lock:
                if self._load_error is False:
                    err: BaseException | None = None
                    try:
                        __import__(self.root_module)
                    except Exception as exc:
                        err = exc
                    self._load_error = err
        if self._load_error is not None:
            cause = self._load_error
            assert isinstance(cause, BaseException)
            raise EngineImportError(
                self.name, self.version_str(), f"importing {self.root_module}",
                detail="the engine is installed but does not import", cause=cause,
            )

    # -- facts ---------------------------------------------------------------------------------
    def fact(self, key: str) -> Fact:
        return self._by_key[key]

    def holds(self, key: str) -> bool:
        """Whether fact ``key`` holds for the installed release (False when not installed)."""
        v = self.version()
        return v is not None and self._by_key[key].holds_for(v)

    def range(self, key: str) -> str:
        """The versions fact ``key`` holds for (for messages: "versions that have it")."""
        return self._by_key[key].versions

    def symbol_facts(self, symbol: str) -> list[Fact]:
        return [f for f in self.facts if f.kind == "symbol" and f.symbol == symbol]

    def has_symbol(self, symbol: str) -> bool:
        """Whether a location fact of ``symbol`` (any ``symbol@place``) holds for the installed
        release (False when not installed)."""
        v = self.version()
        return v is not None and any(f.holds_for(v) for f in self.symbol_facts(symbol))

    def _note(self, text: str) -> None:
        stack = getattr(self._notes, "stack", None)
        if stack:
            stack[-1].append(text)

    def _where(self) -> str:
        return f"{self.label} {self.version_str()} (tested: {self.name}{self.tested})"

    # -- probes for builders -------------------------------------------------------------------
    def find(self, symbol: str, accept: Callable[[Any], bool] | None = None) -> tuple[Fact, Any]:
        """Import ``symbol`` from the locations of its facts, those that hold for the installed
        release first. Finding it only where no fact expects it is noted as drift; finding it
        nowhere raises [`ProbeFailure`][moecompat.engines.base.ProbeFailure]."""
        candidates = self.symbol_facts(symbol)
        if not candidates:
            raise KeyError(f"{self.name}: no symbol fact for {symbol!r}")
        v = self.version()
        holding = [f for f in candidates if v is not None and f.holds_for(v)]
        tried: list[str] = []
        missed: list[Fact] = []
        for f in holding + [f for f in candidates if f not in holding]:
            try:
                obj = f.location.load()
            except ImportError as exc:
                tried.append(f"{f.where}: {type(exc).__name__}: {exc}")
                missed.append(f)
                continue
            except AttributeError:
                tried.append(f"{f.where}: not defined")
                missed.append(f)
                continue
            if accept is not None and not accept(obj):
                tried.append(f"{f.where}: present but not usable (placeholder)")
                continue
            if f not in holding:
                self._note(f"{symbol}: found at {f.where}, which fact {f.key!r} gives for {self.name}{f.versions} only")
            for m in missed:
                if m in holding:
                    self._note(f"{symbol}: not at {m.where} (fact {m.key!r}: {self.name}{m.versions})")
            return f, obj
        raise ProbeFailure(symbol, tried, expected=bool(holding))

    def need(self, symbol: str, feature: str, accept: Callable[[Any], bool] | None = None) -> tuple[Fact, Any]:
        """`find`, behind a gate: where no fact of ``symbol`` holds for a tested release,
        an ``UnsupportedFeatureError`` naming the versions that have it (a release outside the
        tested range is probed anyway, and a miss there is drift)."""
        v = self.version()
        if self.is_tested() and v is not None and not self.has_symbol(symbol):
            raise self.unsupported(feature, available_in=self.available_in(symbol))
        return self.find(symbol, accept)

    def available_in(self, name: str) -> str:
        """The releases that have ``name`` (a symbol, or ``symbol.alias`` of a parameter) at any
        of its locations: ``">=X"`` from the oldest lower bound of its facts ("" if it has none)."""
        facts = [f for f in self.facts if f.kind != "behaviour" and (f.symbol == name or f.key.split("@", 1)[0] == name)]
        if not facts:
            raise KeyError(f"{self.name}: no fact for {name!r}")
        lows = []
        for f in facts:
            bounds = [Version(s.version) for s in f.specifier if s.operator in (">=", "==", "~=")]
            if not bounds:
                return ""
            lows.append(min(bounds))
        return f">={min(lows)}"

    def load_fact(self, key: str) -> Any:
        """The object at symbol fact ``key``'s location (``ProbeFailure`` if it is not there)."""
        f = self._by_key[key]
        try:
            return f.location.load()
        except (ImportError, AttributeError) as exc:
            raise ProbeFailure(key, [f"{f.where}: {type(exc).__name__}: {exc}"], expected=self.holds(key)) from None

    def _signature(self, target: Any) -> inspect.Signature | None:
        key = id(target)
        if key not in self._signatures:
            try:
                self._signatures[key] = inspect.signature(target)
            except (TypeError, ValueError):
                self._signatures[key] = None
        return self._signatures[key]

    def param(self, key: str, target: Any) -> str | None:
        """The engine's parameter name for param fact ``key`` if ``target`` has it, else None.
        A result that contradicts the fact is noted as drift."""
        f = self._by_key[key]
        sig = self._signature(target)
        present = sig is not None and f.param in sig.parameters
        v = self.version()
        if v is not None and present != f.holds_for(v):
            self._note(f"{key}: {qualified_name(target)} {'has' if present else 'lacks'} parameter {f.param!r}, "
                       f"fact says {self.name}{f.versions}")
        return f.param if present else None

    def params(self, found: Fact, target: Any) -> Params:
        """The parameters of ``target`` (the object `find` returned for symbol fact
        ``found``) that its param facts name: every fact ``<symbol>.<alias>[@place]`` at the same
        location, as ``{alias: engine parameter name}`` (a renamed parameter is one alias with a
        fact per name)."""
        out: dict[str, str] = {}
        prefix = found.symbol + "."
        for f in self.facts:
            if f.kind == "param" and f.key.startswith(prefix) and f.where == found.where:
                alias = f.key[len(prefix):].split("@", 1)[0]
                name = self.param(f.key, target)
                if name is not None and alias not in out:  # the first fact of an alias wins
                    out[alias] = name
        return Params(self, found.symbol, target, out)

    def requires(self, key: str, feature: str, target: Any = None) -> Any:
        """A declarative gate: the parameter name (param fact, on ``target``) or the object (symbol
        fact), or ``UnsupportedFeatureError`` naming the versions that have it (drift where the
        fact says the installed release has it)."""
        f = self._by_key[key]
        if f.kind == "param":
            name = self.param(key, target)
            if name is not None:
                return name
            failure = f"{qualified_name(target)} has no parameter {f.param!r}"
        else:
            try:
                return self.load_fact(key)
            except ProbeFailure as exc:
                failure = "; ".join(exc.tried)
        if self.holds(key) or self.newer_than_tested():
            raise self.drift(feature, failure, f)
        raise self.unsupported(feature, available_in=f.versions)

    def pick(self, target: Any, variants: Sequence[tuple[str, int, Sequence[str]]], feature: str) -> Variant:
        """The first call form ``(name, positional, param keys)`` whose parameters (read from the
        facts) bind to ``target`` with ``Signature.bind``."""
        built = []
        for name, positional, keys in variants:
            kws = [self._by_key[k].param for k in keys]
            built.append(Variant(name, positional, tuple(kws)))
        v = pick_variant(target, built)
        if v is None:
            detail = f"{qualified_name(target)} matches no known signature variant ({', '.join(x.name for x in built)})"
            if self.is_tested() or self.newer_than_tested():
                raise self.drift(feature, detail)
            raise self.unsupported(feature, detail=detail)
        return v

    def drift(self, feature: str, detail: str, fact: Fact | None = None) -> EngineDriftError:
        where = f"fact {fact.key!r} says {self.name}{fact.versions}; " if fact is not None else ""
        return EngineDriftError(self.name, self.version_str(), feature, detail=f"{where}{detail}",
                                tested=str(self.tested))

    def behaviour_facts_for_module(self, module: str) -> Iterator[Fact]:
        v = self.version()
        for f in self.facts:
            if f.kind == "behaviour" and f.where == module and v is not None and f.holds_for(v):
                yield f

    # -- resolution ----------------------------------------------------------------------------
    def resolve(self, entry_point: str) -> Resolution:
        if self.version() is None:
            err = EngineNotInstalledError(self.name, entry_point, self.spec.get("install", self.name))
            return Resolution(entry_point, self.name, "unsupported", detail=f"{self.name} is not installed", error=err)
        try:
            self.load()
        except EngineImportError as exc:
            return Resolution(entry_point, self.name, "error", detail=str(exc), error=exc)
        stack = getattr(self._notes, "stack", None)
        if stack is None:
            stack = self._notes.stack = []
        stack.append([])
        try:
            res = self._build(entry_point)
        finally:
            notes = stack.pop()
        if notes:
            res.drift = tuple(dict.fromkeys((*res.drift, *notes)))
        return res

    def _build(self, entry_point: str) -> Resolution:
        return Backend.resolve(self, entry_point)

    def _on_failure(self, entry_point: str, exc: Exception) -> Resolution | None:
        if isinstance(exc, ProbeFailure):
            if exc.expected or self.newer_than_tested():
                why = ("a fact says this release has it" if exc.expected
                       else f"{self.version_str()} is newer than the tested releases ({self.name}{self.tested})")
                err = self.drift(entry_point, f"{exc.symbol} not found ({why}); looked in: " + "; ".join(exc.tried))
                return Resolution(entry_point, self.name, "drift", detail=str(err), error=err, drift=(err.detail,))
            unsupported = self.unsupported(entry_point, detail=str(exc))
            return Resolution(entry_point, self.name, "unsupported", detail=str(unsupported), error=unsupported)
        if isinstance(exc, MoECompatError):
            return None
        failed = EngineImportError(self.name, self.version_str(), entry_point, detail="probing failed", cause=exc)
        return Resolution(entry_point, self.name, "error", detail=str(failed), error=failed)
