"""Engine-neutral access to each engine's tuned fused-MoE Triton configs.

The file name, folder and format are the selected engine's own for its installed version, so a
file written here is picked up by the engine's loader by itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from .backends import get_impl
from .errors import InvalidInputError

__all__ = ["config_dtype_str", "config_file_name", "load_tuned_configs", "override_config", "tuned_config_location"]

_DTYPE_FLAGS = {
    "bf16": {}, "fp16": {}, "fp8_w8a8": {"use_fp8_w8a8": True}, "fp8_w8a8_block": {"use_fp8_w8a8": True},
    "int8_w8a16": {"use_int8_w8a16": True}, "int4_w4a16": {"use_int4_w4a16": True},
}


def _backend(backend: str) -> str:
    if backend == "auto":
        from .backends import auto_backend

        return auto_backend("get_config_file_name", True)[0]
    return backend


def config_dtype_str(dtype: str, backend: str = "auto") -> str | None:
    """The engine's dtype string for a ``moecompat bench/tune --dtype`` value."""
    if dtype not in _DTYPE_FLAGS:
        raise InvalidInputError("--dtype", f"one of {sorted(_DTYPE_FLAGS)} (tuned configs)", dtype)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    from .api import get_config_dtype_str

    return get_config_dtype_str(torch_dtype, backend=_backend(backend), **_DTYPE_FLAGS[dtype])  # type: ignore[arg-type]


def config_file_name(num_experts: int, n: int, dtype_str: str | None, block_shape: list[int] | None = None,
                     *, per_channel_quant: bool = False, down_moe: bool = False, backend: str = "auto") -> str:
    """The engine's ``get_config_file_name(E, N, dtype, block_shape, ...)`` (N = intermediate size per rank)."""
    return get_impl("get_config_file_name", _backend(backend))(num_experts, n, dtype_str, block_shape, per_channel_quant, down_moe)


def tuned_config_location(folder: str | None = None, backend: str = "auto") -> tuple[str, dict[str, str]]:
    """(folder to write the file into, environment variables the engine needs to look there).

    ``folder=None``: the engine's own package folder (no variable needed).
    """
    return get_impl("tuned_config_location", _backend(backend))(folder)


def load_tuned_configs(num_experts: int, n: int, dtype_str: str | None, block_shape: list[int] | None = None,
                       *, per_channel_quant: bool = False, backend: str = "auto") -> dict[int, Any] | None:
    """What the engine's own loader (``get_moe_configs``) finds for this shape, or ``None``."""
    return get_impl("get_moe_configs", _backend(backend))(num_experts, n, dtype_str, block_shape, per_channel_quant)


@contextlib.contextmanager
def override_config(config: dict[str, int], backend: str = "auto") -> Iterator[None]:
    """Force one Triton config for the engine's fused MoE calls inside the block; the previous
    state is restored even when a kernel fails inside (vLLM's own context manager does not)."""
    with get_impl("override_config", _backend(backend))(config):
        yield
