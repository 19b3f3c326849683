"""Expert-parallel semantics that stay the same across engine versions.

vLLM PR #43108 (in 0.23) removed ``supports_expert_map``: experts classes that cannot take an
``expert_map`` now silently ignore it. :func:`supports_expert_map` answers the question the same
way before and after: the method where the class still has it, else moecompat's table of the
classes that declared ``False`` in the last release that had the method (0.22).
"""

from __future__ import annotations

from typing import Any

__all__ = ["IGNORES_EXPERT_MAP", "ep_moe_layer_class", "supports_expert_map"]

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
    # The engine's own answer wins where the class still has the method (before PR #43108):
    # classes changed over time (e.g. CutlassExpertsFp8 honoured maps in 0.12, not in 0.20).
    for klass in cls.__mro__:
        own = klass.__dict__.get("supports_expert_map")
        if own is not None and not getattr(own, "__isabstractmethod__", False):
            try:
                return bool(own(None if isinstance(experts, type) else experts))
            except (TypeError, AttributeError, NotImplementedError):
                break
    # After #43108: the answer the last release with the method (0.22) gave for the class.
    for klass in cls.__mro__:
        if klass.__name__ in HONOURS_EXPERT_MAP:
            return True
        if klass.__name__ in IGNORES_EXPERT_MAP:
            return False
    return True


def ep_moe_layer_class(quant_config: Any = None, *, backend: str = "auto") -> Any:
    """The installed engine's expert-parallel MoE layer class: SGLang's ``EPMoE`` (< 0.5.3) or
    what ``get_moe_impl_class(quant_config)`` picks (``DeepEPMoE``/``FusedMoE``, 0.5.x); vLLM's
    ``FusedMoE``. Raises ``UnsupportedFeatureError`` with no engine."""
    from .backends import get_impl

    return get_impl("ep_moe_layer_class", backend, True)(quant_config)
