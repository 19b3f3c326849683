"""vLLM backend: version facts and adapters (filled by the vLLM adapter work)."""

from __future__ import annotations

from .base import Engine

ENGINE = Engine(
    name="vllm",
    distributions=("vllm",),
    root_modules=("vllm.model_executor.layers.fused_moe",),
    tested=">=0.6,<0.34",
    facts=(),
)
