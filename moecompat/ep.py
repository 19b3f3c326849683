"""Expert-parallel semantics that stay the same across engine versions.

vLLM PR #43108 (in 0.23) removed ``supports_expert_map``: experts classes that cannot take an
``expert_map`` now silently ignore it. :func:`supports_expert_map` answers the question the same
way before and after: the method where the class still has it, else moecompat's table of the
classes that declared ``False`` in the last release that had the method (0.22).
"""

from __future__ import annotations

from typing import Any

__all__ = ["IGNORES_EXPERT_MAP", "supports_expert_map"]

#: Experts classes whose ``supports_expert_map()`` returned False in vLLM 0.20-0.22 (they apply no
#: expert map; after #43108 they silently ignore one).
IGNORES_EXPERT_MAP: frozenset[str] = frozenset({
    "FlashInferExperts", "NaiveBatchedExperts", "BatchedTritonExperts", "TrtLlmNvFp4ExpertsBase",
    "TrtLlmBf16Experts", "BatchedDeepGemmExperts", "TrtLlmFp8ExpertsBase", "FlashInferCuteDSLBatchedExperts",
    "TrtLlmMxfp4ExpertsBase", "CutlassExpertsFp8", "CutlassBatchedExpertsFp8", "CutlassExpertsFp4",
    "CutlassExpertsMxfp4", "FlashInferCuteDSLExperts",
})
#: Subclasses that re-enabled it (their own method returned True).
HONOURS_EXPERT_MAP: frozenset[str] = frozenset({"TrtLlmMxfp4ExpertsModular", "CutlassExpertsW4A8Fp8"})


def supports_expert_map(experts: Any) -> bool:
    """Whether an engine experts object (or class) applies an ``expert_map``.

    Works for vLLM experts before and after PR #43108, for modular kernels (their
    ``fused_experts``) and for fallback experts (both must support it).
    """
    inner = getattr(experts, "fused_experts", None)
    if inner is not None and not callable(getattr(type(experts), "fused_experts", None)):
        return supports_expert_map(inner)
    for sub in ("experts", "fallback_experts"):
        if type(experts).__name__ == "FallbackExperts" and hasattr(experts, sub):
            if not supports_expert_map(getattr(experts, sub)):
                return False
    cls = experts if isinstance(experts, type) else type(experts)
    for klass in cls.__mro__:
        if klass.__name__ in HONOURS_EXPERT_MAP:
            return True
        if klass.__name__ in IGNORES_EXPERT_MAP:
            return False
        own = klass.__dict__.get("supports_expert_map")
        if own is not None and not getattr(own, "__isabstractmethod__", False):
            try:
                return bool(own(experts) if not isinstance(experts, type) else own(None))
            except (TypeError, AttributeError, NotImplementedError):
                break
    return True
