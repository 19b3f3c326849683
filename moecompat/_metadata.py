"""Installed distribution versions, read without importing the packages."""

from __future__ import annotations

try:
    import importlib_metadata
except ImportError:  # the backport is a declared dependency; the stdlib module is equivalent here
    import importlib.metadata as importlib_metadata  # type: ignore[no-redef]


def distribution_version(name: str) -> str | None:
    """Version string of an installed distribution, or ``None`` when it is not installed."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None
