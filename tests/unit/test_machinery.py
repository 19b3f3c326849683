"""Adapter machinery: probing, binding, caching, thread safety, engine import failures, doctor."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

import moecompat as mc
from moecompat import _backends as backends
from moecompat._adapters import (
    REGISTRY,
    Backend,
    Location,
    Variant,
    find_symbol,
    pick_variant,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_find_symbol_reports_every_failed_location():
    loc, obj = find_symbol([Location("moecompat.not_a_module", "x"), Location("json", "no_such"), Location("json", "dumps")])
    assert obj is json.dumps and loc.module == "json"
    with pytest.raises(LookupError) as info:
        find_symbol([Location("moecompat.not_a_module", "x"), Location("json", "no_such")])
    msg = str(info.value)
    assert "moecompat.not_a_module:x" in msg and "json:no_such: not defined" in msg


def test_find_symbol_skips_placeholders():
    loc, obj = find_symbol([Location("json", "loads"), Location("json", "dumps")], accept=lambda o: o is not json.loads)
    assert obj is json.dumps


def test_pick_variant_uses_signature_bind():
    def new_api(x, w, *, quant_config=None, activation=None):
        pass

    def old_api(x, w, inplace=False, use_fp8_w8a8=False):
        pass

    variants = [Variant("new", 2, ("quant_config", "activation")), Variant("old", 2, ("inplace", "use_fp8_w8a8"))]
    assert pick_variant(new_api, variants).name == "new"
    assert pick_variant(old_api, variants).name == "old"
    assert pick_variant(lambda x: None, variants) is None


def test_resolution_is_cached_and_thread_safe():
    backends.reset()
    x = torch.randn(3, 16)
    w1, w2 = torch.randn(2, 16, 16), torch.randn(2, 16, 8)
    tw, ti = torch.ones(3, 1), torch.zeros(3, 1, dtype=torch.int32)
    barrier = threading.Barrier(12)
    errors = []

    def worker():
        try:
            barrier.wait()
            mc.fused_experts(x, w1, w2, tw, ti)
            mc.select_experts(x, torch.randn(3, 2), 1, backend="reference")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert REGISTRY.resolve_counts[("fused_experts", "reference")] == 1
    assert REGISTRY.resolve_counts[("select_experts", "reference")] == 1


def test_type_error_inside_a_kernel_surfaces_unchanged():
    calls = []

    def bind(call):
        def broken_kernel(*args):
            calls.append(1)
            raise TypeError("kernel bug: unexpected argument")
        return broken_kernel

    broken = Backend("broken")
    broken.adapter("fused_experts")(lambda b: b.ok("fused_experts", bind, "t:broken", "t"))
    backends.register_backend(broken)
    try:
        x = torch.randn(2, 8)
        with pytest.raises(TypeError, match="kernel bug"):
            mc.fused_experts(x, torch.randn(1, 8, 8), torch.randn(1, 8, 4), torch.ones(2, 1),
                             torch.zeros(2, 1, dtype=torch.int32), backend="broken")
        assert calls == [1]  # called once: never retried
    finally:
        backends.unregister_backend("broken")


def test_unknown_entry_point_is_unsupported():
    res = REGISTRY.resolution("no_such_entry_point", "reference")
    assert res.status == "unsupported"
    with pytest.raises(mc.UnsupportedFeatureError):
        REGISTRY.impl("no_such_entry_point", "reference")


def test_engine_not_installed_is_unsupported():
    from moecompat.engines import ENGINES

    checked = 0
    for name, engine in ENGINES.items():
        if engine.version() is None:
            checked += 1
            res = REGISTRY.resolution("fused_experts", name)
            assert res.status == "unsupported" and "not installed" in res.detail
            with pytest.raises(mc.EngineNotInstalledError) as info:
                mc.get_config_dtype_str(torch.float32, backend=name)
            # The message says the engine is missing and that the reference backend works.
            msg = str(info.value)
            assert f"{name} is not installed" in msg and "backend='reference'" in msg and "pip install" in msg
            assert isinstance(info.value, mc.UnsupportedFeatureError)
    assert checked, "the unit suite runs with no engine installed"


def _run(code: str, extra_path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def broken_vllm(tmp_path):
    """A really installed vLLM distribution whose import fails, like a CUDA-less or ABI-mismatched build."""
    pkg = tmp_path / "vllm"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('raise ImportError("libcudart.so.12: cannot open shared object file")\n')
    dist = tmp_path / "vllm-0.24.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.24.0\n")
    (dist / "RECORD").write_text("")
    return str(tmp_path)


def test_importing_moecompat_imports_no_engine(broken_vllm):
    r = _run("""
        import sys, moecompat
        assert not any(m == 'vllm' or m.startswith(('vllm.', 'sglang')) for m in sys.modules), sorted(sys.modules)
        print('ok')
    """, broken_vllm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_broken_engine_falls_back_with_one_warning(broken_vllm):
    r = _run("""
        import warnings, torch, moecompat as mc
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter('always')
            assert mc.get_config_dtype_str(torch.float32) == 'float32'   # auto -> reference
            assert mc.make_expert_map(2, 0, 4)[0] == 2
            print(mc.engine_info().vllm)
        msgs = [str(x.message) for x in w if issubclass(x.category, mc.MoECompatWarning)]
        assert len(msgs) == 1 and 'libcudart.so.12' in msgs[0], msgs
        try:
            mc.get_config_dtype_str(torch.float32, backend='vllm')
        except mc.UnsupportedFeatureError as e:
            assert isinstance(e, mc.EngineImportError) and isinstance(e.cause, ImportError)
            assert 'libcudart.so.12' in str(e) and 'vllm 0.24.0' in str(e)
            print('raised')
    """, broken_vllm)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0.24.0", "raised"]


def test_doctor_json_shows_broken_engine_as_error(broken_vllm):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([broken_vllm, str(ROOT)]))
    r = subprocess.run([sys.executable, "-m", "moecompat", "doctor", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["engines"]["vllm"] == "0.24.0"
    fe = rep["entry_points"]["fused_experts"]
    assert fe["vllm"]["status"] == "error" and "libcudart" in fe["vllm"]["detail"]
    assert fe["reference"]["status"] == "ok"


def test_doctor_json_schema_without_engines():
    r = subprocess.run([sys.executable, "-m", "moecompat", "doctor", "--json"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["moecompat"] == mc.__version__
    assert set(rep["engines"]) >= {"vllm", "sglang"}
    assert rep["cuda_device"] is None or isinstance(rep["cuda_device"], str)
    for ep in backends.ENTRY_POINTS:
        entry = rep["entry_points"][ep]
        assert "reference" in entry
        for r_ in entry.values():
            assert set(r_) == {"status", "resolved", "variant", "detail", "drift"}
            assert r_["status"] in ("ok", "unsupported", "drift", "error")


def test_doctor_text_runs():
    r = subprocess.run([sys.executable, "-m", "moecompat", "doctor"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert r.returncode == 0 and "fused_experts" in r.stdout and "reference" in r.stdout


def test_engine_info_fields():
    info = mc.engine_info()
    assert info.torch is not None and str(info.torch).startswith(torch.__version__.split("+")[0])
    assert info.auto_backend_cpu["fused_experts"] == "reference"
    assert "fused_experts" in info.auto_backend


def test_reference_lacks_engine_objects():
    from moecompat.ep import ep_moe_layer_class

    assert REGISTRY.resolution("ep_moe_layer_class", "reference").status == "unsupported"
    with pytest.raises(mc.UnsupportedFeatureError, match="functional"):
        ep_moe_layer_class(backend="reference")
    with pytest.raises(mc.UnsupportedFeatureError, match="kernel weight formats"):
        mc.mxfp4.convert_to_kernel_format("triton", None, None, None, None, None, engine="reference")
