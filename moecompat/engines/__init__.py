"""Engine backends, one module each (its facts and adapters). Importing this package does not
import any engine."""

from __future__ import annotations

from ._specs import ENGINE_NAMES, ENGINE_SPECS
from .base import Engine
from .sglang import ENGINE as SGLANG
from .vllm import ENGINE as VLLM

#: Every engine backend by name, in the order of ``ENGINE_SPECS`` (``backend="auto"`` order).
ENGINES: dict[str, Engine] = {e.name: e for e in sorted((VLLM, SGLANG), key=lambda e: ENGINE_NAMES.index(e.name))}

__all__ = ["ENGINES", "ENGINE_NAMES", "ENGINE_SPECS", "SGLANG", "VLLM", "Engine"]
