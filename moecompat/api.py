"""Public MoE entry points: validate once, dispatch to the resolved backend adapter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import _checks
from .adapters import REGISTRY
from .backends import auto_backend, get_impl
from .errors import InvalidInputError, UnsupportedFeatureError
from .quant import UNQUANTIZED, MixedQuantConfig, QuantConfig
from .vocab import (
    Activation,
    BackendName,
    ScoringFunc,
    TopK,
    parse_activation,
    parse_scoring_func,
)

__all__ = [
    "fused_experts",
    "fused_moe",
    "get_config_dtype_str",
    "make_expert_map",
    "moe_align_block_size",
    "select_experts",
    "to_engine_quant_config",
]

_ACTIVATIONS: dict[Any, Activation] = {a.value: a for a in Activation} | {a: a for a in Activation}
_SCORING: dict[Any, ScoringFunc] = {s.value: s for s in ScoringFunc} | {s: s for s in ScoringFunc}
_fast_impl = REGISTRY._fast  # (entry point, backend) -> adapter, filled on first resolution


def _impl(entry_point: str, backend: str, on_cuda: bool) -> Callable[..., Any]:
    if backend == "auto":
        backend = auto_backend(entry_point, on_cuda)[0]
    fn = _fast_impl.get((entry_point, backend))
    return fn if fn is not None else get_impl(entry_point, backend, on_cuda)


def fused_experts(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str | Activation = "silu",
    quant_config: QuantConfig | MixedQuantConfig | None = None,
    expert_map: torch.Tensor | None = None,
    global_num_experts: int = -1,
    apply_router_weight_on_input: bool = False,
    inplace: bool = False,
    backend: BackendName = "auto",
) -> torch.Tensor:
    """Run the experts of a MoE layer on already-routed tokens.

    Args:
        hidden_states: ``[T, H]`` bf16/fp16/fp32 activations.
        w1: ``[E, 2*I, H]`` gate-and-up projection (gate rows first, then up; interleaved for
            ``"swigluoai"``); quantized layouts in :mod:`moecompat.quant`.
        w2: ``[E, H, I]`` down projection.
        topk_weights: ``[T, k]`` float32 router weights.
        topk_ids: ``[T, k]`` int32/int64 *global* expert ids.
        activation: ``"silu"``, ``"gelu"`` or ``"swigluoai"`` (:class:`moecompat.Activation`).
        quant_config: from :func:`moecompat.make_quant_config`; ``None`` for unquantized weights.
        expert_map: ``[global_num_experts]`` int32: global id -> local id (index into ``w1``) or
            -1 for experts not on this rank, whose slots contribute zero.
        global_num_experts: total experts across ranks; ``-1`` infers it.
        apply_router_weight_on_input: scale the expert input (the first GEMM's output) by the
            router weight instead of the expert output.
        inplace: write the result into ``hidden_states`` and return it.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.

    Returns:
        ``[T, H]`` tensor of ``hidden_states.dtype``: ``sum_k weight * expert(token)``.
    """
    act = _ACTIVATIONS.get(activation) or parse_activation(activation)
    qc = UNQUANTIZED if quant_config is None else quant_config
    if not isinstance(qc, QuantConfig):
        if not isinstance(qc, MixedQuantConfig):
            raise InvalidInputError("quant_config", "a moecompat.QuantConfig (see make_quant_config) or None", type(qc).__name__)
        chosen = auto_backend("fused_experts", hidden_states.is_cuda)[0] if backend == "auto" else backend
        if chosen != "reference":
            raise UnsupportedFeatureError(
                chosen, None, "mixed per-projection precision (MixedQuantConfig)",
                detail="the engines' fused kernels run both GEMMs in one scheme and expose no per-stage API; "
                "use backend='reference'")
        backend = "reference"
    hidden_states, topk_weights, topk_ids, global_num_experts = _checks.check_fused_experts(
        hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map, global_num_experts, inplace
    )
    if hidden_states.shape[0] == 0:
        return hidden_states.new_empty((0, w2.shape[1]))
    impl = _impl("fused_experts", backend, hidden_states.is_cuda)
    return impl(
        hidden_states, w1, w2, topk_weights, topk_ids, act, qc, expert_map,
        global_num_experts, apply_router_weight_on_input, inplace,
    )


def select_experts(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    scoring_func: str | ScoringFunc = "softmax",
    use_grouped_topk: bool = False,
    num_expert_group: int | None = None,
    topk_group: int | None = None,
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float | None = None,
    custom_routing_function: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    backend: BackendName = "auto",
    tracker: Any = None,
    layer: int = 0,
) -> TopK:
    """Choose ``top_k`` experts per token from router logits.

    Args:
        hidden_states: ``[T, H]`` (used by custom routing functions and some engine kernels).
        router_logits: ``[T, E]`` float logits.
        top_k: experts per token, ``1 <= top_k <= E``.
        renormalize: divide the chosen weights by their sum.
        scoring_func: ``"softmax"`` or ``"sigmoid"``.
        use_grouped_topk: DeepSeek-V3 grouped routing: keep the best ``topk_group`` of
            ``num_expert_group`` groups (group score: top-2 sum with a bias, else max), then
            top-k inside them.
        e_score_correction_bias: ``[E]`` added to scores for *choosing* only.
        routed_scaling_factor: multiplies the final weights.
        custom_routing_function: ``f(hidden_states, router_logits, top_k, renormalize) ->
            (weights, ids)``.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.
        tracker: an :class:`moecompat.ExpertActivationTracker` that records the chosen ids
            (for ``layer``) without synchronising the GPU.

    Returns:
        :class:`moecompat.TopK` ``(topk_weights [T, k] float32, topk_ids [T, k] int32)``.
    """
    scoring = _SCORING.get(scoring_func) or parse_scoring_func(scoring_func)
    _checks.check_select_experts(
        hidden_states, router_logits, top_k, use_grouped_topk, num_expert_group, topk_group,
        e_score_correction_bias, routed_scaling_factor, custom_routing_function,
    )
    impl = _impl("select_experts", backend, router_logits.is_cuda)
    out = impl(
        hidden_states, router_logits, top_k, renormalize, scoring, use_grouped_topk,
        num_expert_group, topk_group, e_score_correction_bias, routed_scaling_factor,
        custom_routing_function,
    )
    if tracker is not None:
        tracker.record(layer, out.topk_ids)
    return out


def fused_moe(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    *,
    renormalize: bool = True,
    scoring_func: str | ScoringFunc = "softmax",
    use_grouped_topk: bool = False,
    num_expert_group: int | None = None,
    topk_group: int | None = None,
    e_score_correction_bias: torch.Tensor | None = None,
    routed_scaling_factor: float | None = None,
    custom_routing_function: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    activation: str | Activation = "silu",
    quant_config: QuantConfig | None = None,
    expert_map: torch.Tensor | None = None,
    global_num_experts: int = -1,
    apply_router_weight_on_input: bool = False,
    inplace: bool = False,
    backend: BackendName = "auto",
) -> torch.Tensor:
    """:func:`select_experts` then :func:`fused_experts`: a whole MoE layer, ``[T, H] -> [T, H]``.

    ``router_logits [T, E_global]``; the other arguments are those of the two functions.
    """
    topk = select_experts(
        hidden_states, router_logits, top_k, renormalize=renormalize, scoring_func=scoring_func,
        use_grouped_topk=use_grouped_topk, num_expert_group=num_expert_group, topk_group=topk_group,
        e_score_correction_bias=e_score_correction_bias, routed_scaling_factor=routed_scaling_factor,
        custom_routing_function=custom_routing_function, backend=backend,
    )
    return fused_experts(
        hidden_states, w1, w2, topk.topk_weights, topk.topk_ids, activation=activation,
        quant_config=quant_config, expert_map=expert_map, global_num_experts=global_num_experts,
        apply_router_weight_on_input=apply_router_weight_on_input, inplace=inplace, backend=backend,
    )


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    expert_map: torch.Tensor | None = None,
    *,
    pad_sorted_ids: bool = False,
    backend: BackendName = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort (token, k) slots by expert, padding each expert to a multiple of ``block_size``.

    ``topk_ids [T, k]`` int32 global ids < ``num_experts``. Returns ``(sorted_token_ids,
    expert_ids, num_tokens_post_padded)`` (int32) as described in
    :func:`moecompat.reference.moe_align_block_size`.
    """
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2:
        raise InvalidInputError("topk_ids", "a 2-D tensor [num_tokens, top_k]",
                                list(topk_ids.shape) if isinstance(topk_ids, torch.Tensor) else type(topk_ids).__name__)
    if topk_ids.dtype not in (torch.int32, torch.int64):
        raise InvalidInputError("topk_ids", "dtype int32 or int64", topk_ids.dtype)
    if not isinstance(block_size, int) or block_size < 1:
        raise InvalidInputError("block_size", "a positive int", block_size)
    if not isinstance(num_experts, int) or num_experts < 1:
        raise InvalidInputError("num_experts", "a positive int", num_experts)
    if expert_map is not None and (expert_map.dim() != 1 or expert_map.shape[0] != num_experts):
        raise InvalidInputError("expert_map", f"a 1-D tensor of length num_experts={num_experts}", list(expert_map.shape))
    _checks.check_ids_range("topk_ids", topk_ids, 0, num_experts)
    impl = _impl("moe_align_block_size", backend, topk_ids.is_cuda)
    return impl(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids)


def get_config_dtype_str(
    dtype: torch.dtype,
    *,
    use_fp8_w8a8: bool = False,
    use_int8_w8a16: bool = False,
    use_int4_w4a16: bool = False,
    ocp_mx_scheme: str | None = None,
    backend: BackendName = "auto",
) -> str | None:
    """The dtype string an engine puts in tuned fused-MoE config file names (``None``: none).

    Returns exactly what the installed engine's own function returns; with no engine (or
    ``backend="reference"``), current vLLM's rules implemented in moecompat.
    """
    if not isinstance(dtype, torch.dtype):
        raise InvalidInputError("dtype", "a torch.dtype", type(dtype).__name__)
    impl = _impl("get_config_dtype_str", backend, True)
    return impl(dtype, use_fp8_w8a8, use_int8_w8a16, use_int4_w4a16, ocp_mx_scheme)


def make_expert_map(
    ep_size: int,
    ep_rank: int,
    global_num_experts: int,
    placement: str = "linear",
    *,
    backend: BackendName = "auto",
) -> tuple[int, torch.Tensor]:
    """Experts owned by rank ``ep_rank`` of ``ep_size``: ``(num_local_experts, expert_map)``.

    ``expert_map [global_num_experts]`` int32: local id or -1. ``placement``: ``"linear"`` or
    ``"round_robin"``. With an engine, its own function decides (so the map is identical to
    the one the engine builds for its layers).
    """
    for name, v, lo in (("ep_size", ep_size, 1), ("ep_rank", ep_rank, 0), ("global_num_experts", global_num_experts, 1)):
        if not isinstance(v, int) or v < lo:
            raise InvalidInputError(name, f"an int >= {lo}", v)
    if ep_rank >= ep_size:
        raise InvalidInputError("ep_rank", f"< ep_size ({ep_size})", ep_rank)
    if placement not in ("linear", "round_robin"):
        raise InvalidInputError("placement", "'linear' or 'round_robin'", repr(placement))
    impl = _impl("make_expert_map", backend, True)
    return impl(ep_size, ep_rank, global_num_experts, placement)


def to_engine_quant_config(quant_config: QuantConfig | None, *, backend: BackendName = "auto") -> Any:
    """Translate a :class:`QuantConfig` into the engine's own object.

    vLLM >= 0.10: its ``FusedMoEQuantConfig``; older vLLM and SGLang: the dict of legacy
    ``use_*`` keyword flags and scales their ``fused_experts`` takes; reference: the config
    itself.
    """
    qc = UNQUANTIZED if quant_config is None else quant_config
    impl = _impl("make_quant_config", backend, True)
    return impl(qc)
