"""Mixed per-projection precision and load_moe_weights on small on-the-fly safetensors checkpoints."""

from __future__ import annotations

import json
import resource

import pytest
import safetensors.torch as safetensors_torch
import torch

import moecompat as mc
from moecompat import int4, quant
from moecompat.loader import load_moe_weights
from tests.oracle import naive_fused_experts, rel_err

E, H, I, G = 4, 256, 128, 64


def _gptq(k, n, gen):
    layer = int4.Int4Linear(torch.randint(0, 16, (k, n), generator=gen, dtype=torch.int32),
                            torch.randint(1, 15, (k // G, n), generator=gen, dtype=torch.int32),
                            (torch.rand(k // G, n, generator=gen) * 0.02 + 0.001).half(), G)
    return layer, int4.to_gptq(layer)


def _checkpoint(tmp_path, sharded=False):
    gen = torch.Generator().manual_seed(0)
    tensors, truth13, truth2 = {}, [], []
    for e in range(E):
        parts = []
        for name in ("gate_proj", "up_proj"):
            w = torch.randn(I, H, generator=gen) / 16
            s = w.abs().max() / 448
            tensors[f"experts.{e}.{name}.weight"] = (w / s).to(torch.float8_e4m3fn)
            tensors[f"experts.{e}.{name}.weight_scale"] = s.reshape(1)
            parts.append(tensors[f"experts.{e}.{name}.weight"].float() * s)
        truth13.append(torch.cat(parts))
        layer, (qw, qz, sc, gi) = _gptq(I, H, gen)  # down_proj: K = I, N = H
        tensors.update({f"experts.{e}.down_proj.qweight": qw, f"experts.{e}.down_proj.qzeros": qz,
                        f"experts.{e}.down_proj.scales": sc, f"experts.{e}.down_proj.g_idx": gi})
        truth2.append(layer.dequantize().t())
    if sharded:
        names = sorted(tensors)
        half = len(names) // 2
        safetensors_torch.save_file({n: tensors[n] for n in names[:half]}, str(tmp_path / "a.safetensors"))
        safetensors_torch.save_file({n: tensors[n] for n in names[half:]}, str(tmp_path / "b.safetensors"))
        idx = {"weight_map": {n: ("a.safetensors" if i < half else "b.safetensors") for i, n in enumerate(names)}}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps(idx))
    else:
        safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    return torch.stack(truth13), torch.stack(truth2)


MAPPING = {
    "num_experts": E,
    "w13": {"precision": "fp8_w8a8", "gate": "experts.{expert}.gate_proj", "up": "experts.{expert}.up_proj"},
    "w2": {"precision": "gptq_int4", "down": "experts.{expert}.down_proj", "group_size": G},
}


@pytest.mark.parametrize("sharded", [False, True])
def test_load_mixed_fp8_and_gptq(tmp_path, sharded):
    t13, t2 = _checkpoint(tmp_path, sharded)
    w1, w2, qc = load_moe_weights(tmp_path, MAPPING)
    assert isinstance(qc, mc.MixedQuantConfig)
    assert w1.dtype == torch.float8_e4m3fn and list(w1.shape) == [E, 2 * I, H]
    assert w2.dtype == torch.uint8 and list(w2.shape) == [E, H, I // 2]
    d1 = quant.dequantize_weights(w1, qc.w13, 1)
    d2 = quant.dequantize_weights(w2, qc.w2, 2)
    assert rel_err(d1, t13) < 0.03  # fp8 requantized to the larger of the gate/up scales
    # int4 scales are stored in the activation dtype (bf16: 8 mantissa bits, <= 2^-8 relative)
    torch.testing.assert_close(d2, t2.float(), rtol=8e-3, atol=1e-3)
    x = torch.randn(6, H, dtype=torch.bfloat16)
    tw, ti = mc.select_experts(x, torch.randn(6, E), 2)
    out = mc.fused_experts(x, w1, w2, tw, ti, quant_config=qc)
    ref = naive_fused_experts(x, d1, d2, tw, ti)
    assert rel_err(out, ref) < 0.08  # w13 runs fp8 w8a8 (activation quantized), w2 bf16 x int4
    with pytest.raises(mc.UnsupportedFeatureError, match="mixed"):
        mc.fused_experts(x, w1, w2, tw, ti, quant_config=qc, backend="vllm")


def test_yaml_mapping_and_same_precision(tmp_path):
    import yaml
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    for e in range(2):
        for n, shape in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
            tensors[f"l.{e}.{n}.weight"] = torch.randn(*shape, generator=gen).bfloat16()
    safetensors_torch.save_file(tensors, str(tmp_path / "m.safetensors"))
    mp = {"num_experts": 2, "w13": {"precision": "bf16", "gate": "l.{expert}.w1", "up": "l.{expert}.w3"},
          "w2": {"precision": "bf16", "down": "l.{expert}.w2"}}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(mp))
    w1, w2, qc = load_moe_weights(tmp_path / "m.safetensors", tmp_path / "map.yaml")
    assert qc.scheme is None and w1.dtype == torch.bfloat16
    torch.testing.assert_close(w1[1, :I].float(), tensors["l.1.w1.weight"].float())


def test_errors(tmp_path):
    _checkpoint(tmp_path)
    with pytest.raises(mc.InvalidInputError, match="precision"):
        load_moe_weights(tmp_path, {**MAPPING, "w2": {**MAPPING["w2"], "precision": "nf4"}})
    with pytest.raises(mc.InvalidInputError, match="not found"):
        load_moe_weights(tmp_path, {**MAPPING, "num_experts": E + 1})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(mc.InvalidInputError, match="not a safetensors file"):
        load_moe_weights(bad, MAPPING)
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"experts.0.gate_proj.weight": "gone.safetensors"}}))
    with pytest.raises(mc.InvalidInputError, match="missing"):
        load_moe_weights(idx, MAPPING)


def test_mismatched_expert_shapes(tmp_path):
    gen = torch.Generator().manual_seed(2)
    tensors = {f"l.{e}.{n}.weight": torch.randn(I + (e == 1), H, generator=gen).bfloat16() for e in range(2) for n in ("w1", "w3")}
    tensors.update({f"l.{e}.w2.weight": torch.randn(H, I, generator=gen).bfloat16() for e in range(2)})
    safetensors_torch.save_file(tensors, str(tmp_path / "m.safetensors"))
    mp = {"num_experts": 2, "w13": {"precision": "bf16", "gate": "l.{expert}.w1", "up": "l.{expert}.w3"},
          "w2": {"precision": "bf16", "down": "l.{expert}.w2"}}
    with pytest.raises(mc.InvalidInputError, match="expert 1"):
        load_moe_weights(tmp_path, mp)


def test_mixed_precision_validation_per_projection():
    gen = torch.Generator().manual_seed(3)
    w1 = torch.randn(E, 2 * I, H, generator=gen)
    w2 = torch.randn(E, H, I, generator=gen)
    q1 = quant.quantize_weights(w1, "fp8_w8a8")
    q2 = quant.quantize_weights(w2, "int4_w4a16", group_size=G)
    qc = mc.make_mixed_quant_config("fp8_w8a8", "int4_w4a16", w13_scale=q1.scale, w2_scale=q2.scale.bfloat16(),
                                    w2_options={"group_size": G})
    x = torch.randn(3, H, dtype=torch.bfloat16)
    tw, ti = mc.select_experts(x, torch.randn(3, E), 2)
    mc.fused_experts(x, q1.weight, q2.weight, tw, ti, quant_config=qc)
    bad = mc.make_mixed_quant_config("fp8_w8a8", "int4_w4a16", w13_scale=q1.scale, w2_scale=q2.scale[:, :1].bfloat16(),
                                     w2_options={"group_size": G})
    with pytest.raises(mc.InvalidInputError, match="w2_scale"):
        mc.fused_experts(x, q1.weight, q2.weight, tw, ti, quant_config=bad)


def test_streaming_peak_memory(tmp_path):
    """Loading keeps about one expert in flight: the resident-set growth stays near the output size."""
    gen = torch.Generator().manual_seed(4)
    e, h, i = 8, 1024, 1024
    tensors = {f"x.{k}.{n}.weight": torch.randn(i if n != "w2" else h, h if n != "w2" else i, generator=gen)
               for k in range(e) for n in ("w1", "w3", "w2")}
    safetensors_torch.save_file(tensors, str(tmp_path / "big.safetensors"))
    del tensors
    mp = {"num_experts": e, "w13": {"precision": "fp32", "gate": "x.{expert}.w1", "up": "x.{expert}.w3"},
          "w2": {"precision": "fp32", "down": "x.{expert}.w2"}}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    w1, w2, _ = load_moe_weights(tmp_path, mp, dtype=torch.float32)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    out_mb = (w1.numel() + w2.numel()) * 4 / 2**20
    per_expert_mb = out_mb / e
    assert grew_mb <= out_mb + 4 * per_expert_mb + 64, (grew_mb, out_mb)
