"""moecompat under torch.compile and CUDA graphs on the GPU, through the real engine kernels.

* Compiled (``fullgraph=True``, inductor) calls of ``fused_experts``/``select_experts`` and a
  compiled ``MoEExperts`` give the eager engine output bit for bit: the custom op runs the same
  engine kernel on the same inputs, so any difference is a moecompat bug.
* A CUDA graph captured around ``fused_experts`` replays the engine kernel on new inputs copied into
  its static buffers (the decode loop of an engine), again bit for bit against eager.
* moecompat's own checks never synchronise the GPU: with ``torch.cuda.set_sync_debug_mode("error")``
  a call through a backend whose runner does no work (so only moecompat's code runs) raises nothing.
  In debug mode the value checks do synchronise, by design; that is asserted too, so the test can fail.
"""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import _backends, _checks
from moecompat._adapters import Backend

E, K, H, I = 8, 2, 1024, 1536


def _problem(tokens: int, seed: int = 0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, H, device="cuda", dtype=dtype, generator=g)
    w1 = (torch.randn(E, 2 * I, H, device="cuda", generator=g) / H**0.5).to(dtype)
    w2 = (torch.randn(E, H, I, device="cuda", generator=g) / I**0.5).to(dtype)
    logits = torch.randn(tokens, E, device="cuda", generator=g)
    return x, w1, w2, logits


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 33, 512])
def test_compiled_fused_experts_equals_eager(gpu_engine, record, tokens):
    x, w1, w2, logits = _problem(tokens)
    backend = gpu_engine.name

    def layer(x, logits):
        tw, ti = mc.select_experts(x, logits, K, backend=backend)
        return mc.fused_experts(x, w1, w2, tw, ti, backend=backend)

    eager = layer(x, logits)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)(x, logits)
    torch.cuda.synchronize()
    same = torch.equal(eager, compiled)
    record(test="compile_fused_experts", tokens=tokens, ok=same,
           max_abs_diff=(eager.float() - compiled.float()).abs().max().item())
    assert same, "compiled moecompat call differs from eager"


@pytest.mark.gpu
def test_compiled_moe_experts_dynamic_tokens(gpu_engine, record):
    """A compiled ``MoEExperts`` with dynamic token counts: one graph, several batch sizes."""
    x, w1, w2, logits = _problem(64, seed=1)
    experts = mc.MoEExperts(w1, w2, backend=gpu_engine.name)

    def layer(x, logits):
        tw, ti = mc.select_experts(x, logits, K, backend=gpu_engine.name)
        return experts(x, tw, ti)

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=True)
    worst = 0.0
    for t in (5, 64, 300):
        xt, lt = x.repeat(5, 1)[:t].contiguous(), logits.repeat(5, 1)[:t].contiguous()
        a, b = layer(xt, lt), compiled(xt, lt)
        torch.cuda.synchronize()
        assert torch.equal(a, b), f"{t} tokens: compiled MoEExperts differs from eager"
        worst = max(worst, (a.float() - b.float()).abs().max().item())
    record(test="compile_moe_experts_dynamic", ok=True, max_abs_diff=worst)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", [None, "fp8_w8a8"])
def test_cuda_graph_replay_equals_eager(gpu_engine, record, scheme):
    x, w1, w2, logits = _problem(16, seed=2)
    qc = None
    if scheme is not None:
        from moecompat import quant

        w1, w2, qc = quant.quantize_moe_weights(w1.float(), w2.float(), scheme)
    backend = gpu_engine.name
    static_x, static_logits = x.clone(), logits.clone()

    def step():
        tw, ti = mc.select_experts(static_x, static_logits, K, backend=backend)
        return mc.fused_experts(static_x, w1, w2, tw, ti, quant_config=qc, backend=backend)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up outside the capture (autotuning, lazy init)
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    worst = 0.0
    for seed in (3, 4, 5):
        nx, _, _, nl = _problem(16, seed=seed)
        static_x.copy_(nx)
        static_logits.copy_(nl)
        graph.replay()
        torch.cuda.synchronize()
        tw, ti = mc.select_experts(nx, nl, K, backend=backend)
        eager = mc.fused_experts(nx, w1, w2, tw, ti, quant_config=qc, backend=backend)
        assert torch.equal(static_out, eager), f"replay {seed} differs from eager"
        worst = max(worst, (static_out.float() - eager.float()).abs().max().item())
    record(test="cuda_graph_replay", scheme=scheme, ok=True, max_abs_diff=worst)


def _null_backend() -> Backend:
    null = Backend("null")

    def bind(call):
        def run(hidden_states, w1, w2, topk_weights, topk_ids, inplace):
            return hidden_states
        return run

    null.adapter("fused_experts")(lambda b: b.ok("fused_experts", bind, "tests.gpu:null", "null"))
    return null


@pytest.mark.gpu
def test_checks_never_synchronise(record):
    x, w1, w2, logits = _problem(8, seed=6)
    tw, ti = mc.select_experts(x, logits, K, backend="reference")
    emap = torch.full((E,), -1, dtype=torch.int32, device="cuda")
    emap[:4] = torch.arange(4, device="cuda", dtype=torch.int32)
    _backends.register_backend(_null_backend())
    try:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(2):  # first call builds the plan, second takes the cached one
                mc.fused_experts(x, w1, w2, tw, ti, backend="null")  # type: ignore[arg-type]
                mc.fused_experts(x, w1[:4], w2[:4], tw, ti, expert_map=emap, global_num_experts=E,
                                 backend="null")  # type: ignore[arg-type]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        # Debug mode reads topk_ids on the host on purpose: the same call now synchronises.
        _checks.set_debug(True)
        torch.cuda.set_sync_debug_mode("error")
        try:
            with pytest.raises(RuntimeError, match="synchroniz"):
                mc.fused_experts(x, w1, w2, tw, ti, backend="null")  # type: ignore[arg-type]
        finally:
            torch.cuda.set_sync_debug_mode("default")
            _checks.set_debug(False)
    finally:
        _backends.unregister_backend("null")
    record(test="checks_never_synchronise", ok=True)
