"""moecompat's vLLM adapters against the real installed vLLM (CPU): resolution, binding,
config names, quant configs, routing and expert maps."""

from __future__ import annotations

import inspect
import itertools
import re
import sys

import pytest
import torch

import moecompat as mc
from moecompat import quant
from moecompat._adapters import REGISTRY
from moecompat._backends import ENTRY_POINTS
from moecompat._calls import ExpertsCall
from moecompat.engines.vllm import (
    DEEPSEEK_BIAS,
    NUMERICS_KNOWN,
    REMAINDER_TO_LAST_RANK,
    TRTLLM_MXFP4_PADS_256,
)
from tests.engines.conftest import (
    DOCTOR_JSON,
    assert_doctor_json_parses,
    assert_routing_matches_reference,
    early_result,
    early_subprocess,
    version_in,
)

# Entry points a version is allowed to lack, with the fact (symbol or key) that says which
# versions have them.
EXPECTED_UNSUPPORTED = {"make_expert_map": "determine_expert_map", "select_mxfp4_backend": "mxfp4_enum",
                        "mxfp4_round_up": "mxfp4_round_up", "mxfp4_convert": "mxfp4_convert",
                        "moe_layer_config": "MoEActivation", "numerics": NUMERICS_KNOWN}


def since(engine, name: str) -> str:
    """The versions that have ``name``: a behaviour fact's range, else the oldest lower bound of
    the symbol's or parameter's facts."""
    keys = {f.key for f in engine.facts}
    if name in keys and engine.fact(name).kind == "behaviour":
        return engine.range(name)
    return engine.available_in(name)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_adapter_resolves(vllm_engine, entry_point):
    res = REGISTRY.resolution(entry_point, "vllm")
    if entry_point in EXPECTED_UNSUPPORTED and not version_in(vllm_engine, since(vllm_engine, EXPECTED_UNSUPPORTED[entry_point])):
        assert res.status == "unsupported", res
        assert isinstance(res.error, mc.UnsupportedFeatureError)
        assert res.error.engine == "vllm" and res.error.installed == str(vllm_engine.version())
    else:
        assert res.status == "ok", res.detail
        assert res.resolved and res.resolved.startswith("vllm"), res.resolved
    # Every fact holds for a tested release: resolving noted no drift.
    assert res.drift == (), res.drift


def _weights(scheme, opts, e=4, h=64, i=32):
    torch.manual_seed(0)
    w1 = torch.randn(e, 2 * i, h) / 8
    w2 = torch.randn(e, h, i) / 8
    return quant.quantize_moe_weights(w1, w2, scheme, **opts)


FE_CASES = [
    (None, {}), ("fp8_w8a8", {}), ("fp8_w8a8", {"block_shape": [16, 16]}),
    ("fp8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}),
    ("int8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}),
    ("int8_w8a16", {}), ("int4_w4a16", {"group_size": 16}), ("int4_w4a16", {"group_size": 16, "zero_point": True}),
]
#: The legacy flag whose fact says since when a scheme (or per-channel w8a8) can be asked for.
SCHEME_FLAG = {"int4_w4a16": "fused_experts.use_int4_w4a16", "int8_w8a8": "fused_experts.use_int8_w8a8"}
PER_CHANNEL_FLAG = "fused_experts.per_channel_quant"


def scheme_since(engine, scheme, opts) -> str | None:
    flag = PER_CHANNEL_FLAG if opts.get("per_out_ch_quant") else SCHEME_FLAG.get(scheme)
    return engine.available_in(flag) if flag else None


@pytest.mark.parametrize(("scheme", "opts"), FE_CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("use_map", [False, True])
def test_fused_experts_kwargs_bind(vllm_engine, scheme, opts, use_map):
    """The call moecompat would make binds to the installed fused_experts' signature."""
    impl = REGISTRY.impl("fused_experts", "vllm")
    w1, w2, qc = _weights(scheme, opts)
    x = torch.randn(3, 64)
    tw, ti = mc.select_experts(x, torch.randn(3, 4), 2, backend="reference")
    emap = torch.tensor([0, 1, 2, 3], dtype=torch.int32) if use_map else None
    needs = scheme_since(vllm_engine, scheme, opts)
    call = ExpertsCall(w1, w2, qc, emap, 4, mc.Activation.SILU)
    if needs and not version_in(vllm_engine, needs):
        with pytest.raises(mc.UnsupportedFeatureError) as info:
            impl(call).plan(x, w1, w2, tw, ti, False)
        assert needs in str(info.value)
        return
    runner = impl(call)
    args, kwargs, _ = runner.plan(x, w1, w2, tw, ti, False)
    bound = inspect.signature(runner.target).bind(*args, **kwargs)
    if scheme is not None and "quant_config" in bound.arguments:
        assert type(bound.arguments["quant_config"]).__name__ == "FusedMoEQuantConfig"


@pytest.mark.parametrize("activation", list(mc.Activation))
def test_activation_support_matches_facts(vllm_engine, activation):
    impl = REGISTRY.impl("fused_experts", "vllm")
    w1, w2, qc = _weights(None, {})
    x = torch.randn(3, 64)
    tw, ti = mc.select_experts(x, torch.randn(3, 4), 2, backend="reference")
    has = {mc.Activation.SILU: vllm_engine.range("fused_experts"), mc.Activation.GELU: vllm_engine.range("gelu activation"),
           mc.Activation.SWIGLUOAI: vllm_engine.range("swigluoai activation")}[activation]
    call = ExpertsCall(w1, w2, qc, None, 4, activation)
    if version_in(vllm_engine, has):
        runner = impl(call)
        args, kwargs, _ = runner.plan(x, w1, w2, tw, ti, False)
        inspect.signature(runner.target).bind(*args, **kwargs)
    else:
        with pytest.raises(mc.UnsupportedFeatureError, match=activation.value):
            impl(call)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_config_dtype_str_equals_engine(vllm_engine, dtype):
    _, own = vllm_engine.find("config_dtype_str")
    params = inspect.signature(own).parameters
    flags = [p for p in ("use_fp8_w8a8", "use_int8_w8a16", "use_int4_w4a16") if p in params]
    for values in itertools.product([False, True], repeat=len(flags)):
        kw = dict(zip(flags, values, strict=True))
        assert mc.get_config_dtype_str(dtype, backend="vllm", **kw) == own(dtype, **kw), kw
    if "ocp_mx_scheme" in params:
        assert mc.get_config_dtype_str(dtype, ocp_mx_scheme="w_mxfp4_a_mxfp4", backend="vllm") == own(
            dtype, ocp_mx_scheme="w_mxfp4_a_mxfp4")
    if vllm_engine.holds("config_dtype_str@config"):
        # moecompat's own rules (used with no engine) are current vLLM's.
        for values in itertools.product([False, True], repeat=len(flags)):
            kw = dict(zip(flags, values, strict=True))
            assert mc.get_config_dtype_str(dtype, backend="reference", **kw) == own(dtype, **kw), kw


QC_CASES = [
    ("fp8_w8a8", {}), ("fp8_w8a8", {"block_shape": [16, 16]}), ("fp8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}),
    ("int8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}), ("int8_w8a16", {}),
    ("int4_w4a16", {"group_size": 16}), ("int4_w4a16", {"group_size": 16, "zero_point": True}),
]


@pytest.mark.parametrize(("scheme", "opts"), QC_CASES, ids=lambda v: str(v))
def test_quant_config_equals_engine_factories(vllm_engine, scheme, opts):
    if not vllm_engine.holds("FusedMoEQuantConfig"):
        # No FusedMoEQuantConfig yet: moecompat passes legacy keyword flags.
        _, _, qc = _weights(scheme, opts)
        needs = scheme_since(vllm_engine, scheme, opts)
        if needs and not version_in(vllm_engine, needs):
            with pytest.raises(mc.UnsupportedFeatureError, match=re.escape(needs)):
                mc.to_engine_quant_config(qc, backend="vllm")
            return
        flags = mc.to_engine_quant_config(qc, backend="vllm")
        assert flags[f"use_{scheme}"] is True and flags["w1_scale"] is qc.w1_scale
        return
    _, _, qc = _weights(scheme, opts)
    ours = mc.to_engine_quant_config(qc, backend="vllm")
    assert type(ours) is vllm_engine.find("FusedMoEQuantConfig")[1]
    bs = [0, 16] if scheme == "int4_w4a16" else opts.get("block_shape")
    if vllm_engine.holds(f"{scheme}_moe_quant_config"):
        _, factory = vllm_engine.find(f"{scheme}_moe_quant_config")
        kw = dict(w1_scale=qc.w1_scale, w2_scale=qc.w2_scale)
        if scheme in ("int4_w4a16", "int8_w8a16"):
            kw.update(w1_zp=qc.w1_zp, w2_zp=qc.w2_zp, block_shape=bs)
        else:
            kw.update(a1_scale=None, a2_scale=None, per_act_token_quant=qc.per_act_token_quant, block_shape=bs,
                      per_out_ch_quant=qc.per_out_ch_quant)
            params = inspect.signature(factory).parameters
            kw = {k: v for k, v in kw.items() if k in params}
        theirs = factory(**kw)
    else:
        _, make = vllm_engine.find("quant_config_make")
        theirs = make(**{f"use_{scheme}": True}, per_act_token_quant=qc.per_act_token_quant,
                      per_out_ch_quant=qc.per_out_ch_quant, block_shape=bs)
    for attr in ("quant_dtype", "use_fp8_w8a8", "use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16",
                 "per_act_token_quant", "per_out_ch_quant", "block_shape", "w1_scale", "w2_scale", "w1_zp", "w2_zp"):
        if hasattr(theirs, attr):
            a, b = getattr(ours, attr), getattr(theirs, attr)
            if isinstance(a, torch.Tensor):
                assert a is b, attr
            else:
                assert a == b, attr


ROUTING_CASES = [
    dict(use_grouped_topk=True, num_expert_group=4, topk_group=2, scoring_func="sigmoid", bias=True, rsf=2.5),
    dict(use_grouped_topk=True, num_expert_group=4, topk_group=2, scoring_func="softmax", bias=False, rsf=None),
    dict(use_grouped_topk=False, scoring_func="softmax", bias=False, rsf=None),
    dict(use_grouped_topk=False, scoring_func="sigmoid", bias=True, rsf=None),
]


@pytest.mark.parametrize("case", ROUTING_CASES, ids=lambda c: f"grouped={c['use_grouped_topk']}-{c['scoring_func']}-bias={c['bias']}")
@pytest.mark.parametrize("renormalize", [True, False])
def test_cpu_routing_agrees_with_reference(vllm_engine, case, renormalize):
    """vLLM's routing code that runs on CPU tensors agrees with the reference backend."""
    if case["bias"] and not vllm_engine.holds(DEEPSEEK_BIAS):
        # Before it (vLLM 0.6) moecompat refuses instead of differing.
        with pytest.raises(mc.UnsupportedFeatureError, match="DeepSeek-V3"):
            mc.select_experts(torch.zeros(4, 8), torch.randn(4, 16), 3, backend="vllm", e_score_correction_bias=torch.zeros(16),
                              **{k: v for k, v in case.items() if k not in ("bias", "rsf")})
        return
    assert_routing_matches_reference("vllm", case, renormalize, seed=1)


@pytest.mark.parametrize("placement", ["linear", "round_robin"])
@pytest.mark.parametrize(("ep_size", "experts"), [(1, 8), (2, 8), (3, 8), (4, 10)])
def test_expert_map_equals_engine(vllm_engine, placement, ep_size, experts):
    needs = vllm_engine.available_in("determine_expert_map")
    if not version_in(vllm_engine, needs):
        with pytest.raises(mc.UnsupportedFeatureError, match=re.escape(needs)):
            mc.make_expert_map(ep_size, 0, experts, placement, backend="vllm")
        return
    _, determine_expert_map = vllm_engine.find("determine_expert_map")
    has_strategy = "expert_placement_strategy" in inspect.signature(determine_expert_map).parameters
    for rank in range(ep_size):
        if placement != "linear" and not has_strategy:
            with pytest.raises(mc.UnsupportedFeatureError, match="round_robin"):
                mc.make_expert_map(ep_size, rank, experts, placement, backend="vllm")
            continue
        n, m = mc.make_expert_map(ep_size, rank, experts, placement, backend="vllm")
        out = determine_expert_map(ep_size, rank, experts, **({"expert_placement_strategy": placement} if has_strategy else {}))
        assert n == out[0]
        if out[1] is not None:
            assert torch.equal(m, out[1])
        if not vllm_engine.holds(REMAINDER_TO_LAST_RANK):
            rn, rm = mc.make_expert_map(ep_size, rank, experts, placement, backend="reference")
            assert rn == n and torch.equal(rm, m)


def test_doctor_reports_vllm(vllm_engine):
    from moecompat.info import doctor_report

    rep = doctor_report()
    assert rep["engines"]["vllm"] == str(vllm_engine.version())
    assert rep["entry_points"]["fused_experts"]["vllm"]["status"] == "ok"
    assert rep["drift"] == {}


@early_subprocess(lambda: (DOCTOR_JSON, None))
def test_doctor_json_is_one_json_document(request, vllm_engine):
    """vLLM logs to stdout while it imports; ``doctor --json`` keeps stdout to one JSON document."""
    rep = assert_doctor_json_parses(request)
    assert rep["engines"]["vllm"] == str(vllm_engine.version())


@pytest.mark.parametrize("module,cls,expected", [
    ("vllm.model_executor.layers.fused_moe.fused_moe", "TritonExperts", True),
    ("vllm.model_executor.layers.fused_moe.cutlass_moe", "CutlassExpertsFp8", None),
    ("vllm.model_executor.layers.fused_moe.experts.cutlass_moe", "CutlassExpertsFp8", False),
    ("vllm.model_executor.layers.fused_moe.fused_batched_moe", "BatchedTritonExperts", False),
])
def test_supports_expert_map_same_before_and_after_pr_43108(vllm_engine, module, cls, expected):
    import importlib

    from moecompat.ep import supports_expert_map

    try:
        klass = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        pytest.skip(f"{module}.{cls} is not in vllm {vllm_engine.version()} or needs CUDA libraries to import")
    own = klass.__dict__.get("supports_expert_map")
    if own is not None and vllm_engine.has_symbol("supports_expert_map"):
        try:
            expected = own(None)  # the engine's own answer, where it still had the method
        except AttributeError:
            pytest.skip(f"{cls}.supports_expert_map reads instance state in vllm {vllm_engine.version()}: "
                        "no class-level answer to compare with")
    assert expected is not None
    assert supports_expert_map(klass) is expected


@pytest.mark.parametrize("backend", ["triton", "marlin", "flashinfer_trtllm_bf16", "flashinfer_cutlass_bf16", "deepgemm"])
def test_mxfp4_round_up_equals_engine_oracle(vllm_engine, backend):
    """moecompat's documented round-up rules equal vLLM's oracle where it has one (>= 0.19)."""
    from moecompat import mxfp4

    if not vllm_engine.holds("mxfp4_round_up"):
        with pytest.raises(mc.UnsupportedFeatureError):
            mxfp4.round_up_hidden_and_intermediate(backend, 2880, 2880, engine="vllm")
        return
    try:
        got = mxfp4.round_up_hidden_and_intermediate(backend, 2880, 2880, engine="vllm")
    except mc.UnsupportedFeatureError:
        pytest.skip(f"{backend} is not a member of this vLLM's Mxfp4MoeBackend")
    expected = mxfp4.reference_round_up(backend, 2880, 2880)
    if backend.startswith("flashinfer_trtllm") and vllm_engine.holds(TRTLLM_MXFP4_PADS_256):
        expected = (expected[0], 3072)
    assert got == expected


def test_engine_moe_config_from_neutral_spec(vllm_engine):
    """``engine_moe_config`` builds the installed vLLM's own ``FusedMoEConfig`` (whose required
    fields changed at 0.24) from moecompat's neutral layer description."""
    from moecompat import mxfp4

    spec = mxfp4.MoELayerSpec(num_experts=32, top_k=2, hidden_size=256, intermediate_size=128,
                              dtype=torch.float16, activation="silu", has_bias=False)
    if not vllm_engine.holds("MoEActivation"):
        with pytest.raises(mc.UnsupportedFeatureError):
            mxfp4.engine_moe_config(spec, engine="vllm")
        return
    _, FusedMoEConfig = vllm_engine.find("FusedMoEConfig")

    cfg = mxfp4.engine_moe_config(spec, engine="vllm", device="cpu")
    assert type(cfg) is FusedMoEConfig
    assert (cfg.num_experts, cfg.experts_per_token, cfg.hidden_dim, cfg.intermediate_size_per_partition,
            cfg.num_local_experts) == (32, 2, 256, 128, 32)
    assert cfg.in_dtype is torch.float16 and cfg.activation.value == "silu" and cfg.has_bias is False
    assert cfg.moe_parallel_config.ep_size == 1 and cfg.is_lora_enabled is False
    assert mxfp4.engine_moe_config(spec, engine="vllm", device="cpu", with_lora_support=True).is_lora_enabled is True
    gpt_oss = mxfp4.engine_moe_config(engine="vllm", device="cpu")
    assert (gpt_oss.num_experts, gpt_oss.hidden_dim, gpt_oss.activation.value, gpt_oss.has_bias) == (128, 2880, "swigluoai", True)


def test_select_mxfp4_backend_without_a_device(vllm_engine):
    """On this GPU-less host vLLM detects no platform: every version answers NONE (0.10-0.18
    through ``get_mxfp4_backend``; >= 0.19 without calling the oracle, which cannot run there)."""
    from moecompat import mxfp4

    if not version_in(vllm_engine, vllm_engine.available_in("mxfp4_enum")):
        with pytest.raises(mc.UnsupportedFeatureError):
            mxfp4.select_mxfp4_backend(backend="vllm")
        return
    assert mxfp4.select_mxfp4_backend(backend="vllm") is mxfp4.Mxfp4Backend.NONE
    assert mxfp4.select_mxfp4_backend(backend="vllm", with_lora_support=True) is mxfp4.Mxfp4Backend.NONE


def test_mxfp4_marlin_env_fact(vllm_engine):
    """Fact MXFP4_MARLIN_ENV, pinned on the installed release: vllm.envs knows
    VLLM_MXFP4_USE_MARLIN exactly where the fact says (gone at 0.24, found on an H100)."""
    import vllm.envs

    from moecompat.engines.vllm import MXFP4_MARLIN_ENV

    fact = vllm_engine.fact(MXFP4_MARLIN_ENV)
    assert ("VLLM_MXFP4_USE_MARLIN" in vllm.envs.environment_variables) == version_in(vllm_engine, fact.versions)


_ORACLE_ON_CPU = """
import json, logging
from moecompat import mxfp4
from vllm.platforms import current_platform
records = []
handler = logging.Handler()
handler.emit = records.append
log = logging.getLogger("moecompat")
log.addHandler(handler)
log.setLevel(logging.INFO)
out = {"platform": type(current_platform).__name__, "is_cpu": current_platform.is_cpu()}
try:  # vLLM's own CPU MXFP4 kernel (0.28+): x86 with AMX tiles only
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUExpertsMxfp4
    out["cpu_kernel"] = bool(CPUExpertsMxfp4._supports_current_device())
except ImportError:
    out["cpu_kernel"] = False
if out["is_cpu"]:
    out["default"] = mxfp4.select_mxfp4_backend(backend="vllm").value
    own = mxfp4.engine_moe_config(mxfp4.GPT_OSS_20B, engine="vllm", device="cpu")
    out["own_config"] = mxfp4.select_mxfp4_backend(backend="vllm", moe_config=own).value
    out["logged"] = [r.getMessage() for r in records]
print("RESULT " + json.dumps(out))
"""


def _oracle_on_cpu():
    import os

    from moecompat.engines import ENGINES

    if not ENGINES["vllm"].holds("select_mxfp4_moe_backend"):  # also False without vLLM
        return None
    return [sys.executable, "-c", _ORACLE_ON_CPU], {**os.environ, "VLLM_TARGET_DEVICE": "cpu"}


@early_subprocess(_oracle_on_cpu)
def test_select_mxfp4_backend_runs_the_oracle_on_the_cpu_platform(request, vllm_engine):
    """With ``VLLM_TARGET_DEVICE=cpu`` (where the release honours it) vLLM runs on its CPU
    platform, so the real oracle is called, inside the gpt-oss deployment config moecompat builds
    (and with a caller's own ``moe_config``). Where vLLM's CPU MXFP4 kernel supports this host
    (0.28+, x86 with AMX tiles, as that kernel class itself says) the answer is CPU; elsewhere the
    oracle refuses (NotImplementedError, or from 0.28 a ValueError naming the CPU backend) and the
    answer is NONE, with the oracle's reasons in the ``moecompat`` log."""
    import json

    if not vllm_engine.holds("select_mxfp4_moe_backend"):
        pytest.skip(f"no oracle (fact select_mxfp4_moe_backend: vllm{vllm_engine.range('select_mxfp4_moe_backend')}); "
                    "get_mxfp4_backend is covered above")
    proc = early_result(request)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    if not out["is_cpu"]:
        pytest.skip(f"vllm {vllm_engine.version()} ignores VLLM_TARGET_DEVICE=cpu here ({out['platform']})")
    if out["cpu_kernel"]:
        assert (out["default"], out["own_config"]) == ("cpu", "cpu"), out
        assert not any("deployment configuration" in m for m in out["logged"]), out["logged"]
    else:
        assert (out["default"], out["own_config"]) == ("none", "none"), out
        assert len(out["logged"]) == 2 and all("deployment configuration" in m for m in out["logged"]), out["logged"]


def _call_with(fn, **values):
    """Call ``fn`` with the subset of ``values`` its signature names (engine signatures drift)."""
    params = inspect.signature(fn).parameters
    return fn(**{k: v for k, v in values.items() if k in params})


def test_tracker_records_engine_routing(vllm_engine):
    """``record_engine`` counts what vLLM's own routing returns, called the way its MoE layers
    call it (module/class attribute looked up at call time), and restores the engine afterwards."""
    import importlib

    from moecompat.tracker import engine_hook_targets

    targets = engine_hook_targets("vllm")
    assert targets, "no vLLM routing function to hook"
    before = [(o, a, (o.__dict__ if isinstance(o, type) else vars(o))[a]) for o, a in targets]
    g = torch.Generator().manual_seed(3)
    x, logits = torch.zeros(11, 8), torch.randn(11, 16, generator=g)
    values = dict(hidden_states=x, router_logits=logits, top_k=3, use_grouped_topk=True, renormalize=True,
                  topk_group=2, num_expert_group=4, scoring_func="softmax", custom_routing_function=None,
                  e_score_correction_bias=None, routed_scaling_factor=1.0)
    calls = []
    layer_mod = importlib.import_module("vllm.model_executor.layers.fused_moe.layer")
    fused_moe_cls = getattr(layer_mod, "FusedMoE", None)  # >= 0.27: built by FusedMoEFactory elsewhere
    if fused_moe_cls is not None and isinstance(fused_moe_cls.__dict__.get("select_experts"), staticmethod):
        calls.append(lambda: _call_with(fused_moe_cls.select_experts, **values))
    for loc in ("router.cpu_router", "experts.cpu_moe", "cpu_fused_moe"):
        try:
            mod = importlib.import_module(f"vllm.model_executor.layers.fused_moe.{loc}")
        except ImportError:
            continue
        if hasattr(mod, "select_experts"):
            calls.append(lambda mod=mod: _call_with(mod.select_experts, **values))
            break
    assert calls, "this vLLM has neither a static FusedMoE.select_experts nor a CPU select_experts"
    tracker = mc.ExpertActivationTracker(num_layers=len(calls), num_experts=16)
    outs = []
    with tracker.record_engine("vllm"):
        for call in calls:
            outs.append(call())
    for layer, out in enumerate(outs):
        ids = out[1]
        assert torch.equal(tracker.layer_counts(layer), torch.bincount(ids.reshape(-1).long(), minlength=16))
    after = [(o, a, (o.__dict__ if isinstance(o, type) else vars(o))[a]) for o, a in targets]
    assert all(b[2] is a[2] for b, a in zip(before, after, strict=True))


def test_int4_numerics_facts_match_the_release_source(vllm_engine):
    """Facts WNA16_WEIGHTS_ROUNDED and WNA16_CUDA_KERNEL, pinned on the installed release's own
    fused_moe.py: the Triton int4 kernel rounds ``(q - zp) * s`` to the compute dtype, and the
    CUDA wna16 path is chosen by ``should_moe_wna16_use_cuda`` and sized by
    ``get_moe_wna16_block_config`` with the arguments moecompat's numerics pass it."""
    import importlib

    from moecompat.engines.vllm import FMM, WNA16_CUDA_KERNEL, WNA16_WEIGHTS_ROUNDED

    src = inspect.getsource(importlib.import_module(FMM))
    if not (vllm_engine.holds(WNA16_WEIGHTS_ROUNDED) or vllm_engine.holds(WNA16_CUDA_KERNEL)):
        pytest.skip(f"vLLM {vllm_engine.version_str()}: outside both facts' ranges (read from 0.11.2 and 0.26.0)")
    if vllm_engine.holds(WNA16_WEIGHTS_ROUNDED):
        assert "* b_scale).to(compute_type)" in src, vllm_engine.version_str()
    if vllm_engine.holds(WNA16_CUDA_KERNEL):
        for needle in ("should_moe_wna16_use_cuda(", "num_experts=B.size(1)", "size_k=A.size(1)", "size_n=B.size(1)",
                       "moe_wna16_gemm("):
            assert needle in src, (needle, vllm_engine.version_str())
