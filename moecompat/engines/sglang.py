"""SGLang backend: version facts and adapters (filled by the SGLang adapter work)."""

from __future__ import annotations

from .base import Engine

ENGINE = Engine(
    name="sglang",
    distributions=("sglang",),
    root_modules=("sglang.srt.layers.moe.topk",),
    tested=">=0.4.7,<0.5.24",
    facts=(),
)
