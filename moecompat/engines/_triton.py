"""The Triton-family ``fused_experts`` adapter and tuned-config override, shared by vLLM and SGLang.

Both engines grew their fused-MoE kernels from the same Triton code: ``fused_experts(hidden_states,
w1, w2, <top-k>, ...)`` with the same weight layouts, a module-level ``override_config`` context
manager, and per-release differences only in how the top-k result, the quantization, the
activation, the expert map and in-place output are passed. Each engine module describes those
differences once per resolution (a `KernelCall`); `KernelRunner` runs the bound
call.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .base import mask_expert_map

__all__ = ["KernelCall", "KernelRunner", "restoring_override"]


@dataclasses.dataclass(frozen=True)
class KernelCall:
    """How one engine release takes a bound ``fused_experts`` call.

    ``target(hidden_states, w1, w2, *topk(topk_weights, topk_ids), *tail[inplace],
    **kwargs[inplace])``:

    * ``topk``: the engine's top-k argument(s) from the weights and ids (``None``: the two tensors);
    * ``tail``: trailing positional arguments for an out-of-place and an in-place call (e.g.
      SGLang's ``MoeRunnerConfig``);
    * ``kwargs``: keyword arguments for an out-of-place and an in-place call;
    * ``mask_map``: apply the expert map here (local ids, weight zero elsewhere) instead of
      passing it;
    * ``inplace``: ``"kernel"`` (the arguments above ask for it), ``"copy"`` (the kernel has no
      in-place form: copy its result into ``hidden_states``) or ``"clone"`` (only the in-place form
      works: run it on a copy of the input for an out-of-place call).
    """

    target: Callable[..., Any]
    kwargs: tuple[Mapping[str, Any], Mapping[str, Any]]
    topk: Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]] | None = None
    tail: tuple[tuple[Any, ...], tuple[Any, ...]] = ((), ())
    mask_map: bool = False
    inplace: str = "kernel"


class KernelRunner:
    """``runner(hidden_states, w1, w2, topk_weights, topk_ids, inplace)``: the engine kernel for
    one bound layer (see `KernelCall`). ``plan(...)`` returns the exact
    ``(args, kwargs, copy_back)`` the call uses (the engine surface tests bind it to the
    installed signature); ``target`` is the engine callable."""

    __slots__ = ("clone", "copy", "expert_map", "kwargs", "tail", "target", "topk")

    def __init__(self, call: KernelCall, expert_map: torch.Tensor | None) -> None:
        self.target = call.target
        self.kwargs = call.kwargs
        self.topk = call.topk
        self.tail = call.tail
        self.expert_map = expert_map if call.mask_map else None
        self.copy = call.inplace == "copy"
        self.clone = call.inplace == "clone"

    def plan(self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
             topk_ids: torch.Tensor, inplace: bool) -> tuple[tuple[Any, ...], Mapping[str, Any], bool]:
        if self.expert_map is not None:
            topk_weights, topk_ids = mask_expert_map(topk_weights, topk_ids, self.expert_map)
        first = hidden_states.clone() if self.clone and not inplace else hidden_states
        top = (topk_weights, topk_ids) if self.topk is None else self.topk(topk_weights, topk_ids)
        return (first, w1, w2, *top, *self.tail[inplace]), self.kwargs[inplace], self.copy and inplace

    def __call__(self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                 topk_ids: torch.Tensor, inplace: bool) -> torch.Tensor:
        if self.expert_map is None and self.topk is None and not self.clone:
            # The common case (vLLM, no map to apply here): no intermediate tuple.
            out = self.target(hidden_states, w1, w2, topk_weights, topk_ids, *self.tail[inplace], **self.kwargs[inplace])
        else:
            args, kwargs, _ = self.plan(hidden_states, w1, w2, topk_weights, topk_ids, inplace)
            out = self.target(*args, **kwargs)
        if self.copy and inplace:
            hidden_states.copy_(out)
            return hidden_states
        return out


def restoring_override(override: Callable[[dict[str, int]], Any], state_module: Any,
                       state_attr: str) -> Callable[[dict[str, int]], contextlib.AbstractContextManager[None]]:
    """The engine's ``override_config`` context manager, restoring the module state it sets even
    when a kernel fails inside the block (neither engine's own version has a ``try/finally``, so
    a Triton ``OutOfResources`` would leave the override in force)."""

    @contextlib.contextmanager
    def impl(config: dict[str, int]) -> Iterator[None]:
        previous = getattr(state_module, state_attr, None)
        try:
            with override(config):
                yield
        finally:
            setattr(state_module, state_attr, previous)

    return impl
