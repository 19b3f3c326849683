"""Pure-PyTorch reference backend: the embedded default and the correctness oracle.

Runs on CPU and CUDA with no engine installed. Vectorised: tokens are sorted by expert and each
GEMM is one grouped matmul (``torch._grouped_mm`` where the torch build has it for the device and
dtype, one matmul per expert otherwise); there is no Python loop over tokens.
"""

from .align import moe_align_block_size
from .config import get_config_dtype_str, make_expert_map
from .experts import fused_experts
from .numerics import IDEAL, Numerics
from .routing import select_experts

__all__ = [
    "IDEAL",
    "Numerics",
    "fused_experts",
    "get_config_dtype_str",
    "make_expert_map",
    "moe_align_block_size",
    "select_experts",
]
