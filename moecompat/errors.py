"""Exceptions raised by moecompat.

Every error moecompat raises on purpose derives from [`MoECompatError`][moecompat.MoECompatError],
so callers can catch the library's errors without catching unrelated ``ValueError``/``TypeError``
from deep inside an engine kernel (those are never caught, wrapped or retried by moecompat).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "EngineDriftError",
    "EngineImportError",
    "EngineNotInstalledError",
    "InvalidInputError",
    "MissingDependencyError",
    "MoECompatError",
    "MoECompatWarning",
    "UnsupportedFeatureError",
]


class MoECompatError(Exception):
    """Base class of every error moecompat raises on purpose."""


class MoECompatWarning(UserWarning):
    """Warnings moecompat emits (engine fallback, untested engine version)."""


class InvalidInputError(MoECompatError, ValueError):
    """An argument has the wrong shape, dtype, device, value or name.

    ``InvalidInputError(argument, expected, actual, hint="")``: the message names the argument
    and says what was expected and what was given; ``argument``, ``expected``, ``actual`` and
    ``hint`` are kept as attributes for programs.
    """

    # No __init__ of its own (the values live in ``args``): torch.compile's Dynamo can then
    # build and report the error while it traces moecompat's checks.

    @property
    def argument(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def expected(self) -> Any:
        return self.args[1] if len(self.args) > 1 else None

    @property
    def actual(self) -> Any:
        return self.args[2] if len(self.args) > 2 else None

    @property
    def hint(self) -> str:
        return str(self.args[3]) if len(self.args) > 3 and self.args[3] else ""

    def __str__(self) -> str:
        if len(self.args) < 3:
            return super().__str__()
        msg = f"{self.argument}: expected {self.expected}, got {self.actual}"
        if self.hint:
            msg += f" ({self.hint})"
        return msg


class UnsupportedFeatureError(MoECompatError, NotImplementedError):
    """The selected engine (at the installed version) cannot do what was asked.

    Attributes: ``engine`` ("vllm", "sglang", ...), ``installed`` (version string or None when
    the engine is not installed), ``feature`` (what was asked), ``available_in`` (the version
    range that has it, e.g. ">=0.10", or "" when no version has it) and ``cause`` (the original
    exception, for an engine that failed to import).
    """

    def __init__(
        self,
        engine: str,
        installed: str | None,
        feature: str,
        available_in: str = "",
        detail: str = "",
        cause: BaseException | None = None,
    ) -> None:
        self.engine = engine
        self.installed = installed
        self.feature = feature
        self.available_in = available_in
        self.detail = detail
        self.cause = cause
        where = f"{engine} {installed}" if installed else f"{engine} (not installed)"
        msg = f"{feature} is not supported by {where}"
        if available_in:
            msg += f"; versions that have it: {engine}{available_in}"
        if detail:
            msg += f"; {detail}"
        if cause is not None:
            msg += f"; cause: {type(cause).__name__}: {cause}"
        super().__init__(msg)


class EngineImportError(UnsupportedFeatureError):
    """An installed engine failed to import (missing CUDA libraries, ABI mismatch, ...)."""


class EngineNotInstalledError(UnsupportedFeatureError):
    """A backend was named explicitly (``backend="vllm"``) but that engine is not installed."""

    def __init__(self, engine: str, feature: str, install: str) -> None:
        super().__init__(engine, None, feature)
        self.install = install
        # Replace the generic message: what to do is install the engine or use the reference.
        self.args = (f"backend={engine!r}: {engine} is not installed (needed for {feature}); "
                     f"install it (pip install {install}) or use backend='reference', moecompat's "
                     "pure-PyTorch backend, which runs everywhere",)


class EngineDriftError(UnsupportedFeatureError):
    """The installed engine release does not match moecompat's version facts.

    Either a fact says the release has a symbol or parameter and it does not (it moved or was
    renamed), or the release is newer than the tested range and lacks what moecompat looks
    for. ``tested`` is the tested range; ``detail`` says what was missing and where it was
    looked for. ``backend="auto"`` falls back to the reference backend with one
    [`MoECompatWarning`][moecompat.MoECompatWarning]; ``MOECOMPAT_STRICT=1`` makes it raise this
    instead.
    """

    def __init__(self, engine: str, installed: str | None, feature: str, detail: str = "", tested: str = "") -> None:
        super().__init__(engine, installed, feature, detail=detail)
        self.tested = tested
        self.args = (f"{feature}: {engine} {installed} does not match moecompat's facts (drift): {detail}"
                     + (f"; tested releases: {engine}{tested}" if tested else "")
                     + "; please report it with the output of `moecompat doctor`",)


class MissingDependencyError(MoECompatError, ImportError):
    """An optional dependency of the feature that was asked for is not installed.

    ``package`` is the import name, ``extra`` the moecompat extra that installs it
    (``pip install 'moecompat[bench]'``).
    """

    def __init__(self, package: str, feature: str, extra: str) -> None:
        self.package, self.feature, self.extra = package, feature, extra
        super().__init__(f"{feature} needs the optional package {package!r}, which is not installed: "
                         f"pip install 'moecompat[{extra}]' (or pip install {package})")
