"""Public MoE entry points: validate, bind the backend's adapter once per layer, call fast.

Each function checks its arguments before any kernel runs (an
[`InvalidInputError`][moecompat.InvalidInputError] names the argument), hands the backend a typed
call object, and calls the runner the backend bound for it. [`fused_experts`][moecompat.fused_experts]
keeps that runner per weight set (a *call plan*), so a layer's repeated calls cost the token
tensors' checks plus the runner; [`MoEExperts`][moecompat.MoEExperts] holds it explicitly.

Under ``torch.compile`` these functions are traced as the ``torch.ops.moecompat.*`` custom ops
(see [`moecompat.ops`][moecompat.ops]).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import _checks
from ._adapters import REGISTRY
from ._backends import auto_backend, get_impl, known_backends
from ._calls import ExpertsCall, RoutingCall
from ._scalars import check_bool, check_int, describe
from .engines._specs import ENGINE_NAMES
from .errors import InvalidInputError, UnsupportedFeatureError
from .quant import UNQUANTIZED, MixedQuantConfig, PerExpertQuantConfig, QuantConfig
from .reference.numerics import IDEAL, Numerics
from .tracker import ExpertActivationTracker
from .vocab import (
    Activation,
    BackendName,
    ScoringFunc,
    TopK,
    parse_activation,
    parse_name,
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
_ID_DTYPES = _checks._ID_DTYPES


def _activation(value: object) -> Activation:
    try:
        hit = _ACTIVATIONS.get(value)
    except TypeError:  # unhashable
        hit = None
    return hit if hit is not None else parse_activation(value)


def _scoring(value: object) -> ScoringFunc:
    try:
        hit = _SCORING.get(value)
    except TypeError:
        hit = None
    return hit if hit is not None else parse_scoring_func(value)


def _backend_name(backend: object) -> str:
    return parse_name(backend, "backend", known_backends())


def resolve_backend(backend: str, entry_point: str, on_cuda: bool) -> str:
    """The concrete backend name for ``backend`` (``"auto"`` resolved for the tensors' device)."""
    return auto_backend(entry_point, on_cuda)[0] if backend == "auto" else backend


class Plan:
    """A bound ``fused_experts`` runner and what the full validation established for it:
    the hidden size, activation dtype, device, global and local expert counts. Shared by the
    functional API's per-weight-set plans and [`MoEExperts`][moecompat.MoEExperts]."""

    __slots__ = ("act_dtype", "device", "device_index", "gne", "hidden", "num_local", "on_cuda", "runner", "weights_dtype")
    act_dtype: torch.dtype
    device: torch.device
    device_index: int
    gne: int
    hidden: int
    num_local: int
    on_cuda: bool
    runner: Any
    weights_dtype: torch.dtype

    def __init__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, gne: int, num_local: int, runner: Any) -> None:
        self.hidden = hidden_states.shape[1]
        self.act_dtype = hidden_states.dtype
        self.weights_dtype = topk_weights.dtype
        self.device = hidden_states.device
        self.on_cuda = hidden_states.is_cuda
        self.device_index = hidden_states.get_device() if self.on_cuda else -1
        self.gne, self.num_local, self.runner = gne, num_local, runner

    def tokens_ok(self, hidden_states: Any, topk_weights: Any, topk_ids: Any) -> int:
        """The number of tokens when the token tensors' metadata matches what the full path
        validated (shape, dtype, device, contiguity), else -1, which sends the call to the full
        path, which names the argument. One condition, each attribute read once: these reads are
        the floor of the hot path's cost (benchmarks/overhead.py measures it)."""
        try:
            t_tokens, hidden = hidden_states.shape
            ids_size = topk_ids.shape
            rows, top_k = ids_size
            if self.on_cuda:
                # get_device() is -1 for CPU and meta tensors, the CUDA index otherwise.
                idx = self.device_index
                same_device = hidden_states.get_device() == idx and topk_ids.get_device() == idx \
                    and topk_weights.get_device() == idx
            else:
                same_device = hidden_states.is_cpu and topk_ids.is_cpu and topk_weights.is_cpu
            ok = (
                hidden == self.hidden and rows == t_tokens and 0 < top_k <= self.gne and same_device
                and hidden_states.dtype is self.act_dtype and topk_weights.dtype is self.weights_dtype
                and topk_ids.dtype in _ID_DTYPES and topk_weights.shape == ids_size
                and hidden_states.is_contiguous() and topk_ids.is_contiguous() and topk_weights.is_contiguous()
            )
        except (AttributeError, ValueError, TypeError):  # not tensors or not 2-D
            return -1
        return t_tokens if ok else -1


class _LayerPlan(Plan):
    """A [`Plan`][moecompat.api.Plan] for one ``(w1, w2, quant_config, expert_map, global_num_experts,
    activation, apply_router_weight_on_input, backend)`` argument set, keyed by ``id(w1)``.

    The weights are held by weak reference with a callback that drops the plan when either dies,
    so while a plan exists its ids cannot be reused by another tensor (a plan never keeps a layer
    alive). Quant config and expert map are small and compared by identity.
    """

    __slots__ = ("activation_arg", "backend_arg", "expert_map", "gne_arg", "numerics_arg", "on_input", "quant_config",
                 "refs", "w2_id")
    numerics_arg: Any
    activation_arg: Any
    backend_arg: Any
    expert_map: torch.Tensor | None
    gne_arg: int
    on_input: bool
    quant_config: Any
    refs: tuple[Any, Any]
    w2_id: int


# id(w1) -> the plan of that weight set's latest fully validated call.
_plans: dict[int, _LayerPlan] = {}
_PLANS_MAX = 4096
REGISTRY.on_clear.append(_plans.clear)


def _drop_plan(key: int) -> Callable[[Any], None]:
    def drop(_ref: Any) -> None:
        _plans.pop(key, None)

    return drop


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
    numerics: str | Numerics = "ideal",
) -> torch.Tensor:
    """Run the experts of a MoE layer on already-routed tokens.

    Args:
        hidden_states: ``[T, H]`` bf16/fp16/fp32 activations.
        w1: ``[E, 2*I, H]`` gate-and-up projection (gate rows first, then up; interleaved for
            ``"swigluoai"``); quantized layouts in [`moecompat.quant`][moecompat.quant].
        w2: ``[E, H, I]`` down projection. ``w1`` and ``w2`` are ``None`` with a
            [`PerExpertQuantConfig`][moecompat.PerExpertQuantConfig] (its groups carry their weights).
        topk_weights: ``[T, k]`` float32 router weights.
        topk_ids: ``[T, k]`` int32/int64 *global* expert ids.
        activation: ``"silu"``, ``"gelu"`` or ``"swigluoai"`` ([`Activation`][moecompat.Activation]).
        quant_config: from [`make_quant_config`][moecompat.make_quant_config]; ``None`` for
            unquantized weights; [`make_mixed_quant_config`][moecompat.make_mixed_quant_config]
            (per projection, reference backend) or
            [`make_per_expert_quant_config`][moecompat.make_per_expert_quant_config] (per expert group).
        expert_map: ``[global_num_experts]`` int32: global id -> local id (index into ``w1``) or
            -1 for experts not on this rank, whose slots contribute zero. Its values are checked
            on every call (CPU tensors; CUDA in debug mode): it may be rewritten in place.
        global_num_experts: total experts across ranks; ``-1`` infers it.
        apply_router_weight_on_input: scale the expert input (the first GEMM's output) by the
            router weight instead of the expert output.
        inplace: write the result into ``hidden_states`` and return it.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.
        numerics: the reference backend's arithmetic: ``"ideal"`` (moecompat's oracle), an
            engine's (``"vllm"``, ``"sglang"``: its installed release's kernels' conventions on
            this machine, to compare with it), or a
            [`Numerics`][moecompat.reference.Numerics]. Engines run their own.

    Returns:
        ``[T, H]`` tensor of ``hidden_states.dtype``: ``sum_k weight * expert(token)``.

    Raises:
        InvalidInputError: a malformed argument (shape, dtype, device, value, type).
        UnsupportedFeatureError: the backend (at its installed version) lacks what was asked.
    """
    # Hot path: the weights, quant config, ... were validated by an earlier call (a plan); the
    # token tensors get the full path's metadata checks and every value check; any mismatch
    # takes the full path, which names the argument.
    plan = _plans.get(id(w1))
    if (
        plan is not None and id(w2) == plan.w2_id and quant_config is plan.quant_config and expert_map is plan.expert_map
        and global_num_experts == plan.gne_arg and type(global_num_experts) is int
        and activation == plan.activation_arg and backend == plan.backend_arg and numerics == plan.numerics_arg
        and apply_router_weight_on_input is plan.on_input and type(inplace) is bool
        and (tokens := plan.tokens_ok(hidden_states, topk_weights, topk_ids)) >= 0
    ):
        if not plan.on_cuda or _checks._debug:
            # Value checks: host reads, so CUDA tensors get them only in debug mode (as on the
            # full path); never skipped otherwise, since values change in place.
            _checks.check_ids_range("topk_ids", topk_ids, 0, plan.gne, _checks.topk_ids_hint(expert_map))
            if expert_map is not None:
                _checks.check_expert_map_values(expert_map, plan.num_local)
        if tokens == 0:
            return hidden_states.new_empty((0, plan.hidden))
        return plan.runner(hidden_states, w1, w2, topk_weights, topk_ids, inplace)
    return _fused_experts_full(hidden_states, w1, w2, topk_weights, topk_ids, activation, quant_config, expert_map,
                               global_num_experts, apply_router_weight_on_input, inplace, backend, numerics)


def resolve_numerics(numerics: object, backend: str) -> Numerics:
    """The [`Numerics`][moecompat.reference.Numerics] of a ``numerics`` argument for ``backend``
    (concrete): an engine's come from its facts for the installed release and this machine."""
    if isinstance(numerics, Numerics):
        chosen = numerics
    else:
        name = parse_name(numerics, "numerics", ("ideal", *ENGINE_NAMES))
        chosen = IDEAL if name == "ideal" else get_impl("numerics", name)()
    if chosen is not IDEAL and backend != "reference":
        raise InvalidInputError("numerics", "'ideal' with an engine backend (an engine runs its own arithmetic; "
                                "numerics choose the reference backend's)", f"{chosen.name!r} with backend {backend!r}")
    return chosen


def _fused_experts_full(
    hidden_states: Any, w1: Any, w2: Any, topk_weights: Any, topk_ids: Any, activation: Any, quant_config: Any,
    expert_map: Any, global_num_experts: Any, apply_router_weight_on_input: Any, inplace: Any, backend: Any,
    numerics: Any = "ideal",
) -> torch.Tensor:
    backend_name = _backend_name(backend)
    act = _activation(activation)
    check_int("global_num_experts", global_num_experts, minimum=-1)
    if global_num_experts == 0:
        raise InvalidInputError("global_num_experts", "-1 (infer) or a positive int", 0)
    check_bool("apply_router_weight_on_input", apply_router_weight_on_input)
    check_bool("inplace", inplace)
    qc = UNQUANTIZED if quant_config is None else quant_config
    if isinstance(qc, PerExpertQuantConfig):
        return _fused_experts_per_expert(hidden_states, w1, w2, topk_weights, topk_ids, act, qc, expert_map,
                                         global_num_experts, apply_router_weight_on_input, inplace, backend_name,
                                         numerics)
    if not isinstance(qc, (QuantConfig, MixedQuantConfig)):
        raise InvalidInputError("quant_config", "a moecompat.QuantConfig (see make_quant_config), MixedQuantConfig, "
                                "PerExpertQuantConfig or None", describe(qc))
    hidden_states, topk_weights, topk_ids, gne, num_local = _checks.check_fused_experts(
        hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map, global_num_experts, inplace)
    chosen = resolve_backend(backend_name, "fused_experts", hidden_states.is_cuda)
    if isinstance(qc, MixedQuantConfig) and chosen != "reference":
        raise UnsupportedFeatureError(
            chosen, None, "mixed per-projection precision (MixedQuantConfig)",
            detail="the engines' fused kernels run both GEMMs in one scheme and expose no per-stage API; "
            "use backend='reference'")
    arithmetic = resolve_numerics(numerics, chosen)
    bind = get_impl("fused_experts", chosen, hidden_states.is_cuda)
    runner = bind(ExpertsCall(w1, w2, qc, expert_map, gne, act, apply_router_weight_on_input, numerics=arithmetic))
    _remember(hidden_states, topk_weights, w1, w2, quant_config, expert_map, global_num_experts, activation, backend,
              apply_router_weight_on_input, gne, num_local, runner, numerics)
    if hidden_states.shape[0] == 0:
        return hidden_states.new_empty((0, w2.shape[1]))
    return runner(hidden_states, w1, w2, topk_weights, topk_ids, inplace)


def _remember(hidden_states: torch.Tensor, topk_weights: torch.Tensor, w1: Any, w2: Any, quant_config: Any,
              expert_map: Any, gne_arg: int, activation: Any, backend: Any, on_input: bool, gne: int, num_local: int,
              runner: Any, numerics: Any) -> None:
    """Record the plan of a call that passed the full checks (see `_LayerPlan`)."""
    plan = _LayerPlan(hidden_states, topk_weights, gne, num_local, runner)
    key = id(w1)
    try:
        plan.refs = (weakref.ref(w1, _drop_plan(key)), weakref.ref(w2, _drop_plan(key)))
    except TypeError:  # weights that take no weak references: every call takes the full path
        return
    plan.w2_id, plan.quant_config, plan.expert_map = id(w2), quant_config, expert_map
    plan.gne_arg, plan.activation_arg, plan.backend_arg, plan.on_input = gne_arg, activation, backend, on_input
    plan.numerics_arg = numerics
    if len(_plans) >= _PLANS_MAX:
        _plans.clear()
    _plans[key] = plan


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
    backend: str,
    numerics: Any = "ideal",
) -> torch.Tensor:
    """[`fused_experts`][moecompat.fused_experts] with a [`PerExpertQuantConfig`][moecompat.PerExpertQuantConfig]:
    one call of the backend's fused-experts runner per group, with an expert map that gives the
    other groups' experts -1 (zero contribution); the group outputs (``[T, H]``: float32 from the
    reference, ``hidden_states.dtype`` from an engine kernel) are summed in float32."""
    hidden_states, topk_weights, topk_ids, maps = _checks.check_per_expert_fused_experts(
        hidden_states, w1, w2, topk_weights, topk_ids, qc, expert_map, global_num_experts, inplace)
    chosen = resolve_backend(backend, "fused_experts", hidden_states.is_cuda)
    if chosen != "reference":
        for i, g in enumerate(qc.groups):
            if isinstance(g.quant_config, MixedQuantConfig):
                raise UnsupportedFeatureError(
                    chosen, None, f"mixed per-projection precision (MixedQuantConfig) in quant_config.groups[{i}]",
                    detail="the engines' fused kernels run both GEMMs of a call in one scheme; use backend='reference'")
    if hidden_states.shape[0] == 0:
        return hidden_states.new_empty((0, qc.hidden_size))
    arithmetic = resolve_numerics(numerics, chosen)
    bind = get_impl("fused_experts", chosen, hidden_states.is_cuda)
    key = (chosen, act, apply_router_weight_on_input, hidden_states.device, bind, arithmetic)
    runners = qc._runners.get(key)
    if runners is None:
        # The reference returns each group's float32 sum (no rounding per group); engines'
        # kernels return hidden_states.dtype.
        out_dtype = torch.float32 if chosen == "reference" else None
        built = []
        for g, m in zip(qc.groups, maps, strict=True):
            try:
                built.append(bind(ExpertsCall(g.w1, g.w2, g.quant_config, m, qc.global_num_experts, act,
                                              apply_router_weight_on_input, out_dtype, arithmetic)))
            except UnsupportedFeatureError as exc:
                raise UnsupportedFeatureError(
                    exc.engine, exc.installed, f"per-expert precision (PerExpertQuantConfig), group {g.describe()}",
                    exc.available_in, detail=f"it runs one fused_experts call per group with an expert_map: {exc}",
                    cause=exc.cause) from exc
        runners = qc._runners[key] = tuple(built)
    total: torch.Tensor | None = None
    for g, run in zip(qc.groups, runners, strict=True):
        y = run(hidden_states, g.w1, g.w2, topk_weights, topk_ids, False)
        total = y.float() if total is None else total.add_(y)
    assert total is not None
    out = total.to(hidden_states.dtype)
    if inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out


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
        num_expert_group: with ``use_grouped_topk``: the number of expert groups; it divides
            ``E`` (DeepSeek-V3: 8).
        topk_group: with ``use_grouped_topk``: how many groups each token may pick from,
            ``1 <= topk_group <= num_expert_group`` (DeepSeek-V3: 4).
        e_score_correction_bias: ``[E]`` added to scores for *choosing* only.
        routed_scaling_factor: multiplies the final weights.
        custom_routing_function: ``f(hidden_states, router_logits, top_k, renormalize) ->
            (weights, ids)``.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.
        tracker: an [`ExpertActivationTracker`][moecompat.ExpertActivationTracker] that records
            the chosen ids (for ``layer``) without synchronising the GPU.
        layer: the layer index ``tracker`` records under, ``0 <= layer < tracker.num_layers``.

    Returns:
        [`TopK`][moecompat.TopK] ``(topk_weights [T, k] float32, topk_ids [T, k] int32)``.
    """
    backend_name = _backend_name(backend)
    scoring = _scoring(scoring_func)
    top_k, num_expert_group, topk_group = _checks.check_select_experts(
        hidden_states, router_logits, top_k, renormalize, use_grouped_topk, num_expert_group, topk_group,
        e_score_correction_bias, routed_scaling_factor, custom_routing_function,
    )
    if tracker is not None:
        if not isinstance(tracker, ExpertActivationTracker):
            raise InvalidInputError("tracker", "a moecompat.ExpertActivationTracker or None", describe(tracker))
        tracker._check_record_args(layer)
    chosen = resolve_backend(backend_name, "select_experts", router_logits.is_cuda)
    bind = get_impl("select_experts", chosen, router_logits.is_cuda)
    rsf = float(routed_scaling_factor) if routed_scaling_factor is not None else None
    call = RoutingCall(top_k, renormalize, scoring, use_grouped_topk, num_expert_group, topk_group,
                       e_score_correction_bias, rsf, custom_routing_function)
    out = bind(call)(hidden_states, router_logits)
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
    """[`select_experts`][moecompat.select_experts] then [`fused_experts`][moecompat.fused_experts]:
    a whole MoE layer, ``[T, H] -> [T, H]``.

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

    Args:
        topk_ids: ``[T, k]`` int32/int64 global expert ids ``< num_experts``.
        block_size: the kernel's ``BLOCK_SIZE_M``, a positive int.
        num_experts: global expert count.
        expert_map: ``[num_experts]`` int32/int64: local id or -1 (on ``topk_ids``' device).
        pad_sorted_ids: pad ``sorted_token_ids`` to a multiple of ``block_size``.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.

    Returns:
        ``(sorted_token_ids, expert_ids, num_tokens_post_padded)`` (int32) as described in
        [`moecompat.reference.moe_align_block_size`][moecompat.reference.moe_align_block_size].
    """
    backend_name = _backend_name(backend)
    if not isinstance(topk_ids, torch.Tensor) or topk_ids.dim() != 2:
        raise InvalidInputError("topk_ids", "a 2-D tensor [num_tokens, top_k]",
                                list(topk_ids.shape) if isinstance(topk_ids, torch.Tensor) else describe(topk_ids))
    if topk_ids.dtype not in _ID_DTYPES:
        raise InvalidInputError("topk_ids", "dtype int32 or int64", topk_ids.dtype)
    block_size = check_int("block_size", block_size, minimum=1)
    num_experts = check_int("num_experts", num_experts, minimum=1)
    check_bool("pad_sorted_ids", pad_sorted_ids)
    if expert_map is not None:
        if not isinstance(expert_map, torch.Tensor):
            raise InvalidInputError("expert_map", f"a 1-D int32/int64 tensor [num_experts={num_experts}] or None", describe(expert_map))
        if expert_map.dim() != 1 or expert_map.shape[0] != num_experts:
            raise InvalidInputError("expert_map", f"a 1-D tensor of length num_experts={num_experts}", list(expert_map.shape))
        if expert_map.dtype not in _ID_DTYPES:
            raise InvalidInputError("expert_map", "dtype int32 or int64", expert_map.dtype)
        if expert_map.device != topk_ids.device:
            raise InvalidInputError("expert_map", f"a tensor on {topk_ids.device} (like topk_ids)", f"a tensor on {expert_map.device}")
        _checks.check_ids_range("expert_map", expert_map, -1, num_experts, "local expert ids or -1")
    _checks.check_ids_range("topk_ids", topk_ids, 0, num_experts)
    chosen = resolve_backend(backend_name, "moe_align_block_size", topk_ids.is_cuda)
    impl = get_impl("moe_align_block_size", chosen, topk_ids.is_cuda)
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
    backend_name = _backend_name(backend)
    if not isinstance(dtype, torch.dtype):
        raise InvalidInputError("dtype", "a torch.dtype", describe(dtype))
    for name, flag in (("use_fp8_w8a8", use_fp8_w8a8), ("use_int8_w8a16", use_int8_w8a16), ("use_int4_w4a16", use_int4_w4a16)):
        check_bool(name, flag)
    if ocp_mx_scheme is not None and not isinstance(ocp_mx_scheme, str):
        raise InvalidInputError("ocp_mx_scheme", "a str (e.g. 'w_mxfp4_a_mxfp4') or None", describe(ocp_mx_scheme))
    impl = get_impl("get_config_dtype_str", backend_name, True)
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
    backend_name = _backend_name(backend)
    ep_size = check_int("ep_size", ep_size, minimum=1)
    ep_rank = check_int("ep_rank", ep_rank, minimum=0)
    global_num_experts = check_int("global_num_experts", global_num_experts, minimum=1)
    if ep_rank >= ep_size:
        raise InvalidInputError("ep_rank", f"< ep_size ({ep_size})", ep_rank)
    placement = parse_name(placement, "placement", ("linear", "round_robin"))
    impl = get_impl("make_expert_map", backend_name, True)
    return impl(ep_size, ep_rank, global_num_experts, placement)


def to_engine_quant_config(quant_config: QuantConfig | None, *, backend: BackendName = "auto") -> Any:
    """Translate a [`QuantConfig`][moecompat.QuantConfig] into the engine's own object.

    vLLM >= 0.10: its ``FusedMoEQuantConfig``; older vLLM and SGLang: the dict of legacy
    ``use_*`` keyword flags and scales their ``fused_experts`` takes; reference: the config
    itself.
    """
    backend_name = _backend_name(backend)
    qc = UNQUANTIZED if quant_config is None else quant_config
    if not isinstance(qc, QuantConfig):
        raise InvalidInputError("quant_config", "a moecompat.QuantConfig or None", describe(qc))
    impl = get_impl("make_quant_config", backend_name, True)
    return impl(qc)
