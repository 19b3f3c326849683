"""OCP Microscaling (MX) FP4 reference: e2m1 elements with one e8m0 scale per 32 elements.

Exact, engine-independent implementation of the OCP MX v1.0 formats that MXFP4 MoE kernels
(gpt-oss) consume:

* **e2m1** element: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit. The 16 codes map to
  ``±{0, 0.5, 1, 1.5, 2, 3, 4, 6}`` (:data:`E2M1_VALUES`); code ``c`` and ``c | 0b1000`` differ in
  sign only.
* **e8m0** scale: an unsigned biased exponent, value ``2 ** (code - 127)``; code 255 is NaN.
* **block**: 32 consecutive elements along the reduction dimension share one scale.
* **packing**: two e2m1 codes per byte, the element with the even index in the low nibble.

The backend oracle (which MXFP4 MoE kernel an engine would choose) is added on top of these
primitives by the engine adapters.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError

__all__ = [
    "E2M1_MAX",
    "E2M1_VALUES",
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

MX_BLOCK_SIZE = 32
E2M1_MAX = 6.0
E8M0_BIAS = 127
#: Value of each 4-bit e2m1 code 0..15.
E2M1_VALUES = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
# Midpoints between consecutive positive e2m1 magnitudes, for round-to-nearest.
_E2M1_POS = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float32)
# emax of e2m1 (largest normal exponent): 6 = 1.5 * 2**2.
_E2M1_EMAX = 2


def e2m1_to_float(codes: torch.Tensor) -> torch.Tensor:
    """Decode e2m1 codes (uint8 values 0..15, unpacked) to float32."""
    return E2M1_VALUES.to(codes.device)[codes.long()]


_PAIR_TABLES: dict[torch.device, torch.Tensor] = {}


def _pair_table(device: torch.device) -> torch.Tensor:
    """``[256, 2]`` float32: the (low nibble, high nibble) values of every packed byte."""
    table = _PAIR_TABLES.get(device)
    if table is None:
        b = torch.arange(256)
        table = _PAIR_TABLES[device] = torch.stack([E2M1_VALUES[b & 0x0F], E2M1_VALUES[b >> 4]], dim=-1).to(device)
    return table


def float_to_e2m1(x: torch.Tensor) -> torch.Tensor:
    """Encode float values (already divided by their scale) as e2m1 codes (uint8 0..15).

    Round to nearest, ties to the value with an even mantissa (OCP MX: roundTiesToEven);
    magnitudes above 6 saturate to 6.
    """
    xf = x.float()
    mag = xf.abs().clamp(max=E2M1_MAX)
    pos = _E2M1_POS.to(x.device)
    # Distance to every representable magnitude; ties go to the even code (mantissa bit 0).
    dist = (mag.unsqueeze(-1) - pos).abs()
    best = dist.min(dim=-1, keepdim=True).values
    is_best = dist == best
    code_idx = torch.arange(8, device=x.device)
    even = (code_idx % 2) == 0
    # Prefer an even code among equally near ones; argmax picks the first True.
    pick = torch.where(is_best & even, 2, is_best.to(torch.int64))
    idx = pick.argmax(dim=-1)
    sign = (torch.signbit(xf) & (idx != 0)).to(torch.int64) << 3
    return (idx | sign).to(torch.uint8)


def e8m0_to_float(codes: torch.Tensor) -> torch.Tensor:
    """Decode e8m0 scale codes (uint8) to float32 powers of two (255 decodes to NaN)."""
    c = codes.to(torch.int32)
    out = torch.exp2((c - E8M0_BIAS).float())
    return torch.where(c == 255, torch.full_like(out, float("nan")), out)


def pack_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """Pack e2m1 codes ``[..., K]`` (K even) into bytes ``[..., K // 2]``, even index low."""
    if codes.shape[-1] % 2:
        raise InvalidInputError("codes", "an even last dimension", tuple(codes.shape))
    c = codes.to(torch.uint8)
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_e2m1(packed: torch.Tensor) -> torch.Tensor:
    """Unpack bytes ``[..., K // 2]`` into e2m1 codes ``[..., K]`` (uint8 0..15)."""
    lo = packed & 0x0F
    hi = (packed >> 4) & 0x0F
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize_mxfp4(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x [..., K]`` (K a multiple of 32) to MXFP4.

    Returns ``(packed [..., K // 2] uint8, scales [..., K // 32] uint8 e8m0)``. The shared
    exponent of each block is ``floor(log2(amax)) - 2`` (OCP MX: the block maximum's exponent
    minus e2m1's emax), so the largest element lands in ``[4, 8)`` before saturation to 6.
    """
    k = x.shape[-1]
    if k % MX_BLOCK_SIZE:
        raise InvalidInputError(
            "x", f"last dimension a multiple of {MX_BLOCK_SIZE}", tuple(x.shape)
        )
    blocks = x.float().reshape(*x.shape[:-1], k // MX_BLOCK_SIZE, MX_BLOCK_SIZE)
    amax = blocks.abs().amax(dim=-1)
    # frexp gives amax = m * 2**e with m in [0.5, 1): floor(log2(amax)) = e - 1, exact.
    _, exp = torch.frexp(amax)
    shared = torch.where(amax > 0, exp - 1 - _E2M1_EMAX, torch.zeros_like(exp))
    shared = shared.clamp(-E8M0_BIAS, E8M0_BIAS)
    scale_codes = (shared + E8M0_BIAS).to(torch.uint8)
    scaled = blocks / torch.exp2(shared.float()).unsqueeze(-1)
    codes = float_to_e2m1(scaled).reshape(x.shape)
    return pack_e2m1(codes), scale_codes


def dequantize_mxfp4(
    packed: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Inverse of :func:`quantize_mxfp4`: ``packed [..., K//2]``, ``scales [..., K//32]`` -> ``[..., K]``."""
    # Decode both nibbles of each byte with one 256-entry table lookup (int32 index): no
    # unpacked uint8 copy and no int64 index tensor, which dominated memory on large experts.
    pairs = torch.index_select(_pair_table(packed.device), 0, packed.reshape(-1).to(torch.int32))
    values = pairs.reshape(*packed.shape[:-1], packed.shape[-1] * 2)
    k = values.shape[-1]
    if scales.shape[-1] * MX_BLOCK_SIZE != k:
        raise InvalidInputError(
            "scales",
            f"last dimension {k // MX_BLOCK_SIZE} (one e8m0 scale per {MX_BLOCK_SIZE} elements)",
            tuple(scales.shape),
        )
    blocks = values.reshape(*values.shape[:-1], k // MX_BLOCK_SIZE, MX_BLOCK_SIZE)
    out = blocks * e8m0_to_float(scales).unsqueeze(-1)
    return out.reshape(values.shape).to(dtype)


# --------------------------------------------------------------------------------------------
# MXFP4 MoE backends: one stable vocabulary over every engine version's enum, and the oracle.

import enum as _enum  # noqa: E402
import os as _os  # noqa: E402
from dataclasses import dataclass as _dataclass  # noqa: E402
from typing import Any as _Any  # noqa: E402


class Mxfp4Backend(str, _enum.Enum):
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


#: Every vLLM enum member name (any version) -> the stable member.
VLLM_NAMES: dict[str, Mxfp4Backend] = {
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


def from_engine(member: _Any) -> Mxfp4Backend:
    """The stable member for an engine enum member (any vLLM version)."""
    name = getattr(member, "name", str(member))
    try:
        return VLLM_NAMES[name]
    except KeyError:
        raise InvalidInputError("member", f"a known MXFP4 backend ({', '.join(VLLM_NAMES)})", name) from None


def to_engine(backend: Mxfp4Backend | str, engine_enum: type[_enum.Enum]) -> _enum.Enum:
    """The member of ``engine_enum`` (the installed version's own enum) for ``backend``."""
    b = Mxfp4Backend(backend)
    for name, stable in VLLM_NAMES.items():
        if stable is b and name in engine_enum.__members__:
            return engine_enum[name]
    from .errors import UnsupportedFeatureError

    raise UnsupportedFeatureError("vllm", None, f"MXFP4 backend {b.value!r}",
                                  detail=f"{engine_enum.__name__} has only {', '.join(engine_enum.__members__)}")


def _env_flag(name: str, env: dict[str, str]) -> bool:
    return env.get(name, "0").lower() in ("1", "true")


def decide_mxfp4_backend(capability: tuple[int, int] | None, *, has_flashinfer: bool, has_triton_kernels: bool,
                         rocm: bool = False, rocm_aiter_gfx950: bool = False,
                         env: dict[str, str] | None = None) -> Mxfp4Backend:
    """moecompat's documented decision table (vLLM's pre-oracle logic), used with no engine.

    CUDA SM90 + FlashInfer + ``VLLM_USE_FLASHINFER_MOE_MXFP4_BF16=1`` -> FlashInfer CUTLASS bf16;
    SM100 + FlashInfer -> TRT-LLM mxfp8 (``VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8=1``), CUTLASS mxfp8
    (``..._MXFP8_CUTLASS=1``) or TRT-LLM bf16; otherwise SM90-SM10x with triton_kernels -> Triton,
    else Marlin (also when ``VLLM_MXFP4_USE_MARLIN=1``, which vLLM reads before 0.24 only; from
    0.24 a layer's ``moe_backend`` forces a backend); ROCm: AITER on gfx950, else Triton when
    triton_kernels is there; no GPU -> none.
    """
    e = dict(_os.environ if env is None else env)
    if rocm:
        if rocm_aiter_gfx950:
            return Mxfp4Backend.ROCM_AITER
        return Mxfp4Backend.TRITON if has_triton_kernels else Mxfp4Backend.NONE
    if capability is None:
        return Mxfp4Backend.NONE
    major = capability[0]
    if capability == (9, 0) and has_flashinfer and _env_flag("VLLM_USE_FLASHINFER_MOE_MXFP4_BF16", e):
        return Mxfp4Backend.FLASHINFER_CUTLASS_BF16
    if major == 10 and has_flashinfer:
        if _env_flag("VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8_CUTLASS", e):
            return Mxfp4Backend.FLASHINFER_CUTLASS_MXFP8
        if _env_flag("VLLM_USE_FLASHINFER_MOE_MXFP4_MXFP8", e):
            return Mxfp4Backend.FLASHINFER_TRTLLM_MXFP8
        return Mxfp4Backend.FLASHINFER_TRTLLM_BF16
    triton_ok = has_triton_kernels and (9, 0) <= tuple(capability) < (11, 0)
    if _env_flag("VLLM_MXFP4_USE_MARLIN", e) or not triton_ok:
        return Mxfp4Backend.MARLIN
    return Mxfp4Backend.TRITON


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def reference_round_up(backend: Mxfp4Backend | str, hidden_size: int, intermediate_size: int,
                       rocm: bool = False) -> tuple[int, int]:
    """Padding each MXFP4 kernel family needs: vLLM 0.33's oracle rules (before 0.27, TRT-LLM
    padded the intermediate size to 256 instead of 128)."""
    b = Mxfp4Backend(backend)
    if b in (Mxfp4Backend.FLASHINFER_EP_CUTEDSL, Mxfp4Backend.FLASHINFER_EP_DEEPGEMM,
             Mxfp4Backend.B12X_BF16, Mxfp4Backend.B12X_MXFP8):
        return hidden_size, intermediate_size
    if b is Mxfp4Backend.EMULATION:
        return _round_up(hidden_size, MX_BLOCK_SIZE), _round_up(intermediate_size, MX_BLOCK_SIZE)
    if b in (Mxfp4Backend.DEEPGEMM, Mxfp4Backend.CUTLASS_MXFP4, Mxfp4Backend.FLASHINFER_CUTLASS_BF16,
             Mxfp4Backend.FLASHINFER_CUTLASS_MXFP8):
        return _round_up(hidden_size, 128), _round_up(intermediate_size, 128)
    if b in (Mxfp4Backend.MARLIN, Mxfp4Backend.BATCHED_MARLIN):
        return _round_up(hidden_size, 256), _round_up(intermediate_size, 128)
    if b in (Mxfp4Backend.FLASHINFER_TRTLLM_BF16, Mxfp4Backend.FLASHINFER_TRTLLM_MXFP8):
        return _round_up(hidden_size, 256), _round_up(intermediate_size, 128)
    if rocm:
        return _round_up(hidden_size, 256), _round_up(intermediate_size, 256)
    if b is Mxfp4Backend.CPU:
        return _round_up(hidden_size, 32), _round_up(intermediate_size, 32)
    return hidden_size, _round_up(intermediate_size, 64)


@_dataclass(frozen=True)
class MoELayerSpec:
    """Engine-neutral description of one MoE layer: what vLLM's MXFP4 oracle reads from the
    layer's ``FusedMoEConfig`` (>= 0.19). Defaults: gpt-oss-120b (the MXFP4 MoE model family).

    ``num_experts`` global experts, ``top_k`` per token, ``hidden_size`` H and
    ``intermediate_size`` I (unpadded: ``w13: [E, 2*I, H]``, ``w2: [E, H, I]``), activation dtype
    ``dtype``, ``activation`` (:class:`moecompat.vocab.Activation` name), ``has_bias`` (gpt-oss has
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
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InvalidInputError(name, "a positive int", repr(value))
        if self.top_k > self.num_experts:
            raise InvalidInputError("top_k", f"<= num_experts ({self.num_experts})", str(self.top_k))
        if not isinstance(self.dtype, torch.dtype):
            raise InvalidInputError("dtype", "a torch.dtype", repr(self.dtype))
        from .vocab import Activation

        try:
            Activation(self.activation)
        except ValueError:
            raise InvalidInputError("activation", f"one of {[a.value for a in Activation]}", repr(self.activation)) from None


#: gpt-oss-120b's MoE layer (E=128, k=4, H=I=2880, bf16, swigluoai, biases).
GPT_OSS_120B = MoELayerSpec()
#: gpt-oss-20b's MoE layer (E=32, otherwise as 120b).
GPT_OSS_20B = MoELayerSpec(num_experts=32)


def _layer_or_default(layer: MoELayerSpec | None) -> MoELayerSpec:
    if layer is None:
        return GPT_OSS_120B
    if not isinstance(layer, MoELayerSpec):
        raise InvalidInputError("layer", "a moecompat.mxfp4.MoELayerSpec", type(layer).__name__)
    return layer


def engine_moe_config(layer: MoELayerSpec | None = None, *, with_lora_support: bool = False,
                      device: _Any = None, engine: str = "auto") -> _Any:
    """The engine's own per-layer MoE config object built from ``layer`` (default gpt-oss-120b):
    vLLM's ``FusedMoEConfig`` (>= 0.17; single-rank parallel config, ``moe_backend="auto"``),
    whose fields change between releases. ``device`` defaults to ``"cuda"`` when available.
    Raises :class:`UnsupportedFeatureError` where the engine has no such object."""
    from .backends import get_impl

    layer = _layer_or_default(layer)
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise InvalidInputError("device", "a torch.device or device string", repr(device)) from None
    return get_impl("moe_layer_config", engine, True)(layer, with_lora_support, device)


def select_mxfp4_backend(*, layer: MoELayerSpec | None = None, with_lora_support: bool = False,
                         moe_config: _Any = None, backend: str = "auto") -> Mxfp4Backend:
    """The MXFP4 MoE backend the installed engine would choose on this device with these
    environment variables, for ``layer`` (default: gpt-oss-120b's MoE layer).

    vLLM >= 0.19: its oracle ``select_mxfp4_moe_backend`` on the ``FusedMoEConfig`` that
    :func:`engine_moe_config` builds from ``layer`` (or the caller's own ``moe_config``, e.g. a
    live layer's ``layer.moe_config``); vLLM 0.10-0.18: ``get_mxfp4_backend``; no engine
    (``backend="reference"``): :func:`decide_mxfp4_backend`.

    ``NONE`` means the engine has no MXFP4 MoE backend for this deployment: vLLM finds no device
    platform, or its oracle refuses ("... the deployment configuration"; the reasons are logged
    on the ``moecompat`` logger at INFO). Outside a live vLLM model (no current ``VllmConfig``),
    moecompat enters vLLM's defaults for a gpt-oss model of ``layer``'s shape; building that
    ``ModelConfig`` imports vLLM's gpt-oss model module (a complete vLLM install has it).
    """
    from .backends import get_impl

    layer = _layer_or_default(layer)
    return get_impl("select_mxfp4_backend", backend, True)(with_lora_support, moe_config, layer)


def round_up_hidden_and_intermediate(backend: Mxfp4Backend | str, hidden_size: int, intermediate_size: int,
                                     *, engine: str = "auto") -> tuple[int, int]:
    """``(hidden, intermediate)`` padded as the MXFP4 kernel family needs (the engine's own
    function where it has one: vLLM >= 0.20)."""
    from .backends import get_impl

    return get_impl("mxfp4_round_up", engine, True)(Mxfp4Backend(backend), hidden_size, intermediate_size)


def convert_to_kernel_format(backend: Mxfp4Backend | str, layer: _Any, w13_weight: _Any, w2_weight: _Any,
                             w13_weight_scale: _Any, w2_weight_scale: _Any, w13_bias: _Any = None, w2_bias: _Any = None,
                             *, engine: str = "auto") -> _Any:
    """The engine's ``convert_*_to_mxfp4_moe_kernel_format`` (vLLM >= 0.20), else
    :class:`UnsupportedFeatureError`."""
    from .backends import get_impl

    return get_impl("mxfp4_convert", engine, True)(Mxfp4Backend(backend), layer, w13_weight, w2_weight,
                                                   w13_weight_scale, w2_weight_scale, w13_bias, w2_bias)


def _reference_select(with_lora_support: bool, moe_config: _Any, layer: MoELayerSpec) -> Mxfp4Backend:
    import importlib.util

    import torch

    cap = tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    rocm = bool(getattr(torch.version, "hip", None))
    return decide_mxfp4_backend(cap, has_flashinfer=importlib.util.find_spec("flashinfer") is not None,  # type: ignore[arg-type]
                                has_triton_kernels=importlib.util.find_spec("triton_kernels") is not None, rocm=rocm)
