"""MXFP4 backend vocabulary, decision table and round-up rules (no engine)."""

from __future__ import annotations

import enum

import pytest

import moecompat as mc
from moecompat import mxfp4
from moecompat.engines.vllm import mxfp4_from_engine, mxfp4_to_engine
from moecompat.mxfp4 import Mxfp4Backend, decide_mxfp4_backend


def test_every_vllm_name_maps_and_round_trips():
    old = enum.Enum("Mxfp4Backend", ["NONE", "SM100_FI_MXFP4_MXFP8_TRTLLM", "SM100_FI_MXFP4_MXFP8_CUTLASS",
                                     "SM100_FI_MXFP4_BF16", "SM90_FI_MXFP4_BF16", "MARLIN", "TRITON", "CK"])
    new = enum.Enum("Mxfp4MoeBackend", ["NONE", "FLASHINFER_TRTLLM_MXFP4_BF16", "FLASHINFER_CUTLASS_MXFP4_BF16", "MARLIN", "TRITON"])
    assert mxfp4_from_engine(old.SM90_FI_MXFP4_BF16) is Mxfp4Backend.FLASHINFER_CUTLASS_BF16
    assert mxfp4_from_engine(new.FLASHINFER_CUTLASS_MXFP4_BF16) is Mxfp4Backend.FLASHINFER_CUTLASS_BF16
    assert mxfp4_from_engine(old.CK) is Mxfp4Backend.ROCM_AITER
    for member in old:
        assert mxfp4_to_engine(mxfp4_from_engine(member), old) is member
    assert mxfp4_to_engine("flashinfer_trtllm_bf16", old) is old.SM100_FI_MXFP4_BF16
    with pytest.raises(mc.UnsupportedFeatureError, match="Mxfp4MoeBackend"):
        mxfp4_to_engine(Mxfp4Backend.ROCM_AITER, new)
    with pytest.raises(mc.EngineDriftError, match="NOT_A_BACKEND"):  # a member moecompat does not know
        mxfp4_from_engine("NOT_A_BACKEND")


@pytest.mark.parametrize("cap,fi,tk,env,expected", [
    (None, False, False, {}, Mxfp4Backend.NONE),
    ((9, 0), False, True, {}, Mxfp4Backend.TRITON),
    ((9, 0), False, False, {}, Mxfp4Backend.MARLIN),
    ((9, 0), False, True, {"VLLM_MXFP4_USE_MARLIN": "1"}, Mxfp4Backend.MARLIN),
    ((9, 0), True, True, {"VLLM_USE_FLASHINFER_MOE_MXFP4_BF16": "1"}, Mxfp4Backend.FLASHINFER_CUTLASS_BF16),
    ((10, 0), True, True, {}, Mxfp4Backend.FLASHINFER_TRTLLM_BF16),
    ((10, 0), True, True, {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8": "1"}, Mxfp4Backend.FLASHINFER_TRTLLM_MXFP8),
    ((10, 0), True, True, {"VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8_CUTLASS": "1"}, Mxfp4Backend.FLASHINFER_CUTLASS_MXFP8),
    ((8, 0), False, True, {}, Mxfp4Backend.MARLIN),
])
def test_decision_table(cap, fi, tk, env, expected):
    assert decide_mxfp4_backend(cap, has_flashinfer=fi, has_triton_kernels=tk, env=env) is expected


def test_rocm_decisions():
    assert decide_mxfp4_backend(None, has_flashinfer=False, has_triton_kernels=False, rocm=True, rocm_aiter_gfx950=True) is Mxfp4Backend.ROCM_AITER
    assert decide_mxfp4_backend(None, has_flashinfer=False, has_triton_kernels=True, rocm=True) is Mxfp4Backend.TRITON


def test_round_up_rules():
    f = mc.mxfp4.round_up_hidden_and_intermediate
    assert f("triton", 2880, 2880, engine="reference") == (2880, 2880)
    assert f("marlin", 2880, 2880, engine="reference") == (3072, 2944)
    assert f("flashinfer_trtllm_bf16", 2880, 2880, engine="reference") == (3072, 2944)
    assert f("flashinfer_cutlass_bf16", 2880, 2880, engine="reference") == (2944, 2944)
    assert mc.mxfp4.select_mxfp4_backend(backend="reference") is Mxfp4Backend.NONE  # no GPU here


def test_layer_spec_validates_and_defaults_to_gpt_oss_120b():
    spec = mxfp4.MoELayerSpec()
    assert (spec.num_experts, spec.top_k, spec.hidden_size, spec.intermediate_size) == (128, 4, 2880, 2880)
    assert spec == mxfp4.GPT_OSS_120B and mxfp4.GPT_OSS_20B.num_experts == 32
    with pytest.raises(mc.InvalidInputError, match="top_k"):
        mxfp4.MoELayerSpec(num_experts=4, top_k=8)
    with pytest.raises(mc.InvalidInputError, match="hidden_size"):
        mxfp4.MoELayerSpec(hidden_size=0)
    with pytest.raises(mc.InvalidInputError, match="activation"):
        mxfp4.MoELayerSpec(activation="tanh")
    with pytest.raises(mc.InvalidInputError, match="dtype"):
        mxfp4.MoELayerSpec(dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(mc.InvalidInputError, match="layer"):
        mxfp4.select_mxfp4_backend(layer="gpt-oss", backend="reference")  # type: ignore[arg-type]


def test_engine_moe_config_rejects_bad_input():
    with pytest.raises(mc.InvalidInputError, match="layer"):
        mxfp4.engine_moe_config("gpt-oss", engine="reference")  # type: ignore[arg-type]
    with pytest.raises(mc.InvalidInputError, match="device"):
        mxfp4.engine_moe_config(device="gpu0", engine="reference")


def test_engine_moe_config_needs_an_engine():
    with pytest.raises(mc.UnsupportedFeatureError, match="moe_layer_config"):
        mxfp4.engine_moe_config(engine="reference")
    with pytest.raises(mc.UnsupportedFeatureError):
        mxfp4.engine_moe_config(engine="sglang")
