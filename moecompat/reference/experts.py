"""Reference fused experts: sort the (token, expert) slots by expert, two grouped GEMMs, combine.

Numerics follow the engines' Triton kernels: unquantized and weight-only schemes multiply in the
activation dtype (bf16/fp16/fp32) with float32 accumulation, the gated activation is computed in
float32 and stored in the activation dtype, ``*_w8a8`` schemes quantize each GEMM's input as the
kernel does (then compute in float32), and the ``top_k`` expert outputs of a token are summed in
float32.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F

from ..quant import (
    MixedQuantConfig,
    QuantConfig,
    QuantScheme,
    dequantize_weights,
    fake_quantize_activation,
    quantize_activation,
)
from ..vocab import SWIGLUOAI_ALPHA, SWIGLUOAI_LIMIT, Activation
from .numerics import IDEAL, Numerics, TritonCall, Wna16Call

_GROUPED_MM = getattr(torch, "_grouped_mm", None)
_grouped_mm_ok: dict[tuple[str, torch.dtype], bool] = {}
_probe_lock = threading.Lock()


def _grouped_mm_works(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs for this device type and dtype (probed once)."""
    key = (device.type, dtype)
    ok = _grouped_mm_ok.get(key)
    if ok is not None:
        return ok
    with _probe_lock:
        ok = _grouped_mm_ok.get(key)
        if ok is None:
            ok = False
            if _GROUPED_MM is not None:
                try:
                    a = torch.ones(16, 16, device=device, dtype=dtype)
                    b = torch.ones(2, 16, 16, device=device, dtype=dtype)
                    offs = torch.tensor([8, 16], device=device, dtype=torch.int32)
                    out = _GROUPED_MM(a, b, offs=offs)
                    ok = bool(torch.allclose(out.float(), torch.full((16, 16), 16.0, device=device)))
                except (RuntimeError, NotImplementedError, TypeError):
                    ok = False
            _grouped_mm_ok[key] = ok
    return ok


def grouped_matmul(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``out[rows of group e] = x[rows of group e] @ w[e].T``.

    ``x [N, K]`` rows sorted by group, ``w [E, Nout, K]``, ``counts [E]`` rows per group
    (rows after ``sum(counts)`` are left unspecified). Uses ``torch._grouped_mm`` without a host
    synchronisation where it works; otherwise one matmul per non-empty group (reads ``counts``
    on the host).
    """
    e, n_out, k = w.shape
    aligned = k % 8 == 0 and n_out % 8 == 0
    if aligned and x.dtype == w.dtype and _grouped_mm_works(x.device, x.dtype):
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        assert _GROUPED_MM is not None
        return _GROUPED_MM(x, w.transpose(1, 2), offs=offs)
    out = torch.empty(x.shape[0], n_out, device=x.device, dtype=x.dtype)
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if count:
            out[start : start + count] = x[start : start + count] @ w[expert].transpose(0, 1).to(x.dtype)
        start += count
    if start < out.shape[0]:
        out[start:] = 0
    return out


def apply_activation(h: torch.Tensor, activation: Activation, round_to: torch.dtype | None = None,
                     double_rounding: bool = False) -> torch.Tensor:
    """Gated activation of ``h [N, 2I]`` -> ``[N, I]``, computed in float32 and stored in
    ``round_to`` (default ``h.dtype``); ``double_rounding``: round ``act(gate)`` to it before the
    product too, as vLLM's ``act_and_mul`` kernels do."""
    hf = h.float()
    dtype = h.dtype if round_to is None else round_to
    if activation is Activation.SWIGLUOAI:
        gate = hf[:, 0::2].clamp(max=SWIGLUOAI_LIMIT)
        up = hf[:, 1::2].clamp(min=-SWIGLUOAI_LIMIT, max=SWIGLUOAI_LIMIT)
        out = (up + 1.0) * gate * torch.sigmoid(SWIGLUOAI_ALPHA * gate)
    else:
        i = hf.shape[-1] // 2
        gate, up = hf[:, :i], hf[:, i:]
        act = F.silu(gate) if activation is Activation.SILU else F.gelu(gate)
        if double_rounding:
            act = act.to(dtype).float()
        out = act * up
    return out.to(dtype)


def fused_experts(
    hidden_states: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    activation: Activation,
    quant_config: QuantConfig | MixedQuantConfig,
    expert_map: torch.Tensor | None,
    global_num_experts: int,
    apply_router_weight_on_input: bool,
    inplace: bool,
    *,
    out_dtype: torch.dtype | None = None,
    numerics: Numerics = IDEAL,
) -> torch.Tensor:
    """Reference MoE expert computation (arguments already validated by moecompat.api).

    ``hidden_states [T, H]``, ``w1 [E, 2I, H']``, ``w2 [E, H, I']`` (``'``: packed for 4-bit
    schemes), ``topk_weights [T, k]``, ``topk_ids [T, k]`` global ids; returns ``[T, H]`` of
    ``hidden_states.dtype`` (written into ``hidden_states`` when ``inplace``). ``out_dtype``
    (not with ``inplace``): return the float32 sum over ``k`` in this dtype instead, e.g.
    ``torch.float32`` to add the outputs of several expert groups without rounding each.
    ``numerics``: the arithmetic to follow (moecompat's ideal one, or an engine's kernels'; see
    [`Numerics`][moecompat.reference.Numerics]).
    """
    if numerics is not IDEAL:
        return _faithful(hidden_states, w1, w2, topk_weights, topk_ids, activation, quant_config, expert_map,
                         apply_router_weight_on_input, inplace, out_dtype, numerics)
    t, h = hidden_states.shape
    k = topk_ids.shape[1]
    num_local = w1.shape[0]
    cfg = quant_config
    c1, c2 = (cfg.for_gemm(1), cfg.for_gemm(2)) if isinstance(cfg, MixedQuantConfig) else (cfg, cfg)
    compute = torch.float32 if cfg.quantizes_activations else hidden_states.dtype
    w1c = w1 if c1.scheme is None and compute == w1.dtype else dequantize_weights(w1, c1, 1, compute)
    w2c = w2 if c2.scheme is None and compute == w2.dtype else dequantize_weights(w2, c2, 2, compute)

    order, counts, valid, sorted_valid = _route(topk_ids, expert_map, num_local)
    slot_weights = topk_weights.reshape(-1).float()

    x = hidden_states[order // k]
    if c1.quantizes_activations:
        x = fake_quantize_activation(x, c1, 1)
    x = x.to(compute)
    inter = grouped_matmul(x, w1c, counts)
    # The dummy group's rows are left unspecified by grouped_matmul (uninitialised memory):
    # zero them, as kernels write zeros for slots of experts not on this rank, so that they never
    # reach a per-tensor activation scale or the output.
    inter = torch.where(sorted_valid[:, None], inter, 0)
    if apply_router_weight_on_input:
        inter = (inter.float() * slot_weights[order, None]).to(inter.dtype)
    act = apply_activation(inter, activation)
    if c2.quantizes_activations:
        act = fake_quantize_activation(act, c2, 2).to(compute)
    rows = grouped_matmul(act, w2c, counts).float()
    rows = torch.where(sorted_valid[:, None], rows, 0.0)
    slots = torch.empty_like(rows)
    slots[order] = rows
    if not apply_router_weight_on_input:
        slots = slots * slot_weights[:, None]
    out = slots.view(t, k, h).sum(dim=1)
    if out_dtype is not None and not inplace:
        return out.to(out_dtype)
    out = out.to(hidden_states.dtype)
    if inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out


def _route(topk_ids: torch.Tensor, expert_map: torch.Tensor | None, num_local: int
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, counts, valid, sorted_valid)``: the (token, k) slots sorted by local expert (slots
    of no local expert, or of ids out of range, last, in a dummy group that is dropped)."""
    flat_ids = topk_ids.reshape(-1).long()
    if expert_map is not None:
        # Never index out of bounds, even with ids the checks did not see (CUDA outside debug
        # mode): an id outside the map, or a map entry outside this rank's experts, is a slot
        # that contributes zero.
        n_map = expert_map.shape[0]
        in_map = (flat_ids >= 0) & (flat_ids < n_map)
        flat_ids = torch.where(in_map, expert_map.long()[flat_ids.clamp(0, max(n_map - 1, 0))], -1)
    valid = (flat_ids >= 0) & (flat_ids < num_local)
    flat_ids = torch.where(valid, flat_ids, num_local)
    order = torch.argsort(flat_ids, stable=True)
    # bincount would read the maximum back to the host; a scatter-add keeps the GPU asynchronous.
    counts = torch.zeros(num_local + 1, dtype=torch.int64, device=flat_ids.device)
    counts.index_add_(0, flat_ids, torch.ones_like(flat_ids))
    return order, counts[:num_local], valid, valid[order]


def _faithful(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, activation: Activation, cfg: QuantConfig | MixedQuantConfig,
              expert_map: torch.Tensor | None, apply_router_weight_on_input: bool, inplace: bool,
              out_dtype: torch.dtype | None, numerics: Numerics) -> torch.Tensor:
    """The reference under an engine's numerics: float32 GEMMs on exactly representable inputs,
    with the kernels' rounding points (GEMM outputs, the activation, the top-k sum) and their
    quantizers."""
    # float32 GEMMs must be float32 (not TF32) for the rounding points to be the kernels'.
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        return _faithful_fp32(hidden_states, w1, w2, topk_weights, topk_ids, activation, cfg, expert_map,
                              apply_router_weight_on_input, inplace, out_dtype, numerics)
    finally:
        torch.set_float32_matmul_precision(precision)


def _faithful_fp32(hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                   topk_ids: torch.Tensor, activation: Activation, cfg: QuantConfig | MixedQuantConfig,
                   expert_map: torch.Tensor | None, apply_router_weight_on_input: bool, inplace: bool,
                   out_dtype: torch.dtype | None, numerics: Numerics) -> torch.Tensor:
    t, h = hidden_states.shape
    k = topk_ids.shape[1]
    num_local = w1.shape[0]
    rd = numerics.compute_dtype(hidden_states.dtype)
    c1, c2 = (cfg.for_gemm(1), cfg.for_gemm(2)) if isinstance(cfg, MixedQuantConfig) else (cfg, cfg)
    order, counts, valid, sorted_valid = _route(topk_ids, expert_map, num_local)
    slot_weights = topk_weights.reshape(-1).float()
    row_weights = slot_weights[order]
    wna16_k: tuple[int, int] | None = None
    if numerics.wna16_cuda_block_k is not None and hidden_states.is_cuda and c1.scheme is QuantScheme.INT4_W4A16 \
            and c1 is c2 and c1.group_size is not None:
        wna16_k = numerics.wna16_cuda_block_k(Wna16Call(tuple(w1.shape), tuple(w2.shape), k, t, c1.group_size))
    fp8_acc = _fp8_accumulation(numerics, hidden_states.is_cuda, t, w1, w2, k, c1, c2)
    # The kernel reads the activations in its compute dtype.
    x = hidden_states.to(rd)[order // k]
    inter = _faithful_gemm(x, w1, c1, 1, counts, numerics, rd, row_weights if apply_router_weight_on_input else None,
                           wna16_k[0] if wna16_k else None, fp8_acc)
    inter = torch.where(sorted_valid[:, None], inter, 0)
    if numerics.round_intermediates:
        inter = inter.to(rd)
    act = apply_activation(inter, activation, rd if numerics.round_intermediates else torch.float32,
                           numerics.double_rounded_activation)
    rows = _faithful_gemm(act, w2, c2, 2, counts, numerics, rd,
                          None if apply_router_weight_on_input else row_weights, wna16_k[1] if wna16_k else None,
                          fp8_acc)
    rows = torch.where(sorted_valid[:, None], rows, 0.0)
    if numerics.round_intermediates:
        rows = rows.to(rd)
    slots = torch.empty_like(rows)
    slots[order] = rows
    per_k = slots.view(t, k, h)
    if k in numerics.sequential_topk_sum:
        out = per_k[:, 0]
        for j in range(1, k):
            out = (out.float() + per_k[:, j].float()).to(rd)
    else:
        out = per_k.float().sum(dim=1)
    if out_dtype is not None and not inplace:
        return out.to(out_dtype)
    out = out.to(hidden_states.dtype)
    if inplace:
        hidden_states.copy_(out)
        return hidden_states
    return out


def _fp8_accumulation(numerics: Numerics, on_cuda: bool, num_tokens: int, w1: torch.Tensor, w2: torch.Tensor, k: int,
                      c1: QuantConfig, c2: QuantConfig) -> tuple[int, int] | None:
    """The tensor-core accumulation of this call's fp8 dots, where the engine's kernel does it:
    CUDA, fp8 without per-tile scales, and an MMA tile of at least 64 rows (wgmma)."""
    acc = numerics.fp8_tensor_core_accumulation
    if acc is None or not on_cuda or not any(
            c.scheme is QuantScheme.FP8_W8A8 and c.block_shape is None for c in (c1, c2)):
        return None
    if numerics.fp8_mma_m is not None:
        call = TritonCall(tuple(w1.shape), tuple(w2.shape), k, num_tokens, "fp8_w8a8",
                          bool(c1.per_act_token_quant or c1.per_out_ch_quant))
        if numerics.fp8_mma_m(call) < 64:
            return None
    return acc


def _faithful_gemm(x: torch.Tensor, w: torch.Tensor, cfg: QuantConfig, which: int, counts: torch.Tensor,
                   numerics: Numerics, rd: torch.dtype, row_weights: torch.Tensor | None,
                   wna16_block_k: int | None, fp8_accumulation: tuple[int, int] | None = None) -> torch.Tensor:
    """One grouped GEMM under ``numerics``: ``x [N, K]`` rows sorted by expert, ``w`` the layer's
    (quantized) weights ``[E, Nout, K']``; ``row_weights [N]`` multiply the float32 accumulator of
    each row (the router weight, where this GEMM applies it). Returns float32 ``[N, Nout]`` (or
    the compute dtype where the kernel accumulates into it)."""
    rules = numerics.activation_quant
    if cfg.scheme is QuantScheme.FP8_W8A8 and cfg.block_shape is None and x.is_cuda and fp8_accumulation is not None:
        out = _tensor_core_fp8_gemm(x, w, cfg, which, counts, rules, *fp8_accumulation)
    else:
        wf = dequantize_weights(w, cfg, which, torch.float32)
        if numerics.round_dequantized_group_weights and cfg.scheme is QuantScheme.INT4_W4A16:
            wf = wf.to(rd).float()
        if wna16_block_k is not None:
            return _wna16_cuda_gemm(x.to(rd), wf, counts, wna16_block_k, row_weights, rd)
        xq = fake_quantize_activation(x, cfg, which, rules) if cfg.quantizes_activations else x.float()
        out = grouped_matmul(xq, wf, counts)
    if row_weights is not None:
        out = out * row_weights[:, None]
    return out


# Products held at once by the emulated kernels below (float32 elements, 512 MiB).
_EMULATION_CHUNK = 1 << 27


def wgmma_fp8_accumulate(xc: torch.Tensor, wc: torch.Tensor, group: int, bits: int) -> torch.Tensor:
    """``xc [R, K] @ wc [N, K].T`` as sm_90 wgmma accumulates fp8 products: for each ``group``
    consecutive products (exact: e4m3 codes as float32), the running float32 accumulator and the
    products are aligned to the largest exponent among them, truncated toward zero to ``bits``
    bits below it and added (exactly: at most ``bits + 7`` significant bits, ``bits <= 17``).
    ``K`` must be a multiple of ``group``. Returns float32 ``[R, N]``."""
    r, kk = xc.shape
    acc = torch.zeros(r, wc.shape[0], device=xc.device, dtype=torch.float32)
    for j in range(0, kk, group):
        terms = torch.cat([acc[..., None], xc[:, None, j:j + group] * wc[None, :, j:j + group]], -1)
        emax = torch.frexp(terms).exponent.amax(-1, keepdim=True).clamp_min(-100)  # all zero: any grid
        ulp = torch.ldexp(torch.ones_like(acc[..., None]), emax - 1 - bits)
        acc = (torch.trunc(terms / ulp) * ulp).sum(-1)
    return acc


def _tensor_core_fp8_gemm(x: torch.Tensor, w: torch.Tensor, cfg: QuantConfig, which: int, counts: torch.Tensor,
                          rules: Any, group: int, bits: int) -> torch.Tensor:
    """fp8 GEMM as the Triton kernel runs it on sm_90 wgmma tiles: the activation quantized, the
    fp8 codes' products accumulated by ``wgmma_fp8_accumulate``, the scales applied to the
    float32 result (``acc * a_scale * w_scale``)."""
    scale = cfg.a1_scale if which == 1 else cfg.a2_scale
    q, a_scale = quantize_activation(x, cfg.scheme, scale=scale, per_act_token_quant=cfg.per_act_token_quant,  # type: ignore[arg-type]
                                     rules=rules)
    xc = q.float()
    a_s = a_scale.float().reshape(-1, 1) if a_scale.numel() == xc.shape[0] else a_scale.float().reshape(1, 1)
    w_scale = (cfg.w1_scale if which == 1 else cfg.w2_scale)
    assert w_scale is not None
    e, n_out, kk = w.shape
    w_s = w_scale.float().reshape(e, -1)  # [E, 1] per tensor, [E, Nout] per channel
    pad = (-kk) % group
    wc = torch.nn.functional.pad(w.float(), (0, pad))
    xc = torch.nn.functional.pad(xc, (0, pad))
    out = torch.zeros(xc.shape[0], n_out, device=x.device, dtype=torch.float32)
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if not count:
            continue
        step = max(1, _EMULATION_CHUNK // max(1, count * (group + 1)))
        for n0 in range(0, n_out, step):
            acc = wgmma_fp8_accumulate(xc[start:start + count], wc[expert, n0:n0 + step], group, bits)
            out[start:start + count, n0:n0 + step] = acc * a_s[start:start + count] if a_s.shape[0] > 1 else acc * a_s
        out[start:start + count] *= w_s[expert]
        start += count
    return out


def _wna16_cuda_gemm(x: torch.Tensor, wf: torch.Tensor, counts: torch.Tensor, block_k: int,
                     row_weights: torch.Tensor | None, rd: torch.dtype, slice_sum: str = "exact") -> torch.Tensor:
    """vLLM's CUDA ``moe_wna16_gemm`` (csrc/moe/moe_wna16.cu): ``x`` in ``rd``, ``wf`` the
    dequantized weights already rounded to ``rd``; each lane sums 4 consecutive products with
    ``rd`` fused multiply-adds, the lanes of one ``block_k`` slice are added in float32 (times the
    router weight) and rounded to ``rd``, and each slice is added into the zeroed ``rd`` output
    with ``atomicAdd``, in an order the GPU picks.

    ``slice_sum="exact"`` predicts that last step as the exact sum of the rounded slices, rounded
    once, the centre of the results a random order gives; ``"k_order"`` adds them in K order, one
    result the GPU may give. On the H200 (tools/device/wna16_probe.py, docs/gpu.md) the exact sum
    has the smaller worst case (8.2e-3 against 9.0e-3), K order fits large grids better (4.8e-3
    against 8.1e-3 at 64 DeepSeek-like tokens), and two calls of the kernel differ by up to 8.3e-3
    (8.7e-3 on vLLM 0.33.0)."""
    n_rows, kk = x.shape
    e, n_out, _ = wf.shape
    out = torch.zeros(n_rows, n_out, device=x.device, dtype=rd)
    nb = kk // block_k
    start = 0
    for expert, count in enumerate(counts.tolist()):
        if not count:
            continue
        xe = x[start:start + count].float()
        step = max(1, _EMULATION_CHUNK // max(1, count * kk))
        for n0 in range(0, n_out, step):
            p = (xe[:, None, :] * wf[expert, n0:n0 + step][None]).view(count, -1, kk // 4, 4)
            lane = p[..., 0].to(rd)
            for i in range(1, 4):
                lane = (lane.float() + p[..., i]).to(rd)
            part = lane.float().view(count, -1, nb, block_k // 4).sum(-1)  # [r, n, blocks]
            if row_weights is not None:
                part = part * row_weights[start:start + count, None, None]
            part = part.to(rd)
            if slice_sum == "exact":
                acc = part.double().sum(-1).to(rd)  # float64 holds the sum of the bf16 slices exactly
            else:
                acc = part[..., 0]
                for b in range(1, nb):
                    acc = (acc.float() + part[..., b].float()).to(rd)
            out[start:start + count, n0:n0 + step] = acc
        start += count
    return out
