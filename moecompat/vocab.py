"""moecompat's engine-neutral vocabulary.

These names are what users write; each engine adapter translates them at the edge into that
engine version's own objects (enums, config classes, keyword flags).

**Names are case-sensitive everywhere**: activations, scoring functions, schemes, backends,
placements, precisions and MXFP4 backends are lower-case strings (or the enum members), exactly
as listed; ``"SILU"`` is an [`InvalidInputError`][moecompat.InvalidInputError] that lists the
accepted names, as ``argparse`` choices are.
"""

from __future__ import annotations

import enum
from typing import Literal, NamedTuple

import torch

from .errors import InvalidInputError

__all__ = [
    "SWIGLUOAI_ALPHA",
    "SWIGLUOAI_LIMIT",
    "Activation",
    "BackendName",
    "Mxfp4Backend",
    "QuantScheme",
    "ScoringFunc",
    "TopK",
    "parse_activation",
    "parse_scheme",
    "parse_scoring_func",
]

#: Backends a caller can name. ``"auto"`` picks one per call site (see
#: [`engine_info`][moecompat.engine_info]); the engine names are those of
#: ``moecompat/engines/_specs.py`` (a unit test pins this literal against it).
BackendName = Literal["auto", "reference", "vllm", "sglang"]

#: gpt-oss's clamped SwiGLU constants (vLLM ``SwigluOAIAndMul``, SGLang ``swiglu_oai``).
SWIGLUOAI_ALPHA = 1.702
SWIGLUOAI_LIMIT = 7.0


class Activation(str, enum.Enum):
    """Gated activation applied between the two expert GEMMs.

    ``w1`` produces ``2 * I`` values per token. For ``SILU`` and ``GELU`` the first ``I`` are the
    gate and the last ``I`` the up projection: ``act(gate) * up``. ``GELU`` is the exact (erf)
    GELU. ``SWIGLUOAI`` is gpt-oss's clamped SwiGLU on *interleaved* rows (gate = even rows,
    up = odd rows of ``w1``, as gpt-oss checkpoints and the engines' kernels store them):

        gate = min(gate, limit);  up = clamp(up, -limit, limit)
        out  = (up + 1) * gate * sigmoid(alpha * gate)      # alpha = 1.702, limit = 7.0
    """

    SILU = "silu"
    GELU = "gelu"
    SWIGLUOAI = "swigluoai"


class ScoringFunc(str, enum.Enum):
    """How router logits become expert scores before top-k."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"


class QuantScheme(str, enum.Enum):
    """Quantization schemes of the expert weights (and activations, for ``*_w8a8``).

    ``None`` (no scheme) means unquantized bf16/fp16/fp32 weights of the activation dtype.
    """

    FP8_W8A8 = "fp8_w8a8"
    INT8_W8A8 = "int8_w8a8"
    INT8_W8A16 = "int8_w8a16"
    INT4_W4A16 = "int4_w4a16"
    MXFP4_W4A16 = "mxfp4_w4a16"


class TopK(NamedTuple):
    """Result of [`moecompat.select_experts`][moecompat.select_experts].

    ``topk_weights``: ``[num_tokens, top_k]`` float32; ``topk_ids``: ``[num_tokens, top_k]``
    int32 global expert ids.
    """

    topk_weights: torch.Tensor
    topk_ids: torch.Tensor


def _parse_enum(enum_cls: type[enum.Enum], value: object, argument: str) -> enum.Enum:
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        try:
            return enum_cls(value)
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in enum_cls)
    shown = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    raise InvalidInputError(argument, f"one of {choices}", shown)


def parse_activation(value: object) -> Activation:
    return _parse_enum(Activation, value, "activation")  # type: ignore[return-value]


def parse_scoring_func(value: object) -> ScoringFunc:
    return _parse_enum(ScoringFunc, value, "scoring_func")  # type: ignore[return-value]


def parse_scheme(value: object) -> QuantScheme | None:
    if value is None:
        return None
    return _parse_enum(QuantScheme, value, "scheme")  # type: ignore[return-value]


def parse_name(value: object, argument: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices`` (exact, case-sensitive), else an
    ``InvalidInputError`` naming the argument and the choices."""
    if isinstance(value, str) and value in choices:
        return value
    shown = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
    raise InvalidInputError(argument, "one of " + ", ".join(map(repr, choices)), shown)


class Mxfp4Backend(str, enum.Enum):
    """MXFP4 MoE kernel families, the union over engine versions (vLLM ``Mxfp4Backend`` before
    PR #37128, ``Mxfp4MoeBackend`` after it)."""

    NONE = "none"
    FLASHINFER_TRTLLM_MXFP8 = "flashinfer_trtllm_mxfp8"  # FlashInfer TRT-LLM, mxfp8 activations
    FLASHINFER_TRTLLM_BF16 = "flashinfer_trtllm_bf16"  # FlashInfer TRT-LLM, bf16 activations
    FLASHINFER_CUTLASS_MXFP8 = "flashinfer_cutlass_mxfp8"
    FLASHINFER_CUTLASS_BF16 = "flashinfer_cutlass_bf16"
    TRITON = "triton"  # OpenAI triton_kernels
    TRITON_UNFUSED = "triton_unfused"
    MARLIN = "marlin"
    BATCHED_MARLIN = "batched_marlin"
    ROCM_AITER = "rocm_aiter"  # CK / AITER, bf16 activations
    ROCM_AITER_FP8 = "rocm_aiter_fp8"
    ROCM_AITER_MXFP4 = "rocm_aiter_mxfp4"
    ROCM_AITER_TRITON_BF16 = "rocm_aiter_triton_bf16"
    ROCM_AITER_TRITON_MXFP4 = "rocm_aiter_triton_mxfp4"
    DEEPGEMM = "deepgemm"
    CUTLASS_MXFP4 = "cutlass_mxfp4"
    B12X_MXFP8 = "b12x_mxfp8"
    B12X_BF16 = "b12x_bf16"
    FLASHINFER_EP_CUTEDSL = "flashinfer_ep_cutedsl"
    FLASHINFER_EP_DEEPGEMM = "flashinfer_ep_deepgemm"
    XPU = "xpu"
    CPU = "cpu"
    EMULATION = "emulation"
    HUMMING = "humming"


def parse_mxfp4_backend(value: object, argument: str = "backend") -> Mxfp4Backend:
    return _parse_enum(Mxfp4Backend, value, argument)  # type: ignore[return-value]
