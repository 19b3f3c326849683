"""Installed distribution versions, read without importing the packages."""

from __future__ import annotations

import importlib.metadata


def distribution_version(name: str) -> str | None:
    """Version string of an installed distribution, or ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
