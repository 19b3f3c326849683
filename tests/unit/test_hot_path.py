"""The per-weight-set plan of ``fused_experts`` (its hot path) and ``MoEExperts`` check exactly
what a cold call checks.

Each test first makes a valid call, so the weight set has a plan, then makes the call under test:
it must raise the error a cold call raises (same argument, same message) or return what a cold
call returns. Values edited in place between calls (an expert map rewritten by a load balancer,
weights reloaded into the same tensors) are re-read and re-checked on every call.
"""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import _backends, api
from moecompat._adapters import Backend

E, H, I, T, K = 4, 32, 16, 5, 2


def _layer(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    w1 = torch.randn(E, 2 * I, H, generator=g) / 8
    w2 = torch.randn(E, H, I, generator=g) / 8
    topk = mc.select_experts(x, torch.randn(T, E, generator=g), K)
    return dict(hidden_states=x, w1=w1, w2=w2, topk_weights=topk.topk_weights, topk_ids=topk.topk_ids)


def _call(a: dict[str, torch.Tensor], **kw: object) -> torch.Tensor:
    a = dict(a)
    opts = {k: kw.pop(k) for k in list(kw) if k not in a}
    a.update(kw)  # type: ignore[arg-type]
    return mc.fused_experts(a["hidden_states"], a["w1"], a["w2"], a["topk_weights"], a["topk_ids"], **opts)  # type: ignore[arg-type]


def _error(fn) -> mc.InvalidInputError:
    with pytest.raises(mc.InvalidInputError) as info:
        fn()
    return info.value


def _bad_inputs(a: dict[str, torch.Tensor]) -> dict[str, dict[str, object]]:
    ids, w = a["topk_ids"], a["topk_weights"]
    out_of_range = ids.clone()
    out_of_range[0, 0] = E
    return {
        "ids out of range": dict(topk_ids=out_of_range),
        "ids dtype": dict(topk_ids=ids.float()),
        "ids 1-D": dict(topk_ids=ids[:, 0], topk_weights=w[:, 0]),
        "weights shape": dict(topk_weights=w[:, :1]),
        "rows": dict(topk_ids=ids[:4], topk_weights=w[:4]),
        "too many columns": dict(topk_ids=torch.zeros(T, E + 1, dtype=torch.int32), topk_weights=torch.ones(T, E + 1)),
        "weights int": dict(topk_weights=w.to(torch.int32)),
        "ids on meta": dict(topk_ids=ids.to("meta")),
        "weights on meta": dict(topk_weights=w.to("meta")),
        "hidden on meta": dict(hidden_states=a["hidden_states"].to("meta")),
        "hidden dtype": dict(hidden_states=a["hidden_states"].double()),
        "hidden 3-D": dict(hidden_states=a["hidden_states"][None]),
        "hidden size": dict(hidden_states=torch.randn(T, H - 1)),
        "hidden not a tensor": dict(hidden_states=a["hidden_states"].tolist()),
        "ids not a tensor": dict(topk_ids=ids.tolist()),
        "weights not a tensor": dict(topk_weights=w.tolist()),
        "inplace, non-contiguous": dict(hidden_states=torch.randn(T, 2 * H)[:, ::2], inplace=True),
        "w2 of another shape": dict(w2=torch.randn(E, H, I - 1)),
        "expert map out of range": dict(expert_map=torch.tensor([0, 1, 2, 9], dtype=torch.int32)),
        "global_num_experts": dict(global_num_experts=E + 1),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(_layer())))
def test_hot_path_raises_what_the_cold_path_raises(case):
    cold_layer, hot_layer = _layer(1), _layer(1)
    cold = _error(lambda: _call(cold_layer, **_bad_inputs(cold_layer)[case]))
    _call(hot_layer)
    assert id(hot_layer["w1"]) in api._plans
    hot = _error(lambda: _call(hot_layer, **_bad_inputs(hot_layer)[case]))
    assert (hot.argument, str(hot)) == (cold.argument, str(cold))


def test_hot_path_results_match_cold_path():
    a = _layer(2)
    ref = _call(_layer(2))
    assert torch.equal(_call(a), ref)  # builds the plan
    assert torch.equal(_call(a), ref)  # uses it
    # Non-contiguous token tensors are copied, as on the cold path.
    wide_x = torch.zeros(T, 2 * H)
    wide_x[:, ::2] = a["hidden_states"]
    wide_ids = torch.zeros(T, 2 * K, dtype=a["topk_ids"].dtype)
    wide_ids[:, ::2] = a["topk_ids"]
    assert torch.equal(_call(a, hidden_states=wide_x[:, ::2], topk_ids=wide_ids[:, ::2]), ref)
    # Another activation or backend argument is another plan, not the cached one.
    assert torch.equal(_call(a, activation="gelu"), _call(_layer(2), activation="gelu"))
    assert torch.equal(_call(a, activation=mc.Activation.SILU, backend="reference"), ref)
    # No tokens: an empty [0, H] result.
    empty = _call(a, hidden_states=a["hidden_states"][:0], topk_ids=a["topk_ids"][:0], topk_weights=a["topk_weights"][:0])
    assert empty.shape == (0, H)


def test_hot_path_follows_registry_reset():
    a = _layer(3)
    calls: list[str] = []
    backend = Backend("hotpath_test")

    def adapter(tag):
        def bind(call):
            def run(hidden_states, w1, w2, topk_weights, topk_ids, inplace):
                calls.append(tag)
                return hidden_states
            return run
        return bind

    tag = ["first"]
    backend.adapter("fused_experts")(lambda b: b.ok("fused_experts", adapter(tag[0]), "t:adapter", "t"))
    _backends.register_backend(backend)
    try:
        _call(a, backend="hotpath_test")
        _call(a, backend="hotpath_test")
        tag[0] = "second"
        _backends.reset()  # e.g. after installing an engine in-process: the plan's adapter is stale
        _call(a, backend="hotpath_test")
        _call(a, backend="hotpath_test")
        assert calls == ["first", "first", "second", "second"]
    finally:
        _backends.unregister_backend("hotpath_test")
        _backends.reset()


def test_plan_is_dropped_with_its_weights():
    a = _layer(4)
    _call(a)
    key = id(a["w1"])
    assert key in api._plans
    del a["w1"]
    import gc

    gc.collect()
    assert key not in api._plans


def _map_layer(seed: int = 5):
    """A rank holding 2 of 4 experts (global 1 and 3), its map, and token routing over all 4."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, H, generator=g)
    w1, w2 = torch.randn(2, 2 * I, H, generator=g) / 8, torch.randn(2, H, I, generator=g) / 8
    topk = mc.select_experts(x, torch.randn(T, E, generator=g), K)
    emap = torch.tensor([-1, 0, -1, 1], dtype=torch.int32)
    return x, w1, w2, topk, emap


@pytest.mark.parametrize("bad", [2, 7, -2, 1 << 20])
@pytest.mark.parametrize("bound", [False, True], ids=["functional", "MoEExperts"])
def test_expert_map_edited_in_place_is_checked_again(bad, bound):
    """EPLB rewrites its expert map in place: an entry pointing past the local experts (or below
    -1) must raise on the next call, not read unwritten memory or index out of bounds."""
    x, w1, w2, topk, emap = _map_layer()
    experts = mc.MoEExperts(w1, w2, expert_map=emap) if bound else None

    def call():
        if experts is not None:
            return experts(x, *topk)
        return mc.fused_experts(x, w1, w2, *topk, expert_map=emap)

    first = call()
    assert torch.isfinite(first).all()
    emap[3] = bad
    with pytest.raises(mc.InvalidInputError) as info:
        call()
    assert info.value.argument == "expert_map" and "local expert ids" in str(info.value)
    # The same values in a fresh copy are rejected the same way (the cold path).
    with pytest.raises(mc.InvalidInputError) as cold:
        mc.fused_experts(x, w1, w2, *topk, expert_map=emap.clone())
    assert cold.value.argument == "expert_map"
    emap[3] = 1
    assert torch.equal(call(), first)


@pytest.mark.parametrize("bound", [False, True], ids=["functional", "MoEExperts"])
def test_expert_map_remapped_in_place_gives_the_new_answer(bound):
    """A valid in-place rewrite (experts moved between ranks) is honoured on the next call."""
    x, w1, w2, topk, emap = _map_layer(6)
    experts = mc.MoEExperts(w1, w2, expert_map=emap) if bound else None

    def call():
        return experts(x, *topk) if experts is not None else mc.fused_experts(x, w1, w2, *topk, expert_map=emap)

    call()
    emap.copy_(torch.tensor([0, -1, 1, -1], dtype=torch.int32))
    expected = mc.fused_experts(x, w1, w2, *topk, expert_map=emap.clone())
    assert torch.equal(call(), expected)


@pytest.mark.parametrize("bound", [False, True], ids=["functional", "MoEExperts"])
def test_weights_edited_in_place_are_read_again(bound):
    a = _layer(7)
    experts = mc.MoEExperts(a["w1"], a["w2"]) if bound else None

    def call():
        if experts is not None:
            return experts(a["hidden_states"], a["topk_weights"], a["topk_ids"])
        return _call(a)

    call()
    a["w1"].mul_(2.0)
    a["w2"][1].zero_()
    fresh = {**a, "w1": a["w1"].clone(), "w2": a["w2"].clone()}
    assert torch.equal(call(), _call(fresh))


def test_reference_never_reads_unwritten_memory_with_unchecked_ids():
    """With value checks bypassed (as for CUDA tensors outside debug mode), ids that are out of
    range contribute zero: no garbage, no IndexError."""
    from moecompat.reference import fused_experts as ref

    x, w1, w2, topk, emap = _map_layer(8)
    bad_map = torch.tensor([-1, 0, 5, 1 << 20], dtype=torch.int32)
    qc = mc.make_quant_config(None)
    out = ref(x, w1, w2, topk.topk_weights, topk.topk_ids, mc.Activation.SILU, qc, bad_map, E, False, False)
    expected = mc.fused_experts(x, w1, w2, topk.topk_weights, topk.topk_ids.masked_fill(topk.topk_ids >= 2, 0),
                                expert_map=torch.tensor([-1, 0, -1, -1], dtype=torch.int32))
    torch.testing.assert_close(out, expected)
    ids = topk.topk_ids.clone()
    ids[0, 0] = 99
    out = ref(x, w1, w2, topk.topk_weights, ids, mc.Activation.SILU, qc, None, 2, False, False)
    assert torch.isfinite(out).all()
