"""GPTQ/AWQ int4: packing against hand-computed values, round trips, validation, MoE layout."""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import int4, quant
from tests.oracle import naive_fused_experts, rel_err


def test_int32_packing_hand_values():
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 15]], dtype=torch.int32)
    packed = int4.pack_int32(codes, dim=1)
    assert packed.item() == int.from_bytes(bytes([0x21, 0x43, 0x65, 0xF7]), "little", signed=True)
    assert torch.equal(int4.unpack_int32(packed, dim=1), codes)
    awq = int4.pack_int32(codes, 1, int4.AWQ_ORDER)
    # AWQ order: nibble positions hold columns 0,2,4,6,1,3,5,7
    nibbles = [(awq.item() >> (4 * j)) & 0xF for j in range(8)]
    assert nibbles == [1, 3, 5, 7, 2, 4, 6, 15]


def _gptq_layer(k=2048, n=768, g=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32)
    zeros = torch.randint(1, 15, (k // g, n), generator=gen, dtype=torch.int32)
    scales = (torch.rand(k // g, n, generator=gen) * 0.01 + 0.001).half()
    return int4.Int4Linear(q, zeros, scales, g)


def test_gptq_round_trip_and_seed_shapes():
    layer = _gptq_layer()
    qweight, qzeros, scales, g_idx = int4.to_gptq(layer)
    # The seed example: qweight [256, 768], qzeros [16, 96], scales [16, 768].
    assert list(qweight.shape) == [256, 768] and list(qzeros.shape) == [16, 96] and list(scales.shape) == [16, 768]
    back = int4.from_gptq(qweight, qzeros, scales, 128, g_idx)
    assert back.g_idx is None  # trivial act-order recognised
    assert torch.equal(back.q, layer.q) and torch.equal(back.zeros, layer.zeros)
    torch.testing.assert_close(back.dequantize(), layer.dequantize())


def test_gptq_act_order_dequantize():
    k, n, g = 256, 16, 64
    layer = _gptq_layer(k, n, g, seed=3)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1))
    g_idx = (perm // g).to(torch.int32)
    qw, qz, sc, _ = int4.to_gptq(layer)
    ordered = int4.from_gptq(qw, qz, sc, g, g_idx)
    expected = (layer.q.float() - layer.zeros.float()[g_idx.long()]) * layer.scales.float()[g_idx.long()]
    torch.testing.assert_close(ordered.dequantize(), expected)
    with pytest.raises(mc.UnsupportedFeatureError, match="act-order"):
        int4.to_moe_layout([ordered])


def test_awq_round_trip():
    layer = _gptq_layer(512, 64, 128, seed=5)
    qw, qz, sc = int4.to_awq(layer)
    assert list(qw.shape) == [512, 8] and list(qz.shape) == [4, 8]
    back = int4.from_awq(qw, qz, sc, 128)
    assert torch.equal(back.q, layer.q) and torch.equal(back.zeros, layer.zeros)


@pytest.mark.parametrize("bad,arg,fragment", [
    ("qzeros", "qzeros", "[16, 96]"),
    ("scales", "scales", "[16, 768]"),
    ("g_idx", "g_idx", "[2048]"),
])
def test_gptq_validation_names_the_tensor(bad, arg, fragment):
    qw, qz, sc, gi = int4.to_gptq(_gptq_layer())
    tensors = {"qzeros": qz, "scales": sc, "g_idx": gi}
    tensors[bad] = tensors[bad][:-1]
    with pytest.raises(mc.InvalidInputError) as info:
        int4.from_gptq(qw, tensors["qzeros"], tensors["scales"], 128, tensors["g_idx"])
    assert info.value.argument == arg and fragment in str(info.value)


def test_moe_layout_runs_through_fused_experts():
    e, h, i, g = 4, 256, 128, 64
    gen = torch.Generator().manual_seed(0)
    w13 = [int4.Int4Linear(torch.randint(0, 16, (h, 2 * i), generator=gen, dtype=torch.int32),
                           torch.randint(0, 16, (h // g, 2 * i), generator=gen, dtype=torch.int32),
                           torch.rand(h // g, 2 * i, generator=gen) * 0.02, g) for _ in range(e)]
    w2 = [int4.Int4Linear(torch.randint(0, 16, (i, h), generator=gen, dtype=torch.int32),
                          torch.randint(0, 16, (i // g, h), generator=gen, dtype=torch.int32),
                          torch.rand(i // g, h, generator=gen) * 0.02, g) for _ in range(e)]
    w1q, s1, z1 = int4.to_moe_layout(w13)
    w2q, s2, z2 = int4.to_moe_layout(w2)
    assert list(w1q.shape) == [e, 2 * i, h // 2] and list(z1.shape) == [e, i, h // g]
    qc = mc.make_quant_config("int4_w4a16", w1_scale=s1, w2_scale=s2, w1_zp=z1, w2_zp=z2, group_size=g)
    # moecompat's dequantizer reproduces each GPTQ layer exactly (transposed).
    torch.testing.assert_close(quant.dequantize_weights(w1q, qc, 1)[2], w13[2].dequantize().t())
    x = torch.randn(5, h)
    tw, ti = mc.select_experts(x, torch.randn(5, e), 2)
    out = mc.fused_experts(x, w1q, w2q, tw, ti, quant_config=qc)
    ref = naive_fused_experts(x, torch.stack([lay.dequantize().t() for lay in w13]),
                              torch.stack([lay.dequantize().t() for lay in w2]), tw, ti)
    assert rel_err(out, ref) < 1e-5
