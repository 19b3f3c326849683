"""matplotlib, imported on demand with a clear error when it is missing (private)."""

from __future__ import annotations

from typing import Any

from .errors import MissingDependencyError

__all__ = ["pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("matplotlib", "plotting", "bench") from None
    return plt
