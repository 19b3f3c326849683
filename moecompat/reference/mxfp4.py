"""The reference backend's MXFP4 MoE backend rules (used with no engine, ``backend="reference"``).

moecompat's own documented decision table and padding rules, written after vLLM's (its
pre-oracle ``get_mxfp4_backend`` logic and its oracle's round-up rules); the vLLM surface tests
pin the padding rules against each release that has the oracle.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .._scalars import check_bool, check_int
from ..errors import InvalidInputError
from ..mx import MX_BLOCK_SIZE
from ..vocab import Mxfp4Backend, parse_mxfp4_backend

__all__ = ["decide_mxfp4_backend", "reference_round_up", "select_on_this_machine"]


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
    for name, flag in (("has_flashinfer", has_flashinfer), ("has_triton_kernels", has_triton_kernels),
                       ("rocm", rocm), ("rocm_aiter_gfx950", rocm_aiter_gfx950)):
        check_bool(name, flag)
    if capability is not None:
        if not isinstance(capability, (tuple, list)) or len(capability) != 2:
            raise InvalidInputError("capability", "a (major, minor) tuple or None", repr(capability))
        capability = (check_int("capability[0]", capability[0], minimum=0), check_int("capability[1]", capability[1], minimum=0))
    if env is not None and not isinstance(env, dict):
        raise InvalidInputError("env", "a dict of environment variables or None", type(env).__name__)
    e = dict(os.environ if env is None else env)
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
    b = parse_mxfp4_backend(backend)
    hidden_size = check_int("hidden_size", hidden_size, minimum=1)
    intermediate_size = check_int("intermediate_size", intermediate_size, minimum=1)
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


def select_on_this_machine(with_lora_support: bool, moe_config: object, layer: object) -> Mxfp4Backend:
    """[`decide_mxfp4_backend`][moecompat.mxfp4.decide_mxfp4_backend] for this machine's GPU and packages."""
    cap = tuple(torch.cuda.get_device_capability(0)) if torch.cuda.is_available() else None
    rocm = bool(getattr(torch.version, "hip", None))
    return decide_mxfp4_backend(cap, has_flashinfer=importlib.util.find_spec("flashinfer") is not None,  # type: ignore[arg-type]
                                has_triton_kernels=importlib.util.find_spec("triton_kernels") is not None, rocm=rocm)
