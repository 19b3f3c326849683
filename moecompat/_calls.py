"""The typed call objects every backend adapter takes (private).

The public functions validate their arguments once and hand each backend one of these frozen
objects. A backend's adapter *binds* it (translating quant configs, activations and flags into
the engine's own objects once) and returns a runner that takes the per-call tensors;
`moecompat.MoEExperts` and the functional API's per-layer plans keep that runner, so a
repeated call costs the runner call alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

import torch

from .quant import MixedQuantConfig, QuantConfig
from .reference.numerics import IDEAL, Numerics
from .vocab import Activation, ScoringFunc, TopK

__all__ = ["ExpertsCall", "ExpertsRunner", "RoutingCall", "RoutingRunner"]


@dataclasses.dataclass(frozen=True, eq=False)
class ExpertsCall:
    """The layer-constant arguments of a validated ``fused_experts`` call.

    ``w1 [E_local, 2*I, H']`` and ``w2 [E_local, H, I']`` in the layout of ``quant_config``;
    ``expert_map [global_num_experts]`` int32/int64 (global id -> local id or -1) or None;
    ``out_dtype``: the reference backend's result dtype when not the activation dtype (the
    per-expert-precision path sums float32 group results); ``numerics``: the arithmetic the
    reference backend follows (engines run their own).
    """

    w1: torch.Tensor
    w2: torch.Tensor
    quant_config: QuantConfig | MixedQuantConfig
    expert_map: torch.Tensor | None
    global_num_experts: int
    activation: Activation
    apply_router_weight_on_input: bool = False
    out_dtype: torch.dtype | None = None
    numerics: Numerics = IDEAL


class ExpertsRunner(Protocol):
    """``runner(hidden_states [T, H], w1, w2, topk_weights [T, k] f32, topk_ids [T, k] int, inplace) -> [T, H]``.

    The weights are passed on every call (the very tensors the call object held when it was
    bound): a runner never keeps a layer's weights alive.
    """

    def __call__(self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor, inplace: bool) -> torch.Tensor: ...


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingCall:
    """The options of a validated ``select_experts`` call (everything but the two tensors)."""

    top_k: int
    renormalize: bool = True
    scoring_func: ScoringFunc = ScoringFunc.SOFTMAX
    use_grouped_topk: bool = False
    num_expert_group: int | None = None
    topk_group: int | None = None
    e_score_correction_bias: torch.Tensor | None = None
    routed_scaling_factor: float | None = None
    custom_routing_function: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None


class RoutingRunner(Protocol):
    """``runner(hidden_states [T, H], router_logits [T, E]) -> TopK``."""

    def __call__(self, hidden_states: torch.Tensor, router_logits: torch.Tensor) -> TopK: ...


#: What a backend's ``fused_experts`` adapter is: ``bind(call) -> runner``.
ExpertsAdapter = Callable[[ExpertsCall], ExpertsRunner]
#: What a backend's ``select_experts`` adapter is: ``bind(call) -> runner``.
RoutingAdapter = Callable[[RoutingCall], RoutingRunner]
AnyAdapter = Any
