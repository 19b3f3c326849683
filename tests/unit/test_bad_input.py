"""Every bad input gets an InvalidInputError naming the argument, the expected and the actual value."""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import quant

E, H, I, T, K = 4, 32, 16, 5, 2


@pytest.fixture
def args():
    torch.manual_seed(0)
    x = torch.randn(T, H)
    w1 = torch.randn(E, 2 * I, H)
    w2 = torch.randn(E, H, I)
    topk = mc.select_experts(x, torch.randn(T, E), K)
    return dict(hidden_states=x, w1=w1, w2=w2, topk_weights=topk.topk_weights, topk_ids=topk.topk_ids)


def _call(a, **kw):
    a = dict(a)
    opts = {k: kw.pop(k) for k in list(kw) if k not in a}
    a.update(kw)
    return mc.fused_experts(a["hidden_states"], a["w1"], a["w2"], a["topk_weights"], a["topk_ids"], **opts)


def _expect(match_arg, *fragments):
    class Ctx:
        def __enter__(self):
            self.cm = pytest.raises(mc.InvalidInputError)
            self.info = self.cm.__enter__()
            return self

        def __exit__(self, *exc):
            r = self.cm.__exit__(*exc)
            err = self.info.value
            assert err.argument == match_arg, str(err)
            msg = str(err)
            assert msg.startswith(match_arg + ":"), msg
            assert "expected" in msg and "got" in msg, msg
            for f in fragments:
                assert f in msg, msg
            return r

    return Ctx()


def test_hidden_size_mismatch_w1(args):
    with _expect("w1", f"{H}", "[4, 32, 31]"):
        _call(args, w1=torch.randn(E, 2 * I, H - 1))


def test_hidden_size_mismatch_w2(args):
    with _expect("w2", f"[E, {H}, I]", "[4, 31, 16]"):
        _call(args, w2=torch.randn(E, H - 1, I))


def test_intermediate_mismatch(args):
    with _expect("w2", "intermediate size 16", "[4, 32, 15]"):
        _call(args, w2=torch.randn(E, H, I - 1))


def test_w1_not_3d(args):
    with _expect("w1", "3-D", "[32, 32]"):
        _call(args, w1=torch.randn(2 * I, H))


def test_expert_count_mismatch(args):
    with _expect("w2", "4 experts", "[3, 32, 16]"):
        _call(args, w2=torch.randn(E - 1, H, I))


def test_topk_ids_out_of_range(args):
    bad = args["topk_ids"].clone()
    bad[0, 0] = E
    with _expect("topk_ids", "[0, 4)", "4]"):
        _call(args, topk_ids=bad)
    bad[0, 0] = -1
    with _expect("topk_ids", "[0, 4)", "[-1"):
        _call(args, topk_ids=bad)


def test_topk_ids_wrong_dtype(args):
    with _expect("topk_ids", "int32 or int64", "torch.float32"):
        _call(args, topk_ids=args["topk_ids"].float())


def test_topk_shape_mismatch(args):
    with _expect("topk_weights", "[5, 2]", "[5, 1]"):
        _call(args, topk_weights=args["topk_weights"][:, :1])


def test_topk_rows_mismatch(args):
    with _expect("topk_ids", "5 rows", "[4, 2]"):
        _call(args, topk_ids=args["topk_ids"][:4], topk_weights=args["topk_weights"][:4])


def test_top_k_greater_than_experts(args):
    ids = torch.zeros(T, E + 1, dtype=torch.int32)
    with _expect("topk_ids", "between 1 and 4 columns", "[5, 5]"):
        _call(args, topk_ids=ids, topk_weights=torch.ones(T, E + 1))
    with _expect("top_k", "top_k <= num_experts (4)", "5"):
        mc.select_experts(args["hidden_states"], torch.randn(T, E), E + 1)


def test_top_k_below_one(args):
    with _expect("top_k", "a positive int", "0"):
        mc.select_experts(args["hidden_states"], torch.randn(T, E), 0)


def test_different_devices(args):
    meta_w1 = args["w1"].to("meta")
    with _expect("w1", "cpu", "meta"):
        _call(args, w1=meta_w1)


def test_hidden_and_weight_dtypes_differ(args):
    with _expect("w1", "torch.bfloat16", "torch.float32"):
        _call(args, hidden_states=args["hidden_states"].bfloat16(), w2=args["w2"].bfloat16())


def test_hidden_dtype_not_supported(args):
    with _expect("hidden_states", "bfloat16, float16 or float32", "torch.float64"):
        _call(args, hidden_states=args["hidden_states"].double())


def test_dtype_not_supported_by_scheme(args):
    s = torch.ones(E)
    qc = mc.make_quant_config("fp8_w8a8", w1_scale=s, w2_scale=s)
    with _expect("w1", "float8_e4m3fn", "torch.float32"):
        _call(args, quant_config=qc)


def test_block_shape_does_not_divide(args):
    w1q, w2q, _ = quant.quantize_moe_weights(args["w1"], args["w2"], "fp8_w8a8", block_shape=[16, 16])
    s1 = torch.ones(E, 2, 3)
    s2 = torch.ones(E, 3, 2)
    qc = mc.make_quant_config("fp8_w8a8", w1_scale=s1, w2_scale=s2, block_shape=[12, 12])
    with _expect("block_shape", "dividing", "[12, 12]"):
        _call(args, w1=w1q, w2=w2q, quant_config=qc)


def test_scale_wrong_shape(args):
    w1q, w2q, qc = quant.quantize_moe_weights(args["w1"], args["w2"], "fp8_w8a8", block_shape=[16, 16])
    bad = mc.make_quant_config("fp8_w8a8", w1_scale=qc.w1_scale[:, :1], w2_scale=qc.w2_scale, block_shape=[16, 16])
    with _expect("w1_scale", "[4, 2, 2]", "[4, 1, 2]"):
        _call(args, w1=w1q, w2=w2q, quant_config=bad)


def test_int4_zero_point_wrong_shape(args):
    w1q, w2q, qc = quant.quantize_moe_weights(args["w1"], args["w2"], "int4_w4a16", group_size=16, zero_point=True)
    bad = mc.make_quant_config("int4_w4a16", w1_scale=qc.w1_scale, w2_scale=qc.w2_scale, w1_zp=qc.w1_zp[:, :3],
                               w2_zp=qc.w2_zp, group_size=16)
    with _expect("w1_zp", "[4, 16, 2]", "[4, 3, 2]"):
        _call(args, w1=w1q, w2=w2q, quant_config=bad)


def test_expert_map_wrong_length(args):
    with _expect("expert_map", "global_num_experts=8", "6"):
        _call(args, expert_map=torch.zeros(6, dtype=torch.int32), global_num_experts=8)


def test_expert_map_value_out_of_range(args):
    m = torch.tensor([0, 1, 2, 7], dtype=torch.int32)
    with _expect("expert_map", "[-1, 4)", "7]"):
        _call(args, expert_map=m)


def test_unknown_names(args):
    with _expect("activation", "'silu'", "'relu'"):
        _call(args, activation="relu")
    with _expect("scoring_func", "'softmax'", "'tanh'"):
        mc.select_experts(args["hidden_states"], torch.randn(T, E), 2, scoring_func="tanh")
    with _expect("scheme", "'fp8_w8a8'", "'fp3'"):
        mc.make_quant_config("fp3", w1_scale=torch.ones(1), w2_scale=torch.ones(1))
    with _expect("backend", "'reference'", "'tensorrt'"):
        _call(args, backend="tensorrt")


def test_grouped_topk_bad_groups(args):
    x = args["hidden_states"]
    with _expect("num_expert_group", "divisor of num_experts (8)", "3"):
        mc.select_experts(x, torch.randn(T, 8), 2, use_grouped_topk=True, num_expert_group=3, topk_group=1)
    with _expect("topk_group", "between 1 and num_expert_group (4)", "5"):
        mc.select_experts(x, torch.randn(T, 8), 2, use_grouped_topk=True, num_expert_group=4, topk_group=5)
    with _expect("num_expert_group", "num_expert_group and topk_group"):
        mc.select_experts(x, torch.randn(T, 8), 2, use_grouped_topk=True)


def test_correction_bias_wrong_shape(args):
    with _expect("e_score_correction_bias", "[8]", "[7]"):
        mc.select_experts(args["hidden_states"], torch.randn(T, 8), 2, e_score_correction_bias=torch.zeros(7))


def test_weights_strided_in_last_dim_are_rejected(args):
    w1t = args["w1"].transpose(1, 2).contiguous().transpose(1, 2)
    with _expect("w1", "contiguous in its last dimension"):
        _call(args, w1=w1t)


def test_inplace_on_non_contiguous_is_rejected(args):
    wide = torch.randn(T, 2 * H)
    with _expect("hidden_states", "contiguous tensor when inplace=True"):
        _call(args, hidden_states=wide[:, ::2], inplace=True)


def test_quant_config_wrong_type(args):
    with _expect("quant_config", "moecompat.QuantConfig", "dict"):
        _call(args, quant_config={"scheme": "fp8_w8a8"})


def test_not_a_tensor(args):
    with _expect("hidden_states", "torch.Tensor", "list"):
        _call(args, hidden_states=[[1.0]])


def test_router_logits_rows_mismatch(args):
    with _expect("router_logits", "5 rows", "[4, 4]"):
        mc.select_experts(args["hidden_states"], torch.randn(T - 1, E), 2)


def test_align_bad_inputs():
    with _expect("topk_ids", "[0, 4)", "9]"):
        mc.moe_align_block_size(torch.tensor([[9]], dtype=torch.int32), 16, 4)
    with _expect("block_size", "positive", "0"):
        mc.moe_align_block_size(torch.tensor([[1]], dtype=torch.int32), 0, 4)


def test_expert_map_args():
    with _expect("ep_rank", "< ep_size (2)", "2"):
        mc.make_expert_map(2, 2, 8)
    with _expect("placement", "'linear', 'round_robin'", "'random'"):
        mc.make_expert_map(2, 0, 8, "random")


def test_debug_mode_checks_values(args):
    # CPU tensors are always value-checked; debug mode only adds CUDA tensors. Toggle works.
    mc.set_debug(True)
    try:
        from moecompat import _checks

        assert _checks.debug_enabled()
    finally:
        mc.set_debug(False)
