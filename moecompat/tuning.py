"""Engine-neutral access to each engine's tuned fused-MoE Triton configs.

The file name, folder and format are the selected engine's own for its installed version, so a
file written here is picked up by the engine's loader by itself. These are what a port of
vLLM's ``benchmarks/kernels/benchmark_moe.py`` needs (see ``docs/porting-benchmark-moe.md``);
the top-level package re-exports them under the names ``moecompat doctor`` shows.

| function | the engine's own |
|---|---|
| [`get_config_file_name`][moecompat.get_config_file_name] | ``get_config_file_name(E, N, dtype, block_shape)`` |
| [`get_moe_configs`][moecompat.get_moe_configs] | ``get_moe_configs(E, N, dtype, ...)`` (what the loader finds) |
| [`get_default_config`][moecompat.get_default_config] | ``get_default_config(M, E, N, K, topk, dtype, ...)`` |
| [`override_config`][moecompat.override_config] | ``override_config(config)`` (restored even on error) |
| [`tuned_config_location`][moecompat.tuned_config_location] | the folder the loader reads, and its environment variable |
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ._backends import auto_backend, get_impl
from ._scalars import check_bool, check_int, check_int_pair, describe
from .errors import InvalidInputError
from .vocab import parse_name

__all__ = [
    "DTYPE_FLAGS",
    "config_dtype_str",
    "get_config_file_name",
    "get_default_config",
    "get_moe_configs",
    "override_config",
    "tuned_config_location",
]

#: ``moecompat bench/tune --dtype`` value -> the quant flags of ``get_config_dtype_str``.
DTYPE_FLAGS: dict[str, dict[str, bool]] = {
    "bf16": {}, "fp16": {}, "fp8_w8a8": {"use_fp8_w8a8": True}, "fp8_w8a8_block": {"use_fp8_w8a8": True},
    "int8_w8a16": {"use_int8_w8a16": True}, "int4_w4a16": {"use_int4_w4a16": True},
}


def _backend(backend: object, entry_point: str = "get_config_file_name") -> str:
    if backend == "auto":
        return auto_backend(entry_point, True)[0]
    from ._backends import known_backends

    return parse_name(backend, "backend", known_backends())


def _block(block_shape: Any) -> list[int] | None:
    if block_shape is None:
        return None
    return list(check_int_pair("block_shape", block_shape, positive=False))


def config_dtype_str(dtype: str, backend: str = "auto") -> str | None:
    """The engine's dtype string for a ``moecompat bench/tune --dtype`` value."""
    parse_name(dtype, "dtype", tuple(DTYPE_FLAGS))
    torch_dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
    from .api import get_config_dtype_str

    return get_config_dtype_str(torch_dtype, backend=_backend(backend), **DTYPE_FLAGS[dtype])  # type: ignore[arg-type]


def get_config_file_name(num_experts: int, n: int, dtype_str: str | None, block_shape: list[int] | None = None,
                         *, per_channel_quant: bool = False, down_moe: bool = False,
                         backend: str = "auto") -> str:
    """The engine's tuned-config file name, e.g. ``E=8,N=14336,device_name=NVIDIA_H200,dtype=fp8_w8a8.json``.

    Args:
        num_experts: experts per rank (``E``).
        n: intermediate size per rank (``N``; vLLM's ``benchmark_moe.py`` passes ``shard_intermediate_size // 2``).
        dtype_str: from [`get_config_dtype_str`][moecompat.get_config_dtype_str] (``None`` for bf16/fp16).
        block_shape: ``[block_n, block_k]`` of block-quantized weights, or None.
        per_channel_quant: SGLang's per-channel variant of the name.
        down_moe: SGLang's separate down-projection config.
        backend: ``"auto"``, ``"reference"``, ``"vllm"`` or ``"sglang"``.
    """
    num_experts = check_int("num_experts", num_experts, minimum=1)
    n = check_int("n", n, minimum=1)
    if dtype_str is not None and not isinstance(dtype_str, str):
        raise InvalidInputError("dtype_str", "a str or None", describe(dtype_str))
    check_bool("per_channel_quant", per_channel_quant)
    check_bool("down_moe", down_moe)
    return get_impl("get_config_file_name", _backend(backend))(num_experts, n, dtype_str, _block(block_shape),
                                                             per_channel_quant, down_moe)


def tuned_config_location(folder: str | None = None, backend: str = "auto") -> tuple[str, dict[str, str]]:
    """(folder to write the file into, environment variables the engine needs to look there).

    ``folder=None``: the engine's own package folder (no variable needed).
    """
    if folder is not None and not isinstance(folder, str):
        raise InvalidInputError("folder", "a str path or None", describe(folder))
    return get_impl("tuned_config_location", _backend(backend))(folder)


def get_moe_configs(num_experts: int, n: int, dtype_str: str | None, block_shape: list[int] | None = None,
                    *, per_channel_quant: bool = False, backend: str = "auto") -> dict[int, Any] | None:
    """What the engine's own loader (``get_moe_configs``) finds for this shape, or ``None``."""
    num_experts = check_int("num_experts", num_experts, minimum=1)
    n = check_int("n", n, minimum=1)
    check_bool("per_channel_quant", per_channel_quant)
    return get_impl("get_moe_configs", _backend(backend))(num_experts, n, dtype_str, _block(block_shape),
                                                        per_channel_quant)


def get_default_config(batch_size: int, num_experts: int, n: int, k: int, top_k: int, dtype_str: str | None,
                       block_shape: list[int] | None = None, *, backend: str = "auto") -> dict[str, int] | None:
    """The engine's fallback Triton config for a problem with no tuned file (vLLM's
    ``get_default_config(M, E, N, K, topk, dtype, ...)``); ``None`` where the backend has none
    (the reference backend runs no Triton kernel; SGLang's fallback is not exposed).

    ``n`` is ``w1``'s output size ``2 * intermediate`` and ``k`` the hidden size, as in vLLM.
    """
    values = [check_int(name, v, minimum=1) for name, v in
              (("batch_size", batch_size), ("num_experts", num_experts), ("n", n), ("k", k), ("top_k", top_k))]
    name = _backend(backend, "default_config")
    from .errors import UnsupportedFeatureError

    try:
        impl = get_impl("default_config", name)
    except UnsupportedFeatureError:
        return None
    cfg = impl(*values, dtype_str, _block(block_shape))
    return {key: int(v) for key, v in cfg.items()} if cfg else None


@contextlib.contextmanager
def override_config(config: dict[str, int], backend: str = "auto") -> Iterator[None]:
    """Force one Triton config for the engine's fused MoE calls inside the block; the previous
    state is restored even when a kernel fails inside (vLLM's own context manager does not)."""
    if not isinstance(config, dict):
        raise InvalidInputError("config", "a dict of Triton parameters (BLOCK_SIZE_M, ...)", describe(config))
    with get_impl("override_config", _backend(backend))(config):
        yield

