"""``tools/diff_release.py`` on recorded release pairs whose changes are known."""

from __future__ import annotations

import pathlib
import sys

import pytest

from moecompat.engines import ENGINES

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

from _surface import Surface, surface_path  # noqa: E402
from diff_release import diff_releases, draft_specifier, param_diff, render, separating_bound  # noqa: E402

VFM = "vllm.model_executor.layers.fused_moe"
SMOE = "sglang.srt.layers.moe"


def _diff(engine: str, old: str, new: str, all_defs: bool = False):
    if not surface_path(engine).exists():
        pytest.fail(f"no {engine} surface data: run tools/surface_snapshot.py")
    surface = Surface.load(engine)
    for r in (old, new):
        if not surface.has_release(r):
            pytest.fail(f"{engine} {r} not recorded: run tools/surface_snapshot.py {engine} {r}")
    return diff_releases(surface, ENGINES[engine].facts, old, new, all_defs=all_defs)


def _moves(d) -> set[tuple[str, str]]:
    return {(m.old_where, m.new_where) for m in d.moves}


def test_vllm_router_move():
    d = _diff("vllm", "0.14.1", "0.15.1")
    assert (f"{VFM}.fused_moe:fused_topk", f"{VFM}.router.fused_topk_router:fused_topk") in _moves(d)
    assert (f"{VFM}.fused_moe:grouped_topk", f"{VFM}.router.grouped_topk_router:grouped_topk") in _moves(d)
    changed = {c.what: c for c in d.facts}
    assert changed["fused_topk@fused_moe"].old_present and not changed["fused_topk@fused_moe"].new_present
    assert not changed["fused_topk@fused_moe"].needs_edit  # the fact already ends at 0.15
    assert "moved to" in render(d)


def test_vllm_quant_config_release():
    d = _diff("vllm", "0.10.2", "0.11.2")
    assert (f"{VFM}.fused_moe:get_config_dtype_str", f"{VFM}.config:_get_config_dtype_str") in _moves(d)
    fe = next(p for p in d.params if p.where == f"{VFM}.fused_moe:fused_experts")
    assert "quant_config" in fe.added
    assert "use_fp8_w8a8" in fe.removed


def test_vllm_supports_expert_map_removed():
    d = _diff("vllm", "0.22.1", "0.23.0")
    gone = {c.what: c for c in d.facts}
    c = gone["supports_expert_map@experts"]
    assert c.old_present and not c.new_present and not c.needs_edit
    assert not [m for m in d.moves if m.old_where == c.where]  # removed from a class still there: no move


def test_sglang_triton_utils_move():
    d = _diff("sglang", "0.5.10.post1", "0.5.11")
    assert (f"{SMOE}.fused_moe_triton.fused_moe:fused_experts", f"{SMOE}.moe_runner.triton_utils.fused_moe:fused_experts") in _moves(d)


def test_vllm_scale_swizzled_rename():
    d = _diff("vllm", "0.20.2", "0.21.0")
    make = next(p for p in d.params if p.where == f"{VFM}.config:FusedMoEQuantConfig.make")
    assert ("is_nvfp4_scale_swizzled", "is_scale_swizzled") in make.renamed
    assert "is_scale_swizzled" not in make.added and "is_nvfp4_scale_swizzled" not in make.removed


def test_vllm_all_definitions():
    d = _diff("vllm", "0.14.1", "0.15.1", all_defs=True)
    assert f"{VFM}.router.fused_topk_router:fused_topk" in d.all_added
    assert f"{VFM}.router" in d.modules_added
    assert any(m.old_where == f"{VFM}.fused_moe:grouped_topk" for m in d.all_moves)


def test_draft_specifier():
    assert separating_bound("0.14.1", "0.15.1") == "0.15"
    assert separating_bound("0.5.10.post1", "0.5.11") == "0.5.11"
    assert draft_specifier(">=0.11", "0.14.1", "0.15.1", present_new=False) == ">=0.11,<0.15"
    assert draft_specifier(">=0.17,<0.30", "0.22.1", "0.23.0", present_new=False) == ">=0.17,<0.23"
    assert draft_specifier(">=0.17,<0.23", "0.22.1", "0.23.0", present_new=True) == ">=0.17"
    assert draft_specifier("<0.15", "0.14.1", "0.15.1", present_new=False) == "<0.15"  # already right
    assert draft_specifier("<0.11", "0.14.1", "0.15.1", present_new=True) is None  # reappears
    assert draft_specifier(">=0.5.4,<0.5.11", "0.5.3.post1", "0.5.3.post2", present_new=True) == ">=0.5.3.post2,<0.5.11"
    # the lower bound is too early: it starts at the first later release that has it
    assert draft_specifier(">=0.5.3,<0.5.11", "0.5.2", "0.5.3", False, next_change="0.5.3.post2") == ">=0.5.3.post2,<0.5.11"
    # the range ends later than it says: it ends at the first later release without it
    assert draft_specifier("<0.5.3", "0.5.2", "0.5.3", True, next_change="0.5.3.post1") == "<0.5.3.post1"
    assert draft_specifier(">=0.5.3,<0.5.11", "0.5.2", "0.5.3", False) is None


def test_sglang_bounds_off_by_a_post_release():
    """Facts whose bound is a release off get the recorded release where the probe changes (the
    bounds these two facts had before the whole-surface snapshots showed the post-releases)."""
    from moecompat._adapters import Fact

    cfg = f"{SMOE}.fused_moe_triton.fused_moe_triton_config:get_config_file_name"
    off = [Fact("get_config_file_name.per_channel_quant@config", ">=0.5.3,<0.5.11", cfg, "param", "per_channel_quant"),
           Fact("EPMoE", "<0.5.3", f"{SMOE}.ep_moe.layer:EPMoE")]
    if not surface_path("sglang").exists():
        pytest.fail("no sglang surface data")
    d = diff_releases(Surface.load("sglang"), off, "0.5.2", "0.5.3")
    c = next(c for c in d.facts if c.what == "get_config_file_name.per_channel_quant@config")
    assert c.needs_edit and c.draft == ">=0.5.3.post2,<0.5.11"
    c = next(c for c in d.facts if c.what == "EPMoE")
    assert c.needs_edit and c.draft == "<0.5.3.post1"


def test_param_diff():
    d = param_diff("m:f", ["x", "topk_ids", "*", "inplace"], ["x", "topk_output", "*", "inplace", "a1_q"])
    assert d.renamed == [("topk_ids", "topk_output")]
    assert d.added == ["a1_q"] and not d.removed
    d = param_diff("m:f", ["a", "b", "c", "d"], ["a", "_w1", "_w2", "_a1"])
    assert not d.renamed and d.removed == ["b", "c", "d"] and d.added == ["_w1", "_w2", "_a1"]
    d = param_diff("m:f", ["a", "b"], ["a", "*", "b"])
    assert d.now_kwonly == ["b"] and not d.added and not d.removed
