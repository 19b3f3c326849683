"""Corrupt and inconsistent checkpoints and mappings: each gives an InvalidInputError that names the
file, the key or tensor, and what was expected; none loads, and no file stays open."""

from __future__ import annotations

import json
import os
import pathlib
import struct

import pytest
import safetensors.torch as st
import torch
import yaml

import moecompat as mc
from moecompat import int4
from moecompat.loader import load_moe_weights, load_per_expert_moe_weights

E, H, I = 3, 64, 32
MAPPING = {"num_experts": E,
           "w13": {"precision": "bf16", "gate": "e.{expert}.gate", "up": "e.{expert}.up"},
           "w2": {"precision": "bf16", "down": "e.{expert}.down"}}


def _tensors(**override: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for e in range(E):
        out[f"e.{e}.gate.weight"] = torch.randn(I, H, generator=g).bfloat16()
        out[f"e.{e}.up.weight"] = torch.randn(I, H, generator=g).bfloat16()
        out[f"e.{e}.down.weight"] = torch.randn(H, I, generator=g).bfloat16()
    out.update(override)
    return out


def _save(folder: pathlib.Path, tensors: dict[str, torch.Tensor], name: str = "model.safetensors") -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    st.save_file(tensors, str(path))
    return path


def _error(checkpoint, mapping=MAPPING, **kw) -> str:
    with pytest.raises(mc.InvalidInputError) as info:
        load_moe_weights(checkpoint, mapping, **kw)
    return str(info.value)


def _open_files_under(folder: pathlib.Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


def test_a_consistent_checkpoint_loads(tmp_path):
    _save(tmp_path, _tensors())
    w1, w2, qc = load_moe_weights(tmp_path, MAPPING)
    assert w1.shape == (E, 2 * I, H) and w2.shape == (E, H, I) and qc.scheme is None
    assert _open_files_under(tmp_path) == []


# -- the cases ---------------------------------------------------------------------


def test_gate_and_up_of_different_sizes(tmp_path):
    """gate [32, 64] + up [34, 64] + down [64, 33] used to load as w1 [E, 66, 64] and run."""
    t = _tensors(**{"e.0.up.weight": torch.zeros(I + 2, H).bfloat16(), "e.0.down.weight": torch.zeros(H, I + 1).bfloat16()})
    _save(tmp_path, t)
    msg = _error(tmp_path)
    assert "w13.up (expert 0)" in msg and "e.0.up" in msg and f"[{I + 2}, {H}]" in msg and f"I={I}" in msg


def test_down_with_another_intermediate_size(tmp_path):
    _save(tmp_path, _tensors(**{"e.2.down.weight": torch.zeros(H, I + 8).bfloat16()}))
    msg = _error(tmp_path)
    assert "w2.down (expert 2)" in msg and f"[{H}, {I + 8}]" in msg


def test_another_hidden_size_in_a_later_expert(tmp_path):
    _save(tmp_path, _tensors(**{"e.1.gate.weight": torch.zeros(I, H + 16).bfloat16(),
                                "e.1.up.weight": torch.zeros(I, H + 16).bfloat16()}))
    assert "expert 1" in _error(tmp_path)


def test_int32_under_a_float_precision(tmp_path):
    _save(tmp_path, _tensors(**{"e.1.up.weight": torch.zeros(I, H, dtype=torch.int32)}))
    msg = _error(tmp_path)
    assert "e.1.up.weight" in msg and "BF16" in msg and "I32" in msg and "model.safetensors" in msg


def test_float32_under_bf16(tmp_path):
    _save(tmp_path, _tensors(**{"e.0.gate.weight": torch.zeros(I, H)}))
    assert "expected dtype BF16" in _error(tmp_path)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.float64, "bf16"])
def test_activation_dtype_must_be_a_float_activation_dtype(tmp_path, dtype):
    _save(tmp_path, _tensors())
    assert _error(tmp_path, dtype=dtype).startswith("dtype: expected the activation dtype")


def test_duplicate_tensor_across_shards_names_both_files(tmp_path):
    t = _tensors()
    _save(tmp_path, {k: v for k, v in t.items() if not k.startswith("e.2.")}, "a.safetensors")
    _save(tmp_path, {k: v for k, v in t.items() if k.startswith(("e.2.", "e.0.gate"))}, "b.safetensors")
    msg = _error(tmp_path)
    assert "e.0.gate.weight" in msg and "a.safetensors" in msg and "b.safetensors" in msg


def test_missing_expert_tensor(tmp_path):
    t = _tensors()
    del t["e.2.down.weight"]
    _save(tmp_path, t)
    msg = _error(tmp_path)
    assert "w2.down (expert 2)" in msg and "'e.2.down.weight'" in msg and "not found" in msg


# -- corrupt files ----------------------------------------------------------------------------


def test_truncated_data(tmp_path):
    path = _save(tmp_path, _tensors())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    msg = _error(tmp_path)
    assert "data offsets" in msg and "truncated" in msg and str(path) in msg


@pytest.mark.parametrize("content", [b"", b"\x01\x02", struct.pack("<Q", 10**9) + b"{}", b"not a safetensors file at all"])
def test_truncated_or_foreign_header(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    assert "checkpoint: expected" in _error(tmp_path)


@pytest.mark.parametrize("header", [b"{not json", b"[1, 2]", json.dumps({"x": {"dtype": "F32", "shape": "3"}}).encode(),
                                    json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}).encode()])
def test_bad_header(tmp_path, header):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    msg = _error(tmp_path)
    assert "model.safetensors" in msg


def test_no_safetensors_files(tmp_path):
    assert "none found" in _error(tmp_path)


def test_checkpoint_argument_type(tmp_path):
    assert _error(42).startswith("checkpoint: expected a path")


# -- indexes -----------------------------------------------------------------------------------


def _index(folder: pathlib.Path, weight_map) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def test_index_naming_a_missing_file(tmp_path):
    _index(tmp_path, {"e.0.gate.weight": "gone.safetensors"})
    msg = _error(tmp_path)
    assert "gone.safetensors" in msg and "missing" in msg


@pytest.mark.parametrize("weight_map", [[1, 2], {"e.0.gate.weight": 3}, {"e.0.gate.weight": "../up.safetensors"}])
def test_index_with_wrong_types(tmp_path, weight_map):
    _index(tmp_path, weight_map)
    assert "weight_map" in _error(tmp_path)


def test_index_naming_a_tensor_its_file_lacks(tmp_path):
    _save(tmp_path, _tensors(), "one.safetensors")
    _index(tmp_path, {**{k: "one.safetensors" for k in _tensors()}, "e.9.gate.weight": "one.safetensors"})
    assert "e.9.gate.weight" in _error(tmp_path)


def test_index_that_is_not_json(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{oops")
    assert "invalid JSON" in _error(tmp_path)


def test_index_splits_names_across_files(tmp_path):
    t = _tensors()
    names = sorted(t)
    _save(tmp_path, {k: t[k] for k in names[:4]}, "p1.safetensors")
    _save(tmp_path, {k: t[k] for k in names[4:]}, "p2.safetensors")
    _index(tmp_path, {k: "p1.safetensors" if k in names[:4] else "p2.safetensors" for k in names})
    w1, _, _ = load_moe_weights(tmp_path, MAPPING)
    assert w1.shape[0] == E


# -- mappings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("mapping", "fragment"), [
    ({k: v for k, v in MAPPING.items() if k != "num_experts"}, "'num_experts'"),
    ({k: v for k, v in MAPPING.items() if k != "w2"}, "'w2'"),
    ({**MAPPING, "num_experts": "3"}, "mapping.num_experts"),
    ({**MAPPING, "num_experts": 3.0}, "mapping.num_experts"),
    ({**MAPPING, "num_experts": 0}, "mapping.num_experts"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gate": "e.{exprt}.gate"}}, "placeholder {expert}"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gate": "e.0.gate"}}, "placeholder {expert}"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gate": "e.{expert}.{expert}"}}, "exactly once"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gate": "e.{expert"}}, "mapping.w13.gate"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gate": 7}}, "mapping.w13.gate"),
    ({**MAPPING, "w13": {**MAPPING["w13"], "gat": "x.{expert}"}}, "unknown key 'gat'"),
    ({**MAPPING, "w13": {"precision": "bf16", "gate": "e.{expert}.gate"}}, "'up'"),
    ({**MAPPING, "w13": "bf16"}, "mapping.w13"),
    ({**MAPPING, "w2": {**MAPPING["w2"], "precision": "nf4"}}, "mapping.w2.precision"),
    ({**MAPPING, "w2": {**MAPPING["w2"], "precision": "BF16"}}, "mapping.w2.precision"),
    ({**MAPPING, "w2": {**MAPPING["w2"], "group_size": 32}}, "no group_size for precision bf16"),
    ({**MAPPING, "w2": {"precision": "awq_int4", "down": "e.{expert}.down"}}, "mapping.w2.group_size"),
    ({**MAPPING, "w2": {"precision": "awq_int4", "down": "e.{expert}.down", "group_size": 0}}, "mapping.w2.group_size"),
    ({**MAPPING, "w2": {"precision": "gptq_int4", "down": "e.{expert}.down", "group_size": 32.0}}, "mapping.w2.group_size"),
    ([1, 2, 3], "mapping"),
])
def test_malformed_mapping(tmp_path, mapping, fragment):
    _save(tmp_path, _tensors())
    assert fragment in _error(tmp_path, mapping)


def test_mapping_files(tmp_path):
    _save(tmp_path, _tensors())
    (tmp_path / "m.json").write_text("{not json")
    assert "invalid JSON" in _error(tmp_path, tmp_path / "m.json")
    (tmp_path / "m.yaml").write_text("w13: [unclosed")
    assert "valid YAML" in _error(tmp_path, tmp_path / "m.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "an object at the top" in _error(tmp_path, tmp_path / "list.yaml")
    assert "readable" in _error(tmp_path, tmp_path / "absent.yaml")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(MAPPING))
    assert load_moe_weights(tmp_path, tmp_path / "ok.yaml")[0].shape == (E, 2 * I, H)


def test_per_expert_mapping_errors(tmp_path):
    _save(tmp_path, _tensors())
    spec = {"w13": MAPPING["w13"], "w2": MAPPING["w2"]}
    cases = [
        ({"num_experts": E, "groups": []}, "groups"),
        ({"num_experts": E, "groups": [{"experts": [0, 1], **spec}, {"experts": [1, 2], **spec}]}, "also in groups[0]"),
        ({"num_experts": E, "groups": [{"experts": [0, "1"], **spec}]}, "groups[0].experts[1]"),
        ({"num_experts": E, "groups": [{"experts": [0, 5], **spec}]}, "groups[0].experts[1]"),
        ({"num_experts": E, "groups": [spec]}, "groups[0]"),
        ({"num_experts": E, "groups": [{"experts": [0], "w13": spec["w13"]}]}, "'w2'"),
    ]
    for mapping, fragment in cases:
        with pytest.raises(mc.InvalidInputError) as info:
            load_per_expert_moe_weights(tmp_path, mapping)
        assert fragment in str(info.value), (mapping, str(info.value))


# -- quantized tensors against their declared precision ----------------------------------------


def _gptq_checkpoint(folder: pathlib.Path, group: int = 16, **override: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(1)
    t = {}
    for e in range(E):
        for name, (k, n) in (("gate", (H, I)), ("up", (H, I)), ("down", (I, H))):
            layer = int4.Int4Linear(torch.randint(0, 16, (k, n), generator=g, dtype=torch.int32),
                                    torch.randint(1, 15, (k // group, n), generator=g, dtype=torch.int32),
                                    (torch.rand(k // group, n, generator=g) * 0.01).half(), group)
            qw, qz, sc, _ = int4.to_gptq(layer)
            t.update({f"e.{e}.{name}.qweight": qw, f"e.{e}.{name}.qzeros": qz, f"e.{e}.{name}.scales": sc})
    t.update(override)
    _save(folder, t)


GPTQ = {"num_experts": E, "w13": {"precision": "gptq_int4", "gate": "e.{expert}.gate", "up": "e.{expert}.up", "group_size": 16},
        "w2": {"precision": "gptq_int4", "down": "e.{expert}.down", "group_size": 16}}


def test_gptq_loads(tmp_path):
    _gptq_checkpoint(tmp_path)
    w1, w2, qc = load_moe_weights(tmp_path, GPTQ)
    assert qc.scheme is mc.QuantScheme.INT4_W4A16 and w1.shape == (E, 2 * I, H // 2)


def test_gptq_scales_of_the_wrong_shape(tmp_path):
    _gptq_checkpoint(tmp_path, **{"e.1.up.scales": torch.ones(H // 16, I + 8).half()})
    msg = _error(tmp_path, GPTQ)
    assert "e.1.up.scales" in msg and f"[{H // 16}, {I}]" in msg


def test_gptq_qzeros_of_the_wrong_shape(tmp_path):
    _gptq_checkpoint(tmp_path, **{"e.0.down.qzeros": torch.zeros(3, H // 8, dtype=torch.int32)})
    assert "e.0.down.qzeros" in _error(tmp_path, GPTQ)


def test_group_size_that_does_not_divide_k(tmp_path):
    _gptq_checkpoint(tmp_path)
    bad = {**GPTQ, "w2": {**GPTQ["w2"], "group_size": 24}}
    msg = _error(tmp_path, bad)
    assert "mapping.w2.down (expert 0).group_size" in msg and "24" in msg


def test_fp8_scale_with_two_values(tmp_path):
    t = {}
    for e in range(E):
        for name, shape in (("gate", (I, H)), ("up", (I, H)), ("down", (H, I))):
            t[f"e.{e}.{name}.weight"] = torch.zeros(*shape).to(torch.float8_e4m3fn)
            t[f"e.{e}.{name}.weight_scale"] = torch.ones(1)
    t["e.2.gate.weight_scale"] = torch.ones(2)
    _save(tmp_path, t)
    fp8 = {"num_experts": E, "w13": {**MAPPING["w13"], "precision": "fp8_w8a8"}, "w2": {**MAPPING["w2"], "precision": "fp8_w8a8"}}
    msg = _error(tmp_path, fp8)
    assert "e.2.gate.weight_scale" in msg and "one value" in msg


def test_failed_load_leaves_no_file_open(tmp_path):
    t = _tensors()
    _save(tmp_path, {k: v for k, v in t.items() if not k.startswith("e.2.")}, "a.safetensors")
    _save(tmp_path, {k: v for k, v in t.items() if k.startswith("e.2.")}, "b.safetensors")
    # Readable headers, then a read that fails: corrupt the data of the second file after
    # planning would pass (same header, short data region).
    b = tmp_path / "b.safetensors"
    raw = b.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    b.write_bytes(raw[: 8 + n] + b"\0" * (len(raw) - 8 - n))  # zeros: values, not structure
    load_moe_weights(tmp_path, MAPPING)  # zero data is valid
    assert _open_files_under(tmp_path) == []
    b.write_bytes(raw[: 8 + n + 4])
    with pytest.raises(mc.InvalidInputError):
        load_moe_weights(tmp_path, MAPPING)
    assert _open_files_under(tmp_path) == []
