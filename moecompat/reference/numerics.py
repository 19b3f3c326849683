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
| fp8 dots without per-tile scales, accumulated as sm_90 wgmma does (``(group, fraction_bits)``, CUDA tensors only), for the calls whose MMA tile has at least 64 rows | ``fp8_tensor_core_accumulation``, ``fp8_mma_m`` |
| vLLM's CUDA ``moe_wna16_gemm`` for small int4 batches: bf16 products summed 4 at a time in bf16, K blocks added into the bf16 output | ``wna16_cuda_block_k`` |

The engine facts that choose these live in ``moecompat/engines/<engine>.py`` (the ``numerics``
adapter of each engine); this module only does the arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..quant import IDEAL_ACTIVATION_QUANT, ActivationQuantRules

__all__ = ["IDEAL", "SM90_FP8_ACCUMULATION", "Numerics", "TritonCall", "Wna16Call", "sm90_fp8_accumulation"]

#: How sm_90 tensor cores accumulate an fp8 ``tl.dot`` chain (``acc = tl.dot(a, b, acc=acc)``, the
#: vLLM and SGLang kernels' fp8 per-tensor and per-channel GEMMs): for each 32 products of e4m3
#: codes, the running float32 accumulator and the 32 exact products are aligned to the largest
#: exponent among them and truncated toward zero to 13 bits below it, then added exactly.
#: ``tools/device/fp8_acc_probe.py`` measured it on the H200 (torch 2.11, Triton 3.6, K = 2048 and
#: 3584): 83-85% of the outputs bit-equal to the wgmma kernel's and a relative difference of
#: 2.5e-5, against 1.2e-3 for float32 sums; no other group size or width came within 5x. Triton
#: issues wgmma only for tiles of at least 64 rows; smaller tiles (mma.sync) matched float32
#: sums of the same products (``aligned(32, 25)``: 93-96% bit-equal), so they keep the plain model.
SM90_FP8_ACCUMULATION: tuple[int, int] = (32, 13)


def sm90_fp8_accumulation() -> tuple[int, int] | None:
    """[`SM90_FP8_ACCUMULATION`][moecompat.reference.numerics.SM90_FP8_ACCUMULATION] when the
    current CUDA device is an sm_90 GPU (H100, H200, H20, GH200), else ``None``."""
    if not torch.cuda.is_available():
        return None
    return SM90_FP8_ACCUMULATION if torch.cuda.get_device_capability()[0] == 9 else None


@dataclasses.dataclass(frozen=True)
class TritonCall:
    """What decides the Triton config an engine picks for one ``fused_experts`` call: the weight
    shapes of both GEMMs, ``top_k``, the number of tokens, and the config's dtype key."""

    w1_shape: tuple[int, ...]
    w2_shape: tuple[int, ...]
    top_k: int
    num_tokens: int
    dtype: str
    per_channel: bool = False


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
    #: ``(call) -> rows of the MMA tile`` the engine's Triton kernel runs for this call: its
    #: config's ``BLOCK_SIZE_M`` (both GEMMs share it), or ``BLOCK_SIZE_N`` where the kernel swaps
    #: the operands (vLLM >= 0.25 on sm_90: ``tl.dot(b, a)`` for small-M fp8 tiles). Triton issues
    #: wgmma, and ``fp8_tensor_core_accumulation`` applies, from 64 rows. ``None``: always.
    fp8_mma_m: Callable[[TritonCall], int] | None = None
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
