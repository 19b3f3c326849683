"""Public MoE entry points: validate once, dispatch to the resolved backend adapter."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import _checks
from .adapters import REGISTRY
from .backends import auto_backend, get_impl
from .errors import InvalidInputError, UnsupportedFeatureError
from .quant import UNQUANTIZED, MixedQuantConfig, PerExpertQuantConfig, QuantConfig
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


class _FusedPlan:
    """What one fully validated :func:`fused_experts` call established for its ``(w1, w2,
    quant_config, expert_map, global_num_experts, activation, backend)`` arguments.

    A layer passes the same weight objects on every call, so after its first call the per-call
    work is: match those arguments by identity, read the metadata of the three token tensors and
    compare it with the values recorded here, and call the recorded adapter. Anything that does
    not match (another weight set, hidden size, dtype or device; a malformed, mistyped or
    non-contiguous token tensor) takes the full path, :func:`_checks.check_fused_experts`, which
    raises the precise error or records a new plan. The weights are held by weak reference (a
    plan never keeps a layer alive, and a reused ``id`` cannot match a dead weight).
    """

    __slots__ = ("act", "act_dtype", "activation_arg", "backend_arg", "device", "expert_map",
                 "global_num_experts", "global_num_experts_arg", "hidden", "impl", "impl_key", "on_cuda",
                 "qc", "quant_config", "w1", "w2")

    w1: weakref.ref[torch.Tensor]
    w2: weakref.ref[torch.Tensor]
    quant_config: object
    expert_map: torch.Tensor | None
    global_num_experts_arg: int
    activation_arg: object
    backend_arg: str
    act: Activation
    qc: QuantConfig | MixedQuantConfig
    hidden: int
    act_dtype: torch.dtype
    device: torch.device
    on_cuda: bool
    global_num_experts: int
    impl: Callable[..., Any]
    impl_key: tuple[str, str]


# id(w1) -> the plan of that weight set's latest fully validated call.
_fused_plans: dict[int, _FusedPlan] = {}
_FUSED_PLANS_MAX = 4096
_F32 = torch.float32
_ID_DTYPES = _checks._ID_DTYPES


def fused_experts(
    hidden_states: torch.Tensor,
    w1: torch.Tensor | None,
    w2: torch.Tensor | None,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    *,
    activation: str | Activation = "silu",
    quant_config: QuantConfig | MixedQuantConfig | PerExpertQuantConfig | None = None,
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
        w2: ``[E, H, I]`` down projection. ``w1`` and ``w2`` are ``None`` with a
            :class:`moecompat.PerExpertQuantConfig` (its groups carry their weights).
        topk_weights: ``[T, k]`` float32 router weights.
        topk_ids: ``[T, k]`` int32/int64 *global* expert ids.
        activation: ``"silu"``, ``"gelu"`` or ``"swigluoai"`` (:class:`moecompat.Activation`).
        quant_config: from :func:`moecompat.make_quant_config`; ``None`` for unquantized weights;
            :func:`moecompat.make_mixed_quant_config` (per projection, reference backend) or
            :func:`moecompat.make_per_expert_quant_config` (per expert group).
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
    # Hot path: the weights, quant config, ... were validated by an earlier call (_FusedPlan);
    # this call's token tensors get the same metadata checks as on the full path (shape, dtype,
    # device, contiguity), written as one condition over attribute reads compared with the
    # plan's values. Any mismatch falls through to the full path, which names the argument.
    plan = _fused_plans.get(id(w1))
    if (
        plan is not None and plan.w1() is w1 and plan.w2() is w2 and plan.quant_config is quant_config
        and plan.expert_map is expert_map and plan.global_num_experts_arg == global_num_experts
        and plan.activation_arg == activation and plan.backend_arg == backend
        # Still the registry's adapter: REGISTRY.clear() and backends.reset() empty _fast_impl.
        and _fast_impl.get(plan.impl_key) is plan.impl
    ):
        try:
            t_tokens, hidden = hidden_states.shape
            ids_shape = topk_ids.shape
            rows, top_k = ids_shape
            dev = plan.device
            # torch.device equality (type and index), not get_device(): that is -1 for CPU and meta.
            valid = (
                hidden == plan.hidden and rows == t_tokens and 1 <= top_k <= plan.global_num_experts
                and hidden_states.dtype is plan.act_dtype and hidden_states.device == dev
                and topk_weights.shape == ids_shape and topk_weights.dtype is _F32
                and topk_ids.dtype in _ID_DTYPES
                and topk_ids.device == dev and topk_weights.device == dev
                and hidden_states.is_contiguous() and topk_ids.is_contiguous() and topk_weights.is_contiguous()
            )
        except (AttributeError, ValueError, TypeError):  # not tensors or not 2-D: the full path says which
            valid = False
        if valid:
            gne = plan.global_num_experts
            # Value check: a host read, so CUDA tensors get it only in debug mode (as on the full path).
            if not plan.on_cuda or _checks._debug:
                _checks.check_ids_range("topk_ids", topk_ids, 0, gne)
            if t_tokens == 0:
                return hidden_states.new_empty((0, hidden))
            return plan.impl(
                hidden_states, w1, w2, topk_weights, topk_ids, plan.act, plan.qc, expert_map,
                gne, apply_router_weight_on_input, inplace,
            )
    backend_arg, global_num_experts_arg = backend, global_num_experts
    act = _ACTIVATIONS.get(activation) or parse_activation(activation)
    qc = UNQUANTIZED if quant_config is None else quant_config
    if not isinstance(qc, QuantConfig):
        if isinstance(qc, PerExpertQuantConfig):
            return _fused_experts_per_expert(hidden_states, w1, w2, topk_weights, topk_ids, act, qc, expert_map,
                                             global_num_experts, apply_router_weight_on_input, inplace, backend)
        if not isinstance(qc, MixedQuantConfig):
            raise InvalidInputError("quant_config", "a moecompat.QuantConfig (see make_quant_config), MixedQuantConfig, "
                                    "PerExpertQuantConfig or None", type(qc).__name__)
        chosen = auto_backend("fused_experts", hidden_states.is_cuda)[0] if backend == "auto" else backend
        if chosen != "reference":
            raise UnsupportedFeatureError(
                chosen, None, "mixed per-projection precision (MixedQuantConfig)",
                detail="the engines' fused kernels run both GEMMs in one scheme and expose no per-stage API; "
                "use backend='reference'")
        backend = "reference"
    hidden_states, topk_weights, topk_ids, global_num_experts = _checks.check_fused_experts(
        hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map, global_num_experts, inplace  # type: ignore[arg-type]
    )
    if hidden_states.shape[0] == 0:
        return hidden_states.new_empty((0, w2.shape[1]))  # type: ignore[union-attr]
    impl = _impl("fused_experts", backend, hidden_states.is_cuda)
    _remember_plan(hidden_states, w1, w2, quant_config, expert_map, global_num_experts_arg, activation,
                   backend_arg, act, qc, global_num_experts, impl, backend)
    return impl(
        hidden_states, w1, w2, topk_weights, topk_ids, act, qc, expert_map,
        global_num_experts, apply_router_weight_on_input, inplace,
    )


def _remember_plan(
    hidden_states: torch.Tensor, w1: Any, w2: Any, quant_config: object, expert_map: torch.Tensor | None,
    global_num_experts_arg: int, activation: object, backend_arg: str, act: Activation,
    qc: QuantConfig | MixedQuantConfig, global_num_experts: int, impl: Callable[..., Any], backend: str,
) -> None:
    """Record the plan of a call that passed the full checks (see :class:`_FusedPlan`)."""
    on_cuda = hidden_states.is_cuda
    chosen = auto_backend("fused_experts", on_cuda)[0] if backend == "auto" else backend
    impl_key = ("fused_experts", chosen)
    if _fast_impl.get(impl_key) is not impl:  # not a cached adapter: nothing to validate a plan against
        return
    plan = _FusedPlan()
    try:
        plan.w1, plan.w2 = weakref.ref(w1), weakref.ref(w2)
    except TypeError:  # weights that take no weak references: every call takes the full path
        return
    plan.quant_config, plan.expert_map = quant_config, expert_map
    plan.global_num_experts_arg, plan.activation_arg, plan.backend_arg = global_num_experts_arg, activation, backend_arg
    plan.act, plan.qc, plan.global_num_experts = act, qc, global_num_experts
    plan.hidden, plan.act_dtype = hidden_states.shape[1], hidden_states.dtype
    plan.device, plan.on_cuda = hidden_states.device, on_cuda
    plan.impl, plan.impl_key = impl, impl_key
    if len(_fused_plans) >= _FUSED_PLANS_MAX:
        _fused_plans.clear()
    _fused_plans[id(w1)] = plan


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


def _fused_experts_per_expert(
    hidden_states: torch.Tensor,
    w1: object,
    w2: object,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    act: Activation,
    qc: PerExpertQuantConfig,
    expert_map: torch.Tensor | None,
    global_num_experts: int,
    apply_router_weight_on_input: bool,
    inplace: bool,
    backend: BackendName,
) -> torch.Tensor:
    """:func:`fused_experts` with a :class:`PerExpertQuantConfig`: one call of the backend's
    fused-experts implementation per group, with an expert map that gives the other groups'
    experts -1 (zero contribution); the group outputs (``[T, H]``: float32 from the reference,
    ``hidden_states.dtype`` from an engine kernel) are summed in float32. Engines run each group
    with their own kernel; reference included, every backend runs this same loop."""
    hidden_states, topk_weights, topk_ids, maps = _checks.check_per_expert_fused_experts(
        hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map, global_num_experts, inplace)
    chosen = auto_backend("fused_experts", hidden_states.is_cuda)[0] if backend == "auto" else backend
    if chosen != "reference":
        for i, g in enumerate(qc.groups):
            if isinstance(g.quant_config, MixedQuantConfig):
                raise UnsupportedFeatureError(
                    chosen, None, f"mixed per-projection precision (MixedQuantConfig) in quant_config.groups[{i}]",
                    detail="the engines' fused kernels run both GEMMs of a call in one scheme; use backend='reference'")
    if hidden_states.shape[0] == 0:
        return hidden_states.new_empty((0, qc.hidden_size))
    impl = _impl("fused_experts", chosen, hidden_states.is_cuda)
    # The reference returns each group's float32 sum (no rounding per group); engines' kernels
    # return hidden_states.dtype.
    kw: dict[str, Any] = {"out_dtype": torch.float32} if chosen == "reference" else {}
    gne = qc.global_num_experts
    total: torch.Tensor | None = None
    for g, m in zip(qc.groups, maps, strict=True):
        try:
            y = impl(hidden_states, g.w1, g.w2, topk_weights, topk_ids, act, g.quant_config, m, gne,
                     apply_router_weight_on_input, False, **kw)
        except UnsupportedFeatureError as exc:
            raise UnsupportedFeatureError(
                exc.engine, exc.installed, f"per-expert precision (PerExpertQuantConfig), group {g.describe()}",
                exc.available_in, detail=f"it runs one fused_experts call per group with an expert_map: {exc}",
                cause=exc.cause) from exc
        total = y.float() if total is None else total.add_(y)
    assert total is not None
    out = total.to(hidden_states.dtype)
    if inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out
