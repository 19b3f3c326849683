"""Reference routing and moe_align_block_size against per-token oracles."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import moecompat as mc
from tests.oracle import naive_select_experts


def _canon(w, ids):
    order = ids.argsort(dim=1)
    return w.gather(1, order), ids.gather(1, order)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(0, 17),
    groups=st.sampled_from([1, 2, 4]),
    per_group=st.integers(2, 6),
    k=st.integers(1, 4),
    scoring=st.sampled_from(["softmax", "sigmoid"]),
    grouped=st.booleans(),
    with_bias=st.booleans(),
    renormalize=st.booleans(),
    rsf=st.sampled_from([None, 2.5]),
    seed=st.integers(0, 2**16),
)
def test_select_experts_matches_oracle(t, groups, per_group, k, scoring, grouped, with_bias, renormalize, rsf, seed):
    e = groups * per_group
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, e, generator=g)
    bias = torch.randn(e, generator=g) * 0.1 if with_bias else None
    topk_group = max(1, groups // 2)
    k = min(k, topk_group * per_group if grouped else e)
    out = mc.select_experts(torch.zeros(t, 8), logits, k, renormalize=renormalize, scoring_func=scoring,
                            use_grouped_topk=grouped, num_expert_group=groups if grouped else None,
                            topk_group=topk_group if grouped else None, e_score_correction_bias=bias,
                            routed_scaling_factor=rsf, backend="reference")
    assert out.topk_weights.dtype == torch.float32 and out.topk_ids.dtype == torch.int32
    assert out.topk_ids.shape == (t, k)
    rw, rids = naive_select_experts(logits, k, renormalize=renormalize, scoring_func=scoring, use_grouped_topk=grouped,
                                    num_expert_group=groups, topk_group=topk_group, bias=bias, routed_scaling_factor=rsf)
    if t:
        w1, i1 = _canon(out.topk_weights.double(), out.topk_ids.long())
        w2, i2 = _canon(rw, rids)
        assert torch.equal(i1, i2)  # continuous random logits: no ties
        torch.testing.assert_close(w1, w2, rtol=1e-5, atol=1e-6)


def test_custom_routing_function_is_used():
    def route(hidden_states, gating_output, topk, renormalize):
        ids = torch.zeros(gating_output.shape[0], topk, dtype=torch.int64)
        return torch.ones(gating_output.shape[0], topk), ids

    out = mc.select_experts(torch.zeros(3, 4), torch.randn(3, 5), 2, custom_routing_function=route)
    assert out.topk_ids.dtype == torch.int32 and out.topk_ids.eq(0).all()


def _naive_align(ids, block, num_experts, expert_map):
    flat = ids.flatten().tolist()
    sorted_ids, experts = [], []
    for e in range(num_experts):
        slots = [i for i, x in enumerate(flat) if x == e]
        if not slots:
            continue
        pad = -len(slots) % block
        sorted_ids += slots + [len(flat)] * pad
        mapped = int(expert_map[e]) if expert_map is not None else e
        experts += [mapped] * ((len(slots) + pad) // block)
    return sorted_ids, experts


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 20), k=st.integers(1, 3), e=st.integers(3, 9), block=st.sampled_from([1, 4, 16]),
       use_map=st.booleans(), pad=st.booleans(), seed=st.integers(0, 999))
def test_moe_align_block_size_matches_naive(t, k, e, block, use_map, pad, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, e, (t, k), generator=g, dtype=torch.int32)
    emap = None
    if use_map:
        emap = torch.full((e,), -1, dtype=torch.int32)
        emap[::2] = torch.arange((e + 1) // 2, dtype=torch.int32)
    sorted_ids, expert_ids, total = mc.moe_align_block_size(ids, block, e, emap, pad_sorted_ids=pad)
    exp_sorted, exp_experts = _naive_align(ids, block, e, emap)
    n = int(total.item())
    assert n == len(exp_sorted)
    assert sorted_ids[:n].tolist() == exp_sorted
    assert sorted_ids[n:].eq(ids.numel()).all()
    assert expert_ids[: n // block].tolist() == exp_experts
    assert expert_ids[n // block:].eq(-1).all()
    max_len = ids.numel() + e * (block - 1)
    if pad:
        max_len = -(-max_len // block) * block
    assert sorted_ids.numel() == max_len


def test_make_expert_map_reference_semantics():
    n, m = mc.make_expert_map(3, 0, 8, backend="reference")
    assert n == 3 and m.tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    n, m = mc.make_expert_map(3, 2, 8, backend="reference")
    assert n == 2 and m.tolist() == [-1, -1, -1, -1, -1, -1, 0, 1]
    n, m = mc.make_expert_map(3, 1, 8, "round_robin", backend="reference")
    assert n == 3 and m.tolist() == [-1, 0, -1, -1, 1, -1, -1, 2]


def test_config_dtype_str_reference_rules():
    f = mc.get_config_dtype_str
    assert f(torch.bfloat16, backend="reference") is None
    assert f(torch.float32, backend="reference") == "float32"
    assert f(torch.bfloat16, use_fp8_w8a8=True, backend="reference") == "fp8_w8a8"
    assert f(torch.bfloat16, use_int8_w8a16=True, backend="reference") == "int8_w8a16"
    assert f(torch.bfloat16, use_int4_w4a16=True, backend="reference") == "int4_w4a16"
    assert f(torch.float32, ocp_mx_scheme="w_mxfp4_a_mxfp4", backend="reference") is None
