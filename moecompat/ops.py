"""moecompat's entry points as ``torch.library`` custom ops, for ``torch.compile`` and CUDA graphs.

| op | public function | result |
|---|---|---|
| ``torch.ops.moecompat.fused_experts`` | [`fused_experts`][moecompat.fused_experts] | ``[T, H]`` of the activation dtype |
| ``torch.ops.moecompat.select_experts`` | [`select_experts`][moecompat.select_experts] | ``([T, k]`` float32, ``[T, k]`` int32``)`` |
| ``torch.ops.moecompat.fused_moe`` | [`fused_moe`][moecompat.fused_moe] | ``[T, H]`` |
| ``torch.ops.moecompat.moe_align_block_size`` | [`moe_align_block_size`][moecompat.moe_align_block_size] | three int32 tensors |

You rarely call the ops yourself: under ``torch.compile`` the public functions (and
[`MoEExperts`][moecompat.MoEExperts] calls) are traced as these ops, so Dynamo treats each as one
opaque node whose fake (meta) implementation gives the exact output shapes and dtypes. The
data-dependent work inside (the reference backend's grouped GEMM, an engine's Triton kernels,
which may be custom ops of the engine themselves) runs when the graph runs. Metadata checks run
at trace time; value checks (expert-id ranges) run inside the op, on CPU tensors always and on
CUDA tensors in debug mode, as in eager mode.

Needs torch >= 2.5 (``torch.library.custom_op`` and ``torch.compiler.substitute_in_graph``); on
older torch the functions work in eager mode only and ``moecompat.ops.AVAILABLE`` is False.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, List, Optional

import torch

from . import _checks, api
from ._scalars import describe
from .errors import UnsupportedFeatureError
from .quant import (
    UNQUANTIZED,
    MixedQuantConfig,
    PerExpertQuantConfig,
    QuantConfig,
    make_quant_config,
)
from .reference.numerics import IDEAL, Numerics
from .vocab import TopK

__all__ = ["AVAILABLE", "is_compiling"]

#: Whether this torch can register moecompat's custom ops and trace the public functions as them.
AVAILABLE: bool = hasattr(torch.library, "custom_op") and hasattr(torch.compiler, "substitute_in_graph")

#: Whether Dynamo is tracing (``torch.compiler.is_dynamo_compiling``: a function that returns
#: False, which Dynamo replaces by True; about 30 ns, so the hot path of ``MoEExperts`` can ask).
is_compiling: Callable[[], bool] = getattr(torch.compiler, "is_dynamo_compiling", lambda: False)

_QC_TENSORS = ("w1_scale", "w2_scale", "a1_scale", "a2_scale", "w1_zp", "w2_zp")
# (scheme, options, ids of the scale tensors) -> (weak refs to them, the rebuilt QuantConfig).
_qc_cache: dict[tuple[Any, ...], tuple[tuple[Any, ...], QuantConfig]] = {}


def _quant_args(qc: QuantConfig) -> tuple[Any, ...]:
    """A QuantConfig as custom-op arguments (tensors, then plain values)."""
    return (*(getattr(qc, n) for n in _QC_TENSORS), qc.scheme.value if qc.scheme is not None else "",
            list(qc.block_shape) if qc.block_shape is not None else None, qc.per_act_token_quant, qc.per_out_ch_quant,
            qc.group_size or 0)


def _rebuild_quant_config(tensors: tuple[torch.Tensor | None, ...], scheme: str, block_shape: list[int] | None,
                          per_act_token_quant: bool, per_out_ch_quant: bool, group_size: int) -> QuantConfig:
    """The QuantConfig of the op's arguments; the same object for the same tensors, so the eager
    path inside the op finds its call plan."""
    if not scheme:
        return UNQUANTIZED
    key = (scheme, tuple(block_shape) if block_shape else None, per_act_token_quant, per_out_ch_quant, group_size,
           *(id(t) for t in tensors))
    hit = _qc_cache.get(key)
    if hit is not None and all((r is None and t is None) or (r is not None and r() is t) for r, t in zip(hit[0], tensors, strict=True)):
        return hit[1]
    qc = make_quant_config(scheme, **dict(zip(_QC_TENSORS, tensors, strict=True)), block_shape=block_shape,
                           per_act_token_quant=per_act_token_quant, per_out_ch_quant=per_out_ch_quant,
                           group_size=group_size or None)
    if len(_qc_cache) >= 1024:
        _qc_cache.clear()
    _qc_cache[key] = (tuple(None if t is None else weakref.ref(t) for t in tensors), qc)
    return qc


def _traceable_numerics(numerics: Any) -> str:
    """A ``numerics`` argument as the op's string: a name, or the ideal arithmetic."""
    if isinstance(numerics, Numerics):
        if numerics is IDEAL:
            return "ideal"
        raise UnsupportedFeatureError("moecompat", None, "a custom Numerics object under torch.compile",
                                      detail="pass numerics='ideal', 'vllm' or 'sglang' (a name crosses the custom op)")
    return str(numerics)


def _traceable_quant_config(quant_config: Any) -> QuantConfig:
    qc = UNQUANTIZED if quant_config is None else quant_config
    if isinstance(qc, (MixedQuantConfig, PerExpertQuantConfig)):
        raise UnsupportedFeatureError("moecompat", None, f"{type(qc).__name__} under torch.compile",
                                      detail="the custom op takes one QuantConfig; call it outside the compiled region")
    if not isinstance(qc, QuantConfig):
        from .errors import InvalidInputError

        raise InvalidInputError("quant_config", "a moecompat.QuantConfig or None", describe(qc))
    return qc


def _infer_schema(fn: Callable[..., Any]) -> str:
    public: Callable[..., str] | None = getattr(torch.library, "infer_schema", None)
    if public is not None:
        return public(fn, mutates_args=())
    from torch._library.infer_schema import infer_schema  # torch 2.5 has it only privately

    return infer_schema(fn, mutates_args=())


class _Op:
    """Registers ``fn`` as ``torch.ops.moecompat.<name>`` through the low-level
    ``torch.library.Library`` API: one CompositeExplicitAutograd kernel (every device) and a fake
    implementation. ``torch.library.custom_op`` would do the same with an autograd wrapper around
    every call, several microseconds a call inside a compiled graph (benchmarks/overhead.py)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, fn: Callable[..., Any]) -> _Op:
        _LIB.define(self.name + _infer_schema(fn))
        _LIB.impl(self.name, fn, "CompositeExplicitAutograd")
        return self

    def register_fake(self, fake: Callable[..., Any]) -> Callable[..., Any]:
        torch.library.register_fake(f"moecompat::{self.name}", fake, lib=_LIB)
        return fake


if AVAILABLE:
    _LIB = torch.library.Library("moecompat", "DEF")

    # The ops' signatures spell optional and list arguments ``Optional[X]`` and ``List[int]``:
    # torch 2.5's schema inference (torch.library.infer_schema) knows only those typing forms, an
    # ``X | None`` or ``list[int]`` annotation fails there at import; newer torch infers the same
    # schemas from either spelling (ruff's UP006/UP035/UP045 are off for this file, pyproject.toml).

    @_Op("fused_experts")
    def _fused_experts_op(
        hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
        topk_ids: torch.Tensor, w1_scale: Optional[torch.Tensor], w2_scale: Optional[torch.Tensor],
        a1_scale: Optional[torch.Tensor], a2_scale: Optional[torch.Tensor], w1_zp: Optional[torch.Tensor],
        w2_zp: Optional[torch.Tensor], scheme: str, block_shape: Optional[List[int]], per_act_token_quant: bool,
        per_out_ch_quant: bool, group_size: int, expert_map: Optional[torch.Tensor], activation: str,
        global_num_experts: int, apply_router_weight_on_input: bool, backend: str, numerics: str,
    ) -> torch.Tensor:
        qc = _rebuild_quant_config((w1_scale, w2_scale, a1_scale, a2_scale, w1_zp, w2_zp), scheme, block_shape,
                                   per_act_token_quant, per_out_ch_quant, group_size)
        return api.fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, activation=activation, quant_config=qc,
                                 expert_map=expert_map, global_num_experts=global_num_experts,
                                 apply_router_weight_on_input=apply_router_weight_on_input, backend=backend,  # type: ignore[arg-type]
                                 numerics=numerics)

    @_fused_experts_op.register_fake
    def _(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *rest: Any) -> torch.Tensor:
        return hidden_states.new_empty((hidden_states.shape[0], w2.shape[1]))

    @_Op("select_experts")
    def _select_experts_op(
        hidden_states: torch.Tensor, router_logits: torch.Tensor, top_k: int, renormalize: bool, scoring_func: str,
        use_grouped_topk: bool, num_expert_group: Optional[int], topk_group: Optional[int],
        e_score_correction_bias: Optional[torch.Tensor], routed_scaling_factor: Optional[float], backend: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = api.select_experts(hidden_states, router_logits, top_k, renormalize=renormalize, scoring_func=scoring_func,
                                 use_grouped_topk=use_grouped_topk, num_expert_group=num_expert_group,
                                 topk_group=topk_group, e_score_correction_bias=e_score_correction_bias,
                                 routed_scaling_factor=routed_scaling_factor, backend=backend)  # type: ignore[arg-type]
        return out.topk_weights, out.topk_ids

    @_select_experts_op.register_fake
    def _(hidden_states: torch.Tensor, router_logits: torch.Tensor, top_k: int, *rest: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t = router_logits.shape[0]
        return (router_logits.new_empty((t, top_k), dtype=torch.float32),
                router_logits.new_empty((t, top_k), dtype=torch.int32))

    @_Op("fused_moe")
    def _fused_moe_op(
        hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, router_logits: torch.Tensor, top_k: int,
        renormalize: bool, scoring_func: str, use_grouped_topk: bool, num_expert_group: Optional[int],
        topk_group: Optional[int], e_score_correction_bias: Optional[torch.Tensor], routed_scaling_factor: Optional[float],
        w1_scale: Optional[torch.Tensor], w2_scale: Optional[torch.Tensor], a1_scale: Optional[torch.Tensor],
        a2_scale: Optional[torch.Tensor], w1_zp: Optional[torch.Tensor], w2_zp: Optional[torch.Tensor], scheme: str,
        block_shape: Optional[List[int]], per_act_token_quant: bool, per_out_ch_quant: bool, group_size: int,
        expert_map: Optional[torch.Tensor], activation: str, global_num_experts: int,
        apply_router_weight_on_input: bool, backend: str,
    ) -> torch.Tensor:
        qc = _rebuild_quant_config((w1_scale, w2_scale, a1_scale, a2_scale, w1_zp, w2_zp), scheme, block_shape,
                                   per_act_token_quant, per_out_ch_quant, group_size)
        return api.fused_moe(hidden_states, w1, w2, router_logits, top_k, renormalize=renormalize,
                             scoring_func=scoring_func, use_grouped_topk=use_grouped_topk,
                             num_expert_group=num_expert_group, topk_group=topk_group,
                             e_score_correction_bias=e_score_correction_bias,
                             routed_scaling_factor=routed_scaling_factor, activation=activation, quant_config=qc,
                             expert_map=expert_map, global_num_experts=global_num_experts,
                             apply_router_weight_on_input=apply_router_weight_on_input, backend=backend)  # type: ignore[arg-type]

    @_fused_moe_op.register_fake
    def _(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, *rest: Any) -> torch.Tensor:
        return hidden_states.new_empty((hidden_states.shape[0], w2.shape[1]))

    @_Op("moe_align_block_size")
    def _moe_align_op(topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: Optional[torch.Tensor],
                      pad_sorted_ids: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = api.moe_align_block_size(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids=pad_sorted_ids,
                                       backend=backend)  # type: ignore[arg-type]
        return out[0].clone(), out[1].clone(), out[2].clone()

    @_moe_align_op.register_fake
    def _(topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None,
          pad_sorted_ids: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        max_padded = topk_ids.numel() + num_experts * (block_size - 1)
        if pad_sorted_ids:
            max_padded = -(-max_padded // block_size) * block_size
        blocks = -(-max_padded // block_size)
        return (topk_ids.new_empty((max_padded,), dtype=torch.int32), topk_ids.new_empty((blocks,), dtype=torch.int32),
                topk_ids.new_empty((1,), dtype=torch.int32))

    # -- what Dynamo traces instead of the public functions -------------------------------------

    def _traced_fused_experts(
        hidden_states: torch.Tensor, w1: torch.Tensor | None, w2: torch.Tensor | None, topk_weights: torch.Tensor,
        topk_ids: torch.Tensor, *, activation: Any = "silu", quant_config: Any = None, expert_map: torch.Tensor | None = None,
        global_num_experts: int = -1, apply_router_weight_on_input: bool = False, inplace: bool = False,
        backend: Any = "auto", numerics: Any = "ideal",
    ) -> torch.Tensor:
        backend_name = api._backend_name(backend)
        act = api._activation(activation)
        qc = _traceable_quant_config(quant_config)
        numerics_name = _traceable_numerics(numerics)
        hs, tw, ti, _, _ = _checks.check_fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map,  # type: ignore[arg-type]
                                                       global_num_experts, inplace, values=False)
        out = torch.ops.moecompat.fused_experts(hs, w1, w2, tw, ti, *_quant_args(qc), expert_map, act.value,
                                                global_num_experts, apply_router_weight_on_input, backend_name,
                                                numerics_name)
        if inplace:
            hidden_states.copy_(out)
            return hidden_states
        return out

    def _traced_select_experts(
        hidden_states: torch.Tensor, router_logits: torch.Tensor, top_k: int, *, renormalize: bool = True,
        scoring_func: Any = "softmax", use_grouped_topk: bool = False, num_expert_group: int | None = None,
        topk_group: int | None = None, e_score_correction_bias: torch.Tensor | None = None,
        routed_scaling_factor: float | None = None, custom_routing_function: Any = None, backend: Any = "auto",
        tracker: Any = None, layer: int = 0,
    ) -> TopK:
        backend_name = api._backend_name(backend)
        scoring = api._scoring(scoring_func)
        top_k, num_expert_group, topk_group = _checks.check_select_experts(
            hidden_states, router_logits, top_k, renormalize, use_grouped_topk, num_expert_group, topk_group,
            e_score_correction_bias, routed_scaling_factor, custom_routing_function)
        if custom_routing_function is not None:
            # A Python callable cannot cross a custom op: Dynamo traces the user's function.
            w, ids = custom_routing_function(hidden_states, router_logits, top_k, renormalize)
            out = TopK(w.to(torch.float32), ids.to(torch.int32))
        else:
            rsf = float(routed_scaling_factor) if routed_scaling_factor is not None else None
            w, ids = torch.ops.moecompat.select_experts(hidden_states, router_logits, top_k, renormalize, scoring.value,
                                                        use_grouped_topk, num_expert_group, topk_group,
                                                        e_score_correction_bias, rsf, backend_name)
            out = TopK(w, ids)
        if tracker is not None:
            tracker.record_traced(layer, out.topk_ids)
        return out

    def _traced_fused_moe(
        hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, router_logits: torch.Tensor, top_k: int, *,
        renormalize: bool = True, scoring_func: Any = "softmax", use_grouped_topk: bool = False,
        num_expert_group: int | None = None, topk_group: int | None = None,
        e_score_correction_bias: torch.Tensor | None = None, routed_scaling_factor: float | None = None,
        custom_routing_function: Any = None, activation: Any = "silu", quant_config: Any = None,
        expert_map: torch.Tensor | None = None, global_num_experts: int = -1, apply_router_weight_on_input: bool = False,
        inplace: bool = False, backend: Any = "auto",
    ) -> torch.Tensor:
        if custom_routing_function is not None or inplace:
            topk = _traced_select_experts(
                hidden_states, router_logits, top_k, renormalize=renormalize, scoring_func=scoring_func,
                use_grouped_topk=use_grouped_topk, num_expert_group=num_expert_group, topk_group=topk_group,
                e_score_correction_bias=e_score_correction_bias, routed_scaling_factor=routed_scaling_factor,
                custom_routing_function=custom_routing_function, backend=backend)
            return _traced_fused_experts(
                hidden_states, w1, w2, topk.topk_weights, topk.topk_ids, activation=activation, quant_config=quant_config,
                expert_map=expert_map, global_num_experts=global_num_experts,
                apply_router_weight_on_input=apply_router_weight_on_input, inplace=inplace, backend=backend)
        backend_name = api._backend_name(backend)
        scoring = api._scoring(scoring_func)
        act = api._activation(activation)
        qc = _traceable_quant_config(quant_config)
        top_k, num_expert_group, topk_group = _checks.check_select_experts(
            hidden_states, router_logits, top_k, renormalize, use_grouped_topk, num_expert_group, topk_group,
            e_score_correction_bias, routed_scaling_factor, None)
        rsf = float(routed_scaling_factor) if routed_scaling_factor is not None else None
        return torch.ops.moecompat.fused_moe(
            hidden_states, w1, w2, router_logits, top_k, renormalize, scoring.value, use_grouped_topk,
            num_expert_group, topk_group, e_score_correction_bias, rsf, *_quant_args(qc), expert_map, act.value,
            global_num_experts, apply_router_weight_on_input, backend_name)

    def _traced_moe_align_block_size(
        topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None = None, *,
        pad_sorted_ids: bool = False, backend: Any = "auto",
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        backend_name = api._backend_name(backend)
        out = torch.ops.moecompat.moe_align_block_size(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids,
                                                       backend_name)
        return out[0], out[1], out[2]

    def traced_experts_call(experts: Any, hidden_states: torch.Tensor, topk_weights: torch.Tensor,
                            topk_ids: torch.Tensor, inplace: bool) -> torch.Tensor:
        """What a [`MoEExperts`][moecompat.MoEExperts] call is under ``torch.compile``."""
        return _traced_fused_experts(
            hidden_states, experts.w1, experts.w2, topk_weights, topk_ids, activation=experts.activation.value,
            quant_config=experts.quant_config, expert_map=experts.expert_map,
            global_num_experts=experts.global_num_experts,
            apply_router_weight_on_input=experts.apply_router_weight_on_input, inplace=inplace, backend=experts.backend,
            numerics=experts.numerics)

    for _public, _traced in ((api.fused_experts, _traced_fused_experts), (api.select_experts, _traced_select_experts),
                             (api.fused_moe, _traced_fused_moe), (api.moe_align_block_size, _traced_moe_align_block_size)):
        torch.compiler.substitute_in_graph(_public)(_traced)
