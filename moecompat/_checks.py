"""Input validation shared by every backend: metadata always, values where cheap.

Metadata checks (shape, dtype, device, layout) read only tensor attributes: they never
synchronise the GPU and are safe under CUDA-graph capture. Value checks (expert id ranges) run on
CPU tensors always and on CUDA tensors only in debug mode (`set_debug` or the environment
variable ``MOECOMPAT_DEBUG=1``), because they need a device-to-host copy.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import weakref
from typing import Any

import torch

from ._scalars import check_bool, check_int, check_real, describe
from .errors import InvalidInputError
from .quant import (
    MixedQuantConfig,
    PerExpertQuantConfig,
    QuantConfig,
    expected_weight_scale_shape,
    expected_zp_shape,
    logical_k,
    weight_dtypes,
)
from .vocab import QuantScheme

_debug = os.environ.get("MOECOMPAT_DEBUG", "") not in ("", "0")
_FLOAT_ACT = (torch.bfloat16, torch.float16, torch.float32)
_ID_DTYPES = (torch.int32, torch.int64)


def set_debug(enabled: bool) -> None:
    """Turn value checks on CUDA tensors (which synchronise) on or off."""
    global _debug
    _debug = bool(enabled)


def debug_enabled() -> bool:
    return _debug


def _fail(argument: str, expected: object, actual: object, hint: str = "") -> InvalidInputError:
    return InvalidInputError(argument, expected, actual, hint)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def _check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise _fail(name, f"a tensor on {ref.device} (like {ref_name})", f"a tensor on {t.device}")


# (low, high) -> frozenset(range(low, high)), for ranges of at most _ID_SET_MAX ids.
_id_sets: dict[tuple[int, int], frozenset[int]] = {}
_ID_SET_MAX = 4096


def _id_set(low: int, high: int) -> frozenset[int]:
    s = _id_sets.get((low, high))
    if s is None:
        if len(_id_sets) >= 64:
            _id_sets.clear()
        s = _id_sets[(low, high)] = frozenset(range(low, high))
    return s


def check_ids_range(name: str, ids: torch.Tensor, low: int, high: int, hint: str = "") -> None:
    """Value check ``low <= ids < high`` on CPU tensors, or on CUDA tensors in debug mode."""
    if ids.is_cuda and not _debug:
        return
    if ids.is_meta:
        raise _fail(name, "a tensor with data (CPU or CUDA), not on the meta device", "a meta tensor")
    n = ids.numel()
    if n == 0:
        return
    if n <= 64 and ids.dim() == 2:  # decode-sized: host lists are ~10x cheaper than reductions
        rows = ids.tolist()
        # Membership in the set of valid ids is about half the cost of min() and max() over
        # the rows; those run only to word the error.
        if high - low <= _ID_SET_MAX and _id_set(low, high).issuperset(itertools.chain.from_iterable(rows)):
            return
        lo, hi = min(map(min, rows)), max(map(max, rows))
    else:
        lo_t, hi_t = torch.aminmax(ids)
        lo, hi = int(lo_t), int(hi_t)
    if lo < low or hi >= high:
        raise _fail(name, f"values in [{low}, {high})", f"values in [{lo}, {hi}]", hint)


def topk_ids_hint(expert_map: torch.Tensor | None) -> str:
    """What a ``topk_ids`` range error means when the range came from an expert map."""
    if expert_map is None:
        return ""
    return (f"global expert ids: expert_map has {expert_map.shape[0]} entries, one per global expert; "
            "if the ids are right, expert_map (or global_num_experts) is too short")


def check_expert_map_values(expert_map: torch.Tensor, num_local: int) -> None:
    """Every ``expert_map`` entry is a local expert id or -1 (CPU, or CUDA in debug mode). Runs
    on every call: a load balancer may rewrite the map in place between calls."""
    check_ids_range("expert_map", expert_map, -1, num_local,
                    f"local expert ids of this rank's {num_local} experts (w1.shape[0]) or -1 for experts of other ranks")


@dataclasses.dataclass(frozen=True)
class WeightInfo:
    """What validating a (w1, w2, quant_config, expert_map) set established."""

    hidden: int
    num_local: int
    global_num_experts: int
    device_index: int
    device: torch.device


# id(w1) -> ((weakrefs to w1, w2), quant config, expert map, global_num_experts, dtype, WeightInfo).
# Weights are the same objects on every call of a layer, so their full validation (about 40
# attribute reads) runs once per weight set; the weakrefs guard against a reused id.
_weight_cache: dict[int, tuple[Any, ...]] = {}
_WEIGHT_CACHE_MAX = 4096


def _activation_dtype(hidden_states: Any) -> torch.dtype:
    """``hidden_states``' dtype after checking it is a 2-D float tensor ``[num_tokens, hidden]``."""
    if not isinstance(hidden_states, torch.Tensor):
        raise _fail("hidden_states", "a torch.Tensor", type(hidden_states).__name__)
    if hidden_states.dim() != 2:
        raise _fail("hidden_states", "a 2-D tensor [num_tokens, hidden]", _shape(hidden_states))
    if hidden_states.dtype not in _FLOAT_ACT:
        raise _fail("hidden_states", "dtype bfloat16, float16 or float32", hidden_states.dtype)
    return hidden_states.dtype


def _validated_weights(
    w1: torch.Tensor, w2: torch.Tensor, qc: QuantConfig | MixedQuantConfig, expert_map: torch.Tensor | None,
    global_num_experts: int, act_dtype: torch.dtype, ref: torch.Tensor,
) -> WeightInfo:
    hit = _weight_cache.get(id(w1))
    if hit is not None and hit[1] is qc and hit[2] is expert_map and hit[3] == global_num_experts \
            and hit[4] is act_dtype and hit[0][0]() is w1 and hit[0][1]() is w2:
        info: WeightInfo = hit[5]
        # Metadata cannot change in place; the map's values can (EPLB rewrites it): re-check.
        if expert_map is not None:
            check_expert_map_values(expert_map, info.num_local)
        return info
    info = _check_weights(w1, w2, qc, expert_map, global_num_experts, act_dtype, ref)
    if len(_weight_cache) >= _WEIGHT_CACHE_MAX:
        _weight_cache.clear()
    try:
        # Weak references to the (large) weights; quant config and expert map are small and
        # compared by identity.
        _weight_cache[id(w1)] = ((weakref.ref(w1), weakref.ref(w2)), qc, expert_map, global_num_experts, act_dtype, info)
    except TypeError:  # an object that takes no weak references: validate every call
        pass
    return info


def _check_weights(
    w1: torch.Tensor, w2: torch.Tensor, qc: QuantConfig | MixedQuantConfig, expert_map: torch.Tensor | None,
    global_num_experts: int, act_dtype: torch.dtype, ref: torch.Tensor, values: bool = True,
) -> WeightInfo:
    for name, t in (("w1", w1), ("w2", w2)):
        if not isinstance(t, torch.Tensor):
            raise _fail(name, "a torch.Tensor", type(t).__name__)
    if w1.dim() != 3:
        raise _fail("w1", "a 3-D tensor [num_experts, 2 * intermediate, hidden]", _shape(w1))
    if w2.dim() != 3:
        raise _fail("w2", "a 3-D tensor [num_experts, hidden, intermediate]", _shape(w2))
    hidden = ref.shape[1]
    num_local, n1, k1 = w1.shape
    c1, c2 = (qc.for_gemm(1), qc.for_gemm(2)) if isinstance(qc, MixedQuantConfig) else (qc, qc)
    if w2.shape[0] != num_local:
        raise _fail("w2", f"{num_local} experts in dim 0 (like w1)", _shape(w2))
    if logical_k(c1.scheme, k1) != hidden:
        exp_k = hidden // 2 if c1.scheme in (QuantScheme.INT4_W4A16, QuantScheme.MXFP4_W4A16) else hidden
        raise _fail("w1", f"shape [E, 2*I, {exp_k}] matching hidden size {hidden} of hidden_states", _shape(w1),
                    "packed 4-bit schemes store hidden/2 bytes" if exp_k != hidden else "")
    if n1 % 2:
        raise _fail("w1", "an even dim 1 (gate and up rows: 2 * intermediate)", _shape(w1))
    inter = n1 // 2
    if w2.shape[1] != hidden:
        raise _fail("w2", f"shape [E, {hidden}, I] matching hidden size {hidden}", _shape(w2))
    if logical_k(c2.scheme, w2.shape[2]) != inter:
        raise _fail("w2", f"intermediate size {inter} in dim 2 (w1 has 2*I = {n1} rows)", _shape(w2))
    for name, w, cfg in (("w1", w1, c1), ("w2", w2, c2)):
        if cfg.scheme is None:
            if w.dtype != act_dtype:
                raise _fail(name, f"dtype {act_dtype} (the dtype of hidden_states, unquantized weights)", w.dtype)
        else:
            w_dtypes = weight_dtypes(cfg.scheme)
            if w.dtype not in w_dtypes:
                raise _fail(name, f"dtype {' or '.join(map(str, w_dtypes))} for scheme {cfg.scheme.value}", w.dtype)
    for name, t in (("w1", w1), ("w2", w2)):
        _check_same_device(name, t, "hidden_states", ref)
        if t.stride(-1) != 1:
            raise _fail(name, "a tensor contiguous in its last dimension", f"stride {list(t.stride())}",
                        "call .contiguous() once, outside the hot loop")
    if expert_map is not None:
        if not isinstance(expert_map, torch.Tensor) or expert_map.dim() != 1:
            raise _fail("expert_map", "a 1-D tensor [global_num_experts]",
                        _shape(expert_map) if isinstance(expert_map, torch.Tensor) else type(expert_map).__name__)
        if expert_map.dtype not in _ID_DTYPES:
            raise _fail("expert_map", "dtype int32 or int64", expert_map.dtype)
        _check_same_device("expert_map", expert_map, "hidden_states", ref)
        if global_num_experts not in (-1, expert_map.shape[0]):
            raise _fail("expert_map", f"length global_num_experts={global_num_experts}", expert_map.shape[0])
        if expert_map.shape[0] < num_local:
            raise _fail("expert_map", f"at least {num_local} entries (one per global expert; w1 holds {num_local} local experts)",
                        expert_map.shape[0])
        global_num_experts = expert_map.shape[0]
        if values:
            check_expert_map_values(expert_map, num_local)
    elif global_num_experts == -1:
        global_num_experts = num_local
    elif global_num_experts != num_local:
        raise _fail("global_num_experts", f"{num_local} (w1's experts) when no expert_map is given", global_num_experts)
    if c1.scheme is not None:
        _check_quant(c1, 1, num_local, n1, hidden, ref)
    if c2.scheme is not None:
        _check_quant(c2, 2, num_local, hidden, inter, ref)
    return WeightInfo(hidden, num_local, global_num_experts, ref.get_device(), ref.device)


def check_fused_experts(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    qc: QuantConfig | MixedQuantConfig,
    expert_map: torch.Tensor | None,
    global_num_experts: int,
    inplace: bool,
    values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """Validate ``fused_experts`` arguments; returns contiguous token tensors, the global and the
    local expert count. Every check, with precise errors; the call plans of
    [`fused_experts`][moecompat.fused_experts] and [`MoEExperts`][moecompat.MoEExperts] repeat
    the token tensors' metadata checks and every value check, and come here when anything differs.

    Non-contiguous ``hidden_states``/``topk_*`` are copied (kernels need them dense); weights
    whose last dimension is strided are rejected, since copying them on every call would be a
    hidden cost. The weights' checks run once per weight set (see `_weight_cache`); the
    per-token tensors are checked on every call. ``values=False`` (tracing under
    ``torch.compile``, where tensors have no values yet) runs the metadata checks only, without
    the weight cache; the traced custom op runs the value checks when it executes.
    """
    act_dtype = _activation_dtype(hidden_states)
    if values:
        info = _validated_weights(w1, w2, qc, expert_map, global_num_experts, act_dtype, hidden_states)
    else:
        info = _check_weights(w1, w2, qc, expert_map, global_num_experts, act_dtype, hidden_states, values=False)
    t_tokens, hidden = hidden_states.shape
    dev = hidden_states.device
    if values and (hidden != info.hidden or dev != info.device):
        # Same weights, new hidden size or device: re-validate against this input.
        _weight_cache.pop(id(w1), None)
        info = _validated_weights(w1, w2, qc, expert_map, global_num_experts, act_dtype, hidden_states)
    for name, t in (("topk_weights", topk_weights), ("topk_ids", topk_ids)):
        if not isinstance(t, torch.Tensor):
            raise _fail(name, "a torch.Tensor", type(t).__name__)
    ids_shape = topk_ids.shape
    if len(ids_shape) != 2:
        raise _fail("topk_ids", "a 2-D tensor [num_tokens, top_k]", list(ids_shape))
    if topk_weights.shape != ids_shape:
        raise _fail("topk_weights", f"shape {list(ids_shape)} (same as topk_ids)", _shape(topk_weights))
    if ids_shape[0] != t_tokens:
        raise _fail("topk_ids", f"{t_tokens} rows (one per token of hidden_states)", list(ids_shape))
    if topk_ids.dtype not in _ID_DTYPES:
        raise _fail("topk_ids", "dtype int32 or int64", topk_ids.dtype)
    if not topk_weights.is_floating_point():
        raise _fail("topk_weights", "a floating-point dtype (float32)", topk_weights.dtype)
    # Device objects, not get_device() indices: those are -1 for both CPU and meta tensors.
    if topk_ids.device != dev:
        raise _fail("topk_ids", f"a tensor on {dev} (like hidden_states)", f"a tensor on {topk_ids.device}")
    if topk_weights.device != dev:
        raise _fail("topk_weights", f"a tensor on {dev} (like hidden_states)", f"a tensor on {topk_weights.device}")
    gne = info.global_num_experts
    if ids_shape[1] > gne or ids_shape[1] < 1:
        raise _fail("topk_ids", f"between 1 and {gne} columns (top_k <= num_experts)", list(ids_shape))
    if values and (not topk_ids.is_cuda or _debug):
        check_ids_range("topk_ids", topk_ids, 0, gne, topk_ids_hint(expert_map))
    if not hidden_states.is_contiguous():
        if inplace:
            raise _fail("hidden_states", "a contiguous tensor when inplace=True", f"stride {list(hidden_states.stride())}")
        hidden_states = hidden_states.contiguous()
    if not topk_ids.is_contiguous():
        topk_ids = topk_ids.contiguous()
    if not topk_weights.is_contiguous():
        topk_weights = topk_weights.contiguous()
    return hidden_states, topk_weights, topk_ids, gne, info.num_local


def _check_quant(qc: QuantConfig, which: int, e: int, n: int, k: int, ref: torch.Tensor) -> None:
    """Scale/zero-point/block checks of GEMM ``which`` (1: w1 [E, N=2I, K=H]; 2: w2 [E, N=H, K=I])."""
    s = qc.scheme
    assert s is not None
    w = f"w{which}"
    if qc.block_shape is not None:
        bn, bk = qc.block_shape
        if n % bn or k % bk:
            raise _fail("block_shape", f"a [block_n, block_k] dividing {w}'s [N={n}, K={k}]", list(qc.block_shape))
    if qc.group_size is not None and k % qc.group_size:
        raise _fail("group_size", f"a divisor of {w}'s reduction size {k}", qc.group_size)
    scale = qc.w1_scale if which == 1 else qc.w2_scale
    name = f"{w}_scale"
    assert scale is not None
    allowed = expected_weight_scale_shape(qc, e, n, k)
    if tuple(scale.shape) not in allowed:
        raise _fail(name, " or ".join(str(list(a)) for a in allowed) + f" for {qc.describe()}", _shape(scale))
    if s is QuantScheme.MXFP4_W4A16:
        if scale.dtype != torch.uint8:
            raise _fail(name, "dtype uint8 (e8m0 exponents)", scale.dtype)
    elif not scale.is_floating_point():
        raise _fail(name, "a floating-point dtype", scale.dtype)
    _check_same_device(name, scale, "hidden_states", ref)
    zp = qc.w1_zp if which == 1 else qc.w2_zp
    if zp is not None:
        exp = expected_zp_shape(qc, e, n, k)
        if tuple(zp.shape) != exp:
            raise _fail(f"{w}_zp", f"{list(exp)} (int4 zero points packed two per byte along N)", _shape(zp))
        if zp.dtype != torch.uint8:
            raise _fail(f"{w}_zp", "dtype uint8", zp.dtype)
        _check_same_device(f"{w}_zp", zp, "hidden_states", ref)
    a = qc.a1_scale if which == 1 else qc.a2_scale
    if a is not None:
        if a.numel() != 1:
            raise _fail(f"a{which}_scale", "a per-tensor scale (numel 1)", _shape(a))
        _check_same_device(f"a{which}_scale", a, "hidden_states", ref)


def check_select_experts(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    use_grouped_topk: bool,
    num_expert_group: int | None,
    topk_group: int | None,
    e_score_correction_bias: torch.Tensor | None,
    routed_scaling_factor: float | None,
    custom_routing_function: object,
) -> tuple[int, int | None, int | None]:
    """Validate ``select_experts`` arguments; returns ``(top_k, num_expert_group, topk_group)``
    as ints."""
    for name, t in (("hidden_states", hidden_states), ("router_logits", router_logits)):
        if not isinstance(t, torch.Tensor):
            raise _fail(name, "a torch.Tensor", type(t).__name__)
    if router_logits.dim() != 2:
        raise _fail("router_logits", "a 2-D tensor [num_tokens, num_experts]", _shape(router_logits))
    if hidden_states.dim() != 2:
        raise _fail("hidden_states", "a 2-D tensor [num_tokens, hidden]", _shape(hidden_states))
    if hidden_states.shape[0] != router_logits.shape[0]:
        raise _fail("router_logits", f"{hidden_states.shape[0]} rows (one per token of hidden_states)", _shape(router_logits))
    if not router_logits.is_floating_point():
        raise _fail("router_logits", "a floating-point dtype", router_logits.dtype)
    _check_same_device("router_logits", router_logits, "hidden_states", hidden_states)
    num_experts = router_logits.shape[1]
    top_k = check_int("top_k", top_k, minimum=1)
    if top_k > num_experts:
        raise _fail("top_k", f"top_k <= num_experts ({num_experts})", top_k)
    check_bool("renormalize", renormalize)
    check_bool("use_grouped_topk", use_grouped_topk)
    num_expert_group = check_int("num_expert_group", num_expert_group, minimum=1, none=True)
    topk_group = check_int("topk_group", topk_group, minimum=1, none=True)
    if use_grouped_topk:
        if num_expert_group is None or topk_group is None:
            raise _fail("num_expert_group", "num_expert_group and topk_group with use_grouped_topk=True", (num_expert_group, topk_group))
        if num_experts % num_expert_group:
            raise _fail("num_expert_group", f"a divisor of num_experts ({num_experts})", num_expert_group)
        if topk_group > num_expert_group:
            raise _fail("topk_group", f"between 1 and num_expert_group ({num_expert_group})", topk_group)
        if top_k > topk_group * (num_experts // num_expert_group):
            raise _fail("top_k", f"at most topk_group * experts per group = {topk_group * (num_experts // num_expert_group)}", top_k)
        if e_score_correction_bias is not None and num_experts // num_expert_group < 2:
            raise _fail("num_expert_group", "groups of at least 2 experts with e_score_correction_bias (top-2 group score)", num_expert_group)
    if e_score_correction_bias is not None:
        if not isinstance(e_score_correction_bias, torch.Tensor) or tuple(e_score_correction_bias.shape) != (num_experts,):
            raise _fail("e_score_correction_bias", f"a tensor of shape [{num_experts}]",
                        _shape(e_score_correction_bias) if isinstance(e_score_correction_bias, torch.Tensor) else describe(e_score_correction_bias))
        if not e_score_correction_bias.is_floating_point():
            raise _fail("e_score_correction_bias", "a floating-point tensor", e_score_correction_bias.dtype)
        _check_same_device("e_score_correction_bias", e_score_correction_bias, "hidden_states", hidden_states)
    check_real("routed_scaling_factor", routed_scaling_factor, positive=True, none=True)
    if custom_routing_function is not None and not callable(custom_routing_function):
        raise _fail("custom_routing_function", "a callable (hidden_states, router_logits, top_k, renormalize) -> (weights, ids)", type(custom_routing_function).__name__)
    return top_k, num_expert_group, topk_group


# --------------------------------------------------------------------------------------------
# Per-expert precision (PerExpertQuantConfig); not on the path of plain QuantConfig calls.


def _in_group(i: int, exc: InvalidInputError) -> InvalidInputError:
    """``exc`` about group ``i``'s tensors, renamed ``quant_config.groups[i].<argument>``."""
    base = f"{exc.argument}: expected {exc.expected}, got {exc.actual}"
    msg = str(exc)
    hint = msg[len(base) + 2 : -1] if msg.startswith(base) and len(msg) > len(base) else ""
    return _fail(f"quant_config.groups[{i}].{exc.argument}", exc.expected, exc.actual, hint)


def check_per_expert_fused_experts(
    hidden_states: torch.Tensor,
    w1: object,
    w2: object,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    qc: PerExpertQuantConfig,
    expert_map: torch.Tensor | None,
    global_num_experts: int,
    inplace: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Validate ``fused_experts`` arguments with a `PerExpertQuantConfig`.

    Returns contiguous ``(hidden_states, topk_weights, topk_ids)`` and the per-group expert maps
    (``[global_num_experts]`` int32 on ``hidden_states``' device). Each group's weights get the
    checks of a plain call (dtype per scheme, scale and zero-point shapes, hidden size, device),
    with errors naming ``quant_config.groups[i].<tensor>``. An id routed to no group is an error
    (``uncovered="error"``) on CPU tensors, and on CUDA tensors in debug mode.
    """
    for name, w in (("w1", w1), ("w2", w2)):
        if w is not None:
            raise _fail(name, "None with a PerExpertQuantConfig (each ExpertGroup carries its weights)",
                        f"a {type(w).__name__}")
    if expert_map is not None:
        raise _fail("expert_map", "None with a PerExpertQuantConfig (its groups use global expert ids)", "a tensor",
                    "for expert parallelism list this rank's experts in the groups and pass uncovered='zero'")
    gne = qc.global_num_experts
    if global_num_experts not in (-1, gne):
        raise _fail("global_num_experts", f"-1 or {gne} (quant_config.global_num_experts)", global_num_experts)
    act_dtype = _activation_dtype(hidden_states)
    maps, covered = qc.expert_maps(hidden_states.device)
    for i, (g, m) in enumerate(zip(qc.groups, maps, strict=True)):
        try:
            info = _validated_weights(g.w1, g.w2, g.quant_config, m, gne, act_dtype, hidden_states)
            if info.hidden != hidden_states.shape[1] or info.device != hidden_states.device:
                _weight_cache.pop(id(g.w1), None)
                _validated_weights(g.w1, g.w2, g.quant_config, m, gne, act_dtype, hidden_states)
        except InvalidInputError as exc:
            raise _in_group(i, exc) from None
    g0 = qc.groups[0]
    hidden_states, topk_weights, topk_ids, _, _ = check_fused_experts(
        hidden_states, g0.w1, g0.w2, topk_weights, topk_ids, g0.quant_config, maps[0], gne, inplace)
    if qc.uncovered == "error" and topk_ids.numel() and (not topk_ids.is_cuda or _debug):
        hit = covered[topk_ids.long()]
        if not bool(hit.all()):
            missing = sorted(set(topk_ids[~hit].tolist()))
            groups = "; ".join(f"groups[{i}]: {g.describe()}" for i, g in enumerate(qc.groups))
            raise _fail("topk_ids", f"expert ids that belong to a group of quant_config ({groups})",
                        f"ids {missing} in no group", "pass uncovered='zero' to make_per_expert_quant_config "
                        "if they are experts of other ranks")
    return hidden_states, topk_weights, topk_ids, maps
