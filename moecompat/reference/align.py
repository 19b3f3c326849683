"""Reference ``moe_align_block_size`` with the engines' semantics."""

from __future__ import annotations

import torch


def moe_align_block_size(
    topk_ids: torch.Tensor,
    block_size: int,
    num_experts: int,
    expert_map: torch.Tensor | None,
    pad_sorted_ids: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the flattened (token, k) slots by expert, each expert padded to ``block_size``.

    Returns ``(sorted_token_ids, expert_ids, num_tokens_post_padded)`` (int32):

    * ``sorted_token_ids [numel + num_experts * (block_size - 1)]`` (rounded up to a multiple of
      ``block_size`` when ``pad_sorted_ids``): flat slot indices into ``topk_ids.flatten()``,
      expert 0's first, each expert's run padded with the value ``topk_ids.numel()``; slots of
      one expert are in increasing order here (engines may order them differently inside an
      expert).
    * ``expert_ids [ceil(len(sorted_token_ids) / block_size)]``: the expert of each block
      (mapped through ``expert_map``, so -1 for experts not on this rank); blocks past
      ``num_tokens_post_padded`` hold -1.
    * ``num_tokens_post_padded [1]``: the used length of ``sorted_token_ids``.
    """
    numel = topk_ids.numel()
    device = topk_ids.device
    max_padded = numel + num_experts * (block_size - 1)
    if pad_sorted_ids:
        max_padded = -(-max_padded // block_size) * block_size
    max_blocks = -(-max_padded // block_size)
    flat = topk_ids.reshape(-1).long()
    counts = torch.bincount(flat, minlength=num_experts)[:num_experts]
    padded_counts = (counts + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded_counts, dim=0)
    starts = ends - padded_counts
    total = ends[-1:] if num_experts else torch.zeros(1, dtype=torch.long, device=device)

    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    first_of_expert = torch.cumsum(counts, dim=0) - counts
    rank_in_expert = torch.arange(numel, device=device) - first_of_expert[sorted_experts]
    positions = starts[sorted_experts] + rank_in_expert
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32, device=device)
    sorted_ids[positions] = order.to(torch.int32)

    block_starts = torch.arange(max_blocks, device=device) * block_size
    block_expert = torch.searchsorted(ends, block_starts, right=True)
    used = block_starts < total
    block_expert = torch.where(used, block_expert, -1)
    if expert_map is not None:
        mapped = expert_map.long()[block_expert.clamp(min=0)]
        block_expert = torch.where(used, mapped, -1)
    return sorted_ids, block_expert.to(torch.int32), total.to(torch.int32).reshape(1)
