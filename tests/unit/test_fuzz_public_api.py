"""Hypothesis fuzzing of the public API: valid inputs agree with the test oracle, malformed ones
raise a moecompat error (never another exception, never a wrong answer).

Valid problems are small random MoE layers (unquantized and weight-only quantized, optional
expert map, both routing forms), compared with the float64 per-token loops of ``tests/oracle.py``
at float32 tolerance (the weights are dequantized first: the oracle and the reference share only
the dequantizers, which have their own hand-computed tests). Malformed calls take one valid call
of an entry point and replace one argument by a value from a pool of wrong types, shapes,
dtypes, devices and values; the call must either raise
[`MoECompatError`][moecompat.MoECompatError] or, where the value happens to be valid, return a
result of the right shape with finite values.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moecompat as mc
from moecompat import ep, int4, mxfp4, quant
from tests.oracle import naive_fused_experts, naive_select_experts

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def problems(draw: Any) -> dict[str, Any]:
    e = draw(st.integers(1, 6))
    h = draw(st.sampled_from([16, 32]))
    i = draw(st.sampled_from([8, 16, 32]))
    t = draw(st.integers(0, 9))
    k = draw(st.integers(1, e))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g)
    w1 = torch.randn(e, 2 * i, h, generator=g) / math.sqrt(h)
    w2 = torch.randn(e, h, i, generator=g) / math.sqrt(i)
    scheme = draw(st.sampled_from([None, "int8_w8a16", "int4_w4a16", "int4_w4a16+zp"]))
    opts: dict[str, Any] = {}
    if scheme and scheme.startswith("int4"):
        opts = {"group_size": draw(st.sampled_from([g for g in (8, 16) if i % g == 0])), "zero_point": scheme.endswith("zp")}
        scheme = "int4_w4a16"
    w1q, w2q, qc = quant.quantize_moe_weights(w1, w2, scheme, **opts)
    if scheme == "int4_w4a16":  # int4 scales in the activation dtype
        qc = mc.make_quant_config(scheme, w1_scale=qc.w1_scale.float(), w2_scale=qc.w2_scale.float(), w1_zp=qc.w1_zp,
                                  w2_zp=qc.w2_zp, group_size=qc.group_size)
    d1 = quant.dequantize_weights(w1q, qc, 1) if scheme else w1
    d2 = quant.dequantize_weights(w2q, qc, 2) if scheme else w2
    logits = torch.randn(t, draw(st.integers(e, e + 3)) if draw(st.booleans()) else e, generator=g)
    expert_map = None
    if logits.shape[1] > e or draw(st.booleans()):
        # This rank holds e of the global experts (a random placement); the others are -1.
        gne = logits.shape[1]
        perm = torch.randperm(gne, generator=g)[:e]
        expert_map = torch.full((gne,), -1, dtype=torch.int32)
        expert_map[perm] = torch.arange(e, dtype=torch.int32)
    topk = mc.select_experts(x, logits, min(k, logits.shape[1]))
    return dict(x=x, w1=w1q, w2=w2q, qc=qc, d1=d1, d2=d2, topk=topk, expert_map=expert_map,
                activation=draw(st.sampled_from(["silu", "gelu", "swigluoai"])),
                on_input=draw(st.booleans()) and min(k, logits.shape[1]) == 1, logits=logits)


@FUZZ
@given(problems())
def test_valid_fused_experts_agree_with_the_oracle(p):
    out = mc.fused_experts(p["x"], p["w1"], p["w2"], *p["topk"], activation=p["activation"], quant_config=p["qc"],
                           expert_map=p["expert_map"], apply_router_weight_on_input=p["on_input"])
    want = naive_fused_experts(p["x"], p["d1"], p["d2"], *p["topk"], activation=p["activation"],
                               expert_map=p["expert_map"], apply_router_weight_on_input=p["on_input"])
    assert out.shape == p["x"].shape and out.dtype == p["x"].dtype
    torch.testing.assert_close(out.double(), want, rtol=2e-4, atol=2e-5)
    bound = mc.MoEExperts(p["w1"], p["w2"], quant_config=p["qc"], expert_map=p["expert_map"],
                          activation=p["activation"], apply_router_weight_on_input=p["on_input"])
    assert torch.equal(bound(p["x"], *p["topk"]), out)
    again = mc.fused_experts(p["x"], p["w1"], p["w2"], *p["topk"], activation=p["activation"], quant_config=p["qc"],
                             expert_map=p["expert_map"], apply_router_weight_on_input=p["on_input"])
    assert torch.equal(again, out)  # the call plan gives the cold path's answer


@FUZZ
@given(st.integers(1, 12), st.integers(0, 7), st.data())
def test_valid_select_experts_agree_with_the_oracle(e_groups, t, data):
    groups = data.draw(st.sampled_from([1, 2, 4]))
    e = groups * data.draw(st.integers(2, 4))
    k = data.draw(st.integers(1, e))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    logits = torch.randn(t, e, generator=g)
    scoring = data.draw(st.sampled_from(["softmax", "sigmoid"]))
    renorm = data.draw(st.booleans())
    grouped = data.draw(st.booleans())
    topk_group = data.draw(st.integers(1, groups))
    if grouped and k > topk_group * (e // groups):
        grouped = False
    bias = torch.randn(e, generator=g) * 0.1 if data.draw(st.booleans()) else None
    if bias is not None and grouped and e // groups < 2:
        bias = None
    rsf = data.draw(st.sampled_from([None, 2.5]))
    kw = dict(renormalize=renorm, scoring_func=scoring, use_grouped_topk=grouped, e_score_correction_bias=bias,
              routed_scaling_factor=rsf)
    if grouped:
        kw.update(num_expert_group=groups, topk_group=topk_group)
    got = mc.select_experts(torch.zeros(t, 4), logits, k, **kw)
    assert got.topk_weights.dtype == torch.float32 and got.topk_ids.dtype == torch.int32
    assert got.topk_ids.shape == (t, k)
    w, ids = naive_select_experts(logits, k, renormalize=renorm, scoring_func=scoring, use_grouped_topk=grouped,
                                  num_expert_group=kw.get("num_expert_group"), topk_group=kw.get("topk_group"),
                                  bias=bias, routed_scaling_factor=rsf)
    o1, o2 = got.topk_ids.long().sort(1), ids.sort(1)
    assert torch.equal(o1.values, o2.values)
    torch.testing.assert_close(got.topk_weights.gather(1, o1.indices).double(), w.gather(1, o2.indices), rtol=1e-5, atol=1e-6)


@FUZZ
@given(st.integers(1, 9), st.integers(1, 4), st.integers(1, 8), st.integers(1, 16), st.booleans(), st.data())
def test_valid_moe_align_block_size_invariants(t, k, e, block, pad, data):
    k = min(k, e)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).to(torch.int32)
    sorted_ids, expert_ids, n_post = mc.moe_align_block_size(ids, block, e, pad_sorted_ids=pad)
    n = int(n_post.item())
    assert n % block == 0
    flat = ids.reshape(-1)
    used = sorted_ids[:n]
    real = used[used < flat.numel()]
    assert sorted(real.tolist()) == list(range(flat.numel()))  # every slot exactly once
    for b in range(n // block):
        slots = sorted_ids[b * block:(b + 1) * block]
        slots = slots[slots < flat.numel()]
        assert bool((flat[slots.long()] == expert_ids[b]).all())


# --------------------------------------------------------------------------------------------
# Malformed arguments: one argument of a valid call replaced by a value from the pool


def _weird_values(reference: Any) -> list[Any]:
    pool: list[Any] = [None, True, 0, -1, 1.5, float("nan"), "x", "SILU", [1, 2], (3,), {}, object(), torch.float16]
    if isinstance(reference, torch.Tensor):
        t = reference
        pool += [t.float() if not t.is_floating_point() else t.to(torch.int32), t.to("meta"), t.reshape(-1),
                 t[None], t.double() if t.is_floating_point() else t.long() + 1000, t.tolist() if t.numel() < 50 else t[:0]]
        if t.dim() >= 2:
            pool += [t.transpose(-1, -2), t[..., :1], torch.cat([t, t], dim=-1)]
        if t.numel():
            pool.append(t.clone().fill_(-5) if not t.is_floating_point() else t.clone().fill_(float("inf")))
    return pool


def _layer() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    e, h, i, t = 4, 16, 8, 5
    x = torch.randn(t, h, generator=g)
    w1, w2 = torch.randn(e, 2 * i, h, generator=g) / 4, torch.randn(e, h, i, generator=g) / 4
    logits = torch.randn(t, e, generator=g)
    tw, ti = mc.select_experts(x, logits, 2)
    return dict(x=x, w1=w1, w2=w2, tw=tw, ti=ti, logits=logits, e=e, h=h, i=i, t=t)


L = _layer()
_W1Q, _W2Q, _QC = quant.quantize_moe_weights(L["w1"], L["w2"], "int8_w8a16")

def _tracker() -> mc.ExpertActivationTracker:
    t = mc.ExpertActivationTracker(2, 4, device="cpu")
    t.record(0, L["ti"])
    return t


def _tracker_json() -> str:
    return _tracker().to_json()


#: entry point -> (callable, valid keyword arguments).
CALLS: dict[str, tuple[Any, dict[str, Any]]] = {
    "fused_experts": (lambda **a: mc.fused_experts(a["hidden_states"], a["w1"], a["w2"], a["topk_weights"], a["topk_ids"],
                                                   **{k: v for k, v in a.items() if k not in ("hidden_states", "w1", "w2", "topk_weights", "topk_ids")}),
                      dict(hidden_states=L["x"], w1=L["w1"], w2=L["w2"], topk_weights=L["tw"], topk_ids=L["ti"],
                           activation="silu", quant_config=None, expert_map=None, global_num_experts=-1,
                           apply_router_weight_on_input=False, inplace=False, backend="auto")),
    "fused_experts_quantized": (lambda **a: mc.fused_experts(L["x"], _W1Q, _W2Q, L["tw"], L["ti"], quant_config=a["quant_config"]),
                                dict(quant_config=_QC)),
    "select_experts": (lambda **a: mc.select_experts(a.pop("hidden_states"), a.pop("router_logits"), a.pop("top_k"), **a),
                       dict(hidden_states=L["x"], router_logits=L["logits"], top_k=2, renormalize=True, scoring_func="softmax",
                            use_grouped_topk=False, num_expert_group=None, topk_group=None, e_score_correction_bias=None,
                            routed_scaling_factor=None, custom_routing_function=None, backend="auto", tracker=None, layer=0)),
    "select_experts_grouped": (lambda **a: mc.select_experts(L["x"], L["logits"], 2, use_grouped_topk=True, **a),
                               dict(num_expert_group=2, topk_group=1, scoring_func="sigmoid")),
    "fused_moe": (lambda **a: mc.fused_moe(a.pop("hidden_states"), a.pop("w1"), a.pop("w2"), a.pop("router_logits"), a.pop("top_k"), **a),
                  dict(hidden_states=L["x"], w1=L["w1"], w2=L["w2"], router_logits=L["logits"], top_k=2, activation="gelu")),
    "moe_align_block_size": (lambda **a: mc.moe_align_block_size(a.pop("topk_ids"), a.pop("block_size"), a.pop("num_experts"), **a),
                             dict(topk_ids=L["ti"], block_size=4, num_experts=4, expert_map=None, pad_sorted_ids=False, backend="auto")),
    "make_quant_config": (lambda **a: mc.make_quant_config(a.pop("scheme"), **a),
                          dict(scheme="int4_w4a16", w1_scale=torch.ones(4, 16, 2), w2_scale=torch.ones(4, 16, 1),
                               group_size=8, block_shape=None, per_act_token_quant=False, per_out_ch_quant=False)),
    "make_quant_config_block": (lambda **a: mc.make_quant_config("fp8_w8a8", **a),
                                dict(w1_scale=torch.ones(4, 1, 1), w2_scale=torch.ones(4, 1, 1), block_shape=[16, 16])),
    "get_config_dtype_str": (lambda **a: mc.get_config_dtype_str(a.pop("dtype"), **a),
                             dict(dtype=torch.bfloat16, use_fp8_w8a8=False, use_int8_w8a16=False, use_int4_w4a16=False,
                                  ocp_mx_scheme=None, backend="auto")),
    "make_expert_map": (lambda **a: mc.make_expert_map(a.pop("ep_size"), a.pop("ep_rank"), a.pop("global_num_experts"), **a),
                        dict(ep_size=2, ep_rank=1, global_num_experts=8, placement="linear", backend="auto")),
    "to_engine_quant_config": (lambda **a: mc.to_engine_quant_config(a.pop("quant_config"), **a),
                               dict(quant_config=_QC, backend="auto")),
    "MoEExperts": (lambda **a: mc.MoEExperts(a.pop("w1"), a.pop("w2"), **a)(L["x"], L["tw"], L["ti"]),
                   dict(w1=L["w1"], w2=L["w2"], quant_config=None, expert_map=None, global_num_experts=-1,
                        activation="silu", apply_router_weight_on_input=False, backend="auto")),
    "MoEExperts.__call__": (lambda **a: mc.MoEExperts(L["w1"], L["w2"])(a["hidden_states"], a["topk_weights"], a["topk_ids"],
                                                                         inplace=a["inplace"]),
                            dict(hidden_states=L["x"].clone(), topk_weights=L["tw"], topk_ids=L["ti"], inplace=False)),
    "ExpertActivationTracker": (lambda **a: mc.ExpertActivationTracker(a["num_layers"], a["num_experts"], a["device"]).record(
        a["layer"], a["topk_ids"]), dict(num_layers=2, num_experts=4, device="cpu", layer=1, topk_ids=L["ti"])),
    "tracker.queries": (lambda **a: [*_tracker().top_experts(a["layer"], a["n"]), _tracker().imbalance(a["layer2"]),
                                     _tracker().layer_counts(a["layer2"])],
                        dict(layer=0, n=2, layer2=None)),
    "tracker.from_json": (lambda **a: mc.ExpertActivationTracker.from_json(a["text"]), dict(text=_tracker_json())),
    "make_per_expert_quant_config": (lambda **a: mc.make_per_expert_quant_config(a.pop("groups"), **a),
                                     dict(groups=[mc.ExpertGroup([0, 1], L["w1"][:2], L["w2"][:2], quant.UNQUANTIZED),
                                                  mc.ExpertGroup([2, 3], L["w1"][2:], L["w2"][2:], quant.UNQUANTIZED)],
                                          global_num_experts=4, uncovered="error")),
    "ExpertGroup": (lambda **a: mc.ExpertGroup(**a), dict(experts=[0, 1], w1=L["w1"][:2], w2=L["w2"][:2],
                                                            quant_config=quant.UNQUANTIZED)),
    "make_mixed_quant_config": (lambda **a: mc.make_mixed_quant_config(a.pop("w13_scheme"), a.pop("w2_scheme"), **a),
                                dict(w13_scheme=None, w2_scheme="int8_w8a16", w2_scale=torch.ones(4, 16), w2_options={})),
    "quantize_weights": (lambda **a: quant.quantize_weights(a.pop("w"), a.pop("scheme"), **a),
                         dict(w=L["w1"], scheme="int4_w4a16", group_size=8, zero_point=False, per_out_ch_quant=False,
                              block_shape=None)),
    "quantize_activation": (lambda **a: quant.quantize_activation(a.pop("x"), a.pop("scheme"), **a),
                            dict(x=L["x"], scheme="fp8_w8a8", scale=None, per_act_token_quant=False, block_k=None)),
    "mxfp4.round_up": (lambda **a: mxfp4.round_up_hidden_and_intermediate(a.pop("backend"), a.pop("hidden_size"),
                                                                          a.pop("intermediate_size"), **a),
                       dict(backend="marlin", hidden_size=2880, intermediate_size=2880, engine="reference")),
    "mxfp4.MoELayerSpec": (lambda **a: mxfp4.MoELayerSpec(**a), dict(num_experts=8, top_k=2, hidden_size=64,
                                                                     intermediate_size=64, activation="silu")),
    "mxfp4.decide": (lambda **a: mxfp4.decide_mxfp4_backend(a.pop("capability"), **a),
                     dict(capability=(9, 0), has_flashinfer=False, has_triton_kernels=True, env={})),
    "mxfp4.select": (lambda **a: mxfp4.select_mxfp4_backend(**a), dict(layer=None, with_lora_support=False, backend="reference")),
    "ep.shard_experts": (lambda **a: ep.shard_experts(a["w1"], a["w2"], a["quant_config"], a["expert_map"]),
                         dict(w1=L["w1"], w2=L["w2"], quant_config=None, expert_map=mc.make_expert_map(2, 0, 4)[1])),
    "int4.from_gptq": (lambda **a: int4.from_gptq(a.pop("qweight"), a.pop("qzeros"), a.pop("scales"), a.pop("group_size")),
                       dict(zip(("qweight", "qzeros", "scales", "group_size"),
                                (*int4.to_gptq(int4.Int4Linear(torch.randint(0, 16, (32, 16), dtype=torch.int32),
                                                               torch.randint(0, 16, (2, 16), dtype=torch.int32),
                                                               torch.ones(2, 16).half(), 16))[:3], 16), strict=True))),
    "tuning.get_config_file_name": (lambda **a: mc.get_config_file_name(a.pop("num_experts"), a.pop("n"), a.pop("dtype_str"), **a),
                                    dict(num_experts=8, n=14336, dtype_str=None, block_shape=None, backend="reference")),
    "tuning.get_default_config": (lambda **a: mc.get_default_config(**a),
                                  dict(batch_size=1, num_experts=8, n=2 * 14336, k=4096, top_k=2, dtype_str=None,
                                       block_shape=None, backend="reference")),
}


CASES = [(name, arg) for name, (_, kw) in CALLS.items() for arg in kw]


def test_every_call_is_valid_as_given():
    for fn, kw in CALLS.values():
        fn(**dict(kw))


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
@pytest.mark.parametrize(("name", "arg"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_malformed_argument_gives_a_moecompat_error(name, arg, data):
    fn, kw = CALLS[name]
    kw = dict(kw)
    kw[arg] = data.draw(st.sampled_from(_weird_values(kw[arg])), label=arg)
    try:
        out = fn(**kw)
    except mc.MoECompatError:
        return
    # The replaced value was valid (e.g. True for a flag, -1 for global_num_experts): a result
    # without garbage.
    for t in _tensors(out):
        if t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and t.device.type != "meta":
            assert torch.isfinite(t).all() or _nonfinite_input(kw), f"{name}({arg}={kw[arg]!r}) returned non-finite values"


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _nonfinite_input(kw: dict[str, Any]) -> bool:
    return any(isinstance(v, torch.Tensor) and v.is_floating_point() and v.device.type != "meta"
               and not torch.isfinite(v).all() for v in kw.values())
