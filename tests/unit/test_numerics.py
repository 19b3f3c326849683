"""The engine-faithful reference: each engine's quantizer and rounding conventions, pinned on CPU.

The expected values here are written from the engines' kernel arithmetic as read from their
released sources (vLLM 0.20-0.26 ``csrc/.../fp8/common.cu``, ``per_token_group_quant_fp8`` and
``int8_utils.per_token_quant_int8``; SGLang 0.5.11-0.5.17 ``sglang_per_token_group_quant_fp8``
and ``per_tensor_quant_fp8``; vLLM's own torch references in its tests), computed independently
of moecompat's code with float64 where the kernels are exact. The GPU suite compares the real
kernels with the faithful reference at tightened tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch

import moecompat as mc
from moecompat import quant
from moecompat.quant import FP8_DTYPE, ActivationQuantRules
from moecompat.reference import IDEAL, Numerics

VLLM_RULES = ActivationQuantRules(tensor_amax_floor=0.0, tensor_reciprocal=True, token_amax_floor=0.0,
                                  token_scale_floor=1.0 / (448.0 * 512.0), static_reciprocal=True, block_ue8m0=True,
                                  int8_token_by_inverse_amax=True, int8_round_half_away=True)
SGLANG_RULES = ActivationQuantRules(tensor_amax_floor=0.0, tensor_reciprocal=True, token_amax_floor=0.0,
                                    token_reciprocal=True, static_reciprocal=True, block_by_inverse_amax=True,
                                    int8_token_by_inverse_amax=True, int8_round_half_away=True)


def _x(t=6, k=256, seed=0, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g) * torch.logspace(-3, 2, t)[:, None]
    return x.to(dtype)


def _f32(v: float) -> float:
    return float(torch.tensor(v, dtype=torch.float32))


def _fp8_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``torch.equal`` for fp8 tensors: torch 2.5 has no CPU equal kernel for float8, so compare
    the float32 values (every fp8 value is exact in float32; same dtype required)."""
    return a.dtype == b.dtype == FP8_DTYPE and torch.equal(a.float(), b.float())


def test_vllm_block_fp8_scales_are_ue8m0():
    """vLLM (DeepGEMM's UE8M0): s = 2**ceil(log2(max(amax, 1e-10) / 448)); q = fp8(clamp(x / s))."""
    x = _x()
    q, s = quant.quantize_activation(x, "fp8_w8a8", block_k=128, rules=VLLM_RULES)
    xf = x.float()
    for r in range(x.shape[0]):
        for b in range(2):
            grp = xf[r, b * 128:(b + 1) * 128]
            amax = max(grp.abs().max().item(), 1e-10)
            raw = _f32(amax / 448.0)
            want = 2.0 ** math.ceil(math.log2(raw))
            assert s[r, b].item() == want
            assert _fp8_equal(q[r, b * 128:(b + 1) * 128], (grp / want).clamp(-448, 448).to(FP8_DTYPE))


def test_sglang_block_fp8_multiplies_by_448_over_amax():
    x = _x(seed=1)
    q, s = quant.quantize_activation(x, "fp8_w8a8", block_k=128, rules=SGLANG_RULES)
    xf = x.float()
    for r in range(x.shape[0]):
        grp = xf[r, :128]
        amax = torch.tensor(max(grp.abs().max().item(), 1e-10), dtype=torch.float32)
        assert s[r, 0].item() == (amax * torch.tensor(1 / 448.0, dtype=torch.float32)).item()
        mult = torch.tensor(448.0, dtype=torch.float32) / amax
        assert _fp8_equal(q[r, :128], (grp * mult).clamp(-448, 448).to(FP8_DTYPE))


def test_vllm_per_token_fp8_floor_and_division():
    x = _x(seed=2)
    x[0] = 0  # an all-zero token: the floor 1/(448*512) keeps the scale positive
    q, s = quant.quantize_activation(x, "fp8_w8a8", per_act_token_quant=True, rules=VLLM_RULES)
    assert s[0, 0].item() == _f32(1 / (448 * 512)) and not q[0].float().any()
    xf = x.float()
    for r in range(1, x.shape[0]):
        sc = max(_f32(xf[r].abs().max().item() / 448.0), _f32(1 / (448 * 512)))
        assert s[r, 0].item() == pytest.approx(sc, rel=1e-7)
        assert _fp8_equal(q[r], (xf[r] / s[r, 0]).clamp(-448, 448).to(FP8_DTYPE))


def test_per_tensor_fp8_reciprocal_and_no_floor():
    x = _x(seed=3)
    q, s = quant.quantize_activation(x, "fp8_w8a8", rules=VLLM_RULES)
    sc = torch.tensor(x.float().abs().max().item() / 448.0, dtype=torch.float32)
    assert s.item() == sc.item()
    assert _fp8_equal(q, (x.float() * (1.0 / sc)).clamp(-448, 448).to(FP8_DTYPE))
    zero_q, zero_s = quant.quantize_activation(torch.zeros(2, 8), "fp8_w8a8", rules=VLLM_RULES)
    assert zero_s.item() == 0 and not zero_q.float().any()  # the kernels' codes dequantize to 0


def test_int8_per_token_rounds_half_away_from_zero():
    x = torch.tensor([[1.0, -2.5, 0.5, 127.0, -0.5, 2.5]])  # amax 127: x * 127/127 = x, exact ties
    q_engine, _ = quant.quantize_activation(x, "int8_w8a8", per_act_token_quant=True, rules=VLLM_RULES)
    q_ideal, _ = quant.quantize_activation(x, "int8_w8a8", per_act_token_quant=True)
    assert q_engine.tolist() == [[1, -3, 1, 127, -1, 3]]
    assert q_ideal.tolist() == [[1, -2, 0, 127, -0, 2]]  # half to even


def test_ideal_quantizer_is_unchanged():
    x = _x(seed=4)
    for kw in ({"block_k": 128}, {"per_act_token_quant": True}, {}):
        q, s = quant.quantize_activation(x, "fp8_w8a8", **kw)
        xf = x.float()
        if "block_k" in kw:
            amax = xf.reshape(x.shape[0], -1, 128).abs().amax(-1).clamp(min=1e-10)
            assert torch.equal(s, amax / 448.0)
        elif kw:
            assert torch.equal(s, xf.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0)
        else:
            assert torch.equal(s, xf.abs().amax().clamp(min=1e-10).reshape(1) / 448.0)


def _naive_faithful(x, w1, w2, topk_weights, topk_ids, *, double_round: bool, sequential_k=(), rd=torch.bfloat16):
    """Per-token loops with the kernels' rounding points (unquantized weights): GEMM outputs,
    the activation and each expert's weighted output rounded to ``rd``; the top-k sum in fp32."""
    t, h = x.shape
    out = torch.zeros(t, h)
    for i in range(t):
        ys = []
        for j in range(topk_ids.shape[1]):
            e = int(topk_ids[i, j])
            hh = (w1[e].double() @ x[i].double()).float().to(rd).float()
            inter = hh.shape[0] // 2
            g, u = hh[:inter], hh[inter:]
            act = torch.nn.functional.silu(g)
            if double_round:
                act = act.to(rd).float()
            a = (act * u).to(rd).float()
            y = ((w2[e].double() @ a.double()).float() * topk_weights[i, j]).to(rd).float()
            ys.append(y)
        if topk_ids.shape[1] in sequential_k:
            acc = ys[0]
            for y in ys[1:]:
                acc = (acc + y).to(rd).float()
            out[i] = acc
        else:
            out[i] = torch.stack(ys).sum(0)
    return out.to(rd)


@pytest.mark.parametrize(("double_round", "sequential", "k"), [(True, (3, 4), 3), (True, (), 3), (False, (), 2)])
def test_faithful_pipeline_matches_the_kernels_rounding_points(double_round, sequential, k):
    g = torch.Generator().manual_seed(5)
    e, h, i, t = 4, 64, 32, 7
    x = torch.randn(t, h, generator=g).bfloat16()
    w1 = (torch.randn(e, 2 * i, h, generator=g) / 8).bfloat16()
    w2 = (torch.randn(e, h, i, generator=g) / 8).bfloat16()
    tw, ti = mc.select_experts(x.float(), torch.randn(t, e, generator=g), k)
    numerics = Numerics("test", round_intermediates=True, double_rounded_activation=double_round,
                        sequential_topk_sum=sequential)
    got = mc.fused_experts(x, w1, w2, tw, ti, backend="reference", numerics=numerics)
    want = _naive_faithful(x, w1.float(), w2.float(), tw, ti, double_round=double_round, sequential_k=sequential)
    ideal = mc.fused_experts(x, w1, w2, tw, ti, backend="reference")
    err = (got.float() - want.float()).norm() / want.float().norm()
    # fp32 accumulation order differs from the loop's fp64: a rare one-ulp flip after rounding.
    assert err < 2e-3
    # ...while the conventions themselves are visible (the test can fail).
    if double_round:
        assert (ideal.float() - want.float()).norm() / want.float().norm() > 2 * err


def test_numerics_argument_resolution():
    x = torch.randn(3, 16)
    w1, w2 = torch.randn(2, 16, 16), torch.randn(2, 16, 8)
    tw, ti = mc.select_experts(x, torch.randn(3, 2), 1)
    with pytest.raises(mc.InvalidInputError, match="numerics"):
        mc.fused_experts(x, w1, w2, tw, ti, numerics="VLLM")
    with pytest.raises(mc.EngineNotInstalledError):
        mc.fused_experts(x, w1, w2, tw, ti, backend="reference", numerics="vllm")
    assert torch.equal(mc.fused_experts(x, w1, w2, tw, ti, numerics=IDEAL), mc.fused_experts(x, w1, w2, tw, ti))


# --- kernel emulations of the faithful reference (each against an independent float64 model) ---


def test_wgmma_fp8_accumulation_follows_its_definition():
    """The vectorised emulation equals the model written out one output at a time in float64:
    per 32 products, the accumulator and the products truncated toward zero to 13 bits below the
    largest exponent among them, then added."""
    import math

    from moecompat.reference.experts import wgmma_fp8_accumulate

    g = torch.Generator().manual_seed(5)
    xc = (torch.randn(3, 128, generator=g) * 40).to(torch.float8_e4m3fn).float()
    wc = (torch.randn(4, 128, generator=g) * 40).to(torch.float8_e4m3fn).float()
    xc[0, :32] = 0  # a group of zero products
    got = wgmma_fp8_accumulate(xc, wc, 32, 13)
    for r in range(3):
        for n in range(4):
            acc = 0.0
            for j in range(0, 128, 32):
                terms = [acc] + [float(xc[r, i]) * float(wc[n, i]) for i in range(j, j + 32)]
                emax = max((math.frexp(t)[1] for t in terms if t != 0), default=-100)
                ulp = 2.0 ** (emax - 1 - 13)
                acc = sum(math.trunc(t / ulp) * ulp for t in terms)
            assert got[r, n].item() == acc
    exact = xc.double() @ wc.double().T
    assert not torch.equal(got.double(), exact)  # 13 bits lose something here
    assert torch.allclose(got.double(), exact, rtol=1e-3, atol=1e-3)

def _fp8_problem(e=3, n=48, k=96, t=10, per_channel=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(e, n, k, generator=g)
    x = torch.randn(t, k, generator=g)
    q, _, qc = quant.quantize_moe_weights(w, torch.randn(e, k, n // 2, generator=g), "fp8_w8a8",
                                          per_out_ch_quant=per_channel, per_act_token_quant=per_channel)
    ids = torch.randint(0, e, (t,), generator=g)
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=e)
    return x[order], q, qc, counts, ids[order]


@pytest.mark.parametrize("per_channel", [False, True])
def test_tensor_core_fp8_gemm_against_a_float64_model(per_channel):
    """Per 32 codes' products, the accumulator and the products truncated to 13 bits below the
    largest exponent among them and added, then the scales: written out independently in float64."""
    from moecompat.reference.experts import _tensor_core_fp8_gemm

    x, w, qc, counts, ids = _fp8_problem(per_channel=per_channel)
    got = _tensor_core_fp8_gemm(x, w, qc, 1, counts, VLLM_RULES, 32, 13)
    q, a_s = quant.quantize_activation(x, "fp8_w8a8", per_act_token_quant=per_channel, rules=VLLM_RULES)
    xc, wc = q.double(), w.double()
    a_s = a_s.double().reshape(-1, 1) if a_s.numel() == x.shape[0] else a_s.double().reshape(1, 1)
    want = torch.empty(x.shape[0], w.shape[1], dtype=torch.float64)
    for r in range(x.shape[0]):
        e = int(ids[r])
        acc = torch.zeros(w.shape[1], dtype=torch.float64)
        for k0 in range(0, x.shape[1], 32):
            terms = torch.cat([acc[:, None], wc[e, :, k0:k0 + 32] * xc[r, k0:k0 + 32]], -1)
            emax = torch.frexp(terms).exponent.amax(-1, keepdim=True)
            ulp = torch.pow(2.0, (emax - 14).double())
            acc = (torch.trunc(terms / ulp) * ulp).sum(-1)
        ws = qc.w1_scale.double().reshape(w.shape[0], -1)[e]
        want[r] = acc.double() * a_s[r if a_s.shape[0] > 1 else 0] * ws
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0), (got.double() - want).abs().max()
    # Truncation biases toward zero: on average the emulated sums are smaller in magnitude.
    exact = torch.stack([(xc[r] * wc[int(ids[r])]).sum(-1) for r in range(x.shape[0])]) * a_s * \
        torch.stack([qc.w1_scale.double().reshape(w.shape[0], -1)[int(i)] for i in ids])
    assert ((got.double() - exact) * exact.sign()).mean() < 0


@pytest.mark.parametrize("slice_sum", ["exact", "k_order"])
def test_wna16_cuda_gemm_against_a_float64_model(slice_sum):
    """4-element bf16 FMA lanes, float32 sums per K slice rounded to bf16, the slices added into a
    bf16 output: summed exactly and rounded once (the reference's prediction of the GPU's atomics,
    which add them in an order it picks), or added in K order (one order the GPU may take)."""
    from moecompat.reference.experts import _wna16_cuda_gemm

    g = torch.Generator().manual_seed(1)
    e, n, k, block_k = 2, 24, 512, 128  # four slices: with two, every order gives the same sum
    x = torch.randn(5, k, generator=g).bfloat16()
    wf = torch.randn(e, n, k, generator=g).bfloat16().float()
    counts = torch.tensor([3, 2])
    rw = torch.rand(5, generator=g)
    got = _wna16_cuda_gemm(x, wf, counts, block_k, rw, torch.bfloat16, slice_sum=slice_sum)
    want = torch.empty(5, n, dtype=torch.bfloat16)
    for r in range(5):
        ex = 0 if r < 3 else 1
        slices = []
        for b0 in range(0, k, block_k):
            res = torch.zeros(n, dtype=torch.float64)
            for c0 in range(b0, b0 + block_k, 4):
                lane = torch.zeros(n, dtype=torch.bfloat16)
                for i in range(4):
                    prod = x[r, c0 + i].double() * wf[ex, :, c0 + i].double()  # exact
                    lane = (lane.double() + prod).to(torch.bfloat16)
                res += lane.double()
            slices.append((res * float(rw[r])).float().to(torch.bfloat16).double())
        if slice_sum == "exact":
            want[r] = torch.stack(slices).sum(0).to(torch.bfloat16)
        else:
            out = torch.zeros(n, dtype=torch.bfloat16)
            for s in slices:
                out = (out.double() + s).to(torch.bfloat16)
            want[r] = out
    mismatch = (got != want).float().mean().item()
    # float32 vs float64 sums of the lanes may move a rounding on rare ties.
    assert mismatch < 0.01, mismatch
    assert _wna16_cuda_gemm(x, wf, counts, k, None, torch.float32, slice_sum=slice_sum).allclose(
        torch.cat([x[:3].float() @ wf[0].T, x[3:].float() @ wf[1].T]), rtol=1e-5, atol=1e-4)


def test_wna16_slice_orders_differ():
    """The two predictions of the atomics differ where there are more than two slices, so the
    choice between them is visible in the GPU errors (tools/device/wna16_probe.py)."""
    from moecompat.reference.experts import _wna16_cuda_gemm

    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 2048, generator=g).bfloat16()
    wf = torch.randn(1, 64, 2048, generator=g).bfloat16().float() / 40
    counts = torch.tensor([4])
    exact = _wna16_cuda_gemm(x, wf, counts, 128, None, torch.bfloat16)
    ordered = _wna16_cuda_gemm(x, wf, counts, 128, None, torch.bfloat16, slice_sum="k_order")
    assert (exact != ordered).float().mean().item() > 0.05


def test_faithful_rules_only_on_cuda_tensors():
    """On CPU tensors the engines never run these kernels, so the rules change nothing there."""
    import dataclasses

    from moecompat.reference import experts

    x, w, qc, counts, _ = _fp8_problem()
    base = Numerics("plain", VLLM_RULES, round_intermediates=True)
    tc = dataclasses.replace(base, fp8_tensor_core_accumulation=(32, 13))
    assert experts._fp8_accumulation(tc, False, 4, w, w, 1, qc, qc) is None
    a = experts._faithful_gemm(x, w, qc, 1, counts, base, torch.float32, None, None)
    b = experts._faithful_gemm(x, w, qc, 1, counts, tc, torch.float32, None, None, (32, 13))
    assert torch.equal(a, b)


def test_wgmma_accumulation_only_for_wgmma_tiles():
    """The engine's config decides: BLOCK_SIZE_M >= 64 runs on wgmma (13-bit accumulation),
    smaller tiles on mma.sync (float32 sums); fp8 with per-tile scales and other schemes never."""
    import dataclasses

    from moecompat.reference import experts
    from moecompat.reference.numerics import TritonCall

    _, w, qc, _, _ = _fp8_problem()
    asked: list[TritonCall] = []

    def block_m(call: TritonCall) -> int:
        asked.append(call)
        return 16 if call.num_tokens <= 32 else 64

    tc = dataclasses.replace(Numerics("n", VLLM_RULES), fp8_tensor_core_accumulation=(32, 13), fp8_mma_m=block_m)
    assert experts._fp8_accumulation(tc, True, 7, w, w, 2, qc, qc) is None
    assert experts._fp8_accumulation(tc, True, 257, w, w, 2, qc, qc) == (32, 13)
    assert asked[-1] == TritonCall(tuple(w.shape), tuple(w.shape), 2, 257, "fp8_w8a8", False)
    always = dataclasses.replace(tc, fp8_mma_m=None)
    assert experts._fp8_accumulation(always, True, 7, w, w, 2, qc, qc) == (32, 13)
    block = mc.make_quant_config("fp8_w8a8", w1_scale=torch.ones(2, 1, 1), w2_scale=torch.ones(2, 1, 1),
                                 block_shape=[128, 128])
    assert experts._fp8_accumulation(always, True, 257, w, w, 2, block, block) is None
    from moecompat.quant import UNQUANTIZED

    assert experts._fp8_accumulation(always, True, 257, w, w, 2, UNQUANTIZED, UNQUANTIZED) is None


def test_int4_weights_rounded_to_the_compute_dtype():
    from moecompat.reference import experts

    g = torch.Generator().manual_seed(3)
    w1 = torch.randn(2, 64, 256, generator=g)
    q1, _, qc = quant.quantize_moe_weights(w1, torch.randn(2, 256, 128, generator=g), "int4_w4a16", group_size=128)
    qc = mc.make_quant_config("int4_w4a16", w1_scale=qc.w1_scale.bfloat16(), w2_scale=qc.w2_scale.bfloat16(),
                              group_size=128)
    x = torch.randn(4, 256, generator=g).bfloat16()
    counts = torch.tensor([2, 2])
    rounded = Numerics("r", VLLM_RULES, round_dequantized_group_weights=True)
    got = experts._faithful_gemm(x, q1, qc, 1, counts, rounded, torch.bfloat16, None, None)
    wf = quant.dequantize_weights(q1, qc, 1, torch.float32).bfloat16().float()
    want = torch.cat([x[:2].float() @ wf[0].T, x[2:].float() @ wf[1].T])
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    plain = experts._faithful_gemm(x, q1, qc, 1, counts, Numerics("p", VLLM_RULES), torch.bfloat16, None, None)
    assert not torch.equal(plain, got)
