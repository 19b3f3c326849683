"""Reference implementations of engine helper rules: config dtype string, expert map."""

from __future__ import annotations

from typing import Any

import torch


def get_config_dtype_str(
    dtype: torch.dtype,
    use_fp8_w8a8: bool = False,
    use_int8_w8a16: bool = False,
    use_int4_w4a16: bool = False,
    ocp_mx_scheme: str | None = None,
) -> str | None:
    """The dtype part of a tuned-config file name, by the rules of current vLLM releases.

    ``fp8_w8a8``, ``int8_w8a16``, ``int4_w4a16`` for those schemes, ``None`` for OCP MX
    schemes (no tuned configs), ``"float32"`` for unquantized float32, ``None`` otherwise
    (bf16/fp16 configs carry no dtype in their file name).
    """
    if use_fp8_w8a8:
        return "fp8_w8a8"
    if use_int8_w8a16:
        return "int8_w8a16"
    if use_int4_w4a16:
        return "int4_w4a16"
    if ocp_mx_scheme is not None:
        return None
    if dtype == torch.float32:
        return "float32"
    return None


def make_expert_map(
    ep_size: int, ep_rank: int, global_num_experts: int, placement: str = "linear"
) -> tuple[int, torch.Tensor]:
    """Experts of rank ``ep_rank`` out of ``ep_size``: ``(num_local_experts, expert_map)``.

    ``expert_map [global_num_experts]`` int32 maps a global expert id to its local id on this rank,
    or -1. ``"linear"`` gives each rank a contiguous range, the first ``global % ep_size`` ranks
    one expert more; ``"round_robin"`` gives rank ``r`` experts ``r, r + ep_size, ...``.
    """
    base, remainder = divmod(global_num_experts, ep_size)
    local = base + (1 if ep_rank < remainder else 0)
    expert_map = torch.full((global_num_experts,), -1, dtype=torch.int32)
    if placement == "linear":
        start = ep_rank * base + min(ep_rank, remainder)
        expert_map[start : start + local] = torch.arange(local, dtype=torch.int32)
    else:
        ids = torch.arange(ep_rank, global_num_experts, ep_size)
        expert_map[ids] = torch.arange(ids.numel(), dtype=torch.int32)
    return local, expert_map


def device_name() -> str:
    """The device part of a tuned-config file name (vLLM/SGLang: CUDA name, spaces -> '_')."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0).replace(" ", "_")
        return "NVIDIA_H200" if "H200" in name.split("_") else name
    return "cpu"


def get_config_file_name(
    E: int, N: int, dtype_str: str | None, block_shape: list[int] | None,
    per_channel_quant: bool = False, down_moe: bool = False,
) -> str:
    """vLLM's tuned-config file name rule (SGLang adds ``,per_channel_quant=True`` / ``_down``)."""
    dtype_selector = f",dtype={dtype_str}" if dtype_str else ""
    block_selector = f",block_shape={list(block_shape)}".replace(" ", "") if block_shape and all(block_shape) else ""
    pc = ",per_channel_quant=True" if per_channel_quant else ""
    down = "_down" if down_moe else ""
    return f"E={E},N={N},device_name={device_name()}{dtype_selector}{block_selector}{pc}{down}.json"


def get_moe_configs(E: int, N: int, dtype_str: str | None, block_shape: list[int] | None,
                    per_channel_quant: bool = False) -> None:
    """The reference backend runs no Triton kernel, so it has no tuned configs."""
    return None


def default_config(batch_size: int, num_experts: int, n: int, k: int, top_k: int, dtype_str: str | None,
                   block_shape: list[int] | None) -> None:
    """The reference backend runs no Triton kernel, so it has no default config."""
    return None


def tuned_config_location(folder: str | None) -> tuple[str, dict[str, str]]:
    import os

    return folder or os.getcwd(), {}


def override_config(config: dict[str, int]) -> Any:
    import contextlib

    return contextlib.nullcontext()
