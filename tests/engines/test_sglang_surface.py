"""moecompat's SGLang adapters against the real installed SGLang (CPU)."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch

import moecompat as mc
from moecompat import quant
from moecompat._adapters import REGISTRY
from moecompat._backends import ENTRY_POINTS
from moecompat._calls import ExpertsCall
from moecompat.engines.sglang import NUMERICS_KNOWN
from tests.engines.conftest import (
    DOCTOR_JSON,
    assert_doctor_json_parses,
    assert_routing_matches_reference,
    early_subprocess,
    version_in,
)

# SGLang has no public expert-map builder and no MXFP4 oracle in its Triton path.
UNSUPPORTED = {"make_expert_map", "select_mxfp4_backend", "mxfp4_round_up", "mxfp4_convert", "moe_layer_config",
               "default_config"}
CUDA_ONLY = {"get_moe_configs"}  # reads the CUDA device name


def _sgl_kernel_state() -> str:
    """'loads', 'not installed' or 'does not load' (installed, e.g. by `sglang[srt]`, but its
    common_ops needs the NVIDIA driver's libcuda.so.1): what sgl-kernel does here."""
    import importlib
    import importlib.util

    if importlib.util.find_spec("sgl_kernel") is None:
        return "not installed"
    try:
        importlib.import_module("sgl_kernel")
    except Exception:
        return "does not load"
    return "loads"


def _ep_layer_needs_missing_sgl_kernel(engine) -> bool:
    """Fact EP_LAYER_NEEDS_SGL_KERNEL holds and sgl-kernel (CUDA only) does not load here."""
    from moecompat.engines.sglang import EP_LAYER_NEEDS_SGL_KERNEL

    return version_in(engine, engine.fact(EP_LAYER_NEEDS_SGL_KERNEL).versions) and _sgl_kernel_state() != "loads"


def _unsupported_ep_layer_reason() -> str:
    """What the UnsupportedFeatureError of ep_moe_layer_class says about sgl-kernel here."""
    state = _sgl_kernel_state()
    return "sgl_kernel is not installed" if state == "not installed" else "sgl_kernel is installed but does not load"


def cpu_imports_sgl_kernel(source: str) -> bool:
    """Whether a module's source imports sgl_kernel at module level on CPU: a top-level import
    not inside a ``try`` and not under an ``if`` that is false on CPU (every ``_is_*``/``_use_*``
    platform flag false); an ``if`` that does not evaluate that way does not count."""
    import ast

    def flags(expr: ast.expr) -> dict[str, bool]:
        return {n.id: False for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id.startswith(("_is_", "_use_"))}

    def reached(stmts: list[ast.stmt]) -> bool:
        for st in stmts:
            if isinstance(st, ast.Import) and any(a.name.split(".")[0] == "sgl_kernel" for a in st.names):
                return True
            if isinstance(st, ast.ImportFrom) and (st.module or "").split(".")[0] == "sgl_kernel":
                return True
            if isinstance(st, ast.If):
                try:
                    taken = bool(eval(compile(ast.Expression(st.test), "<if>", "eval"), {"__builtins__": {}}, flags(st.test)))
                except Exception:
                    continue
                if reached(st.body if taken else st.orelse):
                    return True
        return False

    return reached(ast.parse(source).body)


def test_ep_layer_imports_sgl_kernel_on_cpu_as_the_fact_says(sglang_engine):
    """Fact EP_LAYER_NEEDS_SGL_KERNEL, pinned on the installed release's own ep_moe/layer.py
    (read, not imported: importing it is what fails where the fact holds)."""
    import importlib.util
    import pathlib

    from moecompat.engines.sglang import EP_LAYER_NEEDS_SGL_KERNEL

    root = pathlib.Path(importlib.util.find_spec("sglang").submodule_search_locations[0])
    layer = root / "srt/layers/moe/ep_moe/layer.py"
    imports = layer.exists() and cpu_imports_sgl_kernel(layer.read_text())
    assert imports == version_in(sglang_engine, sglang_engine.fact(EP_LAYER_NEEDS_SGL_KERNEL).versions), layer


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_adapter_resolves(sglang_engine, entry_point):
    res = REGISTRY.resolution(entry_point, "sglang")
    if entry_point == "ep_moe_layer_class" and _ep_layer_needs_missing_sgl_kernel(sglang_engine):
        assert res.status == "unsupported" and _unsupported_ep_layer_reason() in str(res.error), res
    elif entry_point in UNSUPPORTED or (
        entry_point == "numerics" and not version_in(sglang_engine, sglang_engine.fact(NUMERICS_KNOWN).versions)
    ):
        assert res.status == "unsupported" and isinstance(res.error, mc.UnsupportedFeatureError), res
    else:
        assert res.status == "ok", res.detail
        assert res.resolved and res.resolved.startswith("sglang"), res.resolved
    assert res.drift == (), res.drift


def _weights(scheme, opts, e=4, h=64, i=32):
    torch.manual_seed(0)
    return quant.quantize_moe_weights(torch.randn(e, 2 * i, h) / 8, torch.randn(e, h, i) / 8, scheme, **opts)


CASES = [(None, {}), ("fp8_w8a8", {}), ("fp8_w8a8", {"block_shape": [16, 16]}),
         ("int8_w8a8", {"per_out_ch_quant": True, "per_act_token_quant": True}), ("int8_w8a16", {}),
         ("int4_w4a16", {"group_size": 16, "zero_point": True})]


@pytest.mark.parametrize(("scheme", "opts"), CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("activation", ["silu", "gelu", "swigluoai"])
def test_fused_experts_call_binds(sglang_engine, scheme, opts, activation):
    impl = REGISTRY.impl("fused_experts", "sglang")
    w1, w2, qc = _weights(scheme, opts)
    x = torch.randn(3, 64)
    tw, ti = mc.select_experts(x, torch.randn(3, 4), 2, backend="reference")
    act = mc.Activation(activation)
    emap = torch.tensor([0, 1, -1, 2], dtype=torch.int32)
    if act is mc.Activation.SWIGLUOAI and not version_in(sglang_engine, sglang_engine.available_in("MoeRunnerConfig.gemm1_alpha")):
        with pytest.raises(mc.UnsupportedFeatureError, match="swigluoai"):
            impl(ExpertsCall(w1, w2, qc, None, 4, act))
        return
    runner = impl(ExpertsCall(w1, w2, qc, emap, 4, act))
    args, kwargs, _ = runner.plan(x, w1, w2, tw, ti, False)
    inspect.signature(runner.target).bind(*args, **kwargs)
    if scheme is not None:
        assert kwargs[f"use_{scheme}"] is True


def test_outplace_fused_experts_avoids_the_tp_group_where_the_engine_needs_one(sglang_engine):
    """Fact OUTPLACE_NEEDS_TP_GROUP, pinned on the installed release's own source: where the
    out-of-place path reads the TP group (get_tp_group(); get_parallel().tp_group from 0.5.21, which
    raises outside a server until a rank bundle is published), moecompat runs SGLang's in-place op on a copy of the
    input (the caller's tensor is untouched); elsewhere it calls the out-of-place path."""
    import importlib

    from moecompat.engines.sglang import OUTPLACE_NEEDS_TP_GROUP

    fact = sglang_engine.fact(OUTPLACE_NEEDS_TP_GROUP)
    try:
        source = inspect.getsource(importlib.import_module(fact.where))
        calls_tp_group = "get_tp_group()" in source or "get_parallel().tp_group" in source
    except ImportError:  # the moe_runner layout is 0.5.11+
        calls_tp_group = False
    assert calls_tp_group == version_in(sglang_engine, fact.versions)
    impl = REGISTRY.impl("fused_experts", "sglang")
    w1, w2, qc = _weights(None, {})
    runner = impl(ExpertsCall(w1, w2, qc, None, 4, mc.Activation.SILU))
    if "moe_runner_config" not in inspect.signature(runner.target).parameters:
        assert not calls_tp_group
        return
    x = torch.randn(3, 64)
    tw, ti = mc.select_experts(x, torch.randn(3, 4), 2, backend="reference")
    args, _, copy_back = runner.plan(x, w1, w2, tw, ti, False)
    assert args[-1].inplace is calls_tp_group and copy_back is False
    assert (args[0] is not x and torch.equal(args[0], x)) if calls_tp_group else args[0] is x
    args, _, copy_back = runner.plan(x, w1, w2, tw, ti, True)
    assert args[0] is x and args[-1].inplace is True and copy_back is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_config_dtype_str_equals_engine(sglang_engine, dtype):
    impl = REGISTRY.resolution("get_config_dtype_str", "sglang")
    module = impl.resolved.split(":")[0]
    own = __import__(module, fromlist=["x"]).get_config_dtype_str
    for fp8, i8, i4 in itertools.product([False, True], repeat=3):
        assert mc.get_config_dtype_str(dtype, use_fp8_w8a8=fp8, use_int8_w8a16=i8, use_int4_w4a16=i4, backend="sglang") == own(
            dtype, use_fp8_w8a8=fp8, use_int8_w8a16=i8, use_int4_w4a16=i4)


ROUTING = [
    dict(use_grouped_topk=True, num_expert_group=4, topk_group=2, scoring_func="sigmoid", bias=True, rsf=2.5),
    dict(use_grouped_topk=True, num_expert_group=4, topk_group=2, scoring_func="softmax", bias=False, rsf=None),
    dict(use_grouped_topk=False, scoring_func="softmax", bias=False, rsf=None),
    dict(use_grouped_topk=False, scoring_func="sigmoid", bias=True, rsf=1.5),
]


@pytest.mark.parametrize("case", ROUTING, ids=lambda c: f"grouped={c['use_grouped_topk']}-{c['scoring_func']}-bias={c['bias']}")
@pytest.mark.parametrize("renormalize", [True, False])
def test_cpu_routing_agrees_with_reference(sglang_engine, case, renormalize):
    """SGLang's torch-native top-k paths (what it runs on CPU) agree with the reference."""
    assert_routing_matches_reference("sglang", case, renormalize, seed=2)


def test_sigmoid_without_bias_follows_facts(sglang_engine):
    x, logits = torch.zeros(4, 8), torch.randn(4, 16)
    if sglang_engine.holds("TopKConfig.scoring_func"):
        mc.select_experts(x, logits, 2, scoring_func="sigmoid", backend="sglang")
    else:
        with pytest.raises(mc.UnsupportedFeatureError, match="sigmoid"):
            mc.select_experts(x, logits, 2, scoring_func="sigmoid", backend="sglang")


def test_global_server_args_fact_matches_the_release(sglang_engine):
    """Fact GLOBAL_SERVER_ARGS_RETIRED: where it holds, the accessor raises SGLang's 'retired'
    RuntimeError; before, it answers (or says nothing is set yet, a ValueError)."""
    from moecompat.engines.sglang import GLOBAL_SERVER_ARGS_RETIRED

    if not sglang_engine.holds("get_global_server_args"):
        pytest.skip("this release has no get_global_server_args (fact get_global_server_args)")
    _, getter = sglang_engine.find("get_global_server_args")
    if sglang_engine.holds(GLOBAL_SERVER_ARGS_RETIRED):
        with pytest.raises(RuntimeError, match="retired"):
            getter()
    else:
        try:
            getter()
        except ValueError:
            pass


def test_server_args_resolution_fact_matches_the_release(sglang_engine):
    """Fact SERVER_ARGS_RESOLVED_ON_PUBLISH, read from the release's own source: where it holds,
    the scheduler setter publishes through a runtime context that resolves the arguments
    (``publish`` itself in 0.5.19-0.5.21, a helper it calls from 0.5.22)."""
    import importlib
    import inspect

    from moecompat.engines.sglang import SERVER_ARGS_RESOLVED_ON_PUBLISH

    if not sglang_engine.holds("set_global_server_args_for_scheduler"):
        pytest.skip("this release has no set_global_server_args_for_scheduler (fact of that name)")
    _, setter = sglang_engine.find("set_global_server_args_for_scheduler")
    resolves = False
    if "publish(" in inspect.getsource(setter):
        runtime_context = importlib.import_module(setter.__module__.rsplit(".", 1)[0] + ".runtime_context")
        resolves = "resolve_once()" in inspect.getsource(runtime_context)
    assert resolves == sglang_engine.holds(SERVER_ARGS_RESOLVED_ON_PUBLISH)


def test_server_args_are_published_where_the_accessor_is_retired(sglang_engine):
    """Facts GLOBAL_SERVER_ARGS_RETIRED and SERVER_ARGS_MODEL_PATH_FIRST: from 0.5.20 SGLang's
    kernels read the runtime context (``get_exec()``), so moecompat publishes default arguments
    there when nothing is published; ``ServerArgs("dummy")`` names the model first and resolves
    nothing itself. The GPU suite found the need: 127 of 135 cases raised "config namespace 'exec'
    not published" on 0.5.20 and 0.5.21 before."""
    import inspect

    from moecompat.engines.sglang import (
        GLOBAL_SERVER_ARGS_RETIRED,
        SERVER_ARGS_MODEL_PATH_FIRST,
        _ensure_server_args,
    )

    _, cls = sglang_engine.find("ServerArgs")
    first = next(iter(inspect.signature(cls).parameters))
    if sglang_engine.holds(SERVER_ARGS_MODEL_PATH_FIRST):
        assert first == "model_path"
    if not sglang_engine.holds(GLOBAL_SERVER_ARGS_RETIRED):
        return
    assert sglang_engine.holds(SERVER_ARGS_MODEL_PATH_FIRST)
    args = cls("dummy")
    assert args.model_path == "dummy" and not getattr(args, "_resolution_finished", False)
    _, get_context = sglang_engine.find("get_context")
    _ensure_server_args()
    assert get_context().is_config_namespace_published("exec")
    exec_bag = get_context().config_bag("exec")
    assert exec_bag.deterministic.enable_deterministic_inference is False  # what get_moe_configs reads
    _ensure_server_args()  # published once: a second call leaves the context alone
    assert get_context().config_bag("exec") is exec_bag


def test_seed_0_4_7_calls_have_equivalents(sglang_engine):
    """The seed's SGLang 0.4.7 usage — select_experts(use_grouped_topk, renormalize, correction_bias)
    returning 2-D weights/ids — through moecompat on whatever SGLang is installed."""
    g = torch.Generator().manual_seed(3)
    hs, logits, bias = torch.randn(5, 8), torch.randn(5, 16, generator=g), torch.randn(16, generator=g) * 0.1
    w, ids = mc.select_experts(hs, logits, 4, use_grouped_topk=True, renormalize=True, topk_group=2, num_expert_group=4,
                               scoring_func="sigmoid", e_score_correction_bias=bias, backend="sglang")
    assert w.shape == ids.shape == (5, 4)


def test_ep_layer_factory_answers_the_seeds_epmoe(sglang_engine):
    from moecompat.ep import ep_moe_layer_class

    if _ep_layer_needs_missing_sgl_kernel(sglang_engine):
        with pytest.raises(mc.UnsupportedFeatureError, match="sgl_kernel"):
            ep_moe_layer_class(None, backend="sglang")
        return
    cls = ep_moe_layer_class(None, backend="sglang")
    assert isinstance(cls, type)
    if sglang_engine.holds("EPMoE"):
        assert cls.__name__ in ("EPMoE", "DeepEPMoE", "FusedMoE")
    else:
        assert cls.__name__ != "EPMoE"


@early_subprocess(lambda: (DOCTOR_JSON, None))
def test_doctor_json_is_one_json_document(request, sglang_engine):
    rep = assert_doctor_json_parses(request)
    assert rep["engines"]["sglang"] == str(sglang_engine.version())
    assert rep["drift"] == {}


def test_tracker_records_engine_routing(sglang_engine):
    """``record_engine`` counts what SGLang's own ``topk.select_experts`` returns, looked up the
    way its ``TopK`` layer looks it up, and restores the module afterwards."""
    import importlib

    topk_mod = importlib.import_module("sglang.srt.layers.moe.topk")
    original = topk_mod.select_experts
    g = torch.Generator().manual_seed(4)
    x, logits = torch.zeros(11, 8), torch.randn(11, 16, generator=g)
    grouped = dict(top_k=3, use_grouped_topk=True, renormalize=True, topk_group=2, num_expert_group=4, torch_native=True)
    tracker = mc.ExpertActivationTracker(num_layers=2, num_experts=16)
    with tracker.record_engine("sglang"):
        if hasattr(topk_mod, "TopKConfig"):
            out = topk_mod.select_experts(hidden_states=x, router_logits=logits, topk_config=topk_mod.TopKConfig(**grouped))
            ids = out.topk_ids
        else:
            ids = topk_mod.select_experts(hidden_states=x, router_logits=logits, **grouped)[1]
    assert topk_mod.select_experts is original
    assert torch.equal(tracker.layer_counts(0), torch.bincount(ids.reshape(-1).long(), minlength=16))
    assert tracker.layer_counts(1).sum() == 0
