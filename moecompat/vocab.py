"""moecompat's engine-neutral vocabulary.

These names are what users write; each engine adapter translates them at the edge into that
engine version's own objects (enums, config classes, keyword flags).
"""

from __future__ import annotations

import enum
from typing import Literal, NamedTuple

import torch

from .errors import InvalidInputError

__all__ = [
    "BACKENDS",
    "SWIGLUOAI_ALPHA",
    "SWIGLUOAI_LIMIT",
    "Activation",
    "BackendName",
    "QuantScheme",
    "ScoringFunc",
    "TopK",
    "parse_activation",
    "parse_scheme",
    "parse_scoring_func",
]

#: Backends a caller can name. ``"auto"`` picks one per call site (see :func:`moecompat.engine_info`).
BackendName = Literal["auto", "reference", "vllm", "sglang"]
BACKENDS: tuple[str, ...] = ("reference", "vllm", "sglang")

#: gpt-oss's clamped SwiGLU constants (vLLM ``SwigluOAIAndMul``, SGLang ``swiglu_oai``).
SWIGLUOAI_ALPHA = 1.702
SWIGLUOAI_LIMIT = 7.0


class Activation(str, enum.Enum):
    """Gated activation applied between the two expert GEMMs.

    ``w1`` produces ``2 * I`` values per token. For ``SILU`` and ``GELU`` the first ``I`` are the
    gate and the last ``I`` the up projection: ``act(gate) * up``. ``GELU`` is the exact (erf)
    GELU. ``SWIGLUOAI`` is gpt-oss's clamped SwiGLU on *interleaved* rows (gate = even rows,
    up = odd rows of ``w1``, as gpt-oss checkpoints and the engines' kernels store them)::

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
    """Result of :func:`moecompat.select_experts`.

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
            return enum_cls(value.lower())
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in enum_cls)
    raise InvalidInputError(argument, f"one of {choices}", repr(value))


def parse_activation(value: str | Activation) -> Activation:
    return _parse_enum(Activation, value, "activation")  # type: ignore[return-value]


def parse_scoring_func(value: str | ScoringFunc) -> ScoringFunc:
    return _parse_enum(ScoringFunc, value, "scoring_func")  # type: ignore[return-value]


def parse_scheme(value: str | QuantScheme | None) -> QuantScheme | None:
    if value is None:
        return None
    return _parse_enum(QuantScheme, value, "scheme")  # type: ignore[return-value]
