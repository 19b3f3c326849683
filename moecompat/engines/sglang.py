"""SGLang backend: the version facts (one table) and the adapters built from them.

Paths are under ``sglang.srt.layers.moe``. Every fact names the versions it holds for and is
checked against the API snapshot of every release (``tests/unit/test_facts_static.py``) and
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
import inspect
from typing import Any

import torch

from ..adapters import Location, Resolution, Variant, VersionFact
from ..quant import QuantConfig
from ..vocab import SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT, Activation, QuantScheme, ScoringFunc, TopK
from .base import TRITON_SCHEME_FLAGS, Engine, mask_expert_map

MOE = "sglang.srt.layers.moe"
TOPK = f"{MOE}.topk"
OLD_FM = f"{MOE}.fused_moe_triton.fused_moe"
NEW_FM = f"{MOE}.moe_runner.triton_utils.fused_moe"
OLD_CFG = f"{MOE}.fused_moe_triton.fused_moe_triton_config"
NEW_CFG = f"{MOE}.moe_runner.triton_utils.fused_moe_triton_config"

EP_LAYER_NEEDS_SGL_KERNEL = "ep_moe/layer.py imports sgl_kernel at module level on every platform but NPU/HIP"
OUTPLACE_NEEDS_TP_GROUP = "out-of-place Triton fused_experts allocates its output with get_tp_group()"

FACTS: tuple[VersionFact, ...] = (
    VersionFact("select_experts", ">=0.4.7", f"{TOPK}:select_experts"),
    VersionFact("select_experts(top_k, use_grouped_topk, ..., correction_bias, torch_native) -> (weights, ids)", "<0.5", f"{TOPK}:select_experts", "param", "top_k"),
    VersionFact("select_experts(topk_config) with TopKConfig", ">=0.5", f"{TOPK}:select_experts", "param", "topk_config"),
    VersionFact("TopKConfig", ">=0.5", f"{TOPK}:TopKConfig"),
    VersionFact("TopKConfig.scoring_func (sigmoid without a bias)", ">=0.5.6", f"{TOPK}:TopKConfig", "param", "scoring_func"),
    VersionFact("StandardTopKOutput", ">=0.4.9", f"{TOPK}:StandardTopKOutput"),
    VersionFact("fused_experts(topk_weights, topk_ids, ...) with use_* flags", "<0.4.9", f"{OLD_FM}:fused_experts", "param", "topk_ids"),
    VersionFact("fused_experts(topk_output, ...)", ">=0.4.9,<0.5.11", f"{OLD_FM}:fused_experts", "param", "topk_output"),
    VersionFact("fused_experts(topk_output, moe_runner_config, ...)", ">=0.5,<0.5.11", f"{OLD_FM}:fused_experts", "param", "moe_runner_config"),
    VersionFact("fused_experts(..., a1_q)", ">=0.5.17", f"{NEW_FM}:fused_experts", "param", "a1_q"),
    VersionFact("fused_experts in fused_moe_triton/fused_moe.py", "<0.5.11", f"{OLD_FM}:fused_experts"),
    VersionFact("fused_experts in moe_runner/triton_utils/fused_moe.py", ">=0.5.11", f"{NEW_FM}:fused_experts"),
    VersionFact("MoeRunnerConfig", ">=0.5", f"{MOE}.moe_runner.base:MoeRunnerConfig"),
    VersionFact("MoeRunnerConfig.gemm1_alpha (gpt-oss swiglu)", ">=0.5", f"{MOE}.moe_runner.base:MoeRunnerConfig", "param", "gemm1_alpha"),
    VersionFact("moe_align_block_size importable from fused_moe_triton/fused_moe.py", "<0.5.11", f"{OLD_FM}:moe_align_block_size"),
    VersionFact("moe_align_block_size module", ">=0.5.2,<0.5.11", f"{MOE}.fused_moe_triton.moe_align_block_size:moe_align_block_size"),
    VersionFact("moe_align_block_size in moe_runner/triton_utils", ">=0.5.11", f"{MOE}.moe_runner.triton_utils.moe_align_block_size:moe_align_block_size"),
    VersionFact("get_config_dtype_str importable from fused_moe_triton/fused_moe.py", "<0.5.11", f"{OLD_FM}:get_config_dtype_str"),
    VersionFact("get_config_dtype_str in fused_moe_triton_config.py", ">=0.5.2,<0.5.11", f"{OLD_CFG}:get_config_dtype_str"),
    VersionFact("get_config_dtype_str in moe_runner/triton_utils", ">=0.5.11", f"{NEW_CFG}:get_config_dtype_str"),
    VersionFact("get_config_file_name: per_channel_quant", ">=0.5.3.post2,<0.5.11", f"{OLD_CFG}:get_config_file_name", "param", "per_channel_quant"),
    VersionFact("get_config_file_name: down_moe", ">=0.5.4.post2,<0.5.11", f"{OLD_CFG}:get_config_file_name", "param", "down_moe"),
    VersionFact("EPMoE", "<0.5.3", f"{MOE}.ep_moe.layer:EPMoE"),
    VersionFact("DeepEPMoE", ">=0.4.7", f"{MOE}.ep_moe.layer:DeepEPMoE"),
    VersionFact("get_moe_impl_class(quant_config)", ">=0.5.1", f"{MOE}.ep_moe.layer:get_moe_impl_class", "param", "quant_config"),
    VersionFact("ExpertDistributionRecorder in managers/", "<0.4.9", "sglang.srt.managers.expert_distribution:ExpertDistributionRecorder"),
    VersionFact("ExpertDistributionRecorder in eplb/", ">=0.4.9", "sglang.srt.eplb.expert_distribution:ExpertDistributionRecorder"),
    VersionFact("sigmoid scoring only with a correction bias (biased_grouped_topk)", "<0.5.6", kind="behaviour"),
    # `from sgl_kernel import silu_and_mul` at module level: unguarded in 0.4.8.x, under
    # `if not (_is_npu or _is_hip):` from 0.4.9 to 0.5.4 (0.4.7 imports it only on CUDA; 0.5.4.post1
    # drops it). Without a loadable sgl-kernel (a CUDA build: not installed, or installed without the
    # NVIDIA driver's libcuda.so.1, as `sglang[srt]` installs it on a CPU host) the EP layer module
    # does not import at all, e.g. on CPU.
    VersionFact(EP_LAYER_NEEDS_SGL_KERNEL, ">=0.4.8,<0.5.4.post1", f"{MOE}.ep_moe.layer", kind="behaviour"),
    # `with use_symmetric_memory(get_tp_group(), ...)` around the output allocation of the
    # out-of-place path: get_tp_group() asserts outside a server (no tensor-parallel group), so
    # every out-of-place call fails there (found on an H100 with 0.5.16/0.5.17). The in-place
    # path writes into its input and never asks. 0.5.21 reads an optional group instead.
    VersionFact(OUTPLACE_NEEDS_TP_GROUP, ">=0.5.16,<0.5.21", f"{MOE}.moe_runner.triton_utils.fused_moe", kind="behaviour"),
)

ENGINE = Engine(
    name="sglang",
    distributions=("sglang",),
    root_modules=(TOPK,),
    tested=">=0.4.7,<0.5.24",
    facts=FACTS,
)

_FE_LOCATIONS = (Location(NEW_FM, "fused_experts", ">=0.5.11"), Location(OLD_FM, "fused_experts", "<0.5.11"))
_FLAG_FOR_SCHEME = TRITON_SCHEME_FLAGS


def _flags(qc: QuantConfig) -> dict[str, Any]:
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
    kw: dict[str, Any] = {_FLAG_FOR_SCHEME[s]: True, "w1_scale": qc.w1_scale, "w2_scale": qc.w2_scale}
    if qc.a1_scale is not None:
        kw["a1_scale"], kw["a2_scale"] = qc.a1_scale, qc.a2_scale
    if qc.w1_zp is not None:
        kw["w1_zp"], kw["w2_zp"] = qc.w1_zp, qc.w2_zp
    if s is QuantScheme.INT4_W4A16:
        kw["block_shape"] = [0, int(qc.group_size or 0)]
    elif qc.block_shape is not None:
        kw["block_shape"] = list(qc.block_shape)
    if qc.per_act_token_quant or qc.per_out_ch_quant:
        kw["per_channel_quant"] = True
    return kw


def _cached_flags(qc: QuantConfig) -> dict[str, Any]:
    hit = qc._engine_cache.get("sglang")
    if hit is None:
        hit = qc._engine_cache["sglang"] = _flags(qc)
    return hit



def _ensure_server_args() -> None:
    """SGLang's kernels read process-wide ``ServerArgs``; outside a server none are set and the
    kernels raise. Install the defaults (without ``__post_init__``, which would resolve a model
    path) only when nothing is set, so a running server's own arguments are never replaced.
    Best effort: releases whose server-args module works differently (0.5.23 retired the global
    accessor) are left alone, and their kernels report what they miss themselves."""
    try:
        from sglang.srt import server_args as sa_mod

        getter = sa_mod.get_global_server_args
        setter = sa_mod.set_global_server_args_for_scheduler
        try:
            if getter() is not None:
                return
        except ValueError:  # "Global server args is not set yet!"
            pass
        cls = sa_mod.ServerArgs
        args = object.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                setattr(args, f.name, f.default)
            elif f.default_factory is not dataclasses.MISSING:
                setattr(args, f.name, f.default_factory())
            else:
                setattr(args, f.name, None)
        setter(args)
    except Exception:  # best effort, see above
        return


def _fields(cls: Any) -> frozenset[str]:
    if dataclasses.is_dataclass(cls):
        return frozenset(f.name for f in dataclasses.fields(cls))
    return frozenset(inspect.signature(cls).parameters)


@ENGINE.adapter("make_quant_config")
def _build_quant(engine: Engine) -> Resolution:
    loc, fn = engine.find(_FE_LOCATIONS)
    return engine.ok("make_quant_config", _cached_flags, f"{loc}", "legacy-flags")


_FE_VARIANTS = (
    Variant.of("topk_output+runner_config", 5, "use_fp8_w8a8", "w1_scale", "block_shape"),
    Variant.of("topk_output", 4, "inplace", "activation", "apply_router_weight_on_input", "use_fp8_w8a8", "w1_scale", "block_shape"),
    Variant.of("topk_tensors", 5, "inplace", "activation", "apply_router_weight_on_input", "use_fp8_w8a8", "w1_scale", "block_shape"),
)


@ENGINE.adapter("fused_experts")
def _build_fused_experts(engine: Engine) -> Resolution:
    loc, fn = engine.find(_FE_LOCATIONS)
    _ensure_server_args()
    params = inspect.signature(fn).parameters
    if "moe_runner_config" in params:
        variant = _FE_VARIANTS[0]
        from sglang.srt.layers.moe.moe_runner.base import MoeRunnerConfig
        from sglang.srt.layers.moe.topk import StandardTopKOutput

        runner_fields = _fields(MoeRunnerConfig)
    elif "topk_output" in params:
        variant = _FE_VARIANTS[1]
        from sglang.srt.layers.moe.topk import StandardTopKOutput
        MoeRunnerConfig, runner_fields = None, frozenset()
    else:
        variant = engine.pick(fn, _FE_VARIANTS[2:], "fused_experts")
        StandardTopKOutput = MoeRunnerConfig = None
        runner_fields = frozenset()
    has_swiglu = "gemm1_alpha" in runner_fields
    version = engine.version()
    always_inplace = version is not None and engine.fact(OUTPLACE_NEEDS_TP_GROUP).holds_for(version)
    runner_cache: dict[tuple[Any, ...], Any] = {}

    def runner_config(activation: Activation, on_input: bool, inplace: bool = False) -> Any:
        key = (activation, on_input, inplace)
        cfg = runner_cache.get(key)
        if cfg is None:
            kw: dict[str, Any] = {"activation": "gelu" if activation is Activation.GELU else "silu",
                                  "apply_router_weight_on_input": on_input, "inplace": inplace}
            if activation is Activation.SWIGLUOAI:
                kw.update(gemm1_alpha=SWIGLUOAI_ALPHA, gemm1_clamp_limit=SWIGLUOAI_LIMIT)
            cfg = runner_cache[key] = MoeRunnerConfig(**kw)
        return cfg

    def build_call(hidden_states, w1, w2, topk_weights, topk_ids, activation, qc, expert_map, global_num_experts,
                   apply_router_weight_on_input, inplace) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        if activation is Activation.SWIGLUOAI and not has_swiglu:
            raise engine.unsupported("activation 'swigluoai'", ">=0.5")
        kw = dict(_cached_flags(qc))
        if expert_map is not None:
            topk_weights, topk_ids = mask_expert_map(topk_weights, topk_ids, expert_map)
        if MoeRunnerConfig is not None:
            topk_output = StandardTopKOutput(topk_weights, topk_ids, None)
            if always_inplace:  # see OUTPLACE_NEEDS_TP_GROUP: the in-place op on the caller's tensor or a copy
                target = hidden_states if inplace else hidden_states.clone()
                return (target, w1, w2, topk_output, runner_config(activation, apply_router_weight_on_input, True)), kw, False
            return (hidden_states, w1, w2, topk_output, runner_config(activation, apply_router_weight_on_input)), kw, inplace
        kw.update(inplace=inplace, activation=activation.value, apply_router_weight_on_input=apply_router_weight_on_input)
        if StandardTopKOutput is not None:
            return (hidden_states, w1, w2, StandardTopKOutput(topk_weights, topk_ids, None)), kw, False
        return (hidden_states, w1, w2, topk_weights, topk_ids), kw, False

    def impl(hidden_states, w1, w2, topk_weights, topk_ids, activation, qc, expert_map, global_num_experts,
             apply_router_weight_on_input, inplace):
        args, kw, copy_back = build_call(hidden_states, w1, w2, topk_weights, topk_ids, activation, qc, expert_map,
                                         global_num_experts, apply_router_weight_on_input, inplace)
        out = fn(*args, **kw)
        if copy_back:
            hidden_states.copy_(out)
            return hidden_states
        return out

    impl.build_call = build_call  # type: ignore[attr-defined]
    impl.target = fn  # type: ignore[attr-defined]
    return engine.ok("fused_experts", impl, fn, variant.name)


@ENGINE.adapter("select_experts")
def _build_select(engine: Engine) -> Resolution:
    loc, fn = engine.find([Location(TOPK, "select_experts", ">=0.4.7")])
    _ensure_server_args()
    params = inspect.signature(fn).parameters
    if "topk_config" in params:
        from sglang.srt.layers.moe.topk import TopKConfig

        cfg_fields = _fields(TopKConfig)
        variant = "topk_config"
    else:
        TopKConfig, cfg_fields = None, frozenset(params)
        variant = "flat-args"
    has_scoring = "scoring_func" in cfg_fields

    def options(top_k, renormalize, scoring, use_grouped, num_expert_group, topk_group, bias, custom, native) -> dict[str, Any]:
        if scoring is ScoringFunc.SIGMOID and not has_scoring and bias is None:
            raise engine.unsupported("sigmoid scoring without e_score_correction_bias", ">=0.5.6")
        if scoring is ScoringFunc.SOFTMAX and bias is not None and not has_scoring:
            raise engine.unsupported("softmax scoring with e_score_correction_bias", ">=0.5.6",
                                     detail="older SGLang scores biased routing with sigmoid")
        if bias is not None and not use_grouped:
            # SGLang's biased routing is grouped top-k; one group of all experts is the same thing.
            use_grouped, num_expert_group, topk_group = True, 1, 1
        kw: dict[str, Any] = {"top_k": top_k, "use_grouped_topk": use_grouped, "renormalize": renormalize,
                              "topk_group": topk_group, "num_expert_group": num_expert_group,
                              "correction_bias": bias, "custom_routing_function": custom, "torch_native": native}
        if bias is not None and "routed_scaling_factor" in cfg_fields:
            # Biased routing asserts a factor (0.4.x) but applies it only to fused shared experts
            # or on request; moecompat scales the weights itself, so pass the neutral 1.0.
            kw["routed_scaling_factor"] = 1.0
        if has_scoring:
            kw["scoring_func"] = scoring.value
        return kw

    def impl(hidden_states, router_logits, top_k, renormalize, scoring, use_grouped, num_expert_group, topk_group,
             bias, routed_scaling_factor, custom_routing_function) -> TopK:
        native = not router_logits.is_cuda
        kw = options(top_k, renormalize, scoring, use_grouped, num_expert_group, topk_group, bias,
                     custom_routing_function, native)
        if TopKConfig is not None:
            out = fn(hidden_states, router_logits, TopKConfig(**kw))
            w, ids = out.topk_weights, out.topk_ids
        else:
            out = fn(hidden_states=hidden_states, router_logits=router_logits, **kw)
            w, ids = out[0], out[1]
        w = w.to(torch.float32)
        if routed_scaling_factor is not None and routed_scaling_factor != 1.0:
            w = w * routed_scaling_factor
        return TopK(w, ids.to(torch.int32))

    return engine.ok("select_experts", impl, fn, variant)


@ENGINE.adapter("moe_align_block_size")
def _build_align(engine: Engine) -> Resolution:
    _, fn = engine.find([
        Location(f"{MOE}.moe_runner.triton_utils.moe_align_block_size", "moe_align_block_size", ">=0.5.11"),
        Location(f"{MOE}.fused_moe_triton.moe_align_block_size", "moe_align_block_size", ">=0.5.2,<0.5.11"),
        Location(OLD_FM, "moe_align_block_size", "<0.5.2"),
    ])

    def impl(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids):
        if expert_map is not None or pad_sorted_ids:
            raise engine.unsupported("moe_align_block_size with expert_map / pad_sorted_ids",
                                     detail="SGLang's version takes neither; use backend='vllm' or 'reference'")
        out = fn(topk_ids, block_size, num_experts)
        return out[0], out[1], out[2]

    return engine.ok("moe_align_block_size", impl, fn, "basic")


@ENGINE.adapter("get_config_dtype_str")
def _build_dtype_str(engine: Engine) -> Resolution:
    _, fn = engine.find([Location(NEW_CFG, "get_config_dtype_str", ">=0.5.11"),
                         Location(OLD_CFG, "get_config_dtype_str", ">=0.5.2,<0.5.11"),
                         Location(OLD_FM, "get_config_dtype_str", "<0.5.2")])

    def impl(dtype, use_fp8_w8a8, use_int8_w8a16, use_int4_w4a16, ocp_mx_scheme):
        if ocp_mx_scheme is not None:
            raise engine.unsupported("OCP MX schemes in tuned-config names")
        return fn(dtype, use_int8_w8a16=use_int8_w8a16, use_int4_w4a16=use_int4_w4a16, use_fp8_w8a8=use_fp8_w8a8)

    return engine.ok("get_config_dtype_str", impl, fn, "flags")


@ENGINE.adapter("make_expert_map")
def _build_expert_map(engine: Engine) -> Resolution:
    raise engine.unsupported(
        "make_expert_map",
        detail="SGLang builds expert maps inside its EP layers, with no public function; "
        "moecompat's reference placement (backend='reference') is what its linear EP uses",
    )


# --------------------------------------------------------------------------------------------
# Tuned Triton configs (used by `moecompat tune`)

_CFG_LOCATIONS = (Location(NEW_CFG, "get_config_file_name", ">=0.5.11"), Location(OLD_CFG, "get_config_file_name", ">=0.5.2,<0.5.11"),
                  Location(OLD_FM, "get_config_file_name", "<0.5.2"))


@ENGINE.adapter("get_config_file_name")
def _build_config_file_name(engine: Engine) -> Resolution:
    _, fn = engine.find(_CFG_LOCATIONS)
    params = inspect.signature(fn).parameters

    def impl(E, N, dtype_str, block_shape, per_channel_quant=False, down_moe=False):
        kw: dict[str, Any] = {}
        if per_channel_quant:
            if "per_channel_quant" not in params:
                raise engine.unsupported("per-channel config names", ">=0.5.3.post2")
            kw["per_channel_quant"] = True
        if down_moe:
            if "down_moe" not in params:
                raise engine.unsupported("down_moe config names", ">=0.5.4.post2")
            kw["down_moe"] = True
        return fn(E, N, dtype_str, list(block_shape) if block_shape else None, **kw)

    return engine.ok("get_config_file_name", impl, fn, "per_channel+down" if "down_moe" in params else "basic")


@ENGINE.adapter("tuned_config_location")
def _build_config_location(engine: Engine) -> Resolution:
    import os

    loc, fn = engine.find(_CFG_LOCATIONS)
    import importlib

    module_dir = os.path.dirname(os.path.realpath(importlib.import_module(loc.module).__file__ or ""))

    def impl(folder: str | None) -> tuple[str, dict[str, str]]:
        # SGLang looks in <dir>/configs/triton_<x_y_z>/ (dir: SGLANG_MOE_CONFIG_DIR or its package).
        import triton

        version_dir = f"triton_{triton.__version__.replace('.', '_')}"
        root = folder or module_dir
        env = {"SGLANG_MOE_CONFIG_DIR": folder} if folder else {}
        return os.path.join(root, "configs", version_dir), env

    return engine.ok("tuned_config_location", impl, fn, "configs/triton_<version>")


@ENGINE.adapter("get_moe_configs")
def _build_get_moe_configs(engine: Engine) -> Resolution:
    _, fn = engine.find([Location(NEW_CFG, "get_moe_configs", ">=0.5.11"), Location(OLD_CFG, "get_moe_configs", ">=0.5.2,<0.5.11"),
                         Location(OLD_FM, "get_moe_configs", "<0.5.2")])
    params = inspect.signature(fn).parameters

    _ensure_server_args()  # get_moe_configs reads the deterministic-inference server arg

    def impl(E, N, dtype_str, block_shape, per_channel_quant=False):
        getattr(fn, "cache_clear", lambda: None)()
        kw = {"per_channel_quant": per_channel_quant} if "per_channel_quant" in params else {}
        bn, bk = (block_shape or [0, 0])
        return fn(E, N, dtype_str, bn, bk, **kw)

    return engine.ok("get_moe_configs", impl, fn, "flags")


@ENGINE.adapter("override_config")
def _build_override(engine: Engine) -> Resolution:
    loc, fn = engine.find([Location(f"{MOE}.fused_moe_triton", "override_config"),
                           Location(f"{MOE}.moe_runner.triton_utils", "override_config")])
    import contextlib
    import importlib

    state_mod = importlib.import_module(fn.__module__)

    @contextlib.contextmanager
    def impl(config: dict[str, int]):
        previous = getattr(state_mod, "_config", None)
        try:
            with fn(config):
                yield
        finally:
            state_mod._config = previous  # type: ignore[attr-defined]

    return engine.ok("override_config", impl, fn, "module _config")


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
    version = engine.version()
    if version is not None and engine.fact(EP_LAYER_NEEDS_SGL_KERNEL).holds_for(version):
        try:
            importlib.import_module(f"{MOE}.ep_moe.layer")
        except Exception as exc:
            reason = sgl_kernel_unavailable(exc)
            if reason is None:
                raise
            raise engine.unsupported(
                "ep_moe_layer_class", "==0.4.7 or >=0.5.4.post1 on any platform, this release where sgl-kernel loads (CUDA)",
                detail=f"this release's {EP_LAYER_NEEDS_SGL_KERNEL}, and {reason}") from None
    try:
        _, fn = engine.find([Location(f"{MOE}.ep_moe.layer", "get_moe_impl_class", ">=0.4.7")])
    except LookupError:
        fn = None
    if fn is not None:
        takes_cfg = bool(inspect.signature(fn).parameters)

        def impl(quant_config: Any = None) -> Any:
            return fn(quant_config) if takes_cfg else fn()

        return engine.ok("ep_moe_layer_class", impl, fn, "get_moe_impl_class(quant_config)" if takes_cfg else "get_moe_impl_class()")
    _, cls = engine.find([Location(f"{MOE}.ep_moe.layer", "EPMoE", "<0.5.3")])
    return engine.ok("ep_moe_layer_class", lambda quant_config=None: cls, cls, "EPMoE")
