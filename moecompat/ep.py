"""Expert-parallel semantics that stay the same across engine versions.

vLLM PR #43108 (in 0.23) removed ``supports_expert_map``: experts classes that cannot take an
``expert_map`` now silently ignore it. :func:`supports_expert_map` answers the question the same
way before and after: the method where the class still has it, else moecompat's table of the
classes that declared ``False`` in the last release that had the method (0.22).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .errors import InvalidInputError

__all__ = ["IGNORES_EXPERT_MAP", "ep_moe_layer_class", "local_expert_ids", "shard_experts", "supports_expert_map"]

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


def local_expert_ids(expert_map: torch.Tensor) -> torch.Tensor:
    """Global ids of this rank's experts in local order (``ids[j]`` is local expert ``j``), from
    ``expert_map: [global_num_experts]`` int (local id, -1 for experts of other ranks) as
    :func:`moecompat.make_expert_map` returns it."""
    if expert_map.dim() != 1 or expert_map.dtype.is_floating_point:
        raise InvalidInputError("expert_map", "a 1-D integer tensor [global_num_experts]",
                                f"{list(expert_map.shape)} {expert_map.dtype}")
    owned = (expert_map >= 0).nonzero().flatten()
    return owned[expert_map[owned].argsort()]


def shard_experts(w1: torch.Tensor, w2: torch.Tensor, quant_config: Any, expert_map: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """This rank's slice of global expert weights, in local order: ``(w1_local [E_local, 2*I, H],
    w2_local [E_local, H, I], quant_config_local)``, to call ``fused_experts(..., expert_map=
    expert_map)`` with. Per-expert scales and zero points are sliced; per-tensor activation
    scales (``a1_scale``/``a2_scale``) are kept. ``quant_config``: a ``QuantConfig`` or None."""
    from .quant import QuantConfig

    if expert_map.numel() != w1.shape[0] or w2.shape[0] != w1.shape[0]:
        raise InvalidInputError("expert_map", f"one entry per global expert ({w1.shape[0]} in w1, {w2.shape[0]} in w2)",
                                f"{expert_map.numel()} entries")
    if quant_config is not None and not isinstance(quant_config, QuantConfig):
        raise InvalidInputError("quant_config", "a moecompat QuantConfig or None", type(quant_config).__name__)
    ids = local_expert_ids(expert_map).to(w1.device)
    local_qc = quant_config
    if quant_config is not None:
        local_qc = dataclasses.replace(quant_config, **{
            name: getattr(quant_config, name)[ids.to(getattr(quant_config, name).device)]
            for name in ("w1_scale", "w2_scale", "w1_zp", "w2_zp") if getattr(quant_config, name) is not None})
    return w1[ids].contiguous(), w2[ids].contiguous(), local_qc
