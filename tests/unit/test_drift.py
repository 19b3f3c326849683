"""Drift: an installed engine release that contradicts moecompat's facts is reported as such.

There is no vLLM release newer than the tested range yet, and no real release breaks its facts,
so these tests install a *synthetic* vLLM distribution (real files and metadata on
``PYTHONPATH``, run in a subprocess): a 0.34.0 whose ``fused_experts`` and config-name helpers
were renamed, and a 0.24.0 (inside the tested range) that lacks what its facts say it has.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FM = "vllm/model_executor/layers/fused_moe"


def _fake_vllm(root: pathlib.Path, version: str) -> str:
    """A vLLM whose fused_moe package imports but whose symbols moved: fused_experts became
    fused_experts_v2, _get_config_dtype_str became get_config_dtype_name."""
    pkg = root / FM
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm/model_executor", root / "vllm/model_executor/layers"):
        (d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "fused_moe.py").write_text(textwrap.dedent("""
        def fused_experts_v2(hidden_states, w1, w2, topk_weights, topk_ids, *, quant_config=None):
            raise AssertionError("never called by moecompat in these tests")
    """))
    (pkg / "config.py").write_text(textwrap.dedent("""
        def get_config_dtype_name(dtype, use_fp8_w8a8=False):
            return None
    """))
    dist = root / f"vllm-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    (dist / "RECORD").write_text("")
    return str(root)


def _run(code: str, path: str, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "MOECOMPAT_STRICT"}
    e.update(PYTHONPATH=os.pathsep.join([path, str(ROOT)]), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, timeout=300)


@pytest.fixture
def newer_vllm(tmp_path):
    return _fake_vllm(tmp_path, "0.34.0")


@pytest.fixture
def contradicting_vllm(tmp_path):
    return _fake_vllm(tmp_path, "0.24.0")


def _doctor(path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, str(ROOT)]))
    env.pop("MOECOMPAT_STRICT", None)
    r = subprocess.run([sys.executable, "-m", "moecompat", "doctor", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_moved_symbol_in_a_newer_release_is_drift_not_unsupported(newer_vllm):
    rep = _doctor(newer_vllm)
    fe = rep["entry_points"]["fused_experts"]["vllm"]
    assert fe["status"] == "drift", fe
    # What is missing, where it was looked for, and the tested range.
    assert "fused_experts not found" in fe["detail"]
    assert "vllm.model_executor.layers.fused_moe.fused_moe:fused_experts" in fe["detail"]
    assert "tested releases: vllm>=0.6,<0.34" in fe["detail"] or "vllm<0.34,>=0.6" in fe["detail"]
    assert "vllm:fused_experts" in rep["drift"]
    assert rep["untested_engines"] == ["vllm 0.34.0"]


def test_a_release_contradicting_its_facts_is_drift(contradicting_vllm):
    rep = _doctor(contradicting_vllm)
    fe = rep["entry_points"]["fused_experts"]["vllm"]
    assert fe["status"] == "drift", fe
    assert "a fact says this release has it" in fe["detail"]
    assert rep["untested_engines"] == []
    # A symbol whose facts say 0.24 lacks it (the 0.9-0.10 make flags) is not drift.
    assert rep["entry_points"]["moe_layer_config"]["vllm"]["status"] in ("drift", "unsupported")


def test_engine_info_reports_drift(newer_vllm):
    r = _run("""
        import moecompat as mc
        info = mc.engine_info()
        print(sorted(info.drift))
        print(info.vllm)
    """, newer_vllm)
    assert r.returncode == 0, r.stderr
    keys, version = r.stdout.strip().splitlines()
    assert "vllm:fused_experts" in keys and "vllm:get_config_dtype_str" in keys
    assert version == "0.34.0"


def test_auto_warns_once_then_falls_back(newer_vllm):
    r = _run("""
        import warnings, torch, moecompat as mc
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert mc.get_config_dtype_str(torch.float32) == "float32"   # auto -> reference
            assert mc.get_config_dtype_str(torch.float32) == "float32"
        msgs = [str(x.message) for x in w if issubclass(x.category, mc.MoECompatWarning)]
        assert len(msgs) == 1, msgs
        assert "drifted" in msgs[0] and "get_config_dtype_str" in msgs[0] and "MOECOMPAT_STRICT" in msgs[0], msgs
        print("ok")
    """, newer_vllm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_strict_mode_turns_drift_into_an_error(newer_vllm):
    r = _run("""
        import torch, moecompat as mc
        try:
            mc.get_config_dtype_str(torch.float32)
        except mc.EngineDriftError as e:
            assert e.engine == "vllm" and e.installed == "0.34.0" and "drift" in str(e)
            print("raised")
    """, newer_vllm, MOECOMPAT_STRICT="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "raised"


def test_explicit_backend_raises_the_drift_error(newer_vllm):
    r = _run("""
        import torch, moecompat as mc
        x = torch.randn(2, 8)
        try:
            mc.get_config_dtype_str(torch.float32, backend="vllm")
        except mc.EngineDriftError as e:
            assert isinstance(e, mc.UnsupportedFeatureError)
            print("raised")
    """, newer_vllm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "raised"


def test_doctor_text_shows_drift(newer_vllm):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([newer_vllm, str(ROOT)]))
    r = subprocess.run([sys.executable, "-m", "moecompat", "doctor"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "drift: vllm:fused_experts" in r.stdout and "outside the tested releases" in r.stdout


def test_fact_knows_when_it_can_be_removed():
    from packaging.version import Version

    from moecompat._adapters import Fact

    def fact(versions: str) -> Fact:
        return Fact("x", versions, kind="behaviour")

    assert fact(">=0.11").constant_from(Version("0.11"))
    assert fact("<0.11").constant_from(Version("0.12"))
    assert not fact("<0.11").constant_from(Version("0.6"))
    assert not fact(">=0.8,<0.11").constant_from(Version("0.8"))
    assert not fact(">=0.5.4.post2").constant_from(Version("0.5.4"))


def test_no_fact_is_obsolete_for_the_tested_floor():
    """Every fact still selects between releases moecompat supports (none could be deleted)."""
    from packaging.version import Version

    from moecompat.engines import ENGINES

    for engine in ENGINES.values():
        floor = min(Version(s.version) for s in engine.tested if s.operator == ">=")
        constant = [f.key for f in engine.facts if f.constant_from(floor) and f.kind == "param"
                    and not f.holds_for(floor)]
        assert constant == [], f"{engine.name}: facts false for every supported release: {constant}"
