"""Engine backends, one module each. Importing this package does not import any engine."""

from __future__ import annotations

from .base import Engine
from .sglang import ENGINE as SGLANG
from .vllm import ENGINE as VLLM

ENGINES: dict[str, Engine] = {"vllm": VLLM, "sglang": SGLANG}

__all__ = ["ENGINES", "SGLANG", "VLLM", "Engine"]
