"""The arithmetic the reference backend follows: moecompat's ideal one, or an engine's.

``IDEAL`` (``numerics="ideal"``, the default) is the oracle: float32 intermediates for
w8a8 schemes, one rounding of the gated activation, moecompat's quantizer. An engine's numerics
(``numerics="vllm"`` / ``"sglang"``: what that engine's installed release does on this device,
read from its facts) reproduce its fused-MoE kernels' conventions:

| convention | field |
|---|---|
| how activations are quantized (floors, reciprocal, UE8M0 scales, int8 rounding) | ``activation_quant`` |
| GEMM outputs and the activation output rounded to the compute dtype | ``round_intermediates`` |
| the compute dtype (SGLang computes fp32 activations through fp16) | ``compute_dtype_for_fp32`` |
| gated activation rounded twice, ``bf16(bf16(silu(g)) * u)`` (vLLM) | ``double_rounded_activation`` |
| top-k sum rounded after every add for these top-k values (vLLM <= 0.24: 3 and 4) | ``sequential_topk_sum`` |

The engine facts that choose these live in ``moecompat/engines/<engine>.py`` (the ``numerics``
adapter of each engine); this module only does the arithmetic.
"""

from __future__ import annotations

import dataclasses

import torch

from ..quant import IDEAL_ACTIVATION_QUANT, ActivationQuantRules

__all__ = ["IDEAL", "Numerics"]


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The arithmetic conventions of a fused-MoE implementation (see the module doc)."""

    name: str = "ideal"
    activation_quant: ActivationQuantRules = IDEAL_ACTIVATION_QUANT
    round_intermediates: bool = False
    compute_dtype_for_fp32: torch.dtype = torch.float32
    double_rounded_activation: bool = False
    sequential_topk_sum: tuple[int, ...] = ()

    def compute_dtype(self, act_dtype: torch.dtype) -> torch.dtype:
        """The dtype a kernel rounds intermediates to for activations of ``act_dtype``."""
        return self.compute_dtype_for_fp32 if act_dtype == torch.float32 else act_dtype

    def describe(self) -> str:
        return self.name


#: moecompat's own arithmetic (the default, the correctness oracle).
IDEAL = Numerics()
