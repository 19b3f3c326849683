"""The per-weight-set plan of ``fused_experts`` (its hot path) checks exactly what a cold call checks.

Each test first makes a valid call, so the weight set has a plan, then makes the call under test:
it must raise the error a cold call raises (same argument, same message) or return what a cold
call returns.
"""

from __future__ import annotations

import pytest
import torch

import moecompat as mc
from moecompat import api, backends
from moecompat.adapters import REGISTRY, Resolution

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
    assert id(hot_layer["w1"]) in api._fused_plans
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


def test_hot_path_follows_registry_reset(monkeypatch):
    a = _layer(3)
    calls: list[str] = []

    def adapter(tag):
        def run(hidden_states, *rest):
            calls.append(tag)
            return hidden_states
        return run

    monkeypatch.setattr(backends, "_KNOWN_BACKENDS", (*backends._KNOWN_BACKENDS, "hotpath_test"))
    monkeypatch.setitem(REGISTRY._resolvers, "hotpath_test", {"fused_experts": lambda: Resolution(
        "fused_experts", "hotpath_test", "ok", impl=adapter("first"), resolved="t:first", variant="t")})
    try:
        _call(a, backend="hotpath_test")
        _call(a, backend="hotpath_test")
        REGISTRY._resolvers["hotpath_test"]["fused_experts"] = lambda: Resolution(
            "fused_experts", "hotpath_test", "ok", impl=adapter("second"), resolved="t:second", variant="t")
        backends.reset()  # e.g. after installing an engine in-process: the plan's adapter is stale
        _call(a, backend="hotpath_test")
        _call(a, backend="hotpath_test")
        assert calls == ["first", "first", "second", "second"]
    finally:
        backends.reset()
