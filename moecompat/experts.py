"""[`MoEExperts`][moecompat.MoEExperts]: a MoE layer's experts bound to a backend once, for hot loops.

```python
experts = moecompat.MoEExperts(w1, w2, quant_config=qc, activation="silu")
for step in range(steps):
    topk = moecompat.select_experts(x, router(x), top_k=2)
    y = experts(x, *topk)          # checks only the three token tensors
```

**The contract about the bound tensors.** The weights, their scales and zero points, and the
expert map are bound by reference:

* their **values** may change in place between calls (a checkpoint reload into the same
  tensors, an expert-parallel load balancer rewriting ``expert_map``): every call reads them, and
  the expert map's values are re-checked on every call (CPU tensors; CUDA tensors in debug mode,
  [`set_debug`][moecompat.set_debug], so that nothing synchronises);
* their **identity, shape, dtype, device and layout** are what construction validated: to use
  other tensors, or the same ones after ``resize_``/``set_``/``.data =``, call
  [`rebind`][moecompat.MoEExperts.rebind], which validates again and returns a new object.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from . import _checks
from . import ops as _ops
from ._backends import get_impl
from ._calls import ExpertsCall
from ._scalars import check_bool, check_int, describe
from .api import Plan, resolve_backend, resolve_numerics
from .engines._specs import ENGINE_NAMES
from .errors import InvalidInputError, UnsupportedFeatureError
from .quant import UNQUANTIZED, MixedQuantConfig, QuantConfig
from .reference.numerics import Numerics
from .vocab import Activation, BackendName, parse_activation, parse_name

__all__ = ["MoEExperts"]

_UNSET: Any = object()
_is_compiling = _ops.is_compiling


class MoEExperts:
    """A MoE layer's experts (weights, quant config, expert map, activation) bound to a backend.

    Args:
        w1: ``[E_local, 2*I, H']`` gate-and-up projection in the layout of ``quant_config``.
        w2: ``[E_local, H, I']`` down projection.
        quant_config: from [`make_quant_config`][moecompat.make_quant_config]; ``None`` for
            unquantized weights; a [`MixedQuantConfig`][moecompat.MixedQuantConfig] on the
            reference backend.
        expert_map: ``[global_num_experts]`` int32/int64: global id -> local id or -1.
        global_num_experts: total experts across ranks; ``-1`` infers it.
        activation: ``"silu"``, ``"gelu"`` or ``"swigluoai"``.
        apply_router_weight_on_input: scale the first GEMM's output by the router weight.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``; ``"auto"`` resolves per
            device when the first call shows it.
        numerics: the reference backend's arithmetic (see [`fused_experts`][moecompat.fused_experts]).

    Construction validates everything but the token tensors (weights, scales, zero points,
    expert map, options); a call, ``experts(hidden_states, topk_weights, topk_ids)``, checks
    the token tensors' shape, dtype, device and contiguity against what was validated, plus the
    value checks of [`fused_experts`][moecompat.fused_experts], and runs the bound kernel. The
    result equals ``moecompat.fused_experts`` with the same arguments.
    """

    __slots__ = ("_call", "_plan", "_plans", "activation", "apply_router_weight_on_input", "backend", "expert_map",
                 "global_num_experts", "numerics", "quant_config", "w1", "w2")

    def __init__(
        self,
        w1: torch.Tensor,
        w2: torch.Tensor,
        *,
        quant_config: QuantConfig | MixedQuantConfig | None = None,
        expert_map: torch.Tensor | None = None,
        global_num_experts: int = -1,
        activation: str | Activation = "silu",
        apply_router_weight_on_input: bool = False,
        backend: BackendName = "auto",
        numerics: str | Numerics = "ideal",
    ) -> None:
        from ._backends import known_backends

        self.backend: str = parse_name(backend, "backend", known_backends())
        self.activation: Activation = parse_activation(activation)
        check_int("global_num_experts", global_num_experts, minimum=-1)
        if global_num_experts == 0:
            raise InvalidInputError("global_num_experts", "-1 (infer) or a positive int", 0)
        self.apply_router_weight_on_input: bool = check_bool("apply_router_weight_on_input", apply_router_weight_on_input)
        qc = UNQUANTIZED if quant_config is None else quant_config
        if not isinstance(qc, (QuantConfig, MixedQuantConfig)):
            raise InvalidInputError("quant_config", "a moecompat.QuantConfig, MixedQuantConfig or None "
                                    "(per-expert precision: moecompat.fused_experts)", describe(qc))
        for name, t in (("w1", w1), ("w2", w2)):
            if not isinstance(t, torch.Tensor):
                raise InvalidInputError(name, "a torch.Tensor", describe(t))
            if t.dim() != 3:
                raise InvalidInputError(name, "a 3-D tensor", list(t.shape))
        self.w1, self.w2, self.quant_config, self.expert_map = w1, w2, qc, expert_map
        # The weights' checks need an activation dtype and device: unquantized weights fix the
        # dtype (the weights' own); quantized ones take any float activation (checked per call).
        act = _weights_activation_dtype(qc, w1, w2)
        probe = torch.empty((0, w2.shape[1]), dtype=act, device=w1.device)
        info = _checks._check_weights(w1, w2, qc, expert_map, global_num_experts, act, probe)
        self.global_num_experts: int = info.global_num_experts
        if not isinstance(numerics, Numerics):
            parse_name(numerics, "numerics", ("ideal", *ENGINE_NAMES))
        self.numerics = numerics
        self._call = ExpertsCall(w1, w2, qc, expert_map, info.global_num_experts, self.activation,
                                 self.apply_router_weight_on_input)
        # One bound plan per (activation dtype, topk weights dtype, device), the last used first.
        self._plans: dict[tuple[Any, ...], Plan] = {}
        self._plan: Plan | None = None

    def rebind(self, *, w1: Any = _UNSET, w2: Any = _UNSET, quant_config: Any = _UNSET, expert_map: Any = _UNSET,
               global_num_experts: Any = _UNSET, activation: Any = _UNSET, apply_router_weight_on_input: Any = _UNSET,
               backend: Any = _UNSET, numerics: Any = _UNSET) -> MoEExperts:
        """A new, fully validated ``MoEExperts`` with the given arguments replaced (the others
        kept): the explicit step after the weights or the expert map are replaced."""
        args: dict[str, Any] = dict(w1=self.w1, w2=self.w2, quant_config=self.quant_config, expert_map=self.expert_map,
                    global_num_experts=self.global_num_experts, activation=self.activation,
                    apply_router_weight_on_input=self.apply_router_weight_on_input, backend=self.backend,
                    numerics=self.numerics)
        given = dict(w1=w1, w2=w2, quant_config=quant_config, expert_map=expert_map,
                     global_num_experts=global_num_experts, activation=activation,
                     apply_router_weight_on_input=apply_router_weight_on_input, backend=backend, numerics=numerics)
        args.update({k: v for k, v in given.items() if v is not _UNSET})
        if given["expert_map"] is not _UNSET and given["global_num_experts"] is _UNSET:
            args["global_num_experts"] = -1
        w1_, w2_ = args.pop("w1"), args.pop("w2")
        return MoEExperts(w1_, w2_, **args)

    def __call__(self, hidden_states: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor, *,
                 inplace: bool = False) -> torch.Tensor:
        """``hidden_states [T, H]``, ``topk_weights [T, k]`` float32, ``topk_ids [T, k]`` int ->
        ``[T, H]`` (written into ``hidden_states`` when ``inplace``)."""
        if _is_compiling():  # Dynamo: trace the custom op (a Python-level bound method cannot be substituted)
            return _ops.traced_experts_call(self, hidden_states, topk_weights, topk_ids, inplace)
        plan = self._plan
        if plan is not None and type(inplace) is bool \
                and (tokens := plan.tokens_ok(hidden_states, topk_weights, topk_ids)) >= 0:
            if not plan.on_cuda or _checks._debug:
                _checks.check_ids_range("topk_ids", topk_ids, 0, plan.gne, _checks.topk_ids_hint(self.expert_map))
                if self.expert_map is not None:
                    _checks.check_expert_map_values(self.expert_map, plan.num_local)
            if tokens == 0:
                return hidden_states.new_empty((0, plan.hidden))
            return plan.runner(hidden_states, self.w1, self.w2, topk_weights, topk_ids, inplace)
        return self._slow_call(hidden_states, topk_weights, topk_ids, inplace)

    def _slow_call(self, hidden_states: Any, topk_weights: Any, topk_ids: Any, inplace: Any) -> torch.Tensor:
        check_bool("inplace", inplace)
        hidden_states, topk_weights, topk_ids, gne, num_local = _checks.check_fused_experts(
            hidden_states, self.w1, self.w2, topk_weights, topk_ids, self.quant_config, self.expert_map,
            self.global_num_experts, inplace)
        key = (hidden_states.dtype, topk_weights.dtype, hidden_states.device)
        plan = self._plans.get(key)
        if plan is None:
            chosen = resolve_backend(self.backend, "fused_experts", hidden_states.is_cuda)
            if isinstance(self.quant_config, MixedQuantConfig) and chosen != "reference":
                raise UnsupportedFeatureError(chosen, None, "mixed per-projection precision (MixedQuantConfig)",
                                              detail="the engines' fused kernels run both GEMMs in one scheme; "
                                              "use backend='reference'")
            call = dataclasses.replace(self._call, numerics=resolve_numerics(self.numerics, chosen))
            runner = get_impl("fused_experts", chosen, hidden_states.is_cuda)(call)
            plan = self._plans[key] = Plan(hidden_states, topk_weights, gne, num_local, runner)
        self._plan = plan
        if hidden_states.shape[0] == 0:
            return hidden_states.new_empty((0, plan.hidden))
        return plan.runner(hidden_states, self.w1, self.w2, topk_weights, topk_ids, inplace)

    def __repr__(self) -> str:
        qc = self.quant_config.describe()
        return (f"MoEExperts(experts={self.w1.shape[0]}, hidden={self.w2.shape[1]}, quant={qc!r}, "
                f"activation={self.activation.value!r}, expert_map={'yes' if self.expert_map is not None else 'no'}, "
                f"backend={self.backend!r})")


def _weights_activation_dtype(qc: QuantConfig | MixedQuantConfig, w1: torch.Tensor, w2: torch.Tensor) -> torch.dtype:
    """The activation dtype unquantized weights imply (their own); any float for quantized ones."""
    c1, c2 = (qc.w13, qc.w2) if isinstance(qc, MixedQuantConfig) else (qc, qc)
    if c1.scheme is None:
        return w1.dtype
    if c2.scheme is None:
        return w2.dtype
    return torch.bfloat16
