"""Expert-parallel semantics that stay the same across engine versions.

vLLM PR #43108 (in 0.23) removed ``supports_expert_map``: experts classes that cannot take an
``expert_map`` now silently ignore it. [`supports_expert_map`][moecompat.ep.supports_expert_map] answers the question the same
way before and after: the method where the class still has it, else moecompat's table of the
classes that declared ``False`` in the last release that had the method (0.22).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ._backends import get_impl
from ._scalars import describe
from .engines import vllm as _vllm
from .errors import InvalidInputError

__all__ = ["IGNORES_EXPERT_MAP", "ep_moe_layer_class", "local_expert_ids", "shard_experts", "supports_expert_map"]

#: Experts classes whose ``supports_expert_map()`` returned False in the last vLLM release with
#: the method (a vLLM fact: [`moecompat.engines.vllm.IGNORES_EXPERT_MAP`][moecompat.engines.vllm.IGNORES_EXPERT_MAP]).
IGNORES_EXPERT_MAP = _vllm.IGNORES_EXPERT_MAP

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
    by_name = _vllm.supports_expert_map_by_name(cls)
    return True if by_name is None else by_name


def ep_moe_layer_class(quant_config: Any = None, *, backend: str = "auto") -> Any:
    """The installed engine's expert-parallel MoE layer class: SGLang's ``EPMoE`` (< 0.5.3) or
    what ``get_moe_impl_class(quant_config)`` picks (``DeepEPMoE``/``FusedMoE``, 0.5.x); vLLM's
    ``FusedMoE``. Raises ``UnsupportedFeatureError`` with no engine."""
    return get_impl("ep_moe_layer_class", backend, True)(quant_config)


def local_expert_ids(expert_map: torch.Tensor) -> torch.Tensor:
    """Global ids of this rank's experts in local order (``ids[j]`` is local expert ``j``), from
    ``expert_map: [global_num_experts]`` int (local id, -1 for experts of other ranks) as
    [`moecompat.make_expert_map`][moecompat.make_expert_map] returns it."""
    if not isinstance(expert_map, torch.Tensor):
        raise InvalidInputError("expert_map", "a 1-D integer tensor [global_num_experts]", describe(expert_map))
    if expert_map.is_meta:
        raise InvalidInputError("expert_map", "a tensor with data (CPU or CUDA), not on the meta device", "a meta tensor")
    if expert_map.dim() != 1 or expert_map.dtype.is_floating_point:
        raise InvalidInputError("expert_map", "a 1-D integer tensor [global_num_experts]",
                                f"{list(expert_map.shape)} {expert_map.dtype}")
    owned = (expert_map >= 0).nonzero().flatten()
    local = expert_map[owned]
    # Setup-time function (weights sharding): a host read is fine here.
    if bool((expert_map < -1).any()) or not torch.equal(local.sort().values.cpu().long(), torch.arange(local.numel())):
        raise InvalidInputError("expert_map", "local ids 0..n-1 (each once) for this rank's experts and -1 elsewhere",
                                expert_map.tolist() if expert_map.numel() <= 32 else f"{expert_map.numel()} entries")
    return owned[local.argsort()]


def shard_experts(w1: torch.Tensor, w2: torch.Tensor, quant_config: Any, expert_map: torch.Tensor,
                  ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """This rank's slice of global expert weights, in local order: ``(w1_local [E_local, 2*I, H],
    w2_local [E_local, H, I], quant_config_local)``, to call ``fused_experts(..., expert_map=
    expert_map)`` with. Per-expert scales and zero points are sliced; per-tensor activation
    scales (``a1_scale``/``a2_scale``) are kept. ``quant_config``: a ``QuantConfig`` or None."""
    from .quant import QuantConfig

    for name, t in (("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise InvalidInputError(name, "a 3-D tensor [global_num_experts, ...]",
                                    list(t.shape) if isinstance(t, torch.Tensor) else describe(t))
        if t.is_meta:
            raise InvalidInputError(name, "a tensor with data (not on the meta device)", "a meta tensor")
    local_expert_ids(expert_map)  # the map's own checks
    if expert_map.numel() != w1.shape[0] or w2.shape[0] != w1.shape[0]:
        raise InvalidInputError("expert_map", f"one entry per global expert ({w1.shape[0]} in w1, {w2.shape[0]} in w2)",
                                f"{expert_map.numel()} entries")
    if quant_config is not None and not isinstance(quant_config, QuantConfig):
        raise InvalidInputError("quant_config", "a moecompat QuantConfig or None", type(quant_config).__name__)
    ids = local_expert_ids(expert_map).to(w1.device)
    local_qc = quant_config
    if quant_config is not None:
        sliced: dict[str, Any] = {
            name: _take_experts(getattr(quant_config, name), ids)
            for name in ("w1_scale", "w2_scale", "w1_zp", "w2_zp") if getattr(quant_config, name) is not None}
        local_qc = dataclasses.replace(quant_config, **sliced)
    return _take_experts(w1, ids), _take_experts(w2, ids), local_qc


def _take_experts(t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``t[ids]`` (the experts ``ids`` along dim 0), contiguous. One-byte floats (fp8) are indexed
    as their bytes: torch 2.5's CPU index kernel has no float8 case, and copying the bits is exact
    on every torch."""
    ids = ids.to(t.device)
    if t.is_floating_point() and t.element_size() == 1:
        return t.view(torch.uint8)[ids].view(t.dtype)
    return t[ids].contiguous()
