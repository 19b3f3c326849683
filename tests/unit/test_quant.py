"""Quantization helpers against hand-computed values."""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import mxfp4, quant


def test_e2m1_table_is_the_ocp_one():
    assert mxfp4.E2M1_VALUES[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert mxfp4.E2M1_VALUES[8:].tolist() == [-0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def test_e2m1_encode_rounds_to_nearest_even_and_saturates():
    x = torch.tensor([0.0, 0.24, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 7.0, 100.0, -1.0, -0.3])
    # 0.25 ties between 0 (code 0, even) and 0.5 (code 1): even -> 0. 0.75 ties 0.5/1.0 -> 1.0 (code 2).
    # 1.25 ties 1.0/1.5 -> 1.0 (code 2); 1.75 ties 1.5/2.0 -> 2.0 (code 4); 2.5 -> 2 (code 4);
    # 3.5 -> 4 (code 6); 5.0 ties 4/6 -> 4 (code 6); 5.1 -> 6; saturate to 6.
    expected = [0, 0, 0, 1, 2, 2, 4, 4, 6, 6, 7, 7, 7, 8 | 2, 8 | 1]
    assert mxfp4.float_to_e2m1(x).tolist() == expected


def test_e8m0_decodes_powers_of_two():
    codes = torch.tensor([127, 128, 126, 0, 254, 255], dtype=torch.uint8)
    out = mxfp4.e8m0_to_float(codes)
    assert out[:5].tolist() == [1.0, 2.0, 0.5, 2.0**-127, 2.0**127]
    assert torch.isnan(out[5])


def test_e8m0_decode_is_exact_with_denormals_flushed():
    """torch 2.5's inductor turns the CPU's flush-to-zero mode on for the whole process
    (seen here on torch 2.5.1): code 0 (2**-127, a float32 subnormal) must still decode to itself."""
    was = torch.tensor([2.0**-127]).mul(1.0).item() == 0.0
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal needs SSE3)")
    try:
        assert torch.tensor([2.0**-127]).mul(1.0).item() == 0.0  # the mode is on
        out = mxfp4.e8m0_to_float(torch.tensor([0, 1, 127, 255], dtype=torch.uint8))
    finally:
        torch.set_flush_denormal(was)
    assert out[:3].tolist() == [2.0**-127, 2.0**-126, 1.0]
    assert torch.isnan(out[3])


def test_mxfp4_quantize_hand_example():
    # Block max 12 -> floor(log2 12) = 3 -> shared exponent 3 - 2 = 1 -> scale 2 (code 128).
    x = torch.zeros(32)
    x[0], x[1], x[2], x[3] = 12.0, -3.0, 1.0, 0.4
    packed, scales = mxfp4.quantize_mxfp4(x)
    assert scales.tolist() == [128]
    # 12/2 = 6 (code 7), -3/2 = -1.5 (code 8|3), 1/2 = 0.5 (code 1), 0.4/2 = 0.2 -> 0 (code 0)
    assert packed[0].item() == 7 | ((8 | 3) << 4)
    assert packed[1].item() == 1 | (0 << 4)
    deq = mxfp4.dequantize_mxfp4(packed, scales)
    assert deq[:4].tolist() == [12.0, -3.0, 1.0, 0.0]


def test_mxfp4_roundtrip_is_exact_on_representable_values():
    codes = torch.randint(0, 16, (4, 64), dtype=torch.uint8)
    vals = mxfp4.e2m1_to_float(codes) * 4.0  # every block scaled by 2**2
    # Make sure every block has max magnitude in [4*4, 4*8) so the shared exponent is 2.
    vals[:, 0] = 24.0
    vals[:, 32] = 24.0
    packed, scales = mxfp4.quantize_mxfp4(vals)
    assert torch.equal(mxfp4.dequantize_mxfp4(packed, scales), vals)


def test_int4_pack_unpack_layout():
    q = torch.tensor([[1, 2, 3, 15]], dtype=torch.uint8)
    packed = quant.pack_int4(q)
    assert packed.tolist() == [[1 | (2 << 4), 3 | (15 << 4)]]
    assert torch.equal(quant.unpack_int4(packed), q)
    q2 = torch.randint(0, 16, (3, 4, 6), dtype=torch.uint8)
    assert torch.equal(quant.unpack_int4(quant.pack_int4(q2, dim=1), dim=1), q2)


def test_int4_symmetric_hand_example():
    w = torch.tensor([[[7.0, -7.0, 3.5, 0.0]]])  # one group of 4, max 7 -> scale 1
    qw = quant.quantize_weights(w, "int4_w4a16", group_size=4)
    assert qw.scale.tolist() == [[[1.0]]]
    codes = quant.unpack_int4(qw.weight)
    assert codes.tolist() == [[[15, 1, 12, 8]]]  # value + 8; 3.5 rounds half to even -> 4
    cfg = mc.make_quant_config("int4_w4a16", w1_scale=qw.scale, w2_scale=qw.scale, group_size=4)
    assert quant.dequantize_weights(qw.weight, cfg, 1).tolist() == [[[7.0, -7.0, 4.0, 0.0]]]


def test_int4_zero_point_hand_example():
    w = torch.tensor([[[0.0, 15.0, 5.0, 10.0], [-3.0, 0.0, 0.0, 12.0]]])  # N=2 rows, one group each
    qw = quant.quantize_weights(w, "int4_w4a16", group_size=4, zero_point=True)
    assert qw.scale.flatten().tolist() == [1.0, 1.0]
    assert quant.unpack_int4(qw.zero_point, dim=1).flatten().tolist() == [0, 3]
    cfg = mc.make_quant_config("int4_w4a16", w1_scale=qw.scale, w2_scale=qw.scale,
                               w1_zp=qw.zero_point, w2_zp=qw.zero_point, group_size=4)
    assert torch.equal(quant.dequantize_weights(qw.weight, cfg, 1), w)


def test_fp8_per_tensor_and_block_scales():
    w = torch.zeros(2, 4, 4)
    w[0, 0, 0] = 448.0 * 2
    w[1, 3, 3] = -448.0 / 4
    qw = quant.quantize_weights(w, "fp8_w8a8")
    assert qw.scale.tolist() == [2.0, 0.25]
    assert qw.weight.dtype == torch.float8_e4m3fn
    qb = quant.quantize_weights(w, "fp8_w8a8", block_shape=(2, 2))
    assert qb.scale.shape == (2, 2, 2)
    assert qb.scale[0, 0, 0].item() == 2.0 and qb.scale[1, 1, 1].item() == 0.25


def test_int8_activation_per_token():
    x = torch.tensor([[127.0, -63.5, 0.0], [1.27, 0.0, -1.27]])
    q, s = quant.quantize_activation(x, "int8_w8a8", per_act_token_quant=True)
    assert s.flatten().tolist() == pytest.approx([1.0, 0.01])
    assert q.tolist() == [[127, -64, 0], [127, 0, -127]]


@pytest.mark.parametrize("scheme,opts", [
    ("fp8_w8a8", {}), ("fp8_w8a8", {"per_out_ch_quant": True}), ("fp8_w8a8", {"block_shape": [8, 16]}),
    ("int8_w8a8", {"per_out_ch_quant": True}), ("int8_w8a16", {}), ("int4_w4a16", {"group_size": 16}),
    ("int4_w4a16", {"group_size": 16, "zero_point": True}), ("mxfp4_w4a16", {}),
])
def test_weight_roundtrip_error_is_small(scheme, opts):
    w = torch.randn(3, 16, 64)
    q1, q2, cfg = quant.quantize_moe_weights(w, w.clone(), scheme, **opts)
    back = quant.dequantize_weights(q1, cfg, 1)
    err = ((back - w).norm() / w.norm()).item()
    # int4 / e2m1 keep ~3 bits: <= 20% rms; 8-bit formats: <= 5%.
    assert err < (0.2 if scheme in ("int4_w4a16", "mxfp4_w4a16") else 0.05)


def test_make_quant_config_rejects_inconsistent_options():
    s = torch.ones(2)
    with pytest.raises(mc.InvalidInputError, match="w1_scale"):
        mc.make_quant_config("fp8_w8a8", w2_scale=s)
    with pytest.raises(mc.InvalidInputError, match="group_size"):
        mc.make_quant_config("int4_w4a16", w1_scale=s, w2_scale=s)
    with pytest.raises(mc.InvalidInputError, match="block_shape"):
        mc.make_quant_config("int8_w8a16", w1_scale=s, w2_scale=s, block_shape=[128, 128])
    with pytest.raises(mc.InvalidInputError, match="scheme"):
        mc.make_quant_config("fp4_nonsense", w1_scale=s, w2_scale=s)
    with pytest.raises(mc.InvalidInputError, match="scheme"):
        mc.make_quant_config(None, w1_scale=s)
    assert mc.make_quant_config(None).scheme is None
