"""moecompat: one stable Mixture-of-Experts API over many versions of vLLM and SGLang.

>>> from moecompat import fused_experts, select_experts, make_quant_config

Importing moecompat never imports an engine; engines are imported the first time an adapter
that needs them is resolved. With no engine installed everything runs on the pure-PyTorch
reference backend. The names below are the stable public surface (a test pins them).
"""

import warnings as _warnings

# torch warns "Failed to initialize NumPy" at import when NumPy is absent or built for another
# ABI; moecompat never uses NumPy, so that line is noise on every command. Only this message is
# filtered, and only for the import of torch that moecompat triggers.
with _warnings.catch_warnings():
    _warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    import torch as _torch  # noqa: F401

from . import mx, mxfp4, ops, quant
from ._checks import set_debug
from ._version import __version__
from .api import (
    fused_experts,
    fused_moe,
    get_config_dtype_str,
    make_expert_map,
    moe_align_block_size,
    select_experts,
    to_engine_quant_config,
)
from .errors import (
    EngineDriftError,
    EngineImportError,
    EngineNotInstalledError,
    InvalidInputError,
    MissingDependencyError,
    MoECompatError,
    MoECompatWarning,
    UnsupportedFeatureError,
)
from .experts import MoEExperts
from .info import EngineInfo, engine_info
from .quant import (
    ExpertGroup,
    MixedQuantConfig,
    PerExpertQuantConfig,
    QuantConfig,
    make_mixed_quant_config,
    make_per_expert_quant_config,
    make_quant_config,
)
from .tracker import ExpertActivationTracker
from .tuning import (
    get_config_file_name,
    get_default_config,
    get_moe_configs,
    override_config,
    tuned_config_location,
)
from .vocab import Activation, QuantScheme, ScoringFunc, TopK

__all__ = [
    "Activation",
    "EngineDriftError",
    "EngineImportError",
    "EngineInfo",
    "EngineNotInstalledError",
    "ExpertActivationTracker",
    "ExpertGroup",
    "InvalidInputError",
    "MissingDependencyError",
    "MixedQuantConfig",
    "MoECompatError",
    "MoECompatWarning",
    "MoEExperts",
    "PerExpertQuantConfig",
    "QuantConfig",
    "QuantScheme",
    "ScoringFunc",
    "TopK",
    "UnsupportedFeatureError",
    "__version__",
    "engine_info",
    "fused_experts",
    "fused_moe",
    "get_config_dtype_str",
    "get_config_file_name",
    "get_default_config",
    "get_moe_configs",
    "make_expert_map",
    "make_mixed_quant_config",
    "make_per_expert_quant_config",
    "make_quant_config",
    "moe_align_block_size",
    "mx",
    "mxfp4",
    "ops",
    "override_config",
    "quant",
    "select_experts",
    "set_debug",
    "to_engine_quant_config",
    "tuned_config_location",
]
