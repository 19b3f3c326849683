"""Reference top-k routing: softmax/sigmoid scoring, DeepSeek-V3 grouped top-k with bias."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..vocab import ScoringFunc, TopK


def select_experts(
    hidden_states: torch.Tensor,
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    scoring_func: ScoringFunc,
    use_grouped_topk: bool,
    num_expert_group: int | None,
    topk_group: int | None,
    e_score_correction_bias: torch.Tensor | None,
    routed_scaling_factor: float | None,
    custom_routing_function: Callable | None,
) -> TopK:
    """Select ``top_k`` experts per token (arguments already validated).

    Scores are computed in float32. With ``e_score_correction_bias`` the bias only decides which
    experts (and groups) are chosen; the returned weights are the unbiased scores, as in
    DeepSeek-V3. ``renormalize`` divides by the sum of the chosen weights, then
    ``routed_scaling_factor`` (if given) multiplies them.
    """
    if custom_routing_function is not None:
        w, ids = custom_routing_function(hidden_states, router_logits, top_k, renormalize)
        return TopK(w.to(torch.float32), ids.to(torch.int32))
    logits = router_logits.float()
    if scoring_func is ScoringFunc.SOFTMAX:
        scores = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
    bias = e_score_correction_bias.float() if e_score_correction_bias is not None else None
    choice = scores + bias if bias is not None else scores
    if use_grouped_topk:
        assert num_expert_group is not None and topk_group is not None
        t, e = scores.shape
        grouped = choice.view(t, num_expert_group, e // num_expert_group)
        if bias is not None:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        else:
            group_scores = grouped.amax(dim=-1)
        group_idx = group_scores.topk(topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, group_idx, True)
        expert_mask = group_mask.unsqueeze(-1).expand(t, num_expert_group, e // num_expert_group).reshape(t, e)
        choice = choice.masked_fill(~expert_mask, float("-inf"))
    if bias is not None or use_grouped_topk:
        ids = choice.topk(top_k, dim=-1).indices
        weights = scores.gather(1, ids)
    else:
        weights, ids = scores.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp(min=1e-20)
    if routed_scaling_factor is not None and routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    return TopK(weights.to(torch.float32), ids.to(torch.int32))
