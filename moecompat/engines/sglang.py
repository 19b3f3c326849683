"""SGLang backend: the version facts (one keyed table) and the adapters built from them.

Paths are under ``sglang.srt.layers.moe``. Every fact names the versions it holds for and is
checked against the API snapshot of every release (``tests/unit/test_surface_facts.py``) and
against the installed release (``tests/engines``). Adapters probe; facts explain and pin.

Semantics moecompat keeps fixed across SGLang versions:

* ``routed_scaling_factor`` multiplies the returned top-k weights. SGLang applies it in the
  expert kernel's output (or not at all); moecompat never passes it to SGLang and scales the
  weights itself.
* ``expert_map``: SGLang's Triton ``fused_experts`` has no expert map; moecompat maps global ids
  to local ones and gives slots of experts on other ranks weight zero (the result is exact; the
  kernel still computes those slots on local expert 0).
* ``swigluoai``: SGLang's gpt-oss activation (``MoeRunnerConfig(gemm1_alpha=1.702,
  gemm1_clamp_limit=7.0)``, interleaved gate/up rows) — the same formula.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from typing import Any

import torch

from .._adapters import Fact, Resolution
from .._calls import ExpertsCall, RoutingCall
from ..quant import ActivationQuantRules, QuantConfig
from ..reference.numerics import Numerics, TritonCall, sm90_fp8_accumulation
from ..vocab import SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT, Activation, QuantScheme, ScoringFunc, TopK
from ._specs import ENGINE_SPECS
from ._triton import KernelCall, KernelRunner, restoring_override
from .base import Engine

MOE = "sglang.srt.layers.moe"
TOPK = f"{MOE}.topk"
OLD_FM = f"{MOE}.fused_moe_triton.fused_moe"
NEW_FM = f"{MOE}.moe_runner.triton_utils.fused_moe"
OLD_CFG = f"{MOE}.fused_moe_triton.fused_moe_triton_config"
NEW_CFG = f"{MOE}.moe_runner.triton_utils.fused_moe_triton_config"
RUNNER = f"{MOE}.moe_runner.base:MoeRunnerConfig"
EP = f"{MOE}.ep_moe.layer"
SERVER_ARGS = "sglang.srt.server_args"
RUNTIME_CONTEXT = "sglang.srt.runtime_context"

EP_LAYER_NEEDS_SGL_KERNEL = "ep_moe/layer.py imports sgl_kernel at module level on every platform but NPU/HIP"
OUTPLACE_NEEDS_TP_GROUP = ("out-of-place Triton fused_experts allocates its output with the TP group (get_tp_group(); "
                           "get_parallel().tp_group from 0.5.21)")
GLOBAL_SERVER_ARGS_RETIRED = ("get_global_server_args() raises 'retired': the values live in SGLang's runtime "
                              "context, which the Triton path reads (get_exec()) once ServerArgs are published there")
SERVER_ARGS_RESOLVED_ON_PUBLISH = ("set_global_server_args_for_scheduler resolves the arguments it publishes "
                                   "(runtime_context.publish -> ServerArgs.resolve_once), which needs a model path "
                                   "or the 'dummy' model")
SERVER_ARGS_MODEL_PATH_FIRST = ("ServerArgs(...) takes model_path first and resolves nothing (fields assembled from "
                                "arg_groups in POSITIONAL_FIELD_ORDER; resolution is publish's act)")
SIGMOID_NEEDS_BIAS = "sigmoid scoring only with a correction bias (biased_grouped_topk)"
WNA16_WEIGHTS_ROUNDED = "int4 w4a16 kernels round the dequantized weights ((q - zp) * s) to the compute dtype"
NUMERICS_KNOWN = ("Triton fused_experts numerics: block fp8 x*fl(448/amax) (no UE8M0), per-tensor and per-token "
                  "fp8 x*fl(1/s) without floors, int8 per-token x*fl(127/amax) rounded half away, intermediates in "
                  "the compute dtype (fp16 for fp32 activations), act_and_mul rounded once")

_QUANT_KWARGS = ("use_fp8_w8a8", "use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16", "per_channel_quant",
                 "w1_scale", "w2_scale", "w1_zp", "w2_zp", "a1_scale", "a2_scale", "block_shape")
_FLAT_TOPK = ("top_k", "use_grouped_topk", "renormalize", "topk_group", "num_expert_group", "correction_bias",
              "custom_routing_function", "torch_native")


def _params(symbol: str, where: str, versions: str, *names: str, place: str = "") -> tuple[Fact, ...]:
    suffix = f"@{place}" if place else ""
    return tuple(Fact(f"{symbol}.{n}{suffix}", versions, where, "param", n) for n in names)


FACTS: tuple[Fact, ...] = (
    # routing ----------------------------------------------------------------------------------
    Fact("select_experts", ">=0.4.7", f"{TOPK}:select_experts"),
    Fact("select_experts.top_k", "<0.5", f"{TOPK}:select_experts", "param", "top_k",
         what="select_experts(top_k, use_grouped_topk, ..., correction_bias, torch_native) -> (weights, ids)"),
    *_params("select_experts", f"{TOPK}:select_experts", ">=0.4.7", "hidden_states", "router_logits"),
    *_params("select_experts", f"{TOPK}:select_experts", "<0.5", *_FLAT_TOPK[1:]),
    *_params("select_experts", f"{TOPK}:select_experts", "<0.5", "routed_scaling_factor"),
    Fact("select_experts.topk_config", ">=0.5", f"{TOPK}:select_experts", "param", "topk_config",
         what="select_experts(topk_config) with TopKConfig"),
    Fact("TopKConfig", ">=0.5", f"{TOPK}:TopKConfig"),
    *_params("TopKConfig", f"{TOPK}:TopKConfig", ">=0.5", *_FLAT_TOPK, "routed_scaling_factor"),
    Fact("TopKConfig.scoring_func", ">=0.5.6", f"{TOPK}:TopKConfig", "param", "scoring_func",
         what="TopKConfig.scoring_func (sigmoid without a bias)"),
    Fact(SIGMOID_NEEDS_BIAS, "<0.5.6", kind="behaviour"),
    # The (topk_weights, topk_ids, router_logits) NamedTuple fused_experts takes: StandardTopKOutput;
    # in 0.4.9.post3/post4 it was TopKOutput itself (later a Protocol of the output kinds).
    Fact("topk_output@standard", ">=0.4.9.post5", f"{TOPK}:StandardTopKOutput", what="StandardTopKOutput"),
    Fact("topk_output@named", ">=0.4.9.post3", f"{TOPK}:TopKOutput", what="TopKOutput (the NamedTuple before 0.4.9.post5)"),
    Fact("routing_hook", ">=0.4.7", f"{TOPK}:select_experts", what="where SGLang's TopK layer looks up its routing"),
    # fused_experts ------------------------------------------------------------------------------
    Fact("fused_experts@new", ">=0.5.11", f"{NEW_FM}:fused_experts", what="fused_experts in moe_runner/triton_utils/fused_moe.py"),
    Fact("fused_experts@old", "<0.5.11", f"{OLD_FM}:fused_experts", what="fused_experts in fused_moe_triton/fused_moe.py"),
    Fact("fused_experts.topk_ids@old", "<0.4.9.post3", f"{OLD_FM}:fused_experts", "param", "topk_ids",
         what="fused_experts(topk_weights, topk_ids, ...) with use_* flags"),
    Fact("fused_experts.topk_output@old", ">=0.4.9.post3,<0.5.11", f"{OLD_FM}:fused_experts", "param", "topk_output",
         what="fused_experts(topk_output, ...)"),
    Fact("fused_experts.topk_output@new", ">=0.5.11", f"{NEW_FM}:fused_experts", "param", "topk_output"),
    Fact("fused_experts.moe_runner_config@old", ">=0.5,<0.5.11", f"{OLD_FM}:fused_experts", "param", "moe_runner_config",
         what="fused_experts(topk_output, moe_runner_config, ...)"),
    Fact("fused_experts.moe_runner_config@new", ">=0.5.11", f"{NEW_FM}:fused_experts", "param", "moe_runner_config"),
    *_params("fused_experts", f"{OLD_FM}:fused_experts", "<0.5", "inplace", "activation", "apply_router_weight_on_input",
             place="old"),
    *_params("fused_experts", f"{OLD_FM}:fused_experts", "<0.5.11", *_QUANT_KWARGS, place="old"),
    *_params("fused_experts", f"{NEW_FM}:fused_experts", ">=0.5.11", *_QUANT_KWARGS, place="new"),
    Fact("fused_experts.a1_q@new", ">=0.5.17", f"{NEW_FM}:fused_experts", "param", "a1_q", what="fused_experts(..., a1_q)"),
    Fact("MoeRunnerConfig", ">=0.5", RUNNER),
    *_params("MoeRunnerConfig", RUNNER, ">=0.5", "activation", "apply_router_weight_on_input", "inplace", "gemm1_alpha",
             "gemm1_clamp_limit"),
    # `with use_symmetric_memory(get_tp_group(), ...)` around the output allocation of the
    # out-of-place path: get_tp_group() asserts outside a server (no tensor-parallel group), so
    # every out-of-place call fails there (found on an H100 with 0.5.16/0.5.17). The in-place
    # path writes into its input and never asks. 0.5.21+ read get_parallel().tp_group, which
    # raises there just the same (found on the H200).
    Fact(OUTPLACE_NEEDS_TP_GROUP, ">=0.5.16", f"{MOE}.moe_runner.triton_utils.fused_moe", kind="behaviour"),
    # alignment, config helpers -------------------------------------------------------------------
    Fact("moe_align_block_size@new", ">=0.5.11", f"{MOE}.moe_runner.triton_utils.moe_align_block_size:moe_align_block_size",
         what="moe_align_block_size in moe_runner/triton_utils"),
    Fact("moe_align_block_size@module", ">=0.5.2,<0.5.11", f"{MOE}.fused_moe_triton.moe_align_block_size:moe_align_block_size"),
    Fact("moe_align_block_size@fused_moe", "<0.5.11", f"{OLD_FM}:moe_align_block_size",
         what="moe_align_block_size importable from fused_moe_triton/fused_moe.py"),
    Fact("config_dtype_str@new", ">=0.5.11", f"{NEW_CFG}:get_config_dtype_str"),
    Fact("config_dtype_str@config", ">=0.5.2,<0.5.11", f"{OLD_CFG}:get_config_dtype_str"),
    Fact("config_dtype_str@fused_moe", "<0.5.11", f"{OLD_FM}:get_config_dtype_str",
         what="get_config_dtype_str importable from fused_moe_triton/fused_moe.py"),
    *_params("config_dtype_str", f"{NEW_CFG}:get_config_dtype_str", ">=0.5.11", "use_fp8_w8a8", "use_int8_w8a16",
             "use_int4_w4a16", place="new"),
    *_params("config_dtype_str", f"{OLD_CFG}:get_config_dtype_str", ">=0.5.2,<0.5.11", "use_fp8_w8a8", "use_int8_w8a16",
             "use_int4_w4a16", place="config"),
    *_params("config_dtype_str", f"{OLD_FM}:get_config_dtype_str", "<0.5.11", "use_fp8_w8a8", "use_int8_w8a16",
             "use_int4_w4a16", place="fused_moe"),
    Fact("get_config_file_name@new", ">=0.5.11", f"{NEW_CFG}:get_config_file_name"),
    Fact("get_config_file_name@config", ">=0.5.2,<0.5.11", f"{OLD_CFG}:get_config_file_name"),
    Fact("get_config_file_name@fused_moe", "<0.5.2", f"{OLD_FM}:get_config_file_name"),
    *_params("get_config_file_name", f"{NEW_CFG}:get_config_file_name", ">=0.5.11", "per_channel_quant", "down_moe", place="new"),
    *_params("get_config_file_name", f"{OLD_CFG}:get_config_file_name", ">=0.5.3.post2,<0.5.11", "per_channel_quant",
             place="config"),
    *_params("get_config_file_name", f"{OLD_CFG}:get_config_file_name", ">=0.5.4.post2,<0.5.11", "down_moe", place="config"),
    Fact("get_moe_configs@new", ">=0.5.11", f"{NEW_CFG}:get_moe_configs"),
    Fact("get_moe_configs@config", ">=0.5.2,<0.5.11", f"{OLD_CFG}:get_moe_configs"),
    Fact("get_moe_configs@fused_moe", "<0.5.2", f"{OLD_FM}:get_moe_configs"),
    *_params("get_moe_configs", f"{NEW_CFG}:get_moe_configs", ">=0.5.11", "per_channel_quant", place="new"),
    *_params("get_moe_configs", f"{OLD_CFG}:get_moe_configs", ">=0.5.3.post2,<0.5.11", "per_channel_quant",
             place="config"),
    Fact("override_config@triton_utils", ">=0.5.11", f"{MOE}.moe_runner.triton_utils:override_config"),
    Fact("override_config@fused_moe_triton", ">=0.4.7", f"{MOE}.fused_moe_triton:override_config"),
    Fact("override_state@triton_utils", ">=0.5.11", f"{MOE}.moe_runner.triton_utils:_config"),
    Fact("override_state@fused_moe_triton", "<0.5.11", f"{MOE}.fused_moe_triton:_config"),
    Fact("moe_config_dir_env", ">=0.4.7", kind="behaviour",
         what="SGLANG_MOE_CONFIG_DIR: configs are read from <dir>/configs/triton_<x_y_z>/"),
    # expert parallelism -----------------------------------------------------------------------
    Fact("EPMoE", "<0.5.3.post1", f"{EP}:EPMoE"),
    Fact("DeepEPMoE", ">=0.4.7", f"{EP}:DeepEPMoE"),
    Fact("get_moe_impl_class", ">=0.4.7", f"{EP}:get_moe_impl_class"),
    Fact("get_moe_impl_class.quant_config", ">=0.5.1", f"{EP}:get_moe_impl_class", "param", "quant_config",
         what="get_moe_impl_class(quant_config)"),
    # `if not (_is_npu or _is_hip): from sgl_kernel import silu_and_mul` at module level: without
    # a loadable sgl-kernel (a CUDA build) the EP layer module does not import at all, e.g. on CPU.
    Fact(EP_LAYER_NEEDS_SGL_KERNEL, ">=0.4.8,<0.5.4.post1", EP, kind="behaviour"),
    Fact("ExpertDistributionRecorder@managers", "<0.4.9", "sglang.srt.managers.expert_distribution:ExpertDistributionRecorder"),
    Fact("ExpertDistributionRecorder@eplb", ">=0.4.9", "sglang.srt.eplb.expert_distribution:ExpertDistributionRecorder"),
    # process-wide server arguments the kernels read -------------------------------------------
    Fact("ServerArgs", ">=0.4.7", f"{SERVER_ARGS}:ServerArgs"),
    Fact("get_global_server_args", ">=0.5.3.post2", f"{SERVER_ARGS}:get_global_server_args"),
    Fact("set_global_server_args_for_scheduler", ">=0.5.3.post2", f"{SERVER_ARGS}:set_global_server_args_for_scheduler"),
    # 0.5.19 resolves what it publishes (a model path is needed); 0.5.20 retired the accessor.
    # Remove both, and the setter branch of _ensure_server_args, when the oldest SGLang supported
    # is 0.5.20.
    Fact(SERVER_ARGS_RESOLVED_ON_PUBLISH, ">=0.5.19", SERVER_ARGS, kind="behaviour"),
    Fact(GLOBAL_SERVER_ARGS_RETIRED, ">=0.5.20", SERVER_ARGS, kind="behaviour"),
    # From 0.5.20 the kernels read the runtime context's config bags (get_exec()), which raise
    # "config namespace 'exec' not published" until ServerArgs are published there (publish
    # is 0.5.17+, get_context 0.5.14+; moecompat publishes where the global accessor is retired).
    Fact("publish", ">=0.5.17", f"{RUNTIME_CONTEXT}:publish"),
    Fact("publish.role", ">=0.5.17", f"{RUNTIME_CONTEXT}:publish", "param", "role"),
    Fact("get_context", ">=0.5.14", f"{RUNTIME_CONTEXT}:get_context"),
    Fact(SERVER_ARGS_MODEL_PATH_FIRST, ">=0.5.20", SERVER_ARGS, kind="behaviour"),
    # numerics of the Triton fused_experts (the engine-faithful reference follows them), from the
    # released sources; pinned on the GPU by tests/gpu against the faithful reference.
    Fact(NUMERICS_KNOWN, ">=0.5.11", kind="behaviour"),
    Fact(WNA16_WEIGHTS_ROUNDED, ">=0.5.11", kind="behaviour"),
    # The Triton config of a fused_experts call (its BLOCK_SIZE_M decides wgmma accumulation).
    Fact("try_get_optimal_moe_config", ">=0.5.11", f"{MOE}.moe_runner.triton_utils:try_get_optimal_moe_config"),
    *_params("try_get_optimal_moe_config", f"{MOE}.moe_runner.triton_utils:try_get_optimal_moe_config", ">=0.5.11",
             "block_shape", "per_channel_quant"),

)

ENGINE = Engine(next(s for s in ENGINE_SPECS if s["name"] == "sglang"), FACTS,
                lacks={"make_expert_map": "SGLang builds expert maps inside its EP layers, with no public function; "
                       "moecompat's reference placement (backend='reference') is what its linear EP uses",
                       "default_config": "moecompat reads SGLang's tuned configs, not its fallback defaults"})


def _flags(qc: QuantConfig, p: dict[str, str]) -> dict[str, Any]:
    """use_* flags and scales of SGLang's Triton fused_experts (the same layouts as vLLM's)."""
    s = qc.scheme
    if s is None:
        return {}
    if s is QuantScheme.MXFP4_W4A16:
        raise ENGINE.unsupported("mxfp4_w4a16 through the Triton fused_experts",
                                 detail="SGLang runs MXFP4 MoE through its Mxfp4 method (triton_kernels/FlashInfer)")
    if s in (QuantScheme.FP8_W8A8, QuantScheme.INT8_W8A8) and qc.block_shape is None and qc.per_act_token_quant != qc.per_out_ch_quant:
        raise ENGINE.unsupported(f"{s.value} with per_act_token_quant != per_out_ch_quant",
                                 detail="the Triton kernel quantizes activations per token exactly when weights are per channel")
    kw: dict[str, Any] = {p[f"use_{s.value}"]: True, p["w1_scale"]: qc.w1_scale, p["w2_scale"]: qc.w2_scale}
    if qc.a1_scale is not None:
        kw[p["a1_scale"]], kw[p["a2_scale"]] = qc.a1_scale, qc.a2_scale
    if qc.w1_zp is not None:
        kw[p["w1_zp"]], kw[p["w2_zp"]] = qc.w1_zp, qc.w2_zp
    if s is QuantScheme.INT4_W4A16:
        kw[p["block_shape"]] = [0, int(qc.group_size or 0)]
    elif qc.block_shape is not None:
        kw[p["block_shape"]] = list(qc.block_shape)
    if qc.per_act_token_quant or qc.per_out_ch_quant:
        kw[p["per_channel_quant"]] = True
    return kw


def _cached_flags(qc: QuantConfig, p: dict[str, str]) -> dict[str, Any]:
    hit = qc._engine_cache.get("sglang")
    if hit is None:
        hit = qc._engine_cache["sglang"] = _flags(qc, p)
    return hit


def _default_server_args(cls: type) -> object:
    """``ServerArgs`` at their defaults, without ``__post_init__`` (which would resolve a model
    path); where SGLang resolves what is published (0.5.19+), naming its 'dummy' model, whose
    resolution stops before any model path is read."""
    args: Any = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            setattr(args, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            setattr(args, f.name, f.default_factory())
        else:
            setattr(args, f.name, None)
    if ENGINE.holds(SERVER_ARGS_RESOLVED_ON_PUBLISH):
        args.model_path = "dummy"
    return args


def _ensure_server_args() -> None:
    """SGLang's kernels read process-wide ``ServerArgs``; outside a server none are set and the
    kernels raise. Install the defaults only when nothing is set, so a running server's own
    arguments are never replaced: through ``set_global_server_args_for_scheduler`` (0.5.3.post2 to
    0.5.19), or, from 0.5.20, which retired it, by publishing them into the runtime context as
    that shim did (role ``scheduler``). Releases before 0.5.3.post2 are left alone, and their
    kernels report what they miss themselves."""
    try:
        _, cls = ENGINE.find("ServerArgs")
        if ENGINE.holds(GLOBAL_SERVER_ARGS_RETIRED):
            pfact, publish = ENGINE.find("publish")
            _, get_context = ENGINE.find("get_context")
            if not get_context().is_config_namespace_published("exec"):
                # 0.5.21's msgspec record refuses object.__new__; see SERVER_ARGS_MODEL_PATH_FIRST.
                publish(cls("dummy"), **{ENGINE.params(pfact, publish)["role"]: "scheduler"})
            return
        if not (ENGINE.holds("get_global_server_args") and ENGINE.holds("set_global_server_args_for_scheduler")):
            return
        _, getter = ENGINE.find("get_global_server_args")
        _, setter = ENGINE.find("set_global_server_args_for_scheduler")
    except LookupError:
        return
    try:
        if getter() is not None:
            return
    except ValueError:  # "Global server args is not set yet!"
        pass
    setter(_default_server_args(cls))


@ENGINE.adapter("make_quant_config")
def _build_quant(engine: Engine) -> Resolution:
    fact, fn = engine.find("fused_experts")
    p = engine.params(fact, fn)
    return engine.ok("make_quant_config", lambda qc: _cached_flags(qc, p), f"{fact.where}", "legacy-flags")


# (name, positional arguments, keyword parameters): each binds only where its distinguishing
# parameter (the keyword right after the positional ones) is there.
_FE_VARIANTS = (
    ("topk_output+runner_config", 4, ("fused_experts.moe_runner_config@new",)),
    ("topk_output+runner_config", 4, ("fused_experts.moe_runner_config@old",)),
    ("topk_output", 3, ("fused_experts.topk_output@old", "fused_experts.inplace@old", "fused_experts.activation@old")),
    ("topk_tensors", 4, ("fused_experts.topk_ids@old", "fused_experts.inplace@old", "fused_experts.activation@old")),
)


@ENGINE.adapter("fused_experts")
def _build_fused_experts(engine: Engine) -> Resolution:
    fact, fn = engine.find("fused_experts")
    _ensure_server_args()
    p = engine.params(fact, fn)
    place = fact.key.split("@", 1)[1]
    variant = engine.pick(fn, [v for v in _FE_VARIANTS if all(k.endswith("@" + place) for k in v[2])], "fused_experts")
    runner_cls = rp = topk_output_cls = None
    if variant.name.startswith("topk_output"):
        _, topk_output_cls = engine.find("topk_output")
    if variant.name == "topk_output+runner_config":
        rfact, runner_cls = engine.find("MoeRunnerConfig")
        rp = engine.params(rfact, runner_cls)
    always_inplace = engine.holds(OUTPLACE_NEEDS_TP_GROUP)
    runner_cache: dict[tuple[Any, ...], Any] = {}

    def runner_config(activation: Activation, on_input: bool, inplace: bool) -> Any:
        key = (activation, on_input, inplace)
        cfg = runner_cache.get(key)
        if cfg is None:
            assert rp is not None and runner_cls is not None
            kw: dict[str, Any] = {rp["activation"]: "gelu" if activation is Activation.GELU else "silu",
                                  rp["apply_router_weight_on_input"]: on_input, rp["inplace"]: inplace}
            if activation is Activation.SWIGLUOAI:
                kw[rp["gemm1_alpha"]], kw[rp["gemm1_clamp_limit"]] = SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT
            cfg = runner_cache[key] = runner_cls(**kw)
        return cfg

    def bind(call: ExpertsCall) -> KernelRunner:
        act, on_input = call.activation, call.apply_router_weight_on_input
        if act is Activation.SWIGLUOAI and (rp is None or rp.get("gemm1_alpha") is None):
            raise engine.unsupported("activation 'swigluoai'", engine.available_in("MoeRunnerConfig.gemm1_alpha"))
        qc = call.quant_config
        if not isinstance(qc, QuantConfig):
            raise engine.unsupported("mixed per-projection precision (MixedQuantConfig)",
                                     detail="SGLang's fused kernel runs both GEMMs in one scheme; use backend='reference'")
        kw = _cached_flags(qc, p)
        topk: Callable[[torch.Tensor, torch.Tensor], tuple[Any, ...]] | None = None
        if topk_output_cls is not None:
            cls = topk_output_cls

            def topk(w: torch.Tensor, ids: torch.Tensor) -> tuple[Any, ...]:
                return (cls(w, ids, None),)
        if runner_cls is not None:
            if always_inplace:  # see OUTPLACE_NEEDS_TP_GROUP: the in-place op, on a copy when out-of-place
                cfg = runner_config(act, on_input, True)
                return KernelRunner(KernelCall(fn, (kw, kw), topk, ((cfg,), (cfg,)), mask_map=True, inplace="clone"), call.expert_map)
            tail = ((runner_config(act, on_input, False),), (runner_config(act, on_input, True),))
            return KernelRunner(KernelCall(fn, (kw, kw), topk, tail, mask_map=True), call.expert_map)
        base = {**kw, p["activation"]: act.value, p["apply_router_weight_on_input"]: on_input}
        kwargs = ({**base, p["inplace"]: False}, {**base, p["inplace"]: True})
        return KernelRunner(KernelCall(fn, kwargs, topk, mask_map=True), call.expert_map)

    return engine.ok("fused_experts", bind, fn, variant.name)


@ENGINE.adapter("select_experts")
def _build_select(engine: Engine) -> Resolution:
    fact, fn = engine.find("select_experts")
    _ensure_server_args()
    sp = engine.params(fact, fn)
    if sp.get("topk_config") is not None:
        cfact, cfg_cls = engine.find("TopKConfig")
        p = engine.params(cfact, cfg_cls)
        variant = "topk_config"
    else:
        cfg_cls, p, variant = None, sp, "flat-args"
    scoring_key = p.get("scoring_func")

    def bind(call: RoutingCall) -> Callable[[torch.Tensor, torch.Tensor], TopK]:
        scoring, bias = call.scoring_func, call.e_score_correction_bias
        use_grouped, num_expert_group, topk_group = call.use_grouped_topk, call.num_expert_group, call.topk_group
        if scoring is ScoringFunc.SIGMOID and scoring_key is None and bias is None:
            raise engine.unsupported("sigmoid scoring without e_score_correction_bias", engine.available_in("TopKConfig.scoring_func"))
        if scoring is ScoringFunc.SOFTMAX and bias is not None and scoring_key is None:
            raise engine.unsupported("softmax scoring with e_score_correction_bias", engine.available_in("TopKConfig.scoring_func"),
                                     detail="older SGLang scores biased routing with sigmoid")
        if bias is not None and not use_grouped:
            # SGLang's biased routing is grouped top-k; one group of all experts is the same thing.
            use_grouped, num_expert_group, topk_group = True, 1, 1
        values: dict[str, Any] = dict(top_k=call.top_k, use_grouped_topk=use_grouped, renormalize=call.renormalize,
                                      topk_group=topk_group, num_expert_group=num_expert_group, correction_bias=bias,
                                      custom_routing_function=call.custom_routing_function)
        if bias is not None and p.get("routed_scaling_factor") is not None:
            # Biased routing asserts a factor (0.4.x) but applies it only to fused shared experts
            # or on request; moecompat scales the weights itself, so pass the neutral 1.0.
            values["routed_scaling_factor"] = 1.0
        if scoring_key is not None:
            values["scoring_func"] = scoring.value
        rsf = call.routed_scaling_factor
        options = {native: {p[k]: v for k, v in {**values, "torch_native": native}.items()} for native in (False, True)}
        configs = {native: cfg_cls(**kw) for native, kw in options.items()} if cfg_cls is not None else None

        def run(hidden_states: torch.Tensor, router_logits: torch.Tensor) -> TopK:
            native = not router_logits.is_cuda
            if configs is not None:
                out = fn(hidden_states, router_logits, configs[native])
                w, ids = out.topk_weights, out.topk_ids
            else:
                out = fn(**{sp["hidden_states"]: hidden_states, sp["router_logits"]: router_logits}, **options[native])
                w, ids = out[0], out[1]
            w = w.to(torch.float32)
            if rsf is not None and rsf != 1.0:
                w = w * rsf
            return TopK(w, ids.to(torch.int32))

        return run

    return engine.ok("select_experts", bind, fn, variant)


@ENGINE.adapter("moe_align_block_size")
def _build_align(engine: Engine) -> Resolution:
    _, fn = engine.find("moe_align_block_size")

    def impl(topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None,
             pad_sorted_ids: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if expert_map is not None or pad_sorted_ids:
            raise engine.unsupported("moe_align_block_size with expert_map / pad_sorted_ids",
                                     detail="SGLang's version takes neither; use backend='vllm' or 'reference'")
        out = fn(topk_ids, block_size, num_experts)
        return out[0], out[1], out[2]

    return engine.ok("moe_align_block_size", impl, fn, "basic")


@ENGINE.adapter("get_config_dtype_str")
def _build_dtype_str(engine: Engine) -> Resolution:
    fact, fn = engine.find("config_dtype_str")
    p = engine.params(fact, fn)

    def impl(dtype: torch.dtype, use_fp8_w8a8: bool, use_int8_w8a16: bool, use_int4_w4a16: bool,
             ocp_mx_scheme: str | None) -> str | None:
        if ocp_mx_scheme is not None:
            raise engine.unsupported("OCP MX schemes in tuned-config names")
        return fn(dtype, **{p["use_int8_w8a16"]: use_int8_w8a16, p["use_int4_w4a16"]: use_int4_w4a16,
                            p["use_fp8_w8a8"]: use_fp8_w8a8})

    return engine.ok("get_config_dtype_str", impl, fn, "flags")


# --------------------------------------------------------------------------------------------
# Tuned Triton configs (used by `moecompat tune`)


@ENGINE.adapter("get_config_file_name")
def _build_config_file_name(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_config_file_name")
    p = engine.params(fact, fn)

    def impl(E: int, N: int, dtype_str: str | None, block_shape: list[int] | None, per_channel_quant: bool = False,
             down_moe: bool = False) -> str:
        kw: dict[str, Any] = {}
        for alias, on, feature in (("per_channel_quant", per_channel_quant, "per-channel config names"),
                                   ("down_moe", down_moe, "down_moe config names")):
            if on:
                if p.get(alias) is None:
                    raise engine.unsupported(feature, engine.available_in(f"get_config_file_name.{alias}"))
                kw[p[alias]] = True
        return fn(E, N, dtype_str, list(block_shape) if block_shape else None, **kw)

    return engine.ok("get_config_file_name", impl, fn, "per_channel+down" if p.get("down_moe") else "basic")


@ENGINE.adapter("tuned_config_location")
def _build_config_location(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_config_file_name")
    module_dir = os.path.dirname(os.path.realpath(importlib.import_module(fact.location.module).__file__ or ""))
    env_name = "SGLANG_MOE_CONFIG_DIR"  # fact moe_config_dir_env

    def impl(folder: str | None) -> tuple[str, dict[str, str]]:
        # SGLang looks in <dir>/configs/triton_<x_y_z>/ (dir: SGLANG_MOE_CONFIG_DIR or its package).
        import triton

        version_dir = f"triton_{triton.__version__.replace('.', '_')}"
        root = folder or module_dir
        env = {env_name: folder} if folder else {}
        return os.path.join(root, "configs", version_dir), env

    return engine.ok("tuned_config_location", impl, fn, "configs/triton_<version>")


@ENGINE.adapter("get_moe_configs")
def _build_get_moe_configs(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_moe_configs")
    pc = engine.params(fact, fn).get("per_channel_quant")
    _ensure_server_args()  # get_moe_configs reads the deterministic-inference server arg

    def impl(E: int, N: int, dtype_str: str | None, block_shape: list[int] | None, per_channel_quant: bool = False) -> Any:
        getattr(fn, "cache_clear", lambda: None)()
        kw = {pc: per_channel_quant} if pc is not None else {}
        bn, bk = (block_shape or [0, 0])
        return fn(E, N, dtype_str, bn, bk, **kw)

    return engine.ok("get_moe_configs", impl, fn, "flags")


@ENGINE.adapter("override_config")
def _build_override(engine: Engine) -> Resolution:
    fact, fn = engine.find("override_config")
    place = fact.key.split("@", 1)[1]
    state = engine.fact(f"override_state@{place}").location
    return engine.ok("override_config", restoring_override(fn, importlib.import_module(state.module), state.qualname),
                     fn, "module state")


@ENGINE.adapter("routing_hooks")
def _build_routing_hooks(engine: Engine) -> Resolution:
    fact, _ = engine.find("routing_hook")

    def impl() -> list[tuple[Any, str]]:
        return [(importlib.import_module(fact.location.module), fact.location.qualname)]

    return engine.ok("routing_hooks", impl, fact.where, "hooks")


def sgl_kernel_unavailable(exc: BaseException, load: Any = None) -> str | None:
    """Why ``sgl_kernel`` is what made an import fail with ``exc``, or ``None`` if it is not.

    ``ModuleNotFoundError`` for ``sgl_kernel``: it is not installed. Any other error: it is the
    cause exactly when sgl_kernel is installed and importing it fails too (``load``, default
    ``importlib.import_module("sgl_kernel")``), e.g. its ``common_ops`` needs the NVIDIA driver's
    ``libcuda.so.1`` (an ``ImportError`` or ``OSError``, by sgl-kernel release); the reason then
    names that error."""
    if isinstance(exc, ModuleNotFoundError):
        return "sgl_kernel is not installed" if exc.name == "sgl_kernel" else None
    load = load or (lambda: importlib.import_module("sgl_kernel"))
    try:
        load()
    except ModuleNotFoundError:
        return None  # not installed, so not what failed: `exc` had another cause
    except Exception as again:
        return f"sgl_kernel is installed but does not load ({type(again).__name__}: {again})"
    return None


@ENGINE.adapter("ep_moe_layer_class")
def _build_ep_layer(engine: Engine) -> Resolution:
    """The seed's ``EPMoE`` (SGLang 0.4.x) is gone from 0.5.3; its successors are chosen by
    ``get_moe_impl_class(quant_config)`` (0.5.1+)."""
    if engine.holds(EP_LAYER_NEEDS_SGL_KERNEL):
        elsewhere = (f"any release outside {engine.range(EP_LAYER_NEEDS_SGL_KERNEL)} on any platform, or this one where "
                     "sgl-kernel loads (CUDA)")
        try:
            importlib.import_module(engine.fact(EP_LAYER_NEEDS_SGL_KERNEL).where)
        except Exception as exc:
            reason = sgl_kernel_unavailable(exc)
            if reason is None:
                raise
            raise engine.unsupported("ep_moe_layer_class", elsewhere,
                                     detail=f"this release's {EP_LAYER_NEEDS_SGL_KERNEL}, and {reason}") from None
    try:
        fact, fn = engine.find("get_moe_impl_class")
    except LookupError:
        fn = None
    if fn is not None:
        takes_cfg = engine.params(fact, fn).get("quant_config") is not None

        def impl(quant_config: Any = None) -> Any:
            return fn(quant_config) if takes_cfg else fn()

        return engine.ok("ep_moe_layer_class", impl, fn, "get_moe_impl_class(quant_config)" if takes_cfg else "get_moe_impl_class()")
    _, cls = engine.find("EPMoE")
    return engine.ok("ep_moe_layer_class", lambda quant_config=None: cls, cls, "EPMoE")


@ENGINE.adapter("numerics")
def _build_numerics(engine: Engine) -> Resolution:
    """The arithmetic of this release's Triton ``fused_experts``, for the engine-faithful reference."""
    if not engine.holds(NUMERICS_KNOWN):
        raise engine.unsupported("sglang numerics (the engine-faithful reference)", engine.range(NUMERICS_KNOWN),
                                 detail="this release's kernel arithmetic was not read")
    rules = ActivationQuantRules(tensor_amax_floor=0.0, tensor_reciprocal=True, token_amax_floor=0.0,
                                 token_reciprocal=True, static_reciprocal=True, block_by_inverse_amax=True,
                                 int8_token_by_inverse_amax=True, int8_round_half_away=True)
    f_opt, optimal = engine.find("try_get_optimal_moe_config")
    po = engine.params(f_opt, optimal)

    def mma_m(call: TritonCall) -> int:
        # As fused_experts_impl asks it: (w1.shape, (E,) + w2.shape[1:], top_k, dtype, M).
        config = optimal(call.w1_shape, call.w2_shape, call.top_k, call.dtype, call.num_tokens,
                         **{po["block_shape"]: None, po["per_channel_quant"]: call.per_channel})
        return int(config["BLOCK_SIZE_M"])

    def impl() -> Numerics:
        # Asked at call time: the GPU decides the fp8 accumulation.
        return Numerics(f"sglang {engine.version_str()}", rules, round_intermediates=True,
                        compute_dtype_for_fp32=torch.float16,
                        round_dequantized_group_weights=engine.holds(WNA16_WEIGHTS_ROUNDED),
                        fp8_tensor_core_accumulation=sm90_fp8_accumulation(), fp8_mma_m=mma_m)

    return engine.ok("numerics", impl, "sglang Triton fused_experts", "facts")


__all__ = ["ENGINE", "EP_LAYER_NEEDS_SGL_KERNEL", "FACTS", "OUTPLACE_NEEDS_TP_GROUP"]
