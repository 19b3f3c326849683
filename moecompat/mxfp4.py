"""MXFP4 MoE: the OCP MX format, a stable backend vocabulary over every engine version's enum,
and each engine's own backend oracle.

* The numeric format (e2m1 elements, e8m0 scales, 32-element blocks) is
  [`moecompat.mx`][moecompat.mx], re-exported here.
* [`Mxfp4Backend`][moecompat.mxfp4.Mxfp4Backend] names every MXFP4 MoE kernel family any vLLM
  release had (its ``Mxfp4Backend`` before PR #37128, ``Mxfp4MoeBackend`` after).
* [`select_mxfp4_backend`][moecompat.mxfp4.select_mxfp4_backend] asks the installed engine which
  one it would use; with no engine, moecompat's documented decision table
  ([`decide_mxfp4_backend`][moecompat.mxfp4.decide_mxfp4_backend]) answers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ._backends import get_impl
from ._scalars import check_bool, check_int, check_str, describe
from .errors import InvalidInputError
from .mx import (
    E2M1_MAX,
    E2M1_VALUES,
    E8M0_BIAS,
    MX_BLOCK_SIZE,
    dequantize_mxfp4,
    e2m1_to_float,
    e8m0_to_float,
    float_to_e2m1,
    pack_e2m1,
    quantize_mxfp4,
    unpack_e2m1,
)
from .reference.mxfp4 import decide_mxfp4_backend, reference_round_up
from .vocab import Mxfp4Backend, parse_activation, parse_mxfp4_backend

__all__ = [
    "E2M1_MAX",
    "E2M1_VALUES",
    "E8M0_BIAS",
    "GPT_OSS_20B",
    "GPT_OSS_120B",
    "MX_BLOCK_SIZE",
    "MoELayerSpec",
    "Mxfp4Backend",
    "convert_to_kernel_format",
    "decide_mxfp4_backend",
    "dequantize_mxfp4",
    "e2m1_to_float",
    "e8m0_to_float",
    "engine_moe_config",
    "float_to_e2m1",
    "pack_e2m1",
    "quantize_mxfp4",
    "reference_round_up",
    "round_up_hidden_and_intermediate",
    "select_mxfp4_backend",
    "unpack_e2m1",
]


@dataclasses.dataclass(frozen=True)
class MoELayerSpec:
    """Engine-neutral description of one MoE layer: what vLLM's MXFP4 oracle reads from the
    layer's ``FusedMoEConfig`` (>= 0.19). Defaults: gpt-oss-120b (the MXFP4 MoE model family).

    ``num_experts`` global experts, ``top_k`` per token, ``hidden_size`` H and
    ``intermediate_size`` I (unpadded: ``w13: [E, 2*I, H]``, ``w2: [E, H, I]``), activation dtype
    ``dtype``, ``activation`` ([`moecompat.vocab.Activation`][moecompat.vocab.Activation] name), ``has_bias`` (gpt-oss has
    expert biases), ``routing`` (``"renormalize"``: softmax top-k renormalised, gpt-oss's).
    """

    num_experts: int = 128
    top_k: int = 4
    hidden_size: int = 2880
    intermediate_size: int = 2880
    dtype: torch.dtype = torch.bfloat16
    activation: str = "swigluoai"
    has_bias: bool = True
    routing: str = "renormalize"

    def __post_init__(self) -> None:
        for name in ("num_experts", "top_k", "hidden_size", "intermediate_size"):
            check_int(name, getattr(self, name), minimum=1)
        if self.top_k > self.num_experts:
            raise InvalidInputError("top_k", f"<= num_experts ({self.num_experts})", str(self.top_k))
        if not isinstance(self.dtype, torch.dtype):
            raise InvalidInputError("dtype", "a torch.dtype", repr(self.dtype))
        parse_activation(self.activation)
        check_bool("has_bias", self.has_bias)
        check_str("routing", self.routing)


#: gpt-oss-120b's MoE layer (E=128, k=4, H=I=2880, bf16, swigluoai, biases).
GPT_OSS_120B = MoELayerSpec()
#: gpt-oss-20b's MoE layer (E=32, otherwise as 120b).
GPT_OSS_20B = MoELayerSpec(num_experts=32)


def _layer_or_default(layer: MoELayerSpec | None) -> MoELayerSpec:
    if layer is None:
        return GPT_OSS_120B
    if not isinstance(layer, MoELayerSpec):
        raise InvalidInputError("layer", "a moecompat.mxfp4.MoELayerSpec", describe(layer))
    return layer


def engine_moe_config(layer: MoELayerSpec | None = None, *, with_lora_support: bool = False,
                      device: Any = None, engine: str = "auto") -> Any:
    """The engine's own per-layer MoE config object built from ``layer`` (default gpt-oss-120b):
    vLLM's ``FusedMoEConfig`` (>= 0.17; single-rank parallel config, ``moe_backend="auto"``),
    whose fields change between releases. ``device`` defaults to ``"cuda"`` when available.
    Raises [`UnsupportedFeatureError`][moecompat.UnsupportedFeatureError] where the engine has no
    such object."""
    layer = _layer_or_default(layer)
    check_bool("with_lora_support", with_lora_support)
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidInputError("device", "a torch.device or device string", repr(device)) from None
    return get_impl("moe_layer_config", engine, True)(layer, with_lora_support, device)


def select_mxfp4_backend(*, layer: MoELayerSpec | None = None, with_lora_support: bool = False,
                         moe_config: Any = None, backend: str = "auto") -> Mxfp4Backend:
    """The MXFP4 MoE backend the installed engine would choose on this device with these
    environment variables, for ``layer`` (default: gpt-oss-120b's MoE layer).

    vLLM >= 0.19: its oracle ``select_mxfp4_moe_backend`` on the ``FusedMoEConfig`` that
    [`engine_moe_config`][moecompat.mxfp4.engine_moe_config] builds from ``layer`` (or the caller's own ``moe_config``, e.g. a
    live layer's ``layer.moe_config``); vLLM 0.10-0.18: ``get_mxfp4_backend``; no engine
    (``backend="reference"``): [`decide_mxfp4_backend`][moecompat.mxfp4.decide_mxfp4_backend].

    ``NONE`` means the engine has no MXFP4 MoE backend for this deployment: vLLM finds no device
    platform, or its oracle refuses ("... the deployment configuration"; the reasons are logged
    on the ``moecompat`` logger at INFO). Outside a live vLLM model (no current ``VllmConfig``),
    moecompat enters vLLM's defaults for a gpt-oss model of ``layer``'s shape; building that
    ``ModelConfig`` imports vLLM's gpt-oss model module (a complete vLLM install has it).
    """
    layer = _layer_or_default(layer)
    check_bool("with_lora_support", with_lora_support)
    return get_impl("select_mxfp4_backend", backend, True)(with_lora_support, moe_config, layer)


def round_up_hidden_and_intermediate(backend: Mxfp4Backend | str, hidden_size: int, intermediate_size: int,
                                     *, engine: str = "auto") -> tuple[int, int]:
    """``(hidden, intermediate)`` padded as the MXFP4 kernel family needs (the engine's own
    function where it has one: vLLM >= 0.20)."""
    hidden_size = check_int("hidden_size", hidden_size, minimum=1)
    intermediate_size = check_int("intermediate_size", intermediate_size, minimum=1)
    return get_impl("mxfp4_round_up", engine, True)(parse_mxfp4_backend(backend), hidden_size, intermediate_size)


def convert_to_kernel_format(backend: Mxfp4Backend | str, layer: Any, w13_weight: Any, w2_weight: Any,
                             w13_weight_scale: Any, w2_weight_scale: Any, w13_bias: Any = None, w2_bias: Any = None,
                             *, engine: str = "auto") -> Any:
    """The engine's ``convert_*_to_mxfp4_moe_kernel_format`` (vLLM >= 0.19), else
    [`UnsupportedFeatureError`][moecompat.UnsupportedFeatureError]."""
    return get_impl("mxfp4_convert", engine, True)(parse_mxfp4_backend(backend), layer, w13_weight, w2_weight,
                                                   w13_weight_scale, w2_weight_scale, w13_bias, w2_bias)

