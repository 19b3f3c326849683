"""GPTQ and AWQ int4 checkpoints: unpack, repack, validate, convert to the MoE kernel layout.

Checkpoint layouts (per linear layer, ``K`` input features, ``N`` output features, group ``g``):

| format | qweight (int32) | qzeros (int32) | scales (fp16) | g_idx |
|---|---|---|---|---|
| GPTQ | ``[K/8, N]``: 8 nibbles along K, nibble i = row 8r+i | ``[K/g, N/8]`` packed along N; stores zero - 1 ("v1" format) | ``[K/g, N]`` | ``[K]`` (act-order) |
| AWQ | ``[K, N/8]``: 8 nibbles along N in the order 0,2,4,6,1,3,5,7 | ``[K/g, N/8]`` same order | ``[K/g, N]`` | — |

Dequantized: ``w[k, n] = (q[k, n] - zero[k // g, n]) * scale[k // g, n]`` (with ``g_idx``:
group ``g_idx[k]`` instead of ``k // g``). moecompat's ``int4_w4a16`` MoE layout is the
transposed ``[N, K/2]`` uint8 with per-``[N, K/g]`` scales and ``[N/2, K/g]`` packed zeros
([`moecompat.quant`][moecompat.quant]).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._scalars import check_int, describe
from .errors import InvalidInputError, UnsupportedFeatureError
from .quant import pack_int4

__all__ = [
    "AWQ_ORDER",
    "Int4Linear",
    "from_awq",
    "from_gptq",
    "pack_int32",
    "to_awq",
    "to_gptq",
    "to_moe_layout",
    "unpack_int32",
    "validate_awq",
    "validate_gptq",
]

#: AWQ packs nibbles of columns 0..7 into positions 0,4,1,5,2,6,3,7 (i.e. order 0,2,4,6,1,3,5,7).
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


class Int4Linear(NamedTuple):
    """An unpacked int4 linear layer in ``[K, N]`` orientation.

    ``q [K, N]`` int codes 0..15, ``zeros [K/g, N]`` codes 0..15 (real zero point), ``scales
    [K/g, N]``, ``g_idx [K]`` group of each input row (``None``: ``k // group_size``).
    """

    q: torch.Tensor
    zeros: torch.Tensor
    scales: torch.Tensor
    group_size: int
    g_idx: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[K, N]`` weights."""
        k = self.q.shape[0]
        groups = self.g_idx.long() if self.g_idx is not None else torch.arange(k, device=self.q.device) // self.group_size
        return ((self.q.float() - self.zeros.float()[groups]) * self.scales.float()[groups]).to(dtype)


def unpack_int32(packed: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Unpack 8 nibbles per int32 along ``dim`` (nibble j holds element ``order[j]``)."""
    p = packed.to(torch.int32).movedim(dim, -1)
    shifts = torch.arange(0, 32, 4, device=p.device, dtype=torch.int32)
    nib = (p.unsqueeze(-1) >> shifts) & 0xF  # [..., n, 8], position j
    out = torch.empty_like(nib)
    out[..., list(order)] = nib
    return out.reshape(*p.shape[:-1], p.shape[-1] * 8).movedim(-1, dim).contiguous()


def pack_int32(codes: torch.Tensor, dim: int, order: tuple[int, ...] = tuple(range(8))) -> torch.Tensor:
    """Inverse of [`unpack_int32`][moecompat.int4.unpack_int32]."""
    c = codes.to(torch.int32).movedim(dim, -1)
    if c.shape[-1] % 8:
        raise InvalidInputError("codes", "a size divisible by 8 along the packed dimension", list(codes.shape))
    c = c.reshape(*c.shape[:-1], c.shape[-1] // 8, 8)[..., list(order)]
    shifts = torch.arange(0, 32, 4, device=c.device, dtype=torch.int32)
    packed = (c << shifts).sum(-1, dtype=torch.int64)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    return packed.movedim(-1, dim).contiguous()


def _expect(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidInputError(name, f"a tensor of shape {list(shape)}", type(t).__name__)
    if tuple(t.shape) != shape:
        raise InvalidInputError(name, f"shape {list(shape)}", list(t.shape))
    if dtype is not None and t.dtype != dtype:
        raise InvalidInputError(name, f"dtype {dtype}", t.dtype)


def _tensors(g_idx: object = None, **tensors: object) -> None:
    """Required tensors (and the optional ``g_idx``) are tensors with data."""
    for name, t in {**tensors, "g_idx": g_idx}.items():
        if (t is not None or name != "g_idx") and not isinstance(t, torch.Tensor):
            raise InvalidInputError(name, "a torch.Tensor", describe(t))
        if isinstance(t, torch.Tensor) and t.is_meta:
            raise InvalidInputError(name, "a tensor with data (not on the meta device)", "a meta tensor")


def validate_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
                  g_idx: torch.Tensor | None = None) -> tuple[int, int]:
    """Check a GPTQ layer's tensors against each other; returns ``(K, N)``.

    E.g. ``qweight [256, 768]`` (K = 2048, N = 768) with group 128 needs ``qzeros [16, 96]`` and
    ``scales [16, 768]``; each mismatch names the tensor and its expected shape.
    """
    _tensors(qweight=qweight, qzeros=qzeros, scales=scales, g_idx=g_idx)
    if qweight.dim() != 2:
        raise InvalidInputError("qweight", "a 2-D int32 tensor [K/8, N]", list(qweight.shape))
    k, n = qweight.shape[0] * 8, qweight.shape[1]
    group_size = check_int("group_size", group_size, minimum=-1)
    if group_size in (-1, 0):
        group_size = k
    if k % group_size:
        raise InvalidInputError("group_size", f"a divisor of K={k} (from qweight {list(qweight.shape)})", group_size)
    if n % 8:
        raise InvalidInputError("qweight", "N divisible by 8 (zeros pack 8 columns per int32)", list(qweight.shape))
    _expect("qweight", qweight, (k // 8, n), torch.int32)
    _expect("qzeros", qzeros, (k // group_size, n // 8), torch.int32)
    _expect("scales", scales, (k // group_size, n))
    if g_idx is not None:
        _expect("g_idx", g_idx, (k,))
    return k, n


def validate_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> tuple[int, int]:
    """Check an AWQ layer's tensors (``qweight [K, N/8]``); returns ``(K, N)``."""
    _tensors(qweight=qweight, qzeros=qzeros, scales=scales)
    if qweight.dim() != 2:
        raise InvalidInputError("qweight", "a 2-D int32 tensor [K, N/8]", list(qweight.shape))
    k, n = qweight.shape[0], qweight.shape[1] * 8
    group_size = check_int("group_size", group_size, minimum=1)
    if k % group_size:
        raise InvalidInputError("group_size", f"a divisor of K={k}", group_size)
    _expect("qweight", qweight, (k, n // 8), torch.int32)
    _expect("qzeros", qzeros, (k // group_size, n // 8), torch.int32)
    _expect("scales", scales, (k // group_size, n))
    return k, n


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
              g_idx: torch.Tensor | None = None, *, zero_offset: int = 1, sym: bool = False) -> Int4Linear:
    """Unpack a GPTQ layer. ``zero_offset=1``: the v1 checkpoint format stores ``zero - 1``
    (AutoGPTQ); ``sym=True`` ignores ``qzeros`` and uses zero point 8."""
    k, n = validate_gptq(qweight, qzeros, scales, group_size, g_idx)
    if group_size in (-1, 0):
        group_size = k
    q = unpack_int32(qweight, dim=0)
    if sym:
        zeros = torch.full((k // group_size, n), 8, dtype=torch.int32, device=q.device)
    else:
        zeros = (unpack_int32(qzeros, dim=1) + zero_offset) & 0xF
    if g_idx is not None and torch.equal(g_idx.long().cpu(), torch.arange(k) // group_size):
        g_idx = None  # trivial act-order
    return Int4Linear(q, zeros, scales, group_size, g_idx)


def to_gptq(layer: Int4Linear, *, zero_offset: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repack as GPTQ ``(qweight, qzeros, scales, g_idx)``."""
    k = layer.q.shape[0]
    g_idx = layer.g_idx if layer.g_idx is not None else torch.arange(k, device=layer.q.device) // layer.group_size
    return (pack_int32(layer.q, dim=0), pack_int32((layer.zeros - zero_offset) & 0xF, dim=1), layer.scales,
            g_idx.to(torch.int32))


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int) -> Int4Linear:
    """Unpack an AWQ layer (GEMM format)."""
    validate_awq(qweight, qzeros, scales, group_size)
    return Int4Linear(unpack_int32(qweight, 1, AWQ_ORDER), unpack_int32(qzeros, 1, AWQ_ORDER), scales, group_size)


def to_awq(layer: Int4Linear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Repack as AWQ ``(qweight, qzeros, scales)`` (no act-order in AWQ)."""
    if layer.g_idx is not None:
        raise UnsupportedFeatureError("awq", None, "act-order (g_idx)", detail="AWQ has no act-order; dequantize instead")
    return pack_int32(layer.q, 1, AWQ_ORDER), pack_int32(layer.zeros, 1, AWQ_ORDER), layer.scales


def to_moe_layout(layers: list[Int4Linear]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-expert layers into moecompat's ``int4_w4a16`` layout (the engines' WNA16 MoE
    kernels'): ``(weight [E, N, K/2] uint8, scale [E, N, K/g], zero_points [E, N/2, K/g] uint8)``.

    Act-order (non-trivial ``g_idx``) changes which scale a row uses in a way the MoE kernels
    cannot express: it raises ``UnsupportedFeatureError`` (dequantize with
    [`dequantize`][moecompat.int4.Int4Linear.dequantize] for the reference backend instead).
    """
    if not layers:
        raise InvalidInputError("layers", "at least one expert", 0)
    g = layers[0].group_size
    ws, ss, zs = [], [], []
    for i, layer in enumerate(layers):
        if layer.g_idx is not None:
            raise UnsupportedFeatureError("moecompat", None, f"act-order g_idx (expert {i}) in the MoE int4 layout",
                                          detail="the fused MoE kernels take contiguous groups only")
        if layer.group_size != g or layer.q.shape != layers[0].q.shape:
            raise InvalidInputError(f"layers[{i}]", f"group size {g} and shape {list(layers[0].q.shape)} like expert 0",
                                    f"group size {layer.group_size}, shape {list(layer.q.shape)}")
        ws.append(pack_int4(layer.q.t().contiguous(), dim=-1))
        ss.append(layer.scales.t().contiguous())
        zs.append(pack_int4(layer.zeros.t().contiguous(), dim=0))
    return torch.stack(ws), torch.stack(ss), torch.stack(zs)
