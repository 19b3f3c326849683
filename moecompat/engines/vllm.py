"""vLLM backend: the version facts (one table) and the adapters built from them.

Paths are under ``vllm.model_executor.layers``. Every fact names the versions it holds for;
``tests/engines/test_vllm_surface.py`` checks each one against the installed release, and
``tests/engines/test_vllm_facts_static.py`` against the sources of every release in the matrix.
Adapters never trust a version number to pick a call form: they probe (import, then
``Signature.bind``) and the facts explain and pin what the probes find.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any

import torch

from ..adapters import Location, Resolution, Variant, VersionFact
from ..errors import EngineImportError
from ..quant import QuantConfig
from ..vocab import Activation, QuantScheme, ScoringFunc, TopK
from .base import TRITON_SCHEME_FLAGS, Engine, mask_expert_map

_log = logging.getLogger("moecompat")

# Found on an H100: vLLM 0.24's oracle ignores the variable (gone from vllm.envs); a layer's
# FusedMoEConfig.moe_backend ("--moe-backend marlin") forces the backend instead.
MXFP4_MARLIN_ENV = "VLLM_MXFP4_USE_MARLIN forces the Marlin MXFP4 MoE backend"

FM = "vllm.model_executor.layers.fused_moe"
FMM = f"{FM}.fused_moe"

FACTS: tuple[VersionFact, ...] = (
    # fused_experts ---------------------------------------------------------------------------
    VersionFact("fused_experts", ">=0.6", f"{FMM}:fused_experts"),
    VersionFact("fused_experts: int4_w4a16 flags and zero points", ">=0.7,<0.11", f"{FMM}:fused_experts", "param", "use_int4_w4a16"),
    VersionFact("fused_experts: activation", ">=0.8", f"{FMM}:fused_experts", "param", "activation"),
    VersionFact("fused_experts: expert_map", ">=0.8", f"{FMM}:fused_experts", "param", "expert_map"),
    VersionFact("fused_experts: apply_router_weight_on_input", ">=0.8", f"{FMM}:fused_experts", "param", "apply_router_weight_on_input"),
    VersionFact("fused_experts: int8_w8a8 and per-channel flags", ">=0.8,<0.11", f"{FMM}:fused_experts", "param", "use_int8_w8a8"),
    VersionFact("fused_experts: quant_config", ">=0.11", f"{FMM}:fused_experts", "param", "quant_config"),
    VersionFact("fused_experts: inplace", "<0.23", f"{FMM}:fused_experts", "param", "inplace"),
    VersionFact("MoEActivation enum (activation is no longer a string)", ">=0.17", f"{FM}.activation:MoEActivation"),
    VersionFact("gelu activation", ">=0.8", kind="behaviour"),
    VersionFact("grouped_topk with a bias: biased weights, groups ranked by max", "<0.7", kind="behaviour"),
    VersionFact("swigluoai activation", ">=0.10", kind="behaviour"),
    VersionFact("Triton kernel ties per-token activation scales to per-channel weight scales", ">=0.6", kind="behaviour"),
    VersionFact("expert_map with dynamic per-tensor w8a8 scales gives NaN rows (moecompat masks instead)", "==0.24.0", kind="behaviour"),
    VersionFact("FusedMoE layer class in layer.py", "<0.27", f"{FM}.layer:FusedMoE"),
    VersionFact("FusedMoEFactory in layer.py (replaces the FusedMoE class)", ">=0.27", f"{FM}.layer:FusedMoEFactory"),
    VersionFact("package-level fused_experts is a placeholder without a Triton driver", ">=0.11", kind="behaviour"),
    # quant config ---------------------------------------------------------------------------
    VersionFact("FusedMoEQuantConfig", ">=0.9", f"{FM}.config:FusedMoEQuantConfig"),
    VersionFact("FusedMoEQuantConfig.make(use_fp8_w8a8=..., ...) flags", ">=0.9,<0.11", f"{FM}.config:FusedMoEQuantConfig.make", "param", "use_fp8_w8a8"),
    VersionFact("FusedMoEQuantConfig.make(quant_dtype=...)", ">=0.11", f"{FM}.config:FusedMoEQuantConfig.make", "param", "quant_dtype"),
    VersionFact("fp8_w8a8_moe_quant_config factory", ">=0.11", f"{FM}.config:fp8_w8a8_moe_quant_config"),
    VersionFact("int4_w4a16_moe_quant_config factory", ">=0.11", f"{FM}.config:int4_w4a16_moe_quant_config"),
    # tuned-config helpers -------------------------------------------------------------------
    VersionFact("get_config_dtype_str in fused_moe.py", "<0.11", f"{FMM}:get_config_dtype_str"),
    VersionFact("get_config_dtype_str: use_int4_w4a16", ">=0.7,<0.11", f"{FMM}:get_config_dtype_str", "param", "use_int4_w4a16"),
    VersionFact("get_config_dtype_str: use_mxfp4_w4a4", ">=0.10,<0.11", f"{FMM}:get_config_dtype_str", "param", "use_mxfp4_w4a4"),
    VersionFact("_get_config_dtype_str in config.py", ">=0.11", f"{FM}.config:_get_config_dtype_str"),
    VersionFact("_get_config_dtype_str: use_fp8_w8a16", ">=0.14", f"{FM}.config:_get_config_dtype_str", "param", "use_fp8_w8a16"),
    VersionFact("get_config_file_name", ">=0.6", f"{FMM}:get_config_file_name"),
    VersionFact("get_config_file_name: block_shape", ">=0.7", f"{FMM}:get_config_file_name", "param", "block_shape"),
    VersionFact("get_moe_configs", ">=0.6", f"{FMM}:get_moe_configs"),
    VersionFact("try_get_optimal_moe_config", ">=0.6", f"{FMM}:try_get_optimal_moe_config"),
    VersionFact("try_get_optimal_moe_config: is_marlin", "<0.10", f"{FMM}:try_get_optimal_moe_config", "param", "is_marlin"),
    # routing --------------------------------------------------------------------------------
    VersionFact("fused_topk in fused_moe.py", "<0.15", f"{FMM}:fused_topk"),
    VersionFact("grouped_topk in fused_moe.py", "<0.15", f"{FMM}:grouped_topk"),
    VersionFact("fused_topk in router/fused_topk_router.py", ">=0.15", f"{FM}.router.fused_topk_router:fused_topk"),
    VersionFact("grouped_topk in router/grouped_topk_router.py", ">=0.15", f"{FM}.router.grouped_topk_router:grouped_topk"),
    VersionFact("grouped_topk: routed_scaling_factor", ">=0.10,<0.15", f"{FMM}:grouped_topk", "param", "routed_scaling_factor"),
    VersionFact("router grouped_topk: routed_scaling_factor", ">=0.15", f"{FM}.router.grouped_topk_router:grouped_topk", "param", "routed_scaling_factor"),
    VersionFact("FusedMoE.select_experts(hidden_states, router_logits, top_k, ...) static form", "<0.12", f"{FM}.layer:FusedMoE.select_experts", "param", "top_k"),
    VersionFact("CPU select_experts in cpu_fused_moe.py", ">=0.10,<0.28", f"{FM}.cpu_fused_moe:select_experts"),
    VersionFact("CPU select_experts in experts/cpu_moe.py", ">=0.28,<0.30", f"{FM}.experts.cpu_moe:select_experts"),
    VersionFact("CPU select_experts in router/cpu_router.py", ">=0.30", f"{FM}.router.cpu_router:select_experts"),
    # alignment, expert maps -----------------------------------------------------------------
    VersionFact("moe_align_block_size importable from fused_moe.py", ">=0.6", f"{FMM}:moe_align_block_size"),
    VersionFact("moe_align_block_size module (expert_map, pad_sorted_ids)", ">=0.8", f"{FM}.moe_align_block_size:moe_align_block_size"),
    VersionFact("determine_expert_map in layer.py", ">=0.8,<0.22", f"{FM}.layer:determine_expert_map"),
    VersionFact("determine_expert_map in expert_map_manager.py", ">=0.22", f"{FM}.expert_map_manager:determine_expert_map"),
    VersionFact("determine_expert_map: placement strategy", ">=0.11,<0.22", f"{FM}.layer:determine_expert_map", "param", "expert_placement_strategy"),
    VersionFact("expert_map_manager determine_expert_map: placement strategy", ">=0.22", f"{FM}.expert_map_manager:determine_expert_map", "param", "expert_placement_strategy"),
    VersionFact("Mxfp4Backend in quantization/mxfp4.py", ">=0.10,<0.19", "vllm.model_executor.layers.quantization.mxfp4:Mxfp4Backend"),
    VersionFact("get_mxfp4_backend in quantization/mxfp4.py", ">=0.10,<0.19", "vllm.model_executor.layers.quantization.mxfp4:get_mxfp4_backend"),
    VersionFact("get_mxfp4_backend(with_lora_support)", ">=0.11,<0.19", "vllm.model_executor.layers.quantization.mxfp4:get_mxfp4_backend", "param", "with_lora_support"),
    VersionFact("MXFP4 oracle: Mxfp4MoeBackend", ">=0.19", f"{FM}.oracle.mxfp4:Mxfp4MoeBackend"),
    VersionFact("MXFP4 oracle: select_mxfp4_moe_backend", ">=0.19", f"{FM}.oracle.mxfp4:select_mxfp4_moe_backend"),
    VersionFact("MXFP4 oracle: convert_to_mxfp4_moe_kernel_format (gpt-oss layout)", ">=0.19,<0.20", f"{FM}.oracle.mxfp4:convert_to_mxfp4_moe_kernel_format"),
    VersionFact("MXFP4 oracle: convert_gpt_oss_weight_to_mxfp4_moe_kernel_format", ">=0.20", f"{FM}.oracle.mxfp4:convert_gpt_oss_weight_to_mxfp4_moe_kernel_format"),
    VersionFact("FusedMoEConfig(intermediate_size) (was intermediate_size_per_partition)", ">=0.24", f"{FM}.config:FusedMoEConfig", "param", "intermediate_size"),
    VersionFact("MoEActivation in fused_moe/activation.py", ">=0.17", f"{FM}.activation:MoEActivation"),
    VersionFact("FusedMoEParallelConfig.make_no_parallel", ">=0.15", f"{FM}.config:FusedMoEParallelConfig.make_no_parallel"),
    VersionFact(MXFP4_MARLIN_ENV, ">=0.10,<0.24", "vllm.envs", kind="behaviour"),
    VersionFact("select_mxfp4_moe_backend(config, activation_key)", ">=0.21", f"{FM}.oracle.mxfp4:select_mxfp4_moe_backend", "param", "activation_key"),
    VersionFact("mxfp4_round_up_hidden_size_and_intermediate_size(..., activation)", ">=0.28", f"{FM}.oracle.mxfp4:mxfp4_round_up_hidden_size_and_intermediate_size", "param", "activation"),
    VersionFact("FusedMoEPermuteExpertsUnpermute.supports_expert_map", ">=0.9,<0.17", f"{FM}.modular_kernel:FusedMoEPermuteExpertsUnpermute.supports_expert_map"),
    VersionFact("FusedMoEExperts.supports_expert_map (removed by PR #43108)", ">=0.17,<0.23", f"{FM}.modular_kernel:FusedMoEExperts.supports_expert_map"),
    VersionFact("determine_expert_map gives the remainder to the last rank (later: to the first ranks)", ">=0.8,<0.11", kind="behaviour"),
)

ENGINE = Engine(
    name="vllm",
    distributions=("vllm",),
    root_modules=(FM,),
    tested=">=0.6,<0.34",
    facts=FACTS,
)


def _range(what: str) -> str:
    return ENGINE.fact(what).versions


def _not_placeholder(obj: Any) -> bool:
    # Without a Triton driver, vLLM exports lambdas that raise; resolve the defining module.
    return callable(obj) and getattr(obj, "__name__", "") != "<lambda>"


# --------------------------------------------------------------------------------------------
# Quant config translation (cached per QuantConfig object; QuantConfig is frozen)

_FLAG_FOR_SCHEME = TRITON_SCHEME_FLAGS
_SCHEME_RANGES = {
    QuantScheme.FP8_W8A8: ">=0.6",
    QuantScheme.INT8_W8A16: ">=0.6",
    QuantScheme.INT4_W4A16: ">=0.7",
    QuantScheme.INT8_W8A8: ">=0.8",
}


def _kernel_block_shape(qc: QuantConfig) -> list[int] | None:
    if qc.scheme is QuantScheme.INT4_W4A16:
        # vLLM's WNA16 Triton kernel takes the group size as block_shape [0, group_size].
        return [0, int(qc.group_size or 0)]
    return list(qc.block_shape) if qc.block_shape is not None else None


def _check_kernel_supports(qc: QuantConfig) -> None:
    s = qc.scheme
    if s is None:
        return
    if s is QuantScheme.MXFP4_W4A16:
        raise ENGINE.unsupported(
            "mxfp4_w4a16 through the functional fused_experts",
            detail="vLLM runs MXFP4 MoE through its MXFP4 backends (Triton kernels, Marlin, FlashInfer), "
            "not fused_experts; use the reference backend or the mxfp4 backend oracle",
        )
    if s in (QuantScheme.FP8_W8A8, QuantScheme.INT8_W8A8) and qc.block_shape is None and qc.per_act_token_quant != qc.per_out_ch_quant:
        raise ENGINE.unsupported(
            f"{s.value} with per_act_token_quant={qc.per_act_token_quant} and per_out_ch_quant={qc.per_out_ch_quant}",
            detail="vLLM's Triton kernel quantizes activations per token exactly when weights are per channel",
        )


def _legacy_flags(qc: QuantConfig, params: frozenset[str]) -> dict[str, Any]:
    """Keyword flags + scales for fused_experts/get_config of vLLM < 0.11."""
    _check_kernel_supports(qc)
    s = qc.scheme
    if s is None:
        return {}
    flag = _FLAG_FOR_SCHEME[s]
    if flag not in params:
        raise ENGINE.unsupported(s.value, available_in=_SCHEME_RANGES[s])
    kw: dict[str, Any] = {flag: True, "w1_scale": qc.w1_scale, "w2_scale": qc.w2_scale}
    if qc.a1_scale is not None:
        kw["a1_scale"], kw["a2_scale"] = qc.a1_scale, qc.a2_scale
    if qc.w1_zp is not None:
        kw["w1_zp"], kw["w2_zp"] = qc.w1_zp, qc.w2_zp
    bs = _kernel_block_shape(qc)
    if bs is not None:
        if "block_shape" not in params:
            raise ENGINE.unsupported("block-quantized weights", available_in=">=0.6.5")
        kw["block_shape"] = bs
    if qc.per_act_token_quant or qc.per_out_ch_quant:
        if "per_channel_quant" not in params:
            raise ENGINE.unsupported("per-channel / per-token w8a8 scales", available_in=">=0.8")
        kw["per_channel_quant"] = True
    return kw


def _modern_quant_config(qc: QuantConfig) -> Any:
    """vLLM >= 0.11: a FusedMoEQuantConfig built by vLLM's own factory for the scheme."""
    _check_kernel_supports(qc)
    from vllm.model_executor.layers.fused_moe import config as vcfg

    s = qc.scheme
    if s is None:
        return vcfg.FUSED_MOE_UNQUANTIZED_CONFIG
    bs = _kernel_block_shape(qc)
    if s in (QuantScheme.FP8_W8A8, QuantScheme.INT8_W8A8):
        factory = vcfg.fp8_w8a8_moe_quant_config if s is QuantScheme.FP8_W8A8 else vcfg.int8_w8a8_moe_quant_config
        kw = dict(w1_scale=qc.w1_scale, w2_scale=qc.w2_scale, a1_scale=qc.a1_scale, a2_scale=qc.a2_scale,
                  per_act_token_quant=qc.per_act_token_quant, per_out_ch_quant=qc.per_out_ch_quant, block_shape=bs)
        params = inspect.signature(factory).parameters
        if "per_out_ch_quant" not in params and qc.per_out_ch_quant == qc.per_act_token_quant:
            # The factory leaves it False: the kernel reads weights per channel exactly when it
            # quantizes activations per token (checked above).
            del kw["per_out_ch_quant"]
        if "block_shape" not in params and bs is not None:
            # No block option on this factory (int8): vLLM's generic constructor takes it.
            return vcfg.FusedMoEQuantConfig.make(torch.int8, **kw)
        return _call_factory(factory, **kw)
    factory = vcfg.int8_w8a16_moe_quant_config if s is QuantScheme.INT8_W8A16 else vcfg.int4_w4a16_moe_quant_config
    return _call_factory(factory, w1_scale=qc.w1_scale, w2_scale=qc.w2_scale, w1_zp=qc.w1_zp, w2_zp=qc.w2_zp, block_shape=bs)


def _call_factory(factory: Any, **kw: Any) -> Any:
    """Call a vLLM quant-config factory with the options it has; an option it lacks may only be
    left out when it is at its neutral value (None/False), otherwise the feature is missing."""
    params = inspect.signature(factory).parameters
    for name in [k for k in kw if k not in params]:
        if kw[name] not in (None, False):
            raise ENGINE.unsupported(f"{factory.__name__}({name}=...)", detail="this vLLM's factory has no such option")
        del kw[name]
    return factory(**kw)


def _legacy_make(make: Any, qc: QuantConfig) -> Any:
    """vLLM 0.9-0.10: FusedMoEQuantConfig.make(use_* flags, per_*_quant, block_shape)."""
    _check_kernel_supports(qc)
    s = qc.scheme
    if s is None:
        return make()
    return make(**{_FLAG_FOR_SCHEME[s]: True}, per_act_token_quant=qc.per_act_token_quant,
                per_out_ch_quant=qc.per_out_ch_quant, block_shape=_kernel_block_shape(qc))


def _cached(qc: QuantConfig, key: str, build: Any) -> Any:
    cache = qc._engine_cache
    hit = cache.get(key)
    if hit is None:
        hit = build()
        cache[key] = hit
    return hit


@ENGINE.adapter("make_quant_config")
def _build_make_quant_config(engine: Engine) -> Resolution:
    try:
        loc, make = engine.find([Location(f"{FM}.config", "FusedMoEQuantConfig.make", ">=0.9")])
    except LookupError:
        def legacy(qc: QuantConfig) -> dict[str, Any]:
            # importlib: in 0.6-0.10 the package re-exports a *function* fused_moe that shadows
            # the submodule of the same name for attribute-style imports.
            fmm = importlib.import_module(FMM)
            params = frozenset(inspect.signature(fmm.fused_experts).parameters)
            return _legacy_flags(qc, params)
        return engine.ok("make_quant_config", legacy, f"{FMM}:fused_experts", "legacy-flags")
    params = inspect.signature(make).parameters
    if "quant_dtype" in params:
        return engine.ok("make_quant_config", _modern_quant_config, make, "factories")
    return engine.ok("make_quant_config", lambda qc: _legacy_make(make, qc), make, "make-flags")


# --------------------------------------------------------------------------------------------
# fused_experts

_FE_VARIANTS = (
    Variant.of("quant_config+enum", 5, "activation", "apply_router_weight_on_input", "global_num_experts", "expert_map", "quant_config"),
    Variant.of("flags+activation", 5, "inplace", "activation", "apply_router_weight_on_input", "use_fp8_w8a8", "use_int8_w8a8",
               "per_channel_quant", "global_num_experts", "expert_map", "w1_scale", "w2_scale", "a1_scale", "a2_scale", "block_shape"),
    Variant.of("flags", 5, "inplace", "use_fp8_w8a8", "use_int8_w8a16", "w1_scale", "w2_scale", "a1_scale", "a2_scale"),
)



@ENGINE.adapter("fused_experts")
def _build_fused_experts(engine: Engine) -> Resolution:
    loc, fn = engine.find([Location(FMM, "fused_experts", ">=0.6")], accept=_not_placeholder)
    variant = engine.pick(fn, _FE_VARIANTS, "fused_experts")
    params = frozenset(inspect.signature(fn).parameters)
    has_inplace = "inplace" in params
    modern = variant.name == "quant_config+enum"
    acts: dict[Activation, Any]
    if "activation" not in params:
        acts = {Activation.SILU: None}
    else:
        try:
            from vllm.model_executor.layers.fused_moe.activation import MoEActivation
            acts = {a: getattr(MoEActivation, a.name) for a in Activation if hasattr(MoEActivation, a.name)}
        except ImportError:
            acts = {Activation.SILU: "silu", Activation.GELU: "gelu"}
            if engine.fact("swigluoai activation").holds_for(engine.version()):  # type: ignore[arg-type]
                acts[Activation.SWIGLUOAI] = "swigluoai"
    act_ranges = {Activation.GELU: _range("gelu activation"), Activation.SWIGLUOAI: _range("swigluoai activation")}
    has_map = "expert_map" in params
    has_on_input = "apply_router_weight_on_input" in params
    if modern:
        make_cfg = _modern_quant_config
    else:
        def make_cfg(qc: QuantConfig) -> dict[str, Any]:
            return _legacy_flags(qc, params)

    def build_call(hidden_states, w1, w2, topk_weights, topk_ids, activation, qc, expert_map, global_num_experts,
                   apply_router_weight_on_input, inplace) -> tuple[tuple[Any, ...], dict[str, Any], bool]:
        """(positional args, keyword args, copy the result into hidden_states?) for vLLM's call."""
        act = acts.get(activation, acts)
        if act is acts:
            raise engine.unsupported(f"activation {activation.value!r}", act_ranges.get(activation, ""))
        cfg = _cached(qc, "vllm", lambda: make_cfg(qc))
        if expert_map is not None and (not has_map or (qc.quantizes_activations and qc.block_shape is None
                                                        and not qc.per_act_token_quant)):
            # No expert_map parameter, or dynamic per-tensor w8a8 scales, whose expert-map path
            # returned NaN rows on vLLM 0.24.0 (H100, 257 tokens; tests/gpu): apply the map here.
            topk_weights, topk_ids = mask_expert_map(topk_weights, topk_ids, expert_map)
            expert_map = None
        if apply_router_weight_on_input and not has_on_input:
            raise engine.unsupported("apply_router_weight_on_input", _range("fused_experts: apply_router_weight_on_input"))
        args = (hidden_states, w1, w2, topk_weights, topk_ids)
        if modern:
            kw: dict[str, Any] = {"activation": act, "apply_router_weight_on_input": apply_router_weight_on_input,
                                  "global_num_experts": global_num_experts, "expert_map": expert_map, "quant_config": cfg}
        else:
            kw = dict(cfg)
            if act is not None:
                kw["activation"] = act
            if has_map:
                kw["expert_map"] = expert_map
                kw["global_num_experts"] = global_num_experts
            if has_on_input:
                kw["apply_router_weight_on_input"] = apply_router_weight_on_input
        if has_inplace:
            kw["inplace"] = inplace
        return args, kw, inplace and not has_inplace

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


# --------------------------------------------------------------------------------------------
# select_experts: vLLM's top-k functions (CUDA kernels) on CUDA tensors, its CPU routing code on
# CPU tensors.

_CPU_SELECT = (
    Location(f"{FM}.router.cpu_router", "select_experts", ">=0.30"),
    Location(f"{FM}.experts.cpu_moe", "select_experts", ">=0.28,<0.30"),
    Location(f"{FM}.cpu_fused_moe", "select_experts", ">=0.10,<0.28"),
)
_CPU_GROUPED = (
    Location(f"{FM}.router.cpu_router", "grouped_topk", ">=0.30"),
    Location(f"{FM}.experts.cpu_moe", "grouped_topk", ">=0.28,<0.30"),
    Location(f"{FM}.cpu_fused_moe", "grouped_topk", ">=0.10,<0.28"),
)


@ENGINE.adapter("select_experts")
def _build_select_experts(engine: Engine) -> Resolution:
    _, fused_topk = engine.find([Location(f"{FM}.router.fused_topk_router", "fused_topk", ">=0.15"),
                                 Location(FMM, "fused_topk", "<0.15")], accept=_not_placeholder)
    gloc, grouped_topk = engine.find([Location(f"{FM}.router.grouped_topk_router", "grouped_topk", ">=0.15"),
                                      Location(FMM, "grouped_topk", "<0.15")], accept=_not_placeholder)
    try:
        _, cpu_grouped = engine.find(_CPU_GROUPED)
    except LookupError:
        cpu_grouped = None
    gparams = frozenset(inspect.signature(grouped_topk).parameters)
    biased_groups_by_max = engine.fact("grouped_topk with a bias: biased weights, groups ranked by max").holds_for(engine.version())  # type: ignore[arg-type]
    if "scoring_func" not in gparams:
        sig_variant = "grouped_topk(softmax only)"
    elif "routed_scaling_factor" in gparams:
        sig_variant = "grouped_topk(scoring_func, routed_scaling_factor)"
    else:
        sig_variant = "grouped_topk(scoring_func)"

    def impl(hidden_states, router_logits, top_k, renormalize, scoring, use_grouped, num_expert_group, topk_group,
             bias, routed_scaling_factor, custom_routing_function) -> TopK:
        if custom_routing_function is not None:
            w, ids = custom_routing_function(hidden_states=hidden_states, gating_output=router_logits, topk=top_k,
                                             renormalize=renormalize)
            return TopK(w.to(torch.float32), ids.to(torch.int32))
        rsf = routed_scaling_factor if routed_scaling_factor is not None else 1.0
        if not use_grouped and bias is None and scoring is ScoringFunc.SOFTMAX and router_logits.is_cuda:
            out = fused_topk(hidden_states, router_logits, top_k, renormalize)
            w, ids = out[0], out[1]
            if rsf != 1.0:
                w = w * rsf
            return TopK(w.to(torch.float32), ids.to(torch.int32))
        # Grouped, biased or sigmoid routing: vLLM's grouped_topk (one group of all experts
        # when the caller did not ask for groups).
        g = grouped_topk if router_logits.is_cuda or cpu_grouped is None else cpu_grouped
        groups, tgroup = (num_expert_group, topk_group) if use_grouped else (1, 1)
        if g is grouped_topk and "scoring_func" not in gparams and scoring is not ScoringFunc.SOFTMAX:
            raise engine.unsupported("sigmoid scoring", ">=0.6.5")
        if bias is not None and g is grouped_topk and (
                "e_score_correction_bias" not in gparams or biased_groups_by_max):
            raise engine.unsupported(
                "e_score_correction_bias with DeepSeek-V3 semantics", ">=0.7",
                detail="vLLM 0.6 adds the bias to the returned weights and ranks groups by their max")
        kw: dict[str, Any] = {"num_expert_group": groups, "topk_group": tgroup}
        if "scoring_func" in gparams or g is not grouped_topk:
            kw["scoring_func"] = scoring.value
        if bias is not None:
            kw["e_score_correction_bias"] = bias
        applied_rsf = "routed_scaling_factor" in gparams or g is not grouped_topk
        if applied_rsf:
            kw["routed_scaling_factor"] = rsf
        w, ids = g(hidden_states, router_logits, top_k, renormalize, **kw)
        if not applied_rsf and rsf != 1.0:
            w = w * rsf
        return TopK(w.to(torch.float32), ids.to(torch.int32))

    return engine.ok("select_experts", impl, grouped_topk, sig_variant)


# --------------------------------------------------------------------------------------------
# moe_align_block_size, config dtype string, expert map


@ENGINE.adapter("moe_align_block_size")
def _build_align(engine: Engine) -> Resolution:
    _, fn = engine.find([Location(f"{FM}.moe_align_block_size", "moe_align_block_size", ">=0.8"),
                         Location(FMM, "moe_align_block_size", "<0.8")], accept=_not_placeholder)
    params = frozenset(inspect.signature(fn).parameters)

    def impl(topk_ids, block_size, num_experts, expert_map, pad_sorted_ids):
        kw: dict[str, Any] = {}
        if expert_map is not None:
            if "expert_map" not in params:
                raise engine.unsupported("moe_align_block_size with expert_map", _range("moe_align_block_size module (expert_map, pad_sorted_ids)"))
            kw["expert_map"] = expert_map
        if pad_sorted_ids:
            if "pad_sorted_ids" not in params:
                raise engine.unsupported("moe_align_block_size with pad_sorted_ids", _range("moe_align_block_size module (expert_map, pad_sorted_ids)"))
            kw["pad_sorted_ids"] = True
        out = fn(topk_ids, block_size, num_experts, **kw)
        return out[0], out[1], out[2]

    return engine.ok("moe_align_block_size", impl, fn, "with expert_map" if "expert_map" in params else "basic")


@ENGINE.adapter("get_config_dtype_str")
def _build_dtype_str(engine: Engine) -> Resolution:
    loc, fn = engine.find([Location(f"{FM}.config", "_get_config_dtype_str", ">=0.11"),
                           Location(FMM, "get_config_dtype_str", "<0.11")])
    params = frozenset(inspect.signature(fn).parameters)

    def impl(dtype, use_fp8_w8a8, use_int8_w8a16, use_int4_w4a16, ocp_mx_scheme):
        kw: dict[str, Any] = {"use_fp8_w8a8": use_fp8_w8a8, "use_int8_w8a16": use_int8_w8a16}
        if use_int4_w4a16:
            if "use_int4_w4a16" not in params:
                raise engine.unsupported("int4_w4a16 config names", ">=0.7")
            kw["use_int4_w4a16"] = True
        if ocp_mx_scheme is not None:
            if "ocp_mx_scheme" in params:
                kw["ocp_mx_scheme"] = ocp_mx_scheme
            elif "use_mxfp4_w4a4" in params and ocp_mx_scheme == "w_mxfp4_a_mxfp4":
                kw["use_mxfp4_w4a4"] = True
            else:
                raise engine.unsupported(f"OCP MX scheme {ocp_mx_scheme!r} in config names", ">=0.11")
        return fn(dtype, **kw)

    return engine.ok("get_config_dtype_str", impl, fn, "ocp_mx_scheme" if "ocp_mx_scheme" in params else "flags")


@ENGINE.adapter("make_expert_map")
def _build_expert_map(engine: Engine) -> Resolution:
    try:
        _, fn = engine.find([Location(f"{FM}.expert_map_manager", "determine_expert_map", ">=0.22"),
                             Location(f"{FM}.layer", "determine_expert_map", ">=0.8,<0.22")])
    except LookupError as exc:
        raise engine.unsupported("make_expert_map (determine_expert_map)", ">=0.8", detail=str(exc)) from None
    has_strategy = "expert_placement_strategy" in inspect.signature(fn).parameters

    def impl(ep_size, ep_rank, global_num_experts, placement):
        if placement != "linear" and not has_strategy:
            raise engine.unsupported(f"{placement} expert placement", ">=0.11")
        kw = {"expert_placement_strategy": placement} if has_strategy else {}
        out = fn(ep_size, ep_rank, global_num_experts, **kw)
        local, emap = out[0], out[1]
        if emap is None:  # ep_size == 1: every expert is local
            emap = torch.arange(global_num_experts, dtype=torch.int32)
        return int(local), emap

    return engine.ok("make_expert_map", impl, fn, "placement" if has_strategy else "linear-only")


# --------------------------------------------------------------------------------------------
# Tuned Triton configs (used by `moecompat tune`)


@ENGINE.adapter("get_config_file_name")
def _build_config_file_name(engine: Engine) -> Resolution:
    _, fn = engine.find([Location(FMM, "get_config_file_name", ">=0.6")])
    has_block = "block_shape" in inspect.signature(fn).parameters

    def impl(E, N, dtype_str, block_shape, per_channel_quant=False, down_moe=False):
        if down_moe:
            raise engine.unsupported("separate down-projection configs (down_moe)", detail="an SGLang feature")
        if block_shape and not has_block:
            raise engine.unsupported("block-quantized config names", _range("get_config_file_name: block_shape"))
        return fn(E, N, dtype_str, list(block_shape) if block_shape else None) if has_block else fn(E, N, dtype_str)

    return engine.ok("get_config_file_name", impl, fn, "block_shape" if has_block else "basic")


@ENGINE.adapter("tuned_config_location")
def _build_config_location(engine: Engine) -> Resolution:
    import os

    _, fmm = engine.find([Location(FMM, "get_moe_configs", ">=0.6")])

    def impl(folder: str | None) -> tuple[str, dict[str, str]]:
        """(folder the file must be written to, environment variables the engine must see)."""
        if folder is None:
            return os.path.join(os.path.dirname(os.path.realpath(fmm.__code__.co_filename)), "configs"), {}
        return folder, {"VLLM_TUNED_CONFIG_FOLDER": folder}

    return engine.ok("tuned_config_location", impl, fmm, "VLLM_TUNED_CONFIG_FOLDER")


@ENGINE.adapter("get_moe_configs")
def _build_get_moe_configs(engine: Engine) -> Resolution:
    _, fn = engine.find([Location(FMM, "get_moe_configs", ">=0.6")])
    has_block = "block_n" in inspect.signature(fn).parameters

    def impl(E, N, dtype_str, block_shape, per_channel_quant=False):
        getattr(fn, "cache_clear", lambda: None)()  # lru_cached in vLLM; a new file must be seen
        if block_shape and has_block:
            return fn(E, N, dtype_str, block_shape[0], block_shape[1])
        return fn(E, N, dtype_str)

    return engine.ok("get_moe_configs", impl, fn, "block" if has_block else "basic")


@ENGINE.adapter("override_config")
def _build_override(engine: Engine) -> Resolution:
    loc, fn = engine.find([Location(FMM, "override_config", ">=0.6"), Location(FM, "override_config", ">=0.6")])
    import contextlib

    fmm = importlib.import_module(FMM)  # not `import ... as`: the package shadows the submodule

    @contextlib.contextmanager
    def impl(config: dict[str, int]):
        # vLLM's override_config has no try/finally: a kernel that fails inside it (e.g. Triton
        # OutOfResources) would leave the override in force. Restore the module state ourselves.
        previous = getattr(fmm, "_config", None)
        try:
            with fn(config):
                yield
        finally:
            fmm._config = previous  # type: ignore[attr-defined]

    return engine.ok("override_config", impl, fn, "module _config")


# --------------------------------------------------------------------------------------------
# MXFP4 backend oracle (PR #37128 moved it from quantization/mxfp4.py to fused_moe/oracle/)

_MX_ENUMS = (Location(f"{FM}.oracle.mxfp4", "Mxfp4MoeBackend", ">=0.19"),
             Location("vllm.model_executor.layers.quantization.mxfp4", "Mxfp4Backend", ">=0.10,<0.19"))


@ENGINE.adapter("moe_layer_config")
def _build_moe_layer_config(engine: Engine) -> Resolution:
    """vLLM's per-layer ``FusedMoEConfig`` (>= 0.17, where ``MoEActivation`` exists) from a
    :class:`moecompat.mxfp4.MoELayerSpec`. Its
    required fields drift (``intermediate_size_per_partition`` -> ``intermediate_size`` at 0.24,
    new defaulted fields most releases): the keyword set is bound to the installed dataclass."""
    _, cls = engine.find([Location(f"{FM}.config", "FusedMoEConfig", ">=0.17")])
    _, parallel_cls = engine.find([Location(f"{FM}.config", "FusedMoEParallelConfig", ">=0.17")])
    _, activation_enum = engine.find([Location(f"{FM}.activation", "MoEActivation", ">=0.17")])
    _, routing_enum = engine.find([Location(f"{FM}.config", "RoutingMethodType", ">=0.17")])
    sig = inspect.signature(cls)
    size_field = "intermediate_size" if "intermediate_size" in sig.parameters else "intermediate_size_per_partition"
    routing_by_name = {m.name.lower(): m for m in routing_enum}
    activation_by_value = {m.value: m for m in activation_enum}

    def impl(layer, with_lora_support, device=None):
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        activation = activation_by_value.get(layer.activation)
        if activation is None:
            raise engine.unsupported(f"activation {layer.activation!r} in FusedMoEConfig",
                                     detail=f"MoEActivation has {sorted(activation_by_value)}")
        routing = routing_by_name.get(layer.routing.replace("_", "").lower())
        if routing is None:
            raise engine.unsupported(f"routing {layer.routing!r} in FusedMoEConfig",
                                     detail=f"RoutingMethodType has {[m.name for m in routing_enum]}")
        bound = sig.bind_partial(
            num_experts=layer.num_experts, experts_per_token=layer.top_k, hidden_dim=layer.hidden_size,
            num_local_experts=layer.num_experts, num_logical_experts=layer.num_experts, activation=activation,
            device=device, routing_method=routing, moe_parallel_config=parallel_cls.make_no_parallel(),
            in_dtype=layer.dtype, has_bias=layer.has_bias, is_lora_enabled=with_lora_support,
            **{size_field: layer.intermediate_size})
        return cls(*bound.args, **bound.kwargs)

    return engine.ok("moe_layer_config", impl, cls, size_field)


@ENGINE.adapter("select_mxfp4_backend")
def _build_select_mxfp4(engine: Engine) -> Resolution:
    from .. import mxfp4 as mx

    try:
        _, oracle = engine.find([Location(f"{FM}.oracle.mxfp4", "select_mxfp4_moe_backend", ">=0.19")])
    except LookupError:
        oracle = None
    if oracle is not None:
        takes_key = "activation_key" in inspect.signature(oracle).parameters
        build_config = engine.resolve("moe_layer_config")
        if build_config.status != "ok":
            assert build_config.error is not None
            raise build_config.error

        _, config_or_none = engine.find([Location("vllm.config", "get_current_vllm_config_or_none", ">=0.19")])
        _, set_config = engine.find([Location("vllm.config", "set_current_vllm_config", ">=0.19")])
        _, vllm_config_cls = engine.find([Location("vllm.config", "VllmConfig", ">=0.19")])
        _, model_config_cls = engine.find([Location("vllm.config", "ModelConfig", ">=0.19")])
        model_config_sig = inspect.signature(model_config_cls)
        default_configs: dict[Any, Any] = {}

        def deployment_config(layer):
            # The oracle (>= 0.22) and the kernels' support checks read the current VllmConfig
            # (e.g. the user's MoE activation override in model_config.quantization_config):
            # outside a live model, vLLM's defaults for a gpt-oss model of this layer's shape,
            # built from a local config.json, as `vllm serve <dir>` would.
            if layer not in default_configs:
                model_dir = _gpt_oss_model_dir(layer)
                bound = model_config_sig.bind_partial(model=model_dir, tokenizer=model_dir, skip_tokenizer_init=True,
                                                      dtype=str(layer.dtype).removeprefix("torch."))
                try:
                    model_config = model_config_cls(*bound.args, **bound.kwargs)
                except Exception as exc:  # not a kernel: vLLM validating a model it must import
                    raise EngineImportError(
                        "vllm", engine.version_str(), "select_mxfp4_backend outside a vLLM model",
                        detail="vLLM's ModelConfig for a gpt-oss layer failed (it imports vLLM's gpt-oss "
                               "model module and its attention backends); call it inside your own "
                               "set_current_vllm_config(...) or a running vLLM model", cause=exc) from exc
                default_configs[layer] = vllm_config_cls(model_config=model_config)
            return default_configs[layer]

        platforms = importlib.import_module("vllm.platforms")

        def impl_oracle(with_lora_support, moe_config, layer):
            if platforms.current_platform.is_unspecified():
                # No device vLLM can run on (e.g. a CUDA wheel on a GPU-less host): vLLM cannot
                # build a VllmConfig, let alone an MXFP4 layer. get_mxfp4_backend (< 0.19) and
                # the reference table answer NONE there; so does moecompat on the oracle versions.
                return mx.Mxfp4Backend.NONE
            if moe_config is None:
                moe_config = build_config.impl(layer, with_lora_support)
            try:
                if config_or_none() is not None:  # inside the caller's own vLLM config (a live model)
                    out = oracle(moe_config)
                else:
                    with set_config(deployment_config(layer)):
                        out = oracle(moe_config)
            except (NotImplementedError, ValueError) as exc:
                # The oracle's refusals: "No MXFP4 MoE backend supports the deployment
                # configuration" (nothing fits) and "Mxfp4 MoE backend 'X' does not support the
                # deployment configuration" (the platform's only or the requested backend does
                # not fit). get_mxfp4_backend answered NONE there before 0.19: so does moecompat,
                # with vLLM's reasons in the log. Any other error is a real one and surfaces.
                if "deployment configuration" not in str(exc):
                    raise
                _log.info("vLLM's MXFP4 oracle found no backend: %s", exc)
                return mx.Mxfp4Backend.NONE
            member = out[0] if isinstance(out, tuple) else out
            return mx.from_engine(member)

        return engine.ok("select_mxfp4_backend", impl_oracle, oracle, "oracle+activation_key" if takes_key else "oracle")
    _, legacy = engine.find([Location("vllm.model_executor.layers.quantization.mxfp4", "get_mxfp4_backend", ">=0.10,<0.19")])
    takes_lora = "with_lora_support" in inspect.signature(legacy).parameters

    def impl_legacy(with_lora_support, moe_config, layer):
        return mx.from_engine(legacy(with_lora_support) if takes_lora else legacy())

    return engine.ok("select_mxfp4_backend", impl_legacy, legacy, "get_mxfp4_backend")


def _gpt_oss_model_dir(layer: Any) -> str:
    """A throw-away model directory holding a gpt-oss ``config.json`` of ``layer``'s shape
    (no weights, no tokenizer): enough for vLLM's ``ModelConfig``."""
    import atexit
    import json
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="moecompat-gpt-oss-")
    atexit.register(shutil.rmtree, path, True)
    config = {
        "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "hidden_size": layer.hidden_size,
        "intermediate_size": layer.intermediate_size, "num_local_experts": layer.num_experts,
        "num_experts_per_tok": layer.top_k, "num_hidden_layers": 1, "num_attention_heads": 64,
        "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088, "max_position_embeddings": 4096,
        "torch_dtype": str(layer.dtype).removeprefix("torch."),
    }
    with open(f"{path}/config.json", "w") as f:
        json.dump(config, f)
    return path


@ENGINE.adapter("mxfp4_round_up")
def _build_mxfp4_round_up(engine: Engine) -> Resolution:
    from .. import mxfp4 as mx

    _, fn = engine.find([Location(f"{FM}.oracle.mxfp4", "mxfp4_round_up_hidden_size_and_intermediate_size", ">=0.19")])
    _, enum_cls = engine.find(_MX_ENUMS)
    takes_activation = "activation" in inspect.signature(fn).parameters

    def impl(backend, hidden_size, intermediate_size):
        member = mx.to_engine(backend, enum_cls)
        out = fn(member, hidden_size, intermediate_size)
        return int(out[0]), int(out[1])

    return engine.ok("mxfp4_round_up", impl, fn, "with activation" if takes_activation else "basic")


@ENGINE.adapter("mxfp4_convert")
def _build_mxfp4_convert(engine: Engine) -> Resolution:
    from .. import mxfp4 as mx

    # moecompat's MXFP4 layout is gpt-oss's (w13 rows gate/up interleaved for swigluoai): its
    # converter, not the generic convert_weight_to_mxfp4_moe_kernel_format of >= 0.20, which
    # expects another checkpoint layout (checked on an H100: benchmarks/mxfp4_gpu.py).
    loc, fn = engine.find([Location(f"{FM}.oracle.mxfp4", "convert_gpt_oss_weight_to_mxfp4_moe_kernel_format", ">=0.20"),
                           Location(f"{FM}.oracle.mxfp4", "convert_to_mxfp4_moe_kernel_format", ">=0.19,<0.20")])
    _, enum_cls = engine.find(_MX_ENUMS)

    def impl(backend, layer, w13, w2, s13, s2, b13, b2):
        return fn(mx.to_engine(backend, enum_cls), layer, w13, w2, s13, s2, b13, b2)

    return engine.ok("mxfp4_convert", impl, fn, loc.qualname)


@ENGINE.adapter("ep_moe_layer_class")
def _build_ep_layer(engine: Engine) -> Resolution:
    """vLLM has one MoE layer that handles expert parallelism itself (FusedMoE; built by
    FusedMoEFactory from 0.27)."""
    loc, cls = engine.find([Location(f"{FM}.layer", "FusedMoEFactory", ">=0.27"), Location(f"{FM}.layer", "FusedMoE", ">=0.6,<0.27")])
    return engine.ok("ep_moe_layer_class", lambda quant_config=None: cls, cls, loc.qualname)
