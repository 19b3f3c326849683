"""The reference backend, registered like an engine: one builder per entry point.

It is always installed (pure PyTorch, CPU or CUDA), has no version facts, and answers the
engine helpers (config names, expert maps, MXFP4 rules) by moecompat's own documented rules.
"""

from __future__ import annotations

from typing import Any

from .._adapters import Backend, Resolution
from .._calls import ExpertsCall, RoutingCall
from ..vocab import TopK
from . import config as _config
from . import mxfp4 as _mxfp4
from .align import moe_align_block_size
from .experts import fused_experts
from .routing import select_experts

__all__ = ["REFERENCE"]

REFERENCE = Backend("reference", lacks={
    "mxfp4_convert": "kernel weight formats are an engine's; the reference backend takes plain MXFP4",
    "moe_layer_config": "it builds an engine's own config object; the reference backend needs none",
    "ep_moe_layer_class": "the reference backend is functional; use fused_experts(expert_map=...)",
    "routing_hooks": "the reference backend's routing is moecompat.select_experts(tracker=...) itself",
})


@REFERENCE.adapter("numerics")
def _build_numerics(backend: Backend) -> Resolution:
    from .numerics import IDEAL

    return backend.ok("numerics", lambda: IDEAL, "moecompat.reference.numerics:IDEAL", "ideal")


def _bind_experts(call: ExpertsCall) -> Any:
    act, qc, emap, gne, on_input, out_dtype, numerics = (
        call.activation, call.quant_config, call.expert_map, call.global_num_experts, call.apply_router_weight_on_input,
        call.out_dtype, call.numerics)

    def run(hidden_states: Any, w1: Any, w2: Any, topk_weights: Any, topk_ids: Any, inplace: bool) -> Any:
        return fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, act, qc, emap, gne, on_input, inplace,
                             out_dtype=out_dtype, numerics=numerics)

    return run


def _bind_routing(call: RoutingCall) -> Any:
    args = (call.top_k, call.renormalize, call.scoring_func, call.use_grouped_topk, call.num_expert_group,
            call.topk_group, call.e_score_correction_bias, call.routed_scaling_factor, call.custom_routing_function)

    def run(hidden_states: Any, router_logits: Any) -> TopK:
        return select_experts(hidden_states, router_logits, *args)

    return run


_PLAIN: dict[str, Any] = {
    "moe_align_block_size": moe_align_block_size,
    "get_config_dtype_str": _config.get_config_dtype_str,
    "make_quant_config": lambda qc: qc,
    "make_expert_map": _config.make_expert_map,
    "get_config_file_name": _config.get_config_file_name,
    "get_moe_configs": _config.get_moe_configs,
    "tuned_config_location": _config.tuned_config_location,
    "override_config": _config.override_config,
    "default_config": _config.default_config,
    "select_mxfp4_backend": _mxfp4.select_on_this_machine,
    "mxfp4_round_up": _mxfp4.reference_round_up,
}


def _plain(entry_point: str, fn: Any) -> None:
    name = "moecompat.quant:QuantConfig (itself)" if entry_point == "make_quant_config" else None

    @REFERENCE.adapter(entry_point)
    def build(backend: Backend) -> Resolution:
        return backend.ok(entry_point, fn, name or fn, "reference")


for _entry_point, _fn in _PLAIN.items():
    _plain(_entry_point, _fn)


@REFERENCE.adapter("fused_experts")
def _build_fused_experts(backend: Backend) -> Resolution:
    return backend.ok("fused_experts", _bind_experts, fused_experts, "reference")


@REFERENCE.adapter("select_experts")
def _build_select_experts(backend: Backend) -> Resolution:
    return backend.ok("select_experts", _bind_routing, select_experts, "reference")
