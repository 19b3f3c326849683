"""vLLM backend: the version facts (one keyed table) and the adapters built from them.

Every import location, parameter name and version range the adapters use is a fact in
[`FACTS`][moecompat.engines.vllm.FACTS]; builders ask for them by key (``ENGINE.find("fused_experts")``,
``ENGINE.params(fact, fn)["expert_map"]``, ``ENGINE.requires(key, feature)``), and a unit test
walks this module's syntax tree to keep it that way. Each fact names the releases it holds for
and is checked against the API snapshot of every release (``tests/unit/test_surface_facts.py``)
and against the installed release by the CPU matrix (``tests/engines/test_facts.py``).
Adapters never trust a version number to pick a call form: they probe (import, then
``Signature.bind``), and the facts explain and pin what the probes find.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from .._adapters import Fact, Resolution
from .._calls import ExpertsCall, RoutingCall
from ..errors import EngineImportError
from ..quant import ActivationQuantRules, QuantConfig
from ..reference.numerics import Numerics, TritonCall, Wna16Call, sm90_fp8_accumulation
from ..vocab import Activation, Mxfp4Backend, QuantScheme, ScoringFunc, TopK, parse_mxfp4_backend
from ._specs import ENGINE_SPECS
from ._triton import KernelCall, KernelRunner, restoring_override
from .base import Engine

_log = logging.getLogger("moecompat")

FM = "vllm.model_executor.layers.fused_moe"
FMM = f"{FM}.fused_moe"
CFG = f"{FM}.config"
ORACLE = f"{FM}.oracle.mxfp4"
QMX = "vllm.model_executor.layers.quantization.mxfp4"
VCFG = "vllm.config"

# Behaviour facts named by tests and other modules.
MXFP4_MARLIN_ENV = "VLLM_MXFP4_USE_MARLIN forces the Marlin MXFP4 MoE backend"
EXPERT_MAP_NAN_ROWS = "expert_map with dynamic per-tensor w8a8 scales gives NaN rows"
DEEPSEEK_BIAS = "grouped_topk with a bias follows DeepSeek-V3 (unbiased weights, top-2 group scores)"
PLACEHOLDERS = "package-level fused_experts is a placeholder without a Triton driver"
REMAINDER_TO_LAST_RANK = "determine_expert_map gives the remainder to the last rank"
BLOCK_UE8M0 = "block-fp8 activation scales are powers of two (UE8M0) where is_deep_gemm_e8m0_used() says so"
NUMERICS_KNOWN = ("Triton fused_experts numerics: per-tensor fp8 x*fl(1/s) without a floor, per-token fp8 x/s with "
                  "scales floored at 1/(448*512), int8 per-token x*fl(127/amax) rounded half away, bf16 intermediates, "
                  "act_and_mul rounded twice")
WNA16_WEIGHTS_ROUNDED = "int4 w4a16 kernels round the dequantized weights ((q - zp) * s) to the compute dtype"
WNA16_CUDA_KERNEL = ("small int4 batches (should_moe_wna16_use_cuda) run the CUDA moe_wna16_gemm: bf16 products "
                     "summed 4 at a time in bf16, K slices atomically added into the bf16 output")
TRTLLM_MXFP4_PADS_256 = "the MXFP4 oracle pads the intermediate size to a multiple of 256 for the TRT-LLM backends"
SEQUENTIAL_TOPK_SUM = "moe_sum adds top-k 3 and 4 in the activation dtype, rounding after every add"


def _params(symbol: str, where: str, versions: str, *names: str, place: str = "") -> tuple[Fact, ...]:
    """Param facts ``symbol.<name>[@place]`` of the callable at ``where``."""
    suffix = f"@{place}" if place else ""
    return tuple(Fact(f"{symbol}.{n}{suffix}", versions, where, "param", n) for n in names)


FACTS: tuple[Fact, ...] = (
    # fused_experts ---------------------------------------------------------------------------
    Fact("fused_experts", ">=0.6", f"{FMM}:fused_experts"),
    *_params("fused_experts", f"{FMM}:fused_experts", "<0.23", "inplace"),
    *_params("fused_experts", f"{FMM}:fused_experts", "<0.11", "use_fp8_w8a8", "use_int8_w8a16", "w1_scale",
             "w2_scale", "a1_scale", "a2_scale"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.6.5,<0.11", "block_shape"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.7.1,<0.11", "use_int4_w4a16", "w1_zp", "w2_zp"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.8.4,<0.11", "use_int8_w8a8", "per_channel_quant"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.8", "activation", "expert_map", "global_num_experts"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.8.3", "apply_router_weight_on_input"),
    *_params("fused_experts", f"{FMM}:fused_experts", ">=0.11", "quant_config"),
    Fact("MoEActivation", ">=0.17", f"{FM}.activation:MoEActivation", what="MoEActivation enum (activation is no longer a string)"),
    Fact("gelu activation", ">=0.8", kind="behaviour"),
    Fact("swigluoai activation", ">=0.10", kind="behaviour"),
    Fact(PLACEHOLDERS, ">=0.11", kind="behaviour"),
    # Found on an H100 (vLLM 0.24.0, 257 tokens); moecompat applies the map itself for that scheme.
    Fact(EXPERT_MAP_NAN_ROWS, "==0.24.0", kind="behaviour"),
    Fact("Triton kernel ties per-token activation scales to per-channel weight scales", ">=0.6", kind="behaviour"),
    Fact("ep_layer@class", "<0.27", f"{FM}.layer:FusedMoE", what="FusedMoE layer class in layer.py"),
    Fact("ep_layer@factory", ">=0.27", f"{FM}.layer:FusedMoEFactory", what="FusedMoEFactory in layer.py (replaces the FusedMoE class)"),
    # quant config ---------------------------------------------------------------------------
    Fact("FusedMoEQuantConfig", ">=0.9.2", f"{CFG}:FusedMoEQuantConfig"),
    Fact("quant_config_make", ">=0.9.2", f"{CFG}:FusedMoEQuantConfig.make"),
    *_params("quant_config_make", f"{CFG}:FusedMoEQuantConfig.make", ">=0.9.2,<0.11", "use_fp8_w8a8", "use_int8_w8a8",
             "use_int8_w8a16", "use_int4_w4a16"),
    *_params("quant_config_make", f"{CFG}:FusedMoEQuantConfig.make", ">=0.9.2", "per_act_token_quant", "per_out_ch_quant",
             "block_shape"),
    *_params("quant_config_make", f"{CFG}:FusedMoEQuantConfig.make", ">=0.11", "quant_dtype", "w1_scale", "w2_scale",
             "a1_scale", "a2_scale"),
    Fact("FUSED_MOE_UNQUANTIZED_CONFIG", ">=0.11", f"{CFG}:FUSED_MOE_UNQUANTIZED_CONFIG"),
    Fact("fp8_w8a8_moe_quant_config", ">=0.11", f"{CFG}:fp8_w8a8_moe_quant_config"),
    *_params("fp8_w8a8_moe_quant_config", f"{CFG}:fp8_w8a8_moe_quant_config", ">=0.11", "w1_scale", "w2_scale",
             "a1_scale", "a2_scale", "per_act_token_quant", "per_out_ch_quant", "block_shape"),
    Fact("int8_w8a8_moe_quant_config", ">=0.11", f"{CFG}:int8_w8a8_moe_quant_config"),
    *_params("int8_w8a8_moe_quant_config", f"{CFG}:int8_w8a8_moe_quant_config", ">=0.11", "w1_scale", "w2_scale",
             "a1_scale", "a2_scale", "per_act_token_quant"),
    Fact("int8_w8a16_moe_quant_config", ">=0.11", f"{CFG}:int8_w8a16_moe_quant_config"),
    *_params("int8_w8a16_moe_quant_config", f"{CFG}:int8_w8a16_moe_quant_config", ">=0.11", "w1_scale", "w2_scale",
             "w1_zp", "w2_zp", "block_shape"),
    Fact("int4_w4a16_moe_quant_config", ">=0.11", f"{CFG}:int4_w4a16_moe_quant_config"),
    *_params("int4_w4a16_moe_quant_config", f"{CFG}:int4_w4a16_moe_quant_config", ">=0.11", "w1_scale", "w2_scale",
             "w1_zp", "w2_zp", "block_shape"),
    # tuned-config helpers -------------------------------------------------------------------
    Fact("config_dtype_str@fused_moe", "<0.11", f"{FMM}:get_config_dtype_str", what="get_config_dtype_str in fused_moe.py"),
    *_params("config_dtype_str", f"{FMM}:get_config_dtype_str", "<0.11", "use_fp8_w8a8", "use_int8_w8a16", place="fused_moe"),
    *_params("config_dtype_str", f"{FMM}:get_config_dtype_str", ">=0.7.1,<0.11", "use_int4_w4a16", place="fused_moe"),
    *_params("config_dtype_str", f"{FMM}:get_config_dtype_str", ">=0.10,<0.11", "use_mxfp4_w4a4", place="fused_moe"),
    Fact("config_dtype_str@config", ">=0.11", f"{CFG}:_get_config_dtype_str", what="_get_config_dtype_str in config.py"),
    *_params("config_dtype_str", f"{CFG}:_get_config_dtype_str", ">=0.11", "use_fp8_w8a8", "use_int8_w8a16",
             "use_int4_w4a16", place="config"),
    *_params("config_dtype_str", f"{CFG}:_get_config_dtype_str", ">=0.11.1", "ocp_mx_scheme", place="config"),
    *_params("config_dtype_str", f"{CFG}:_get_config_dtype_str", ">=0.14", "use_fp8_w8a16", place="config"),
    Fact("get_config_file_name", ">=0.6", f"{FMM}:get_config_file_name"),
    *_params("get_config_file_name", f"{FMM}:get_config_file_name", ">=0.7.1", "block_shape"),
    Fact("get_moe_configs", ">=0.6", f"{FMM}:get_moe_configs"),
    *_params("get_moe_configs", f"{FMM}:get_moe_configs", ">=0.7.1", "block_n", "block_k"),
    Fact("get_default_config", ">=0.6", f"{FMM}:get_default_config"),
    *_params("get_default_config", f"{FMM}:get_default_config", "<0.10.1", "is_marlin"),
    *_params("get_default_config", f"{FMM}:get_default_config", ">=0.7.1", "block_shape"),
    Fact("try_get_optimal_moe_config", ">=0.6", f"{FMM}:try_get_optimal_moe_config"),
    # 0.25: fp8 tiles of BLOCK_SIZE_M < 64 and BLOCK_SIZE_N >= 64 run as tl.dot(b, a) on sm_90 (swap-AB).
    Fact("enable_swap_ab", ">=0.25", f"{FM}.utils:enable_swap_ab"),
    *_params("try_get_optimal_moe_config", f"{FMM}:try_get_optimal_moe_config", "<0.10.1", "is_marlin"),
    Fact("override_config", ">=0.6", f"{FM}:override_config"),
    # The state override_config sets: a global of the fused_moe package (its get_config() reads it).
    Fact("override_state", ">=0.6", f"{FM}:_config"),
    Fact("tuned_config_folder_env", ">=0.6", "vllm.envs", kind="behaviour",
         what="VLLM_TUNED_CONFIG_FOLDER: a folder searched for tuned configs before the package's"),
    # routing --------------------------------------------------------------------------------
    Fact("fused_topk@fused_moe", "<0.15", f"{FMM}:fused_topk"),
    Fact("fused_topk@router", ">=0.15", f"{FM}.router.fused_topk_router:fused_topk"),
    Fact("grouped_topk@fused_moe", "<0.15", f"{FMM}:grouped_topk"),
    Fact("grouped_topk@router", ">=0.15", f"{FM}.router.grouped_topk_router:grouped_topk"),
    *_params("grouped_topk", f"{FMM}:grouped_topk", "<0.15", "num_expert_group", "topk_group", place="fused_moe"),
    *_params("grouped_topk", f"{FMM}:grouped_topk", ">=0.6.5,<0.15", "scoring_func", "e_score_correction_bias",
             place="fused_moe"),
    *_params("grouped_topk", f"{FMM}:grouped_topk", ">=0.10.2,<0.15", "routed_scaling_factor", place="fused_moe"),
    *_params("grouped_topk", f"{FM}.router.grouped_topk_router:grouped_topk", ">=0.15", "num_expert_group",
             "topk_group", "scoring_func", "e_score_correction_bias", "routed_scaling_factor", place="router"),
    # Before: vLLM 0.6 adds the bias to the returned weights and ranks groups by their max.
    Fact(DEEPSEEK_BIAS, ">=0.7", kind="behaviour"),
    # The torch routing code vLLM's CPU MoE layers run (from 0.30 they use the router's grouped_topk).
    Fact("cpu_select@cpu_fused_moe", ">=0.10.2,<0.28", f"{FM}.cpu_fused_moe:select_experts"),
    Fact("cpu_select@experts", ">=0.28,<0.30", f"{FM}.experts.cpu_moe:select_experts"),
    Fact("cpu_select@router", ">=0.30", f"{FM}.router.cpu_router:select_experts"),
    Fact("cpu_grouped@cpu_fused_moe", ">=0.10.2,<0.28", f"{FM}.cpu_fused_moe:grouped_topk"),
    Fact("cpu_grouped@experts", ">=0.28,<0.30", f"{FM}.experts.cpu_moe:grouped_topk"),
    *_params("cpu_grouped", f"{FM}.cpu_fused_moe:grouped_topk", ">=0.10.2,<0.28", "num_expert_group", "topk_group",
             "scoring_func", "routed_scaling_factor", "e_score_correction_bias", place="cpu_fused_moe"),
    *_params("cpu_grouped", f"{FM}.experts.cpu_moe:grouped_topk", ">=0.28,<0.30", "num_expert_group", "topk_group",
             "scoring_func", "routed_scaling_factor", "e_score_correction_bias", place="experts"),
    # Where the MoE layers look up their routing (the tracker hooks them), newest first.
    Fact("routing_hook@base_router_template", ">=0.24", f"{FM}.router.base_router:BaseRouter._select_experts"),
    Fact("routing_hook@base_router", ">=0.15,<0.24", f"{FM}.router.base_router:BaseRouter.select_experts"),
    Fact("routing_hook@router_impl", ">=0.14,<0.15", f"{FM}.layer:FusedMoERouterImpl.select_experts"),
    Fact("routing_hook@layer", "<0.14", f"{FM}.layer:FusedMoE.select_experts"),
    Fact("layer_select_static", "<0.12", f"{FM}.layer:FusedMoE.select_experts", "param", "top_k",
         what="FusedMoE.select_experts(hidden_states, router_logits, top_k, ...) static form"),
    # alignment, expert maps -----------------------------------------------------------------
    Fact("moe_align_block_size@module", ">=0.8.3", f"{FM}.moe_align_block_size:moe_align_block_size"),
    Fact("moe_align_block_size@fused_moe", ">=0.6", f"{FMM}:moe_align_block_size",
         what="moe_align_block_size importable from fused_moe.py"),
    *_params("moe_align_block_size", f"{FM}.moe_align_block_size:moe_align_block_size", ">=0.8.3", "expert_map",
             "pad_sorted_ids", place="module"),
    Fact("determine_expert_map@manager", ">=0.22", f"{FM}.expert_map_manager:determine_expert_map"),
    Fact("determine_expert_map@layer", ">=0.8,<0.22", f"{FM}.layer:determine_expert_map"),
    *_params("determine_expert_map", f"{FM}.layer:determine_expert_map", ">=0.11,<0.22", "expert_placement_strategy",
             place="layer"),
    *_params("determine_expert_map", f"{FM}.expert_map_manager:determine_expert_map", ">=0.22",
             "expert_placement_strategy", place="manager"),
    Fact(REMAINDER_TO_LAST_RANK, ">=0.8,<0.11", kind="behaviour",
         what="determine_expert_map gives the remainder to the last rank (later: to the first ranks)"),
    Fact("supports_expert_map@permute", ">=0.9.2,<0.17", f"{FM}.modular_kernel:FusedMoEPermuteExpertsUnpermute.supports_expert_map"),
    Fact("supports_expert_map@experts", ">=0.17,<0.23", f"{FM}.modular_kernel:FusedMoEExperts.supports_expert_map",
         what="FusedMoEExperts.supports_expert_map (removed by PR #43108)"),
    # MXFP4 backend oracle (PR #37128 moved it from quantization/mxfp4.py to fused_moe/oracle/) ---
    Fact("mxfp4_enum@oracle", ">=0.19", f"{ORACLE}:Mxfp4MoeBackend"),
    Fact("mxfp4_enum@quantization", ">=0.10.2,<0.19", f"{QMX}:Mxfp4Backend"),
    Fact("get_mxfp4_backend", ">=0.10.2,<0.19", f"{QMX}:get_mxfp4_backend"),
    *_params("get_mxfp4_backend", f"{QMX}:get_mxfp4_backend", ">=0.11.1,<0.19", "with_lora_support"),
    Fact("select_mxfp4_moe_backend", ">=0.19", f"{ORACLE}:select_mxfp4_moe_backend"),
    # 0.20 split the oracle: gpt-oss's Mxfp4MoEMethod asks select_gpt_oss_mxfp4_moe_backend
    # (TRITON first on SM 9.0), select_mxfp4_moe_backend became the other MXFP4 models' (MARLIN
    # first there); 0.21 merged them again. Remove with 0.20 support.
    Fact("select_gpt_oss_mxfp4_moe_backend", ">=0.20,<0.21", f"{ORACLE}:select_gpt_oss_mxfp4_moe_backend",
         what="the gpt-oss MXFP4 oracle of 0.20 (quantization/mxfp4.py's Mxfp4MoEMethod calls it)"),
    *_params("select_mxfp4_moe_backend", f"{ORACLE}:select_mxfp4_moe_backend", ">=0.21", "activation_key"),
    Fact("mxfp4_convert@generic", ">=0.19,<0.20", f"{ORACLE}:convert_to_mxfp4_moe_kernel_format",
         what="MXFP4 oracle: convert_to_mxfp4_moe_kernel_format (gpt-oss layout)"),
    Fact("mxfp4_convert@gpt_oss", ">=0.20", f"{ORACLE}:convert_gpt_oss_weight_to_mxfp4_moe_kernel_format"),
    Fact("mxfp4_round_up", ">=0.19", f"{ORACLE}:mxfp4_round_up_hidden_size_and_intermediate_size"),
    *_params("mxfp4_round_up", f"{ORACLE}:mxfp4_round_up_hidden_size_and_intermediate_size", ">=0.28", "activation"),
    Fact(MXFP4_MARLIN_ENV, ">=0.10,<0.24", "vllm.envs", kind="behaviour"),
    # moecompat's own round-up rules are the later ones (256 -> 128 for TRT-LLM at 0.27).
    Fact(TRTLLM_MXFP4_PADS_256, ">=0.19,<0.27", ORACLE, kind="behaviour"),
    # The per-layer FusedMoEConfig the oracle reads, and the deployment config around it.
    Fact("FusedMoEConfig", ">=0.9.2", f"{CFG}:FusedMoEConfig"),
    *_params("FusedMoEConfig", f"{CFG}:FusedMoEConfig", ">=0.9.2", "num_experts", "experts_per_token", "hidden_dim",
             "num_local_experts", "moe_parallel_config", "in_dtype"),
    *_params("FusedMoEConfig", f"{CFG}:FusedMoEConfig", ">=0.10.1", "has_bias"),
    *_params("FusedMoEConfig", f"{CFG}:FusedMoEConfig", ">=0.11.1", "is_lora_enabled"),
    *_params("FusedMoEConfig", f"{CFG}:FusedMoEConfig", ">=0.15", "activation", "device", "routing_method"),
    *_params("FusedMoEConfig", f"{CFG}:FusedMoEConfig", ">=0.17", "num_logical_experts"),
    # The modern name first: where both exist (0.24+, the old one kept with a default), it wins.
    Fact("FusedMoEConfig.intermediate_size", ">=0.24", f"{CFG}:FusedMoEConfig", "param", "intermediate_size",
         what="FusedMoEConfig(intermediate_size) (was intermediate_size_per_partition)"),
    Fact("FusedMoEConfig.intermediate_size@per_partition", ">=0.15", f"{CFG}:FusedMoEConfig", "param",
         "intermediate_size_per_partition"),
    Fact("FusedMoEParallelConfig", ">=0.9.2", f"{CFG}:FusedMoEParallelConfig"),
    Fact("make_no_parallel", ">=0.15", f"{CFG}:FusedMoEParallelConfig.make_no_parallel"),
    Fact("RoutingMethodType", ">=0.11.1", f"{CFG}:RoutingMethodType"),
    Fact("get_current_vllm_config_or_none", ">=0.14", f"{VCFG}:get_current_vllm_config_or_none"),
    Fact("set_current_vllm_config", ">=0.6", f"{VCFG}:set_current_vllm_config"),
    Fact("VllmConfig@vllm", ">=0.11.1", f"{VCFG}.vllm:VllmConfig"),
    Fact("VllmConfig@config", ">=0.6.5", f"{VCFG}:VllmConfig", what="VllmConfig importable from vllm.config"),
    *_params("VllmConfig", f"{VCFG}.vllm:VllmConfig", ">=0.11.1", "model_config", place="vllm"),
    *_params("VllmConfig", f"{VCFG}:VllmConfig", ">=0.6.5", "model_config", place="config"),
    Fact("ModelConfig@model", ">=0.11", f"{VCFG}.model:ModelConfig"),
    Fact("ModelConfig@config", ">=0.6", f"{VCFG}:ModelConfig", what="ModelConfig importable from vllm.config"),
    *_params("ModelConfig", f"{VCFG}.model:ModelConfig", ">=0.11", "model", "tokenizer", "skip_tokenizer_init", "dtype",
             place="model"),
    *_params("ModelConfig", f"{VCFG}:ModelConfig", ">=0.6", "model", "tokenizer", "skip_tokenizer_init", "dtype",
             place="config"),
    # A lazy module attribute from 0.7 on (vllm.platforms.__getattr__): the static snapshots
    # cannot see it; the engine matrix imports it.
    Fact("current_platform", ">=0.6", "vllm.platforms:current_platform", static=False),
    # numerics of the Triton fused_experts (the engine-faithful reference follows them) -----------
    # (from the released sources; pinned on the GPU by tests/gpu against the faithful reference)
    Fact("is_deep_gemm_e8m0_used", ">=0.10.2", "vllm.utils.deep_gemm:is_deep_gemm_e8m0_used"),
    Fact(BLOCK_UE8M0, ">=0.10.2", kind="behaviour"),
    Fact(NUMERICS_KNOWN, ">=0.11", kind="behaviour"),
    Fact(SEQUENTIAL_TOPK_SUM, ">=0.11,<0.25", kind="behaviour"),
    Fact(WNA16_WEIGHTS_ROUNDED, ">=0.11", f"{FMM}:fused_moe_kernel_gptq_awq", kind="behaviour"),
    Fact(WNA16_CUDA_KERNEL, ">=0.11", f"{FMM}:should_moe_wna16_use_cuda", kind="behaviour"),
    Fact("should_moe_wna16_use_cuda", ">=0.8", f"{FMM}:should_moe_wna16_use_cuda"),
    *_params("should_moe_wna16_use_cuda", f"{FMM}:should_moe_wna16_use_cuda", ">=0.8", "num_valid_tokens",
             "group_size", "num_experts", "bit"),
    Fact("get_moe_wna16_block_config", ">=0.8", f"{FMM}:get_moe_wna16_block_config"),
    *_params("get_moe_wna16_block_config", f"{FMM}:get_moe_wna16_block_config", ">=0.8", "config",
             "use_moe_wna16_cuda", "num_valid_tokens", "size_k", "size_n", "num_experts", "group_size",
             "real_top_k", "block_size_m"),
    *_params("try_get_optimal_moe_config", f"{FMM}:try_get_optimal_moe_config", ">=0.6.6", "block_shape"),
)

ENGINE = Engine(next(s for s in ENGINE_SPECS if s["name"] == "vllm"), FACTS)

#: Every name a vLLM MXFP4 MoE backend enum member had (``Mxfp4Backend`` 0.10-0.18,
#: ``Mxfp4MoeBackend`` from 0.19) -> the stable member.
MXFP4_MEMBERS: dict[str, Mxfp4Backend] = {
    "NONE": Mxfp4Backend.NONE,
    "SM100_FI_MXFP4_MXFP8_TRTLLM": Mxfp4Backend.FLASHINFER_TRTLLM_MXFP8,
    "FLASHINFER_TRTLLM_MXFP4_MXFP8": Mxfp4Backend.FLASHINFER_TRTLLM_MXFP8,
    "SM100_FI_MXFP4_BF16": Mxfp4Backend.FLASHINFER_TRTLLM_BF16,
    "FLASHINFER_TRTLLM_MXFP4_BF16": Mxfp4Backend.FLASHINFER_TRTLLM_BF16,
    "SM100_FI_MXFP4_MXFP8_CUTLASS": Mxfp4Backend.FLASHINFER_CUTLASS_MXFP8,
    "FLASHINFER_CUTLASS_MXFP4_MXFP8": Mxfp4Backend.FLASHINFER_CUTLASS_MXFP8,
    "SM90_FI_MXFP4_BF16": Mxfp4Backend.FLASHINFER_CUTLASS_BF16,
    "FLASHINFER_CUTLASS_MXFP4_BF16": Mxfp4Backend.FLASHINFER_CUTLASS_BF16,
    "TRITON": Mxfp4Backend.TRITON,
    "TRITON_UNFUSED": Mxfp4Backend.TRITON_UNFUSED,
    "MARLIN": Mxfp4Backend.MARLIN,
    "BATCHED_MARLIN": Mxfp4Backend.BATCHED_MARLIN,
    "CK": Mxfp4Backend.ROCM_AITER,
    "AITER": Mxfp4Backend.ROCM_AITER,
    "AITER_MXFP4_BF16": Mxfp4Backend.ROCM_AITER,
    "AITER_MXFP4_FP8": Mxfp4Backend.ROCM_AITER_FP8,
    "AITER_MXFP4_MXFP4": Mxfp4Backend.ROCM_AITER_MXFP4,
    "AITER_TRITON_MXFP4_BF16": Mxfp4Backend.ROCM_AITER_TRITON_BF16,
    "AITER_TRITON_MXFP4_MXFP4": Mxfp4Backend.ROCM_AITER_TRITON_MXFP4,
    "DEEPGEMM_MXFP4": Mxfp4Backend.DEEPGEMM,
    "CUTLASS_MXFP4_MXFP4": Mxfp4Backend.CUTLASS_MXFP4,
    "B12X_MXFP4_MXFP8": Mxfp4Backend.B12X_MXFP8,
    "B12X_MXFP4_BF16": Mxfp4Backend.B12X_BF16,
    "FLASHINFER_MOE_EP_CUTEDSL": Mxfp4Backend.FLASHINFER_EP_CUTEDSL,
    "FLASHINFER_MOE_EP_DEEP_GEMM": Mxfp4Backend.FLASHINFER_EP_DEEPGEMM,
    "XPU": Mxfp4Backend.XPU,
    "CPU": Mxfp4Backend.CPU,
    "EMULATION": Mxfp4Backend.EMULATION,
    "HUMMING": Mxfp4Backend.HUMMING,
}

#: Experts classes whose ``supports_expert_map()`` returned False in vLLM 0.20-0.22, the last
#: releases with the method (PR #43108, in 0.23, removed it: they now silently ignore a map).
IGNORES_EXPERT_MAP: frozenset[str] = frozenset({
    "FlashInferExperts", "NaiveBatchedExperts", "BatchedTritonExperts", "TrtLlmNvFp4ExpertsBase",
    "TrtLlmBf16Experts", "BatchedDeepGemmExperts", "TrtLlmFp8ExpertsBase", "FlashInferCuteDSLBatchedExperts",
    "TrtLlmMxfp4ExpertsBase", "CutlassExpertsFp8", "CutlassBatchedExpertsFp8", "CutlassExpertsFp4",
    "CutlassExpertsMxfp4", "FlashInferCuteDSLExperts",
})
#: Subclasses of those that re-enabled it (their own method returned True).
HONOURS_EXPERT_MAP: frozenset[str] = frozenset({"TrtLlmMxfp4ExpertsModular", "CutlassExpertsW4A8Fp8"})


def mxfp4_from_engine(member: Any) -> Mxfp4Backend:
    """The stable member for a vLLM enum member (any version)."""
    name = getattr(member, "name", str(member))
    try:
        return MXFP4_MEMBERS[name]
    except KeyError:
        raise ENGINE.drift("MXFP4 backend", f"vLLM returned {name!r}, which moecompat does not know") from None


def mxfp4_to_engine(backend: Mxfp4Backend | str, engine_enum: Any) -> Any:
    """The member of the installed release's own enum for ``backend``."""
    b = parse_mxfp4_backend(backend)
    for name, stable in MXFP4_MEMBERS.items():
        if stable is b and name in engine_enum.__members__:
            return engine_enum[name]
    raise ENGINE.unsupported(f"MXFP4 backend {b.value!r}",
                             detail=f"{engine_enum.__name__} has only {', '.join(engine_enum.__members__)}")


def _not_placeholder(obj: Any) -> bool:
    # Without a Triton driver, vLLM exports lambdas that raise (fact PLACEHOLDERS); resolve the
    # defining module instead.
    return callable(obj) and getattr(obj, "__name__", "") != "<lambda>"


def _cached(qc: QuantConfig, key: str, build: Callable[[], Any]) -> Any:
    cache = qc._engine_cache
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = build()
    return hit


# --------------------------------------------------------------------------------------------
# Quant config translation (cached per QuantConfig object; QuantConfig is frozen)

def _flag(scheme: QuantScheme) -> str:
    """The alias of the ``use_<scheme>`` flag facts (``use_fp8_w8a8``, ...)."""
    return f"use_{scheme.value}"


def _kernel_block_shape(qc: QuantConfig) -> list[int] | None:
    if qc.scheme is QuantScheme.INT4_W4A16:
        # vLLM's WNA16 Triton kernel takes the group size as block_shape [0, group_size].
        return [0, int(qc.group_size or 0)]
    return list(qc.block_shape) if qc.block_shape is not None else None


def _check_kernel_supports(qc: QuantConfig) -> None:
    s = qc.scheme
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


def _legacy_flags(qc: QuantConfig, p: dict[str, str]) -> dict[str, Any]:
    """Keyword flags and scales of ``fused_experts`` before 0.11 (``p``: its parameter facts)."""
    _check_kernel_supports(qc)
    s = qc.scheme
    if s is None:
        return {}
    flag = p.get(_flag(s))
    if flag is None:
        raise ENGINE.unsupported(s.value, available_in=ENGINE.available_in(f"fused_experts.{_flag(s)}"))
    kw: dict[str, Any] = {flag: True, p["w1_scale"]: qc.w1_scale, p["w2_scale"]: qc.w2_scale}
    if qc.a1_scale is not None:
        kw[p["a1_scale"]], kw[p["a2_scale"]] = qc.a1_scale, qc.a2_scale
    if qc.w1_zp is not None:
        kw[p["w1_zp"]], kw[p["w2_zp"]] = qc.w1_zp, qc.w2_zp
    bs = _kernel_block_shape(qc)
    if bs is not None:
        if p.get("block_shape") is None:
            raise ENGINE.unsupported("block-quantized weights", available_in=ENGINE.available_in("fused_experts.block_shape"))
        kw[p["block_shape"]] = bs
    if qc.per_act_token_quant or qc.per_out_ch_quant:
        if p.get("per_channel_quant") is None:
            raise ENGINE.unsupported("per-channel / per-token w8a8 scales",
                                     available_in=ENGINE.available_in("fused_experts.per_channel_quant"))
        kw[p["per_channel_quant"]] = True
    return kw


def _factory_kwargs(name: str, factory: Any, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` by the factory's parameter facts; an option the factory lacks may only be
    left out at its neutral value (None/False), otherwise the feature is missing."""
    p = ENGINE.params(ENGINE.fact(name), factory)
    kw: dict[str, Any] = {}
    for alias, value in values.items():
        if p.get(alias) is not None:
            kw[p[alias]] = value
        elif value not in (None, False):
            raise ENGINE.unsupported(f"{name}({alias}=...)", detail="this vLLM's factory has no such option")
    return kw


def _modern_quant_config(qc: QuantConfig) -> Any:
    """vLLM >= 0.11: a FusedMoEQuantConfig built by vLLM's own factory for the scheme."""
    _check_kernel_supports(qc)
    s = qc.scheme
    if s is None:
        return ENGINE.load_fact("FUSED_MOE_UNQUANTIZED_CONFIG")
    bs = _kernel_block_shape(qc)
    if s in (QuantScheme.FP8_W8A8, QuantScheme.INT8_W8A8):
        name = "fp8_w8a8_moe_quant_config" if s is QuantScheme.FP8_W8A8 else "int8_w8a8_moe_quant_config"
        factory = ENGINE.load_fact(name)
        values = dict(w1_scale=qc.w1_scale, w2_scale=qc.w2_scale, a1_scale=qc.a1_scale, a2_scale=qc.a2_scale,
                      per_act_token_quant=qc.per_act_token_quant, per_out_ch_quant=qc.per_out_ch_quant, block_shape=bs)
        p = ENGINE.params(ENGINE.fact(name), factory)
        if p.get("per_out_ch_quant") is None and qc.per_out_ch_quant == qc.per_act_token_quant:
            # The factory leaves it False: the kernel reads weights per channel exactly when it
            # quantizes activations per token (checked above).
            del values["per_out_ch_quant"]
        if p.get("block_shape") is None and bs is not None:
            # No block option on this factory (int8): vLLM's generic constructor takes it.
            make = ENGINE.load_fact("quant_config_make")
            return make(torch.int8, **_factory_kwargs("quant_config_make", make, values))
        return factory(**_factory_kwargs(name, factory, values))
    name = "int8_w8a16_moe_quant_config" if s is QuantScheme.INT8_W8A16 else "int4_w4a16_moe_quant_config"
    factory = ENGINE.load_fact(name)
    return factory(**_factory_kwargs(name, factory, dict(w1_scale=qc.w1_scale, w2_scale=qc.w2_scale, w1_zp=qc.w1_zp,
                                                         w2_zp=qc.w2_zp, block_shape=bs)))


def _legacy_make(make: Any, p: dict[str, str], qc: QuantConfig) -> Any:
    """vLLM 0.9-0.10: FusedMoEQuantConfig.make(use_* flags, per_*_quant, block_shape)."""
    _check_kernel_supports(qc)
    s = qc.scheme
    if s is None:
        return make()
    return make(**{p[_flag(s)]: True, p["per_act_token_quant"]: qc.per_act_token_quant,
                   p["per_out_ch_quant"]: qc.per_out_ch_quant, p["block_shape"]: _kernel_block_shape(qc)})


@ENGINE.adapter("make_quant_config")
def _build_make_quant_config(engine: Engine) -> Resolution:
    if not engine.holds("quant_config_make"):
        fact, fe = engine.find("fused_experts", accept=_not_placeholder)
        p = engine.params(fact, fe)
        return engine.ok("make_quant_config", lambda qc: _legacy_flags(qc, p), fe, "legacy-flags")
    fact, make = engine.find("quant_config_make")
    p = engine.params(fact, make)
    if p.get("quant_dtype") is not None:
        return engine.ok("make_quant_config", _modern_quant_config, make, "factories")
    return engine.ok("make_quant_config", lambda qc: _legacy_make(make, p, qc), make, "make-flags")


# --------------------------------------------------------------------------------------------
# fused_experts

_FE_VARIANTS = (
    ("quant_config+enum", 5, ("fused_experts.activation", "fused_experts.apply_router_weight_on_input",
                              "fused_experts.global_num_experts", "fused_experts.expert_map", "fused_experts.quant_config")),
    ("flags+activation", 5, ("fused_experts.inplace", "fused_experts.activation", "fused_experts.apply_router_weight_on_input",
                             "fused_experts.use_fp8_w8a8", "fused_experts.use_int8_w8a8", "fused_experts.per_channel_quant",
                             "fused_experts.global_num_experts", "fused_experts.expert_map", "fused_experts.w1_scale",
                             "fused_experts.w2_scale", "fused_experts.a1_scale", "fused_experts.a2_scale",
                             "fused_experts.block_shape")),
    ("flags", 5, ("fused_experts.inplace", "fused_experts.use_fp8_w8a8", "fused_experts.use_int8_w8a16",
                  "fused_experts.w1_scale", "fused_experts.w2_scale", "fused_experts.a1_scale", "fused_experts.a2_scale")),
)


@ENGINE.adapter("fused_experts")
def _build_fused_experts(engine: Engine) -> Resolution:
    fact, fn = engine.find("fused_experts", accept=_not_placeholder)
    variant = engine.pick(fn, _FE_VARIANTS, "fused_experts")
    p = engine.params(fact, fn)
    modern = variant.name == "quant_config+enum"
    acts: dict[Activation, Any]
    if p.get("activation") is None:
        acts = {Activation.SILU: None}
    elif engine.holds("MoEActivation"):
        _, enum_cls = engine.find("MoEActivation")
        acts = {a: enum_cls[a.name] for a in Activation if a.name in enum_cls.__members__}
    else:
        acts = {Activation.SILU: Activation.SILU.value}
        for a, key in ((Activation.GELU, "gelu activation"), (Activation.SWIGLUOAI, "swigluoai activation")):
            if engine.holds(key):
                acts[a] = a.value
    act_ranges = {Activation.GELU: engine.range("gelu activation"), Activation.SWIGLUOAI: engine.range("swigluoai activation")}
    make_cfg: Callable[[QuantConfig], Any] = _modern_quant_config if modern else (lambda qc: _legacy_flags(qc, p))
    inplace_kw = p.get("inplace")

    def bind(call: ExpertsCall) -> KernelRunner:
        if call.activation not in acts:
            raise engine.unsupported(f"activation {call.activation.value!r}", act_ranges.get(call.activation, ""))
        qc = call.quant_config
        if not isinstance(qc, QuantConfig):
            raise engine.unsupported("mixed per-projection precision (MixedQuantConfig)",
                                     detail="vLLM's fused kernel runs both GEMMs in one scheme; use backend='reference'")
        cfg = _cached(qc, "vllm", lambda: make_cfg(qc))
        expert_map = call.expert_map
        # No expert_map parameter, or dynamic per-tensor w8a8 scales (fact EXPERT_MAP_NAN_ROWS):
        # apply the map here; the result is the same.
        mask = expert_map is not None and (p.get("expert_map") is None or (
            qc.quantizes_activations and qc.block_shape is None and not qc.per_act_token_quant))
        if call.apply_router_weight_on_input and p.get("apply_router_weight_on_input") is None:
            raise engine.unsupported("apply_router_weight_on_input", engine.available_in("fused_experts.apply_router_weight_on_input"))
        act = acts[call.activation]
        if modern:
            kw: dict[str, Any] = {p["activation"]: act, p["apply_router_weight_on_input"]: call.apply_router_weight_on_input,
                                  p["global_num_experts"]: call.global_num_experts,
                                  p["expert_map"]: None if mask else expert_map, p["quant_config"]: cfg}
        else:
            kw = dict(cfg)
            if act is not None:
                kw[p["activation"]] = act
            if p.get("expert_map") is not None:
                kw[p["expert_map"]] = None if mask else expert_map
                kw[p["global_num_experts"]] = call.global_num_experts
            if p.get("apply_router_weight_on_input") is not None:
                kw[p["apply_router_weight_on_input"]] = call.apply_router_weight_on_input
        if inplace_kw is not None:
            kwargs = ({**kw, inplace_kw: False}, {**kw, inplace_kw: True})
            how = "kernel"
        else:
            kwargs, how = (kw, kw), "copy"
        return KernelRunner(KernelCall(fn, kwargs, mask_map=mask, inplace=how), expert_map)

    return engine.ok("fused_experts", bind, fn, variant.name)


# --------------------------------------------------------------------------------------------
# select_experts: vLLM's top-k functions (CUDA kernels) on CUDA tensors, its CPU routing code on
# CPU tensors.


@ENGINE.adapter("select_experts")
def _build_select_experts(engine: Engine) -> Resolution:
    _, fused_topk = engine.find("fused_topk", accept=_not_placeholder)
    gfact, grouped_topk = engine.find("grouped_topk", accept=_not_placeholder)
    gp = engine.params(gfact, grouped_topk)
    try:
        cfact, cpu_grouped = engine.find("cpu_grouped")
        cp = engine.params(cfact, cpu_grouped)
    except LookupError:  # before 0.10: the CUDA function's torch code runs on CPU tensors too
        cpu_grouped, cp = grouped_topk, gp
    biased_groups_by_max = not engine.holds(DEEPSEEK_BIAS)
    if gp.get("scoring_func") is None:
        sig_variant = "grouped_topk(softmax only)"
    elif gp.get("routed_scaling_factor") is not None:
        sig_variant = "grouped_topk(scoring_func, routed_scaling_factor)"
    else:
        sig_variant = "grouped_topk(scoring_func)"

    def bind(call: RoutingCall) -> Callable[[torch.Tensor, torch.Tensor], TopK]:
        top_k, renormalize, scoring, bias = call.top_k, call.renormalize, call.scoring_func, call.e_score_correction_bias
        rsf = call.routed_scaling_factor if call.routed_scaling_factor is not None else 1.0
        custom = call.custom_routing_function
        # One group of all experts when the caller did not ask for groups.
        groups, tgroup = (call.num_expert_group, call.topk_group) if call.use_grouped_topk else (1, 1)
        plain = not call.use_grouped_topk and bias is None and scoring is ScoringFunc.SOFTMAX
        forms: dict[bool, tuple[Any, dict[str, Any], bool]] = {}

        def form(on_cuda: bool) -> tuple[Any, dict[str, Any], bool]:
            """(grouped top-k function, its keywords, whether it applies routed_scaling_factor)."""
            g, p = (grouped_topk, gp) if on_cuda else (cpu_grouped, cp)
            if p.get("scoring_func") is None and scoring is not ScoringFunc.SOFTMAX:
                raise engine.unsupported("sigmoid scoring", engine.available_in("grouped_topk.scoring_func"))
            if bias is not None and (p.get("e_score_correction_bias") is None or (g is grouped_topk and biased_groups_by_max)):
                raise engine.unsupported(
                    "e_score_correction_bias with DeepSeek-V3 semantics", engine.range(DEEPSEEK_BIAS),
                    detail="vLLM 0.6 adds the bias to the returned weights and ranks groups by their max")
            kw: dict[str, Any] = {p["num_expert_group"]: groups, p["topk_group"]: tgroup}
            if p.get("scoring_func") is not None:
                kw[p["scoring_func"]] = scoring.value
            if bias is not None:
                kw[p["e_score_correction_bias"]] = bias
            applied = p.get("routed_scaling_factor") is not None
            if applied:
                kw[p["routed_scaling_factor"]] = rsf
            return g, kw, applied

        def run(hidden_states: torch.Tensor, router_logits: torch.Tensor) -> TopK:
            if custom is not None:
                # moecompat's documented form (what the reference calls), not vLLM's keyword names.
                w, ids = custom(hidden_states, router_logits, top_k, renormalize)
                return TopK(w.to(torch.float32), ids.to(torch.int32))
            on_cuda = router_logits.is_cuda
            if plain and on_cuda:
                out = fused_topk(hidden_states, router_logits, top_k, renormalize)
                w, ids, applied = out[0], out[1], False
            else:
                f = forms.get(on_cuda)
                if f is None:
                    f = forms[on_cuda] = form(on_cuda)
                g, kw, applied = f
                w, ids = g(hidden_states, router_logits, top_k, renormalize, **kw)
            if not applied and rsf != 1.0:
                w = w * rsf
            return TopK(w.to(torch.float32), ids.to(torch.int32))

        return run

    return engine.ok("select_experts", bind, grouped_topk, sig_variant)


# --------------------------------------------------------------------------------------------
# moe_align_block_size, config dtype string, expert map


@ENGINE.adapter("moe_align_block_size")
def _build_align(engine: Engine) -> Resolution:
    fact, fn = engine.find("moe_align_block_size", accept=_not_placeholder)
    p = engine.params(fact, fn)

    def impl(topk_ids: torch.Tensor, block_size: int, num_experts: int, expert_map: torch.Tensor | None,
             pad_sorted_ids: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kw: dict[str, Any] = {}
        for alias, value, on in (("expert_map", expert_map, expert_map is not None), ("pad_sorted_ids", True, pad_sorted_ids)):
            if on:
                if p.get(alias) is None:
                    raise engine.unsupported(f"moe_align_block_size with {alias}",
                                             engine.available_in(f"moe_align_block_size.{alias}"))
                kw[p[alias]] = value
        out = fn(topk_ids, block_size, num_experts, **kw)
        return out[0], out[1], out[2]

    return engine.ok("moe_align_block_size", impl, fn, "with expert_map" if p.get("expert_map") else "basic")


@ENGINE.adapter("get_config_dtype_str")
def _build_dtype_str(engine: Engine) -> Resolution:
    fact, fn = engine.find("config_dtype_str")
    p = engine.params(fact, fn)

    def impl(dtype: torch.dtype, use_fp8_w8a8: bool, use_int8_w8a16: bool, use_int4_w4a16: bool,
             ocp_mx_scheme: str | None) -> str | None:
        kw: dict[str, Any] = {p["use_fp8_w8a8"]: use_fp8_w8a8, p["use_int8_w8a16"]: use_int8_w8a16}
        if use_int4_w4a16:
            if p.get("use_int4_w4a16") is None:
                raise engine.unsupported("int4_w4a16 config names", engine.available_in("config_dtype_str.use_int4_w4a16"))
            kw[p["use_int4_w4a16"]] = True
        if ocp_mx_scheme is not None:
            if p.get("ocp_mx_scheme") is not None:
                kw[p["ocp_mx_scheme"]] = ocp_mx_scheme
            elif p.get("use_mxfp4_w4a4") is not None and ocp_mx_scheme == "w_mxfp4_a_mxfp4":
                kw[p["use_mxfp4_w4a4"]] = True
            else:
                raise engine.unsupported(f"OCP MX scheme {ocp_mx_scheme!r} in config names",
                                         engine.available_in("config_dtype_str.ocp_mx_scheme"))
        return fn(dtype, **kw)

    return engine.ok("get_config_dtype_str", impl, fn, "ocp_mx_scheme" if p.get("ocp_mx_scheme") else "flags")


@ENGINE.adapter("make_expert_map")
def _build_expert_map(engine: Engine) -> Resolution:
    fact, fn = engine.need("determine_expert_map", "make_expert_map (determine_expert_map)")
    strategy = engine.params(fact, fn).get("expert_placement_strategy")

    def impl(ep_size: int, ep_rank: int, global_num_experts: int, placement: str) -> tuple[int, torch.Tensor]:
        if placement != "linear" and strategy is None:
            raise engine.unsupported(f"{placement} expert placement",
                                     engine.available_in("determine_expert_map.expert_placement_strategy"))
        kw = {strategy: placement} if strategy is not None else {}
        out = fn(ep_size, ep_rank, global_num_experts, **kw)
        local, emap = out[0], out[1]
        if emap is None:  # ep_size == 1: every expert is local
            emap = torch.arange(global_num_experts, dtype=torch.int32)
        return int(local), emap

    return engine.ok("make_expert_map", impl, fn, "placement" if strategy else "linear-only")


# --------------------------------------------------------------------------------------------
# Tuned Triton configs (used by `moecompat tune`)


@ENGINE.adapter("get_config_file_name")
def _build_config_file_name(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_config_file_name")
    block = engine.params(fact, fn).get("block_shape")

    def impl(E: int, N: int, dtype_str: str | None, block_shape: list[int] | None, per_channel_quant: bool = False,
             down_moe: bool = False) -> str:
        if down_moe:
            raise engine.unsupported("separate down-projection configs (down_moe)", detail="an SGLang feature")
        if per_channel_quant:
            raise engine.unsupported("per-channel config names", detail="an SGLang feature")
        if block_shape and block is None:
            raise engine.unsupported("block-quantized config names", engine.available_in("get_config_file_name.block_shape"))
        if block is None:
            return fn(E, N, dtype_str)
        return fn(E, N, dtype_str, **{block: list(block_shape) if block_shape else None})

    return engine.ok("get_config_file_name", impl, fn, "block_shape" if block else "basic")


@ENGINE.adapter("tuned_config_location")
def _build_config_location(engine: Engine) -> Resolution:
    import os

    _, loader = engine.find("get_moe_configs")
    env_name = "VLLM_TUNED_CONFIG_FOLDER"  # fact tuned_config_folder_env

    def impl(folder: str | None) -> tuple[str, dict[str, str]]:
        """(folder the file must be written to, environment variables the engine must see)."""
        if folder is None:
            return os.path.join(os.path.dirname(os.path.realpath(loader.__code__.co_filename)), "configs"), {}
        return folder, {env_name: folder}

    return engine.ok("tuned_config_location", impl, loader, env_name)


@ENGINE.adapter("get_moe_configs")
def _build_get_moe_configs(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_moe_configs")
    p = engine.params(fact, fn)

    def impl(E: int, N: int, dtype_str: str | None, block_shape: list[int] | None, per_channel_quant: bool = False) -> Any:
        getattr(fn, "cache_clear", lambda: None)()  # lru_cached in vLLM; a new file must be seen
        if block_shape and p.get("block_n") is not None:
            return fn(E, N, dtype_str, **{p["block_n"]: block_shape[0], p["block_k"]: block_shape[1]})
        return fn(E, N, dtype_str)

    return engine.ok("get_moe_configs", impl, fn, "block" if p.get("block_n") else "basic")


@ENGINE.adapter("default_config")
def _build_default_config(engine: Engine) -> Resolution:
    fact, fn = engine.find("get_default_config")
    p = engine.params(fact, fn)

    def impl(batch_size: int, num_experts: int, n: int, k: int, top_k: int, dtype_str: str | None,
             block_shape: list[int] | None) -> dict[str, int] | None:
        kw: dict[str, Any] = {}
        if p.get("block_shape") is not None:
            kw[p["block_shape"]] = list(block_shape) if block_shape else None
        if p.get("is_marlin") is not None:
            kw[p["is_marlin"]] = False
        return fn(batch_size, num_experts, n, k, top_k, dtype_str, **kw)

    return engine.ok("default_config", impl, fn, "block_shape" if p.get("block_shape") else "basic")


@ENGINE.adapter("override_config")
def _build_override(engine: Engine) -> Resolution:
    fact, fn = engine.find("override_config")
    state = importlib.import_module(engine.fact("override_state").location.module)
    attr = engine.fact("override_state").location.qualname
    return engine.ok("override_config", restoring_override(fn, state, attr), fn, "module state")


@ENGINE.adapter("routing_hooks")
def _build_routing_hooks(engine: Engine) -> Resolution:
    """Where vLLM's MoE layers look up their routing, for ``ExpertActivationTracker.record_engine``:
    the router base class's template method (>= 0.20), else the layer's ``select_experts``, plus
    the CPU layers' module-level ``select_experts``."""

    def impl() -> list[tuple[Any, str]]:
        out = []
        for symbol in ("routing_hook", "cpu_select"):
            try:
                fact, _ = engine.find(symbol)
            except LookupError:
                continue
            loc = fact.location
            owner: Any = importlib.import_module(loc.module)
            *parents, attr = loc.qualname.split(".")
            for part in parents:
                owner = getattr(owner, part)
            out.append((owner, attr))
        return out

    return engine.ok("routing_hooks", impl, "vllm routing functions", "hooks")


# --------------------------------------------------------------------------------------------
# MXFP4 backend oracle


@ENGINE.adapter("moe_layer_config")
def _build_moe_layer_config(engine: Engine) -> Resolution:
    """vLLM's per-layer ``FusedMoEConfig`` (>= 0.17, where ``MoEActivation`` exists) from a
    ``moecompat.mxfp4.MoELayerSpec``. Its required fields drift (``intermediate_size_per_partition``
    -> ``intermediate_size`` at 0.24, new defaulted fields most releases): the keywords come from
    the parameter facts of the installed dataclass."""
    _, activation_enum = engine.find("MoEActivation")
    fact, cls = engine.find("FusedMoEConfig")
    _, parallel_cls = engine.find("FusedMoEParallelConfig")
    _, routing_enum = engine.find("RoutingMethodType")
    make_no_parallel = engine.requires("make_no_parallel", "a single-rank FusedMoEParallelConfig")
    p = engine.params(fact, cls)
    routing_by_name = {m.name.replace("_", "").lower(): m for m in routing_enum}
    activation_by_value = {m.value: m for m in activation_enum}
    del parallel_cls

    def impl(layer: Any, with_lora_support: bool, device: Any = None) -> Any:
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
        values = dict(num_experts=layer.num_experts, experts_per_token=layer.top_k, hidden_dim=layer.hidden_size,
                      num_local_experts=layer.num_experts, num_logical_experts=layer.num_experts, activation=activation,
                      device=device, routing_method=routing, moe_parallel_config=make_no_parallel(),
                      in_dtype=layer.dtype, has_bias=layer.has_bias, is_lora_enabled=with_lora_support,
                      intermediate_size=layer.intermediate_size)
        return cls(**{p[k]: v for k, v in values.items() if p.get(k) is not None})

    return engine.ok("moe_layer_config", impl, cls, p["intermediate_size"])


@ENGINE.adapter("select_mxfp4_backend")
def _build_select_mxfp4(engine: Engine) -> Resolution:
    if not engine.holds("select_mxfp4_moe_backend") and engine.holds("get_mxfp4_backend"):
        fact, legacy = engine.find("get_mxfp4_backend")
        lora = engine.params(fact, legacy).get("with_lora_support")

        def impl_legacy(with_lora_support: bool, moe_config: Any, layer: Any) -> Mxfp4Backend:
            return mxfp4_from_engine(legacy(**{lora: with_lora_support}) if lora else legacy())

        return engine.ok("select_mxfp4_backend", impl_legacy, legacy, "get_mxfp4_backend")
    # The oracle vLLM's gpt-oss layer asks (moecompat's MXFP4 layers are gpt-oss layers).
    fact, oracle = engine.find("select_gpt_oss_mxfp4_moe_backend" if engine.holds("select_gpt_oss_mxfp4_moe_backend")
                               else "select_mxfp4_moe_backend")
    takes_key = engine.params(fact, oracle).get("activation_key") is not None
    build_config = engine.resolve("moe_layer_config")
    if build_config.status != "ok":
        assert build_config.error is not None
        raise build_config.error
    _, config_or_none = engine.find("get_current_vllm_config_or_none")
    _, set_config = engine.find("set_current_vllm_config")
    vfact, vllm_config_cls = engine.find("VllmConfig")
    model_config_kw = engine.params(vfact, vllm_config_cls)["model_config"]
    mfact, model_config_cls = engine.find("ModelConfig")
    mp = engine.params(mfact, model_config_cls)
    _, platform = engine.find("current_platform")
    default_configs: dict[Any, Any] = {}

    def deployment_config(layer: Any) -> Any:
        # The oracle (>= 0.22) and the kernels' support checks read the current VllmConfig
        # (e.g. the user's MoE activation override in model_config.quantization_config):
        # outside a live model, vLLM's defaults for a gpt-oss model of this layer's shape,
        # built from a local config.json, as `vllm serve <dir>` would.
        if layer not in default_configs:
            model_dir = _gpt_oss_model_dir(layer)
            values = dict(model=model_dir, tokenizer=model_dir, skip_tokenizer_init=True,
                          dtype=str(layer.dtype).removeprefix("torch."))
            try:
                model_config = model_config_cls(**{mp[k]: v for k, v in values.items() if mp.get(k) is not None})
            except Exception as exc:  # not a kernel: vLLM validating a model it must import
                raise EngineImportError(
                    "vllm", engine.version_str(), "select_mxfp4_backend outside a vLLM model",
                    detail="vLLM's ModelConfig for a gpt-oss layer failed (it imports vLLM's gpt-oss "
                           "model module and its attention backends); call it inside your own "
                           "set_current_vllm_config(...) or a running vLLM model", cause=exc) from exc
            default_configs[layer] = vllm_config_cls(**{model_config_kw: model_config})
        return default_configs[layer]

    def impl_oracle(with_lora_support: bool, moe_config: Any, layer: Any) -> Mxfp4Backend:
        if platform.is_unspecified():
            # No device vLLM can run on (e.g. a CUDA wheel on a GPU-less host): vLLM cannot
            # build a VllmConfig, let alone an MXFP4 layer. get_mxfp4_backend (< 0.19) and
            # the reference table answer NONE there; so does moecompat on the oracle versions.
            return Mxfp4Backend.NONE
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
            return Mxfp4Backend.NONE
        member = out[0] if isinstance(out, tuple) else out
        return mxfp4_from_engine(member)

    return engine.ok("select_mxfp4_backend", impl_oracle, oracle, "oracle+activation_key" if takes_key else "oracle")


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
    fact, fn = engine.find("mxfp4_round_up")
    _, enum_cls = engine.find("mxfp4_enum")
    takes_activation = engine.params(fact, fn).get("activation") is not None

    def impl(backend: Mxfp4Backend, hidden_size: int, intermediate_size: int) -> tuple[int, int]:
        out = fn(mxfp4_to_engine(backend, enum_cls), hidden_size, intermediate_size)
        return int(out[0]), int(out[1])

    return engine.ok("mxfp4_round_up", impl, fn, "with activation" if takes_activation else "basic")


@ENGINE.adapter("mxfp4_convert")
def _build_mxfp4_convert(engine: Engine) -> Resolution:
    # moecompat's MXFP4 layout is gpt-oss's (w13 rows gate/up interleaved for swigluoai): its
    # converter, not the generic convert_weight_to_mxfp4_moe_kernel_format of >= 0.20, which
    # expects another checkpoint layout (checked on an H100: benchmarks/mxfp4_gpu.py).
    fact, fn = engine.find("mxfp4_convert")
    _, enum_cls = engine.find("mxfp4_enum")

    def impl(backend: Mxfp4Backend, layer: Any, w13: Any, w2: Any, s13: Any, s2: Any, b13: Any, b2: Any) -> Any:
        return fn(mxfp4_to_engine(backend, enum_cls), layer, w13, w2, s13, s2, b13, b2)

    return engine.ok("mxfp4_convert", impl, fn, fact.location.qualname)


@ENGINE.adapter("ep_moe_layer_class")
def _build_ep_layer(engine: Engine) -> Resolution:
    """vLLM has one MoE layer that handles expert parallelism itself (FusedMoE; built by
    FusedMoEFactory from 0.27)."""
    fact, cls = engine.find("ep_layer")
    return engine.ok("ep_moe_layer_class", lambda quant_config=None: cls, cls, fact.location.qualname)


@ENGINE.adapter("numerics")
def _build_numerics(engine: Engine) -> Resolution:
    """The arithmetic of this release's Triton ``fused_experts`` on this machine, for the
    engine-faithful reference (``fused_experts(..., backend="reference", numerics="vllm")``)."""
    if not engine.holds(NUMERICS_KNOWN):
        raise engine.unsupported("vllm numerics (the engine-faithful reference)", engine.range(NUMERICS_KNOWN),
                                 detail="this release's kernel arithmetic was not read")
    e8m0 = engine.load_fact("is_deep_gemm_e8m0_used") if engine.holds(BLOCK_UE8M0) else None
    sequential = (3, 4) if engine.holds(SEQUENTIAL_TOPK_SUM) else ()
    wna16 = _wna16_cuda_block_k(engine) if engine.holds(WNA16_CUDA_KERNEL) else None
    f_opt, optimal = engine.find("try_get_optimal_moe_config")
    block_shape_kw = engine.params(f_opt, optimal).get("block_shape")
    swap_ab = engine.find("enable_swap_ab")[1] if engine.holds("enable_swap_ab") else None

    def mma_m(call: TritonCall) -> int:
        # As fused_experts_impl asks it: (w1.size(), w2.size(), top_k, config dtype, M); then, as
        # invoke_fused_moe_kernel decides it for fp8, whether the kernel swaps A and B.
        config = optimal(call.w1_shape, call.w2_shape, call.top_k, call.dtype, call.num_tokens,
                         **({block_shape_kw: None} if block_shape_kw else {}))
        bm, bn = int(config["BLOCK_SIZE_M"]), int(config["BLOCK_SIZE_N"])
        return bn if swap_ab is not None and swap_ab(bm, bn) else bm

    def impl() -> Numerics:
        # Asked at call time: DeepGEMM's availability, the GPU and VLLM_USE_DEEP_GEMM* decide it.
        ue8m0 = bool(e8m0()) if e8m0 is not None else False
        rules = ActivationQuantRules(tensor_amax_floor=0.0, tensor_reciprocal=True, token_amax_floor=0.0,
                                     token_scale_floor=1.0 / (448.0 * 512.0), static_reciprocal=True,
                                     block_ue8m0=ue8m0, int8_token_by_inverse_amax=True, int8_round_half_away=True)
        return Numerics(f"vllm {engine.version_str()}{' (UE8M0 block scales)' if ue8m0 else ''}", rules,
                        round_intermediates=True, double_rounded_activation=True, sequential_topk_sum=sequential,
                        round_dequantized_group_weights=engine.holds(WNA16_WEIGHTS_ROUNDED),
                        wna16_cuda_block_k=wna16, fp8_tensor_core_accumulation=sm90_fp8_accumulation(),
                        fp8_mma_m=mma_m)

    return engine.ok("numerics", impl, "vllm Triton fused_experts", "ue8m0 oracle" if e8m0 else "facts")


def _wna16_cuda_block_k(engine: Engine) -> Callable[[Wna16Call], tuple[int, int] | None]:
    """The K slice of each GEMM where vLLM takes its CUDA wna16 kernel, asked from the installed
    release's own config functions with the arguments ``fused_experts_impl`` passes them."""
    f_use, use_cuda = engine.find("should_moe_wna16_use_cuda")
    f_block, block_config = engine.find("get_moe_wna16_block_config")
    f_opt, optimal = engine.find("try_get_optimal_moe_config")
    pu, pb, po = engine.params(f_use, use_cuda), engine.params(f_block, block_config), engine.params(f_opt, optimal)

    def block_k(call: Wna16Call) -> tuple[int, int] | None:
        m, k, group = call.num_tokens, call.top_k, call.group_size
        if not use_cuda(**{pu["num_valid_tokens"]: m * k, pu["group_size"]: group, pu["num_experts"]: call.w1_shape[0],
                           pu["bit"]: 4}):
            return None
        config = optimal(call.w1_shape, call.w2_shape, k, "int4_w4a16", m, **{po["block_shape"]: [0, group]})
        out = []
        # GEMM 1 reads hidden_states [M, H]; GEMM 2 the activation [M * top_k, I] with top_k 1.
        for size_k, size_n, rows, top_k in ((call.w2_shape[1], call.w1_shape[1], m, k),
                                            (call.w1_shape[1] // 2, call.w2_shape[1], m * k, 1)):
            cfg = dict(config)
            cfg.update(block_config(**{
                pb["config"]: cfg, pb["use_moe_wna16_cuda"]: True, pb["num_valid_tokens"]: rows * top_k,
                pb["size_k"]: size_k, pb["size_n"]: size_n, pb["num_experts"]: size_n, pb["group_size"]: group,
                pb["real_top_k"]: top_k, pb["block_size_m"]: cfg["BLOCK_SIZE_M"]}))
            out.append(int(cfg["BLOCK_SIZE_K"]))
        return out[0], out[1]

    return block_k


def supports_expert_map_by_name(cls: type) -> bool | None:
    """The answer of vLLM 0.22 (the last release with ``supports_expert_map``) for a class,
    by its name and bases; ``None`` when it declared nothing."""
    for klass in cls.__mro__:
        if klass.__name__ in HONOURS_EXPERT_MAP:
            return True
        if klass.__name__ in IGNORES_EXPERT_MAP:
            return False
    return None


__all__ = ["ENGINE", "FACTS", "IGNORES_EXPERT_MAP", "MXFP4_MARLIN_ENV", "MXFP4_MEMBERS", "mxfp4_from_engine",
           "mxfp4_to_engine", "supports_expert_map_by_name"]
