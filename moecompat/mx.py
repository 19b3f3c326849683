"""OCP Microscaling (MX) FP4 numeric format: e2m1 elements with one e8m0 scale per 32 elements.

Exact, engine-independent implementation of the OCP MX v1.0 formats that MXFP4 MoE kernels
(gpt-oss) consume:

* **e2m1** element: 1 sign bit, 2 exponent bits (bias 1), 1 mantissa bit. The 16 codes map to
  ``±{0, 0.5, 1, 1.5, 2, 3, 4, 6}`` (``E2M1_VALUES``); code ``c`` and ``c | 0b1000`` differ in
  sign only.
* **e8m0** scale: an unsigned biased exponent, value ``2 ** (code - 127)``; code 255 is NaN.
* **block**: 32 consecutive elements along the reduction dimension share one scale.
* **packing**: two e2m1 codes per byte, the element with the even index in the low nibble.

This module is the numeric format only (low in the import graph: quantization and the reference
backend use it). Which MXFP4 MoE kernel an engine would choose is
[`moecompat.mxfp4`][moecompat.mxfp4], which re-exports these functions.
"""

from __future__ import annotations

import torch

from .errors import InvalidInputError

__all__ = [
    "E2M1_MAX",
    "E2M1_VALUES",
    "E8M0_BIAS",
    "MX_BLOCK_SIZE",
    "dequantize_mxfp4",
    "e2m1_to_float",
    "e8m0_to_float",
    "float_to_e2m1",
    "pack_e2m1",
    "quantize_mxfp4",
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
    # The float32 bit pattern, built directly: code c is the exponent field (c = 0 is 2**-127, a
    # subnormal: mantissa bit 22). torch.exp2 returns 0 for it once torch 2.5's inductor has set the
    # CPU's flush-to-zero mode for the whole process, as seen here on torch 2.5.1; the bits are exact
    # in every floating-point mode, on every torch and device.
    bits = torch.where(c == 0, 1 << 22, c << 23)
    bits = torch.where(c == 255, 0x7FC00000, bits)  # the quiet NaN
    return bits.view(torch.float32)


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
    """Inverse of [`quantize_mxfp4`][moecompat.mx.quantize_mxfp4]: ``packed [..., K//2]``, ``scales [..., K//32]`` -> ``[..., K]``."""
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
