"""Independent oracles for the tests: naive per-token loops in float64.

Deliberately simple and slow; they share no code with moecompat's reference backend except the
weight dequantizers, which have their own hand-computed tests (test_quant.py).
"""

from __future__ import annotations

import math

import torch

ALPHA, LIMIT = 1.702, 7.0


def act_and_mul(h: torch.Tensor, activation: str) -> torch.Tensor:
    """h: [2I] float64 -> [I]."""
    if activation == "swigluoai":
        gate, up = h[0::2].clamp(max=LIMIT), h[1::2].clamp(-LIMIT, LIMIT)
        return (up + 1) * gate * torch.sigmoid(ALPHA * gate)
    i = h.shape[0] // 2
    gate, up = h[:i], h[i:]
    if activation == "silu":
        return gate * torch.sigmoid(gate) * up
    return 0.5 * gate * (1 + torch.erf(gate / math.sqrt(2))) * up


def naive_fused_experts(x, w1, w2, topk_weights, topk_ids, *, activation="silu", expert_map=None,
                        apply_router_weight_on_input=False):
    """x [T, H], w1 [E, 2I, H] float, w2 [E, H, I] float -> [T, H] float64."""
    t_count, hidden = x.shape
    out = torch.zeros(t_count, hidden, dtype=torch.float64)
    for t in range(t_count):
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[t, j])
            if expert_map is not None:
                e = int(expert_map[e])
                if e < 0:
                    continue
            w = float(topk_weights[t, j])
            h = w1[e].double() @ x[t].double()
            if apply_router_weight_on_input:
                h = h * w
            y = w2[e].double() @ act_and_mul(h, activation)
            out[t] += y if apply_router_weight_on_input else w * y
    return out


def naive_select_experts(logits, top_k, *, renormalize=True, scoring_func="softmax", use_grouped_topk=False,
                         num_expert_group=None, topk_group=None, bias=None, routed_scaling_factor=None):
    """Per-token loop; returns (weights [T, k] float64, ids [T, k] int64) with ids sorted by choice order."""
    t_count, e = logits.shape
    ws, ids = [], []
    for t in range(t_count):
        lg = logits[t].double()
        scores = torch.softmax(lg, 0) if scoring_func == "softmax" else torch.sigmoid(lg)
        choice = scores + bias.double() if bias is not None else scores.clone()
        allowed = list(range(e))
        if use_grouped_topk:
            per = e // num_expert_group
            gscores = []
            for g in range(num_expert_group):
                vals = sorted(choice[g * per:(g + 1) * per].tolist(), reverse=True)
                gscores.append(vals[0] + vals[1] if bias is not None else vals[0])
            groups = sorted(range(num_expert_group), key=lambda g: -gscores[g])[:topk_group]
            allowed = [x for g in groups for x in range(g * per, (g + 1) * per)]
        chosen = sorted(allowed, key=lambda x: -float(choice[x]))[:top_k]
        w = torch.tensor([float(scores[c]) for c in chosen], dtype=torch.float64)
        if renormalize:
            w = w / w.sum()
        if routed_scaling_factor is not None:
            w = w * routed_scaling_factor
        ws.append(w)
        ids.append(torch.tensor(chosen))
    if not ws:
        return torch.zeros(0, top_k, dtype=torch.float64), torch.zeros(0, top_k, dtype=torch.int64)
    return torch.stack(ws), torch.stack(ids)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are empty)."""
    a, b = a.double(), b.double()
    denom = b.norm().item()
    if b.numel() == 0:
        return 0.0
    return (a - b).norm().item() / max(denom, 1e-12)
