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
| group-quantized (int4/int8 w*a16) weights dequantized in float32, then rounded to the compute dtype before the dot | ``round_dequantized_group_weights`` |
| experimental, set by no engine: fp8 dots without per-tile scales accumulated in reduced precision (``(chunk_k, mantissa_bits)``, CUDA tensors only) | ``fp8_tensor_core_accumulation`` |
| vLLM's CUDA ``moe_wna16_gemm`` for small int4 batches: bf16 products summed 4 at a time in bf16, K blocks added into the bf16 output | ``wna16_cuda_block_k`` |

The engine facts that choose these live in ``moecompat/engines/<engine>.py`` (the ``numerics``
adapter of each engine); this module only does the arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..quant import IDEAL_ACTIVATION_QUANT, ActivationQuantRules

__all__ = ["IDEAL", "SM90_FP8_ACCUMULATION", "Numerics", "Wna16Call", "sm90_fp8_accumulation"]

#: An *experimental* emulation, used by no engine's numerics: Triton lowers an fp8 ``tl.dot``
#: on sm_90 to wgmma with ``max_num_imprecise_acc = 2**30`` (its default on capability 9.0), so
#: the whole K loop accumulates inside the tensor cores, reported to keep about 14 bits
#: (DeepSeek-V3 report, section 3.3.2). Truncating the running sum to ``mantissa_bits`` every
#: ``chunk_k`` products does **not** reproduce vLLM 0.26's kernels on the H200: its error is
#: independent of theirs (tools/device/numerics_sweep.py; figures in docs/gpu.md). Kept so the
#: next model of that arithmetic can be swept the same way.
SM90_FP8_ACCUMULATION: tuple[int, int] = (32, 13)


def sm90_fp8_accumulation() -> tuple[int, int] | None:
    """[`SM90_FP8_ACCUMULATION`][moecompat.reference.numerics.SM90_FP8_ACCUMULATION] when the
    current CUDA device is an sm_90 GPU (H100, H200, H20, GH200), else ``None``."""
    if not torch.cuda.is_available():
        return None
    return SM90_FP8_ACCUMULATION if torch.cuda.get_device_capability()[0] == 9 else None


@dataclasses.dataclass(frozen=True)
class Wna16Call:
    """What decides whether and how vLLM's CUDA ``moe_wna16_gemm`` runs one GEMM: the packed
    weight shapes of both GEMMs, ``top_k``, the number of tokens and the group size."""

    w1_shape: tuple[int, ...]
    w2_shape: tuple[int, ...]
    top_k: int
    num_tokens: int
    group_size: int


@dataclasses.dataclass(frozen=True)
class Numerics:
    """The arithmetic conventions of a fused-MoE implementation (see the module doc)."""

    name: str = "ideal"
    activation_quant: ActivationQuantRules = IDEAL_ACTIVATION_QUANT
    round_intermediates: bool = False
    compute_dtype_for_fp32: torch.dtype = torch.float32
    double_rounded_activation: bool = False
    sequential_topk_sum: tuple[int, ...] = ()
    round_dequantized_group_weights: bool = False
    fp8_tensor_core_accumulation: tuple[int, int] | None = None
    #: ``(call) -> (block_k of GEMM 1, block_k of GEMM 2)`` where the engine takes its CUDA
    #: wna16 kernel for this call, else ``None``; asked at call time (it depends on the GPU).
    wna16_cuda_block_k: Callable[[Wna16Call], tuple[int, int] | None] | None = None

    def compute_dtype(self, act_dtype: torch.dtype) -> torch.dtype:
        """The dtype a kernel rounds intermediates to for activations of ``act_dtype``."""
        return self.compute_dtype_for_fp32 if act_dtype == torch.float32 else act_dtype

    def describe(self) -> str:
        return self.name


#: moecompat's own arithmetic (the default, the correctness oracle).
IDEAL = Numerics()
