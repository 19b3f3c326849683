"""Reference fused_experts against the independent per-token oracle."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import moecompat as mc
from moecompat import quant
from moecompat.ep import local_expert_ids
from tests.oracle import naive_fused_experts, rel_err

# Tolerances (relative Frobenius error vs the float64 oracle):
#   float32: only summation order differs -> 1e-5.
#   bf16: inputs/weights are bf16 and the intermediate is stored in bf16 (as the kernels do),
#         i.e. ~2^-8 relative rounding per element, averaging out -> 2e-2.
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _problem(t, e, k, h, i, dtype, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype)
    w1 = (torch.randn(e, 2 * i, h, generator=g) * scale / h**0.5).to(dtype)
    w2 = (torch.randn(e, h, i, generator=g) * scale / i**0.5).to(dtype)
    logits = torch.randn(t, e, generator=g)
    topk = mc.select_experts(x, logits, k, backend="reference")
    return x, w1, w2, topk


@settings(max_examples=40, deadline=None)
@given(
    t=st.sampled_from([0, 1, 2, 7, 33]),
    e=st.integers(1, 9),
    k=st.integers(1, 4),
    h=st.sampled_from([8, 16, 24]),
    i=st.sampled_from([4, 8, 16]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    activation=st.sampled_from(["silu", "gelu", "swigluoai"]),
    on_input=st.booleans(),
    use_map=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_oracle(t, e, k, h, i, dtype, activation, on_input, use_map, seed):
    k = min(k, e)
    x, w1, w2, topk = _problem(t, e, k, h, i, dtype, seed)
    expert_map = None
    w1_local, w2_local = w1, w2
    if use_map and e > 1:
        # This rank owns the odd experts only.
        owned = torch.arange(1, e, 2)
        expert_map = torch.full((e,), -1, dtype=torch.int32)
        expert_map[owned] = torch.arange(owned.numel(), dtype=torch.int32)
        w1_local, w2_local = w1[owned], w2[owned]
    out = mc.fused_experts(x, w1_local, w2_local, *topk, activation=activation, expert_map=expert_map,
                           apply_router_weight_on_input=on_input, backend="reference")
    assert out.shape == (t, h) and out.dtype == dtype
    ref = naive_fused_experts(x, w1_local, w2_local, *topk, activation=activation, expert_map=expert_map,
                              apply_router_weight_on_input=on_input)
    assert rel_err(out, ref) <= TOL[dtype]


def test_expert_parallel_ranks_sum_to_single_rank():
    x, w1, w2, topk = _problem(19, 8, 2, 32, 16, torch.float32, seed=3)
    full = mc.fused_experts(x, w1, w2, *topk)
    for placement in ("linear", "round_robin"):
        total = torch.zeros_like(full)
        for rank in range(3):
            n_local, emap = mc.make_expert_map(3, rank, 8, placement, backend="reference")
            owned = local_expert_ids(emap)
            assert owned.numel() == n_local
            total += mc.fused_experts(x, w1[owned], w2[owned], *topk, expert_map=emap)
        torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-6)


def test_inplace_writes_hidden_states():
    x, w1, w2, topk = _problem(6, 4, 2, 16, 8, torch.float32)
    expected = mc.fused_experts(x.clone(), w1, w2, *topk)
    buf = x.clone()
    out = mc.fused_experts(buf, w1, w2, *topk, inplace=True)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf, expected)


def test_empty_batch_returns_empty():
    x, w1, w2, topk = _problem(0, 4, 2, 16, 8, torch.bfloat16)
    out = mc.fused_experts(x, w1, w2, *topk)
    assert out.shape == (0, 16) and out.dtype == torch.bfloat16


def test_non_contiguous_hidden_states_are_copied():
    x, w1, w2, topk = _problem(6, 4, 2, 16, 8, torch.float32)
    wide = torch.zeros(6, 32)
    wide[:, ::2] = x
    out = mc.fused_experts(wide[:, ::2], w1, w2, *topk)
    torch.testing.assert_close(out, mc.fused_experts(x, w1, w2, *topk))


def test_grouped_matmul_fallback_matches(monkeypatch):
    """The per-expert loop used where torch._grouped_mm is unavailable gives the same result."""
    from moecompat.reference import experts as ref_experts

    x, w1, w2, topk = _problem(21, 6, 2, 16, 8, torch.float32, seed=5)
    fast = mc.fused_experts(x, w1, w2, *topk)
    monkeypatch.setattr(ref_experts, "_GROUPED_MM", None)
    monkeypatch.setattr(ref_experts, "_grouped_mm_ok", {})
    slow = mc.fused_experts(x, w1, w2, *topk)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)


# Quantized schemes vs dequantize-then-float64 oracle. Weight-only schemes dequantize weights
# exactly, so only bf16 rounding of activations/intermediate remains (2e-2). w8a8 schemes also
# quantize both GEMM inputs: fp8 e4m3 keeps 3 mantissa bits (relative step 2^-3, ~3.6% rms on
# Gaussian data per GEMM input, two GEMMs) -> 8e-2; int8 per-token keeps ~1/127 of the row max -> 3e-2.
QUANT_CASES = [
    ("fp8_w8a8", {}, 8e-2),
    ("fp8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}, 8e-2),
    ("fp8_w8a8", {"block_shape": [16, 16]}, 8e-2),
    ("int8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}, 3e-2),
    ("int8_w8a8", {}, 5e-2),
    ("int8_w8a16", {}, 2e-2),
    ("int4_w4a16", {"group_size": 16}, 2e-2),
    ("int4_w4a16", {"group_size": 16, "zero_point": True}, 2e-2),
    ("mxfp4_w4a16", {}, 2e-2),
]


@pytest.mark.parametrize(("scheme", "opts", "tol"), QUANT_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("use_map", [False, True])
def test_quantized_vs_dequantized_oracle(scheme, opts, tol, use_map):
    x, w1, w2, topk = _problem(13, 6, 2, 64, 32, torch.bfloat16, seed=7)
    q1, q2, qc = quant.quantize_moe_weights(w1.float(), w2.float(), scheme, **opts)
    dq1 = quant.dequantize_weights(q1, qc, 1)
    dq2 = quant.dequantize_weights(q2, qc, 2)
    expert_map = None
    if use_map:
        expert_map = torch.tensor([0, 1, 2, 3, 4, 5], dtype=torch.int32)
        expert_map[1] = -1
    out = mc.fused_experts(x, q1, q2, *topk, quant_config=qc, expert_map=expert_map)
    ref = naive_fused_experts(x, dq1, dq2, *topk, expert_map=expert_map)
    assert rel_err(out, ref) <= tol


def test_static_activation_scales():
    x, w1, w2, topk = _problem(9, 4, 2, 32, 16, torch.bfloat16, seed=2)
    a_scale = torch.tensor([x.float().abs().max().item() / quant.FP8_MAX])
    q1, q2, qc = quant.quantize_moe_weights(w1.float(), w2.float(), "fp8_w8a8", a1_scale=a_scale, a2_scale=a_scale)
    out = mc.fused_experts(x, q1, q2, *topk, quant_config=qc)
    ref = naive_fused_experts(x, quant.dequantize_weights(q1, qc, 1), quant.dequantize_weights(q2, qc, 2), *topk)
    assert rel_err(out, ref) <= 1.5e-1  # a2 static scale is sized for x, coarse for the intermediate


def test_fused_moe_is_select_then_experts():
    x, w1, w2, _ = _problem(11, 8, 2, 16, 8, torch.float32, seed=9)
    logits = torch.randn(11, 8)
    out = mc.fused_moe(x, w1, w2, logits, 2, renormalize=False)
    topk = mc.select_experts(x, logits, 2, renormalize=False)
    torch.testing.assert_close(out, mc.fused_experts(x, w1, w2, *topk))


@pytest.mark.parametrize("placement", ["linear", "round_robin"])
def test_shard_experts_sum_over_ranks_with_static_scales(placement):
    """``shard_experts`` slices weights and per-expert scales in local order and keeps the
    per-tensor activation scales: the ranks' outputs sum to the single-rank output."""
    from moecompat.ep import shard_experts

    x, w1, w2, topk = _problem(13, 8, 2, 32, 16, torch.bfloat16, seed=4)
    a_scale = torch.tensor([x.float().abs().max().item() / quant.FP8_MAX])
    q1, q2, qc = quant.quantize_moe_weights(w1.float(), w2.float(), "fp8_w8a8", a1_scale=a_scale, a2_scale=a_scale)
    full = mc.fused_experts(x, q1, q2, *topk, quant_config=qc)
    total = torch.zeros_like(full, dtype=torch.float32)
    for rank in range(2):
        _, emap = mc.make_expert_map(2, rank, 8, placement)
        l1, l2, lqc = shard_experts(q1, q2, qc, emap)
        ids = local_expert_ids(emap)
        # fp8 compared as its bytes: torch 2.5 has no CPU index or equal kernel for float8.
        assert l1.shape[0] == 4 and l1.dtype == q1.dtype
        assert torch.equal(l1.view(torch.uint8), q1.view(torch.uint8)[ids]) and torch.equal(lqc.w1_scale, qc.w1_scale[ids])
        assert lqc.a1_scale is qc.a1_scale and lqc.a2_scale is qc.a2_scale
        total += mc.fused_experts(x, l1, l2, *topk, quant_config=lqc, expert_map=emap).float()
    assert rel_err(total, full) <= 1e-2


def test_shard_experts_rejects_bad_input():
    from moecompat.ep import shard_experts

    w1, w2 = torch.randn(4, 8, 4), torch.randn(4, 4, 4)
    with pytest.raises(mc.InvalidInputError, match="expert_map"):
        shard_experts(w1, w2, None, torch.tensor([0, 1, -1], dtype=torch.int32))
    with pytest.raises(mc.InvalidInputError, match="expert_map"):
        local_expert_ids(torch.zeros(2, 2, dtype=torch.int32))
    with pytest.raises(mc.InvalidInputError, match="quant_config"):
        shard_experts(w1, w2, "fp8", torch.tensor([0, 1, -1, -1], dtype=torch.int32))  # type: ignore[arg-type]
