"""torch.compile(fullgraph=True) over model code that calls moecompat (CPU, reference backend):
the public functions and MoEExperts are traced as the moecompat custom ops, and the compiled
output equals eager for the eager, aot_eager and inductor backends."""

from __future__ import annotations

import shutil

import pytest
import torch

import moecompat as mc
from moecompat import ops, quant

pytestmark = pytest.mark.skipif(not ops.AVAILABLE, reason="torch < 2.5 has no torch.library.custom_op")

E, H, I, T, K = 4, 32, 16, 5, 2
BACKENDS = ["eager", "aot_eager", "inductor"]


def _backend(name: str) -> str:
    if name == "inductor" and shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.fail("inductor needs a C++ compiler on the test machine (install g++)")
    return name


def _flushes_denormals() -> bool:
    return torch.tensor([2.0**-127]).mul(1.0).item() == 0.0


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    flushed = _flushes_denormals()
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    # torch 2.5's inductor turns the CPU's flush-to-zero mode on for the whole process
    # (seen here on torch 2.5.1): put the mode back, so the tests after these run as they would alone.
    if not flushed and _flushes_denormals():
        torch.set_flush_denormal(False)


def _weights(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, 2 * I, H, generator=g) / 8, torch.randn(E, H, I, generator=g) / 8


def _inputs(t: int = T, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, H, generator=g), torch.randn(t, E, generator=g)


def _check(fn, *args, backend: str, **compile_kw) -> None:
    eager = fn(*args)
    compiled = torch.compile(fn, fullgraph=True, backend=_backend(backend), **compile_kw)(*args)
    if isinstance(eager, tuple):
        for a, b in zip(compiled, eager, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    else:
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_then_fused_experts(backend):
    w1, w2 = _weights()

    def layer(x, logits):
        tk = mc.select_experts(x, logits, K)
        return mc.fused_experts(x, w1, w2, tk.topk_weights, tk.topk_ids, activation="silu") * 2

    _check(layer, *_inputs(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_moe_grouped_routing_with_quantized_weights(backend):
    w1, w2 = _weights(2)
    w1q, w2q, qc = quant.quantize_moe_weights(w1, w2, "int8_w8a16")

    def layer(x, logits):
        return mc.fused_moe(x, w1q, w2q, logits, K, use_grouped_topk=True, num_expert_group=2, topk_group=1,
                            scoring_func="sigmoid", routed_scaling_factor=2.0, quant_config=qc, activation="gelu")

    _check(layer, *_inputs(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expert_map_and_w8a8(backend):
    """An expert map (the shape that used to fail on a data-dependent guard) and fp8 activations."""
    w1, w2 = _weights(3)
    w1q, w2q, qc = quant.quantize_moe_weights(w1[:2], w2[:2], "fp8_w8a8", per_out_ch_quant=True, per_act_token_quant=True)
    emap = torch.tensor([-1, 0, -1, 1], dtype=torch.int32)

    def layer(x, logits):
        tk = mc.select_experts(x, logits, K)
        return mc.fused_experts(x, w1q, w2q, *tk, quant_config=qc, expert_map=emap)

    _check(layer, *_inputs(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bound_experts(backend):
    w1, w2 = _weights(4)
    experts = mc.MoEExperts(w1, w2, activation="swigluoai")

    def layer(x, logits):
        return experts(x, *mc.select_experts(x, logits, K, renormalize=False))

    _check(layer, *_inputs(), backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_moe_align_block_size(backend):
    def align(x, logits):
        return mc.moe_align_block_size(mc.select_experts(x, logits, K).topk_ids, 4, E, pad_sorted_ids=True)

    _check(align, *_inputs(), backend=backend)


def test_custom_routing_function_is_traced():
    w1, w2 = _weights(5)

    def route(hidden_states, router_logits, top_k, renormalize):
        w, ids = torch.topk(router_logits.softmax(-1), top_k)
        return w, ids.to(torch.int32)

    def layer(x, logits):
        return mc.fused_moe(x, w1, w2, logits, K, custom_routing_function=route)

    _check(layer, *_inputs(), backend="aot_eager")


def test_inplace_under_compile():
    w1, w2 = _weights(6)

    def layer(x, logits):
        tk = mc.select_experts(x, logits, K)
        y = x.clone()
        mc.fused_experts(y, w1, w2, *tk, inplace=True)
        return y

    _check(layer, *_inputs(), backend="aot_eager")


def test_tracker_counts_under_compile():
    w1, w2 = _weights(7)
    eager_t = mc.ExpertActivationTracker(1, E, device="cpu")
    compiled_t = mc.ExpertActivationTracker(1, E, device="cpu")

    def layer(x, logits, tracker):
        tk = mc.select_experts(x, logits, K, tracker=tracker, layer=0)
        return mc.fused_experts(x, w1, w2, *tk)

    x, logits = _inputs()
    layer(x, logits, eager_t)
    torch.compile(layer, fullgraph=True, backend="aot_eager")(x, logits, compiled_t)
    assert torch.equal(compiled_t.layer_counts(), eager_t.layer_counts())


def test_dynamic_token_counts():
    w1, w2 = _weights(8)

    def layer(x, logits):
        tk = mc.select_experts(x, logits, K)
        return mc.fused_experts(x, w1, w2, *tk)

    c = torch.compile(layer, fullgraph=True, backend="aot_eager", dynamic=True)
    for t in (3, 9, 17):
        x, logits = _inputs(t, seed=t)
        torch.testing.assert_close(c(x, logits), layer(x, logits), rtol=1e-6, atol=1e-6)


def _dynamo_shows_user_exception_values() -> bool:
    """Whether Dynamo's fullgraph error shows the values a user-defined exception was raised with
    (torch 2.5's Dynamo stops at the constructor call: its error names the class and shows the
    source line, not the values). The probe's value exists only once evaluated (3 * 7919)."""

    class _Probe(Exception):
        pass

    def f(x):
        raise _Probe("probe", x.shape[0] * 7919)

    torch._dynamo.reset()
    try:
        torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(3))
    except torch._dynamo.exc.Unsupported as e:
        return "23757" in str(e)
    finally:
        torch._dynamo.reset()
    raise AssertionError("the probe compiled a function that always raises")


def test_bad_input_under_compile_names_the_moecompat_error():
    """The metadata checks run while Dynamo traces. Without fullgraph Dynamo runs that frame
    eagerly and the InvalidInputError surfaces as itself; with fullgraph=True Dynamo refuses to
    compile and its error names the InvalidInputError with its argument and values (on a Dynamo
    that cannot show them, torch 2.5: the class and the failing check's source line)."""
    w1, w2 = _weights(9)

    def layer(x, logits):
        tk = mc.select_experts(x, logits, K)
        return mc.fused_experts(x, w1, w2[:, :-1], *tk)

    with pytest.raises(mc.InvalidInputError, match=r"w2: expected shape \[E, 32, I\]"):
        torch.compile(layer, backend="eager")(*_inputs())
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported) as info:
        torch.compile(layer, fullgraph=True, backend="eager")(*_inputs())
    msg = str(info.value)
    # Each Dynamo words it its own way: InvalidInputError('w2', 'shape [E, 32, I] ...') (torch
    # 2.13), InvalidInputError((ConstantVariable(str: 'w2'), ...)) (2.11), the class and the
    # check's source line (2.5).
    assert "InvalidInputError" in msg
    if _dynamo_shows_user_exception_values():
        assert "'w2'" in msg and "shape [E, 32, I]" in msg
    else:
        assert 'raise _fail("w2", f"shape [E, {hidden}, I]' in msg


def test_value_checks_run_inside_the_op():
    """Expert ids out of range are caught when the compiled graph runs (CPU tensors)."""
    w1, w2 = _weights(10)
    emap = torch.tensor([0, 1, 2, 3], dtype=torch.int32)

    def layer(x, tw, ti):
        return mc.fused_experts(x, w1, w2, tw, ti, expert_map=emap)

    x, logits = _inputs()
    tw, ti = mc.select_experts(x, logits, K)
    c = torch.compile(layer, fullgraph=True, backend="aot_eager")
    c(x, tw, ti)
    emap[1] = 9  # rewritten in place between runs
    with pytest.raises(mc.InvalidInputError, match="expert_map"):
        c(x, tw, ti)


def test_the_ops_are_registered_with_exact_fake_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    w1, w2 = _weights()
    x, logits = _inputs()
    tw, ti = mc.select_experts(x, logits, K)
    with FakeTensorMode(allow_non_fake_inputs=True):
        out = torch.ops.moecompat.fused_experts(x, w1, w2, tw, ti, None, None, None, None, None, None, "", None,
                                                False, False, 0, None, "silu", -1, False, "auto", "ideal")
        w, ids = torch.ops.moecompat.select_experts(x, logits, K, True, "softmax", False, None, None, None, None, "auto")
        a, b, c = torch.ops.moecompat.moe_align_block_size(ti, 4, E, None, False, "auto")
    assert out.shape == (T, H) and out.dtype == x.dtype
    assert w.shape == ids.shape == (T, K) and w.dtype == torch.float32 and ids.dtype == torch.int32
    real = mc.moe_align_block_size(ti, 4, E)
    assert (a.shape, b.shape, c.shape) == tuple(r.shape for r in real)
